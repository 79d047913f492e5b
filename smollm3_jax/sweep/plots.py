"""A sweep's figures: heatmaps and line plots of the summary's metrics (:mod:`smollm3_jax.sweep.stats`)
over the grid's axes, one panel per combination of the other swept axes, written as PNGs.

Figures are drawn on their own Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): pyplot
and the caller's backend are never touched.
"""

from __future__ import annotations

import io
import math
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from smollm3_jax.sweep.plan import AXES, SAMPLING_AXES, swept_axes
from smollm3_jax.sweep.stats import THROUGHPUT, counted, describe, is_finite, metric_names
from smollm3_jax.utils.files import atomic_write

# Metrics that are shares or rates in [0, 1] (pass@k too): their colour scale is fixed at 0-1, so a
# colour means the same value in every plot; the others span their cells' range (said on the bar).
UNIT_RANGE = (
  "distinct_1",
  "distinct_2",
  "rep4_share",
  "eos_share",
  "closed_think_share",
  "accuracy",
  "majority_accuracy",
)


def _unit_range(metric: str) -> bool:
  return metric in UNIT_RANGE or metric.startswith("pass_at_")


def varies(summary: Sequence[Mapping], metric: str) -> bool:
  """Whether ``metric`` takes at least two finite values over the cells (a constant is not plotted:
  its colour bar would span nothing)."""
  vals = {float(s[metric]) for s in summary if is_finite(s.get(metric))}
  return len(vals) > 1


def plot_pair(summary: Sequence[Mapping], named: Sequence[str] = ()) -> tuple[str | None, str | None]:
  """The two axes plots are drawn over: ``named`` (one or two axis names; the rest filled in), then
  the swept axes with most values first (ties: sampling settings before ``thinking``, then ``AXES``
  order). The first gives the heatmap's rows and the line plot's x axis; the second (None when only
  one axis is swept) the heatmap's columns and the lines."""
  for a in named:
    if a not in AXES:
      raise ValueError(f"plot_axes: unknown axis {a!r}; known: {list(AXES)}")
  if len(set(named)) != len(named) or len(named) > 2:
    raise ValueError(f"plot_axes: at most two distinct axes, got {list(named)}")
  counts = {a: len({s[a] for s in summary}) for a in AXES}
  # ties: sampling settings before the thinking switch (a mode reads best as panels), then AXES order
  rest = sorted(
    (a for a in swept_axes(summary) if a not in named),
    key=lambda a: (-counts[a], a not in SAMPLING_AXES, AXES.index(a)),
  )
  pair = (list(named) + rest + [None, None])[:2]
  if pair[0] is None:
    pair[0] = "temperature"
  return pair[0], pair[1]


def _label(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return "on" if v else "off"
  if isinstance(v, (float, np.floating)):
    return f"{v:g}"
  return str(v)


def _panels(summary, used) -> tuple[list[str], list[tuple]]:
  """The swept axes not in ``used`` and every combination of their values present (one panel each)."""
  others = [a for a in swept_axes(summary) if a not in used]
  combos = sorted({tuple(s[a] for a in others) for s in summary})
  return others, combos


def _panel_grid(others, combos) -> tuple[int, int, Callable[[int], tuple[int, int]]]:
  """(rows, columns, index -> position) of the panel grid: a real grid when two axes make the
  panels, else rows of up to four."""
  if len(others) == 2:
    a = sorted({c[0] for c in combos})
    b = sorted({c[1] for c in combos})
    return len(a), len(b), lambda i: (a.index(combos[i][0]), b.index(combos[i][1]))
  ncol = min(4, len(combos))
  return math.ceil(len(combos) / ncol), ncol, lambda i: divmod(i, ncol)


def _new_figure(width, height):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)  # its own canvas: pyplot and the process's backend are not involved
  # shown as a PNG by IPython's display / a cell's last expression, whatever the notebook's backend
  fig._repr_png_ = lambda: png_bytes(fig)
  return fig


def png_bytes(fig) -> bytes:
  """The PNG of a figure (100 dpi)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=100)
  return buf.getvalue()


def _title(others, combo) -> str:
  return ", ".join(f"{a}={_label(v)}" for a, v in zip(others, combo))


def heatmap_figure(summary: Sequence[Mapping], metric: str, axes: Sequence[str] = ()):
  """A ``matplotlib.figure.Figure``: ``metric`` over two axes (:func:`plot_pair`), one panel per
  combination of the other swept axes, one colour scale for all panels (one labelled colour bar);
  each square shows the value, its interval (when the summary has ``<metric>_lo``/``_hi``) and the
  rows it was computed from (:func:`counted`). Shares and rates are coloured on a fixed 0-1 scale,
  other metrics over their cells' range; the colour bar says which."""
  ya, xa = plot_pair(summary, axes)
  ys = sorted({s[ya] for s in summary})
  xs = sorted({s[xa] for s in summary}) if xa else [None]
  others, combos = _panels(summary, (ya, xa))
  nrow, ncol, where = _panel_grid(others, combos)
  header, desc = describe(metric)
  vals = np.array([s.get(metric, np.nan) for s in summary], float)
  finite = vals[np.isfinite(vals)]
  if _unit_range(metric):
    vmin, vmax, span = 0.0, 1.0, "colours: fixed scale 0 to 1"
  else:
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span = f"colours: the cells' range, {vmin:.3g} to {vmax:.3g}"
    if vmin == vmax:
      vmin, vmax, span = vmin - 0.5, vmax + 0.5, f"one value, {vmin:.3g}"
  fig = _new_figure(1.6 + ncol * (0.9 + 1.1 * len(xs)), 1.2 + nrow * (0.8 + 0.65 * len(ys)))
  grid = fig.subplots(nrow, ncol, squeeze=False)
  used = []
  for i, combo in enumerate(combos):
    ax = grid[where(i)]
    used.append(ax)
    sub = [s for s in summary if tuple(s[a] for a in others) == combo]
    img = np.full((len(ys), len(xs)), np.nan)
    notes = [["-"] * len(xs) for _ in ys]
    for s in sub:
      y, x = ys.index(s[ya]), xs.index(s[xa]) if xa else 0
      v = s.get(metric, np.nan)
      img[y, x] = v
      if is_finite(v):
        lo, hi = s.get(metric + "_lo"), s.get(metric + "_hi")
        note = f"{v:.3g}"
        if is_finite(lo) and is_finite(hi):
          note += f"\n[{lo:.2g}, {hi:.2g}]"
        notes[y][x] = note + f"\nn={counted(s, metric)}"
      else:
        notes[y][x] = f"-\nn={counted(s, metric)}"
    im = ax.imshow(img, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    for y in range(len(ys)):
      for x in range(len(xs)):
        v = img[y, x]
        ax.text(
          x,
          y,
          notes[y][x],
          ha="center",
          va="center",
          fontsize=7,
          color="white" if np.isnan(v) or v < (vmin + vmax) / 2 else "black",
        )
    ax.set_xticks(range(len(xs)), [_label(v) for v in xs] if xa else [""])
    ax.set_yticks(range(len(ys)), [_label(v) for v in ys])
    ax.set_xlabel(xa or "")
    ax.set_ylabel(ya)
    if others:
      ax.set_title(_title(others, combo), fontsize=9)
  for ax in grid.flat:
    if ax not in used:
      ax.set_axis_off()
  fig.colorbar(im, ax=used, shrink=0.9, label=f"{metric} ({header}); {span}")
  fig.suptitle(f"{metric}: {desc}", fontsize=9)
  return fig


def line_figure(summary: Sequence[Mapping], metric: str, x: str, hue: str | None = None):
  """A ``matplotlib.figure.Figure``: ``metric`` against axis ``x``, one line per value of ``hue``,
  error bars from the bootstrap interval (when the summary has it), one panel per combination of the
  other swept axes (shared y scale)."""
  for a in (x, hue):
    if a is not None and a not in AXES:
      raise ValueError(f"unknown axis {a!r}; known: {list(AXES)}")
  others, combos = _panels(summary, (x, hue))
  nrow, ncol, where = _panel_grid(others, combos)
  header, desc = describe(metric)
  fig = _new_figure(1.0 + 3.6 * ncol, 0.8 + 2.8 * nrow)
  grid = fig.subplots(nrow, ncol, squeeze=False, sharey=True)
  used = []
  hues = sorted({s[hue] for s in summary}) if hue else [None]
  for i, combo in enumerate(combos):
    ax = grid[where(i)]
    used.append(ax)
    sub = [s for s in summary if tuple(s[a] for a in others) == combo]
    xs_all = sorted({float(s[x]) for s in summary})
    # lines of one panel side by side (a small x offset) so their error bars do not hide each other
    step = 0.05 * min(np.diff(xs_all)) / max(1, len(hues) - 1) if len(xs_all) > 1 else 0.0
    for li, h in enumerate(hues):
      pts = sorted(
        (s[x], s.get(metric, np.nan), s.get(metric + "_lo", np.nan), s.get(metric + "_hi", np.nan))
        for s in sub
        if hue is None or s[hue] == h
      )
      xv = np.array([float(p[0]) for p in pts]) + (li - (len(hues) - 1) / 2) * step
      yv, lo, hi = (np.array([float(p[j]) for p in pts]) for j in (1, 2, 3))
      err = np.vstack([yv - lo, hi - yv]) if np.isfinite(lo).any() else None
      ax.errorbar(xv, yv, yerr=err, marker="o", capsize=3, label=f"{hue}={_label(h)}" if hue else metric)
    ax.set_xlabel(x)
    ax.set_ylabel(f"{metric} ({header})")
    if others:
      ax.set_title(_title(others, combo), fontsize=9)
    if hue:
      ax.legend(fontsize=7)
  for ax in grid.flat:
    if ax not in used:
      ax.set_axis_off()
  fig.suptitle(
    f"{metric}: {desc}" + ("  (bars: bootstrap interval)" if metric + "_lo" in summary[0] else ""), fontsize=9
  )
  return fig


def _save(fig, path: str) -> str:
  atomic_write(path, png_bytes(fig))
  return path


def plot_heatmaps(summary: Sequence[Mapping], out_dir: str, axes: Sequence[str] = ()) -> list[str]:
  """Writes ``<metric>.png`` (a heatmap, :func:`heatmap_figure`) and ``<metric>.lines.png``
  (:func:`line_figure` over the same two axes) for every quality metric that varies over the cells
  (:func:`varies`: a constant, e.g. thinking tokens of a model that never thinks, is left out), and
  ``throughput.png`` apart, into ``out_dir``; removes the PNGs an earlier report left there that this
  one did not write (another grid's). Returns the written paths."""
  ya, xa = plot_pair(summary, axes)
  os.makedirs(out_dir, exist_ok=True)
  paths = []
  for metric in metric_names(summary):
    if not varies(summary, metric):
      continue
    paths.append(
      _save(heatmap_figure(summary, metric, (ya, xa) if xa else (ya,)), os.path.join(out_dir, f"{metric}.png"))
    )
    paths.append(_save(line_figure(summary, metric, ya, xa), os.path.join(out_dir, f"{metric}.lines.png")))
  for metric in THROUGHPUT:
    if any(is_finite(s.get(metric)) for s in summary):
      paths.append(
        _save(heatmap_figure(summary, metric, (ya, xa) if xa else (ya,)), os.path.join(out_dir, "throughput.png"))
      )
  for name in os.listdir(out_dir):
    if name.endswith(".png") and os.path.join(out_dir, name) not in paths:
      os.remove(os.path.join(out_dir, name))
  return paths
