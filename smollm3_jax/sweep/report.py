"""What a sweep reports: per-cell metrics with bootstrap intervals, ``summary.csv``, a text table,
heatmaps and line plots that follow the grid's axes, and :func:`load` (pandas DataFrames).

Reads finished rows only (``generations.jsonl``'s records); never runs a model. Figures are drawn
on their own Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``): pyplot and the
caller's backend are never touched.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from smollm3_jax.evaluation import metrics as M
from smollm3_jax.utils.files import atomic_write
from smollm3_jax.sweep.plan import AXES, SAMPLING_AXES, cell_key, run_cell, swept_axes

# Quality metrics: name -> (short header, description); order = column order of summary.csv and the
# table. Each has a 95 % bootstrap interval (``<name>_lo``, ``<name>_hi``).
METRICS = {
    "mean_tokens": ("tokens", "mean generated tokens per row (stop token included)"),
    "distinct_1": ("dist1", "mean per-row distinct-1 over words of the whole text"),
    "distinct_2": ("dist2", "mean per-row distinct-2 over words of the whole text"),
    "rep4_share": ("rep4", "mean per-row share of word 4-grams repeating an earlier one"),
    "eos_share": ("eos", "share of rows stopped by an EOS / stop token"),
    "mean_thinking_tokens": ("think_tok", "mean tokens of the thinking part"),
    "closed_think_share": ("closed", "share of rows whose text contains </think>"),
    "accuracy": ("acc", "share correct among rows whose prompt has a reference"),
    "majority_accuracy": ("maj", "self-consistency: share of prompts whose majority answer is correct"),
    "self_bleu": ("sbleu", "self-BLEU (0-100) of a prompt's samples, mean over prompts (higher = alike)"),
    "mean_logprob": ("logp", "mean raw log-probability (nats) of the generated tokens (record_logprobs)"),
    "mean_entropy": ("ent", "mean entropy (nats) of the raw next-token distribution (record_logprobs)"),
}
# Per-prompt pass@k columns (``pass_at_<k>``) join these when samples > 1; see :func:`pass_ks`.
# The machine's speed, reported apart from the quality metrics (it measures the batch, not the setting).
THROUGHPUT = {
    "decode_tokens_per_second": ("tok/s", "decode tokens/s of the rows' batches / slots (the machine, "
                                          "not the setting)"),
}

# Per-row values of the row metrics (None = the row does not count, e.g. an open prompt's accuracy).
_ROW_VALUES: dict[str, Callable[[Mapping, list], float | None]] = {
    "mean_tokens": lambda r, w: r["num_tokens"],
    "distinct_1": lambda r, w: M.distinct_n(w, 1),
    "distinct_2": lambda r, w: M.distinct_n(w, 2),
    "rep4_share": lambda r, w: M.repeated_ngram_share(w, 4),
    "eos_share": lambda r, w: float(r["stop_reason"] == "eos"),
    "mean_thinking_tokens": lambda r, w: r.get("thinking_tokens", 0),
    "closed_think_share": lambda r, w: float(r["closed_think"]),
    "mean_logprob": lambda r, w: r.get("mean_logprob"),
    "mean_entropy": lambda r, w: r.get("mean_entropy"),
}


# Metrics that are shares or rates in [0, 1] (pass@k too): their colour scale is fixed at 0-1, so a
# colour means the same value in every plot; the others span their cells' range (said on the bar).
UNIT_RANGE = ("distinct_1", "distinct_2", "rep4_share", "eos_share", "closed_think_share", "accuracy",
              "majority_accuracy")


def _unit_range(metric: str) -> bool:
  return metric in UNIT_RANGE or metric.startswith("pass_at_")


def counted(s: Mapping, metric: str) -> int:
  """The rows a cell's ``metric`` was computed from: the scored rows for correctness metrics
  (accuracy, majority, pass@k; open prompts have no reference), all its rows otherwise."""
  if metric in ("accuracy", "majority_accuracy") or metric.startswith("pass_at_"):
    return int(s.get("scored", 0))
  return int(s["rows"])


def varies(summary: Sequence[Mapping], metric: str) -> bool:
  """Whether ``metric`` takes at least two finite values over the cells (a constant is not plotted:
  its colour bar would span nothing)."""
  vals = {float(s[metric]) for s in summary if _finite(s.get(metric))}
  return len(vals) > 1


def pass_ks(samples: int) -> list[int]:
  """The k of the pass@k columns for ``samples`` samples per cell: powers of two below it and itself
  (none for one sample)."""
  if samples < 2:
    return []
  return sorted({2 ** i for i in range(samples.bit_length()) if 2 ** i < samples} | {samples})


def metric_names(summary: Sequence[Mapping]) -> list[str]:
  """The quality metrics present in ``summary`` (``METRICS`` then any ``pass_at_<k>``), in order."""
  keys = set(summary[0]) if summary else set()
  passes = sorted((k for k in keys if k.startswith("pass_at_") and not k.endswith(("_lo", "_hi"))),
                  key=lambda k: int(k.rsplit("_", 1)[1]))
  return [m for m in METRICS if m in keys] + passes


def describe(metric: str) -> tuple[str, str]:
  """(short header, description) of any summary metric."""
  if metric in METRICS:
    return METRICS[metric]
  if metric in THROUGHPUT:
    return THROUGHPUT[metric]
  if metric.startswith("pass_at_"):
    k = metric.rsplit("_", 1)[1]
    return f"pass@{k}", f"unbiased pass@{k} (Chen et al. 2021) over prompts with a reference"
  return metric, metric


# --------------------------------------------------------------------------------------------
# Per-cell statistics
# --------------------------------------------------------------------------------------------
def _self_bleu_available(log) -> bool:
  try:
    import sacrebleu  # noqa: F401
    return True
  except ImportError:
    log("note: sacrebleu is not installed (pip install 'smollm3-jax[eval]'): self_bleu is left empty")
    return False


def _group_stats(rs: Sequence[Mapping], by_id: Mapping, *, greedy: bool, ks: Sequence[int],
                 bleu: bool, boot: Mapping) -> dict:
  """Metrics, intervals and counts of the rows of one run key (one cell, or greedy cells sharing rows).

  Rows are grouped by prompt in the prompt set's order, then by sample: the bootstrap draws do not
  depend on the order rows were finished and written in."""
  order = {pid: i for i, pid in enumerate(by_id)}
  by_prompt: dict[str, list[Mapping]] = {}
  for r in sorted(rs, key=lambda r: (order.get(r["prompt_id"], len(order)), r["prompt_id"], r.get("sample", 0))):
    by_prompt.setdefault(r["prompt_id"], []).append(r)
  out: dict = dict(rows=len(rs), prompts=len(by_prompt))

  def put(name, groups, point):
    out[name] = point
    out[name + "_lo"], out[name + "_hi"] = M.bootstrap_interval(groups, **boot)

  words = {id(r): M.words(r["text"]) for r in rs}
  for name, fn in _ROW_VALUES.items():
    groups = [[fn(r, words[id(r)]) for r in g] for g in by_prompt.values()]
    put(name, groups, M.mean(v for g in groups for v in g))

  # Correctness per row of prompts with a reference.
  refs = {pid: by_id.get(pid, {}) for pid in by_prompt}
  scored = {pid: [M.is_correct(r["answer"], p.get("reference"), p["answer_type"]) for r in by_prompt[pid]]
            for pid, p in refs.items() if p.get("answer_type") and p.get("reference") is not None}
  scored = {pid: v for pid, v in scored.items() if all(c is not None for c in v)}
  groups = [[float(c) for c in v] for v in scored.values()]
  put("accuracy", groups, M.mean(v for g in groups for v in g))
  out["scored"] = sum(len(g) for g in groups)

  # Per-prompt statistics over samples (when the sweep draws several).
  maj, passes, sb = [], {k: [] for k in ks}, []
  if ks:
    for pid, correct in scored.items():
      if greedy:  # every sample of a greedy cell is the same text: the one row stands for all
        maj.append(float(correct[0]))
        for k in ks:
          passes[k].append(float(correct[0]))
        continue
      p = refs[pid]
      pick = M.majority_vote([r["answer"] for r in by_prompt[pid]], p["answer_type"])
      maj.append(0.0 if pick is None else float(correct[pick]))
      n, c = len(correct), sum(correct)
      for k in ks:
        if n >= k:
          passes[k].append(M.pass_at_k(n, c, k))
    if bleu and not greedy:
      sb = [M.self_bleu([r["text"] for r in g]) for g in by_prompt.values() if len(g) > 1]
  put("majority_accuracy", [[v] for v in maj], M.mean(maj))
  put("self_bleu", [[v] for v in sb], M.mean(sb))
  for k in ks:
    put(f"pass_at_{k}", [[v] for v in passes[k]], M.mean(passes[k]))

  # Tokens-weighted throughput: sum(tokens) / sum(tokens / rate) = tokens over decode time.
  tps = [(r["num_tokens"], (r.get("timing") or {}).get("decode_tokens_per_second") or 0.0) for r in rs]
  tps = [(n, v) for n, v in tps if v > 0]
  out["decode_tokens_per_second"] = (sum(n for n, _ in tps) / sum(n / v for n, v in tps)
                                     if tps else float("nan"))
  return out


def summarize(rows: Sequence[Mapping], cells: Sequence[Mapping], prompts: Sequence[Mapping], *,
              samples: int = 1, resamples: int = 1000, level: float = 0.95, seed: int = 0,
              thinking_mode: bool = True, log: Callable[[str], None] = lambda s: None) -> list[dict]:
  """One dict per cell: its settings, ``cell_key``, ``run_key`` (the ``cell_key`` of the rows it reads),
  ``rows``, ``prompts``, ``scored`` (rows scored for accuracy), every metric of
  :data:`METRICS` with its bootstrap interval (``_lo``, ``_hi``; NaN if undefined), ``pass_at_<k>``
  for k in :func:`pass_ks` (``samples``), and ``decode_tokens_per_second``.

  A cell's rows are those of its run key (:func:`~smollm3_jax.sweep.plan.run_cell`): greedy cells
  that differ only in top-p / top-k / min-p share one set of rows, and so do cells differing only in
  thinking when ``thinking_mode`` is False (a checkpoint without a thinking mode). Intervals: seeded 95 % (``level``)
  percentile bootstrap over prompts and their samples (:func:`smollm3_jax.evaluation.metrics.bootstrap_interval`,
  ``resamples`` draws, the same ``seed`` for every cell and metric).
  """
  by_id = {p["id"]: p for p in prompts}
  by_key: dict[str, list[Mapping]] = {}
  for r in rows:
    by_key.setdefault(r["cell_key"], []).append(r)
  ks = pass_ks(samples)
  bleu = samples > 1 and _self_bleu_available(log)
  boot = dict(resamples=resamples, level=level, seed=seed)
  cache: dict[str, dict] = {}
  out = []
  for ci, cell in enumerate(cells):
    rk = cell_key(run_cell(cell, thinking_mode=thinking_mode))
    if rk not in cache:
      cache[rk] = _group_stats(by_key.get(rk, []), by_id, greedy=cell["temperature"] == 0.0, ks=ks,
                               bleu=bleu, boot=boot)
    out.append(dict(cell=ci, cell_key=cell_key(cell), run_key=rk, **cell, **cache[rk]))
  return out


# --------------------------------------------------------------------------------------------
# CSV and table
# --------------------------------------------------------------------------------------------
def _fmt(v) -> str:
  if isinstance(v, bool):
    return "on" if v else "off"
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
  return str(v)


def _finite(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summary_columns(summary: Sequence[Mapping]) -> list[str]:
  """summary.csv's columns: cell, key, the axes, counts, each metric with its interval, throughput."""
  axes = [a for a in AXES if not summary or a in summary[0]]
  cols = ["cell", "cell_key", "run_key", *axes, "rows", "prompts", "scored"]
  for m in metric_names(summary) if summary else METRICS:
    cols += [m, f"{m}_lo", f"{m}_hi"]
  return cols + list(THROUGHPUT)


def summary_csv(summary: Sequence[Mapping]) -> str:
  cols = summary_columns(summary)
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for s in summary:
    w.writerow({k: ("" if isinstance(s.get(k), float) and math.isnan(s[k]) else s.get(k, "")) for k in cols})
  return buf.getvalue()


def format_table(summary: Sequence[Mapping]) -> str:
  """A fixed-width text table: the swept axes (those with >1 value), rows, every quality metric that
  has a value somewhere, then (after ``|``) the throughput."""
  axes = swept_axes(summary) or ["temperature"]
  short = {"thinking": "think", "temperature": "temp", "repetition_penalty": "rep_pen"}
  metrics = [m for m in metric_names(summary) if any(_finite(s.get(m)) for s in summary)]
  head = [short.get(a, a) for a in axes] + ["rows"] + [describe(m)[0] for m in metrics] + ["|"] + \
      [THROUGHPUT[t][0] for t in THROUGHPUT]
  body = [[_fmt(s[a]) for a in axes] + [str(s["rows"])] + [_fmt(s[m]) for m in metrics] + ["|"] +
          [_fmt(s.get(t, float("nan"))) for t in THROUGHPUT] for s in summary]
  widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
  lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
  lines.append("  ".join("-" * w for w in widths))
  lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
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
  rest = sorted((a for a in swept_axes(summary) if a not in named),
                key=lambda a: (-counts[a], a not in SAMPLING_AXES, AXES.index(a)))
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
      if _finite(v):
        lo, hi = s.get(metric + "_lo"), s.get(metric + "_hi")
        note = f"{v:.3g}"
        if _finite(lo) and _finite(hi):
          note += f"\n[{lo:.2g}, {hi:.2g}]"
        notes[y][x] = note + f"\nn={counted(s, metric)}"
      else:
        notes[y][x] = f"-\nn={counted(s, metric)}"
    im = ax.imshow(img, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
    for y in range(len(ys)):
      for x in range(len(xs)):
        v = img[y, x]
        ax.text(x, y, notes[y][x], ha="center", va="center", fontsize=7,
                color="white" if np.isnan(v) or v < (vmin + vmax) / 2 else "black")
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
      pts = sorted((s[x], s.get(metric, np.nan), s.get(metric + "_lo", np.nan), s.get(metric + "_hi", np.nan))
                   for s in sub if hue is None or s[hue] == h)
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
  fig.suptitle(f"{metric}: {desc}" + ("  (bars: bootstrap interval)" if metric + "_lo" in summary[0] else ""),
               fontsize=9)
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
    paths.append(_save(heatmap_figure(summary, metric, (ya, xa) if xa else (ya,)),
                       os.path.join(out_dir, f"{metric}.png")))
    paths.append(_save(line_figure(summary, metric, ya, xa), os.path.join(out_dir, f"{metric}.lines.png")))
  for metric in THROUGHPUT:
    if any(_finite(s.get(metric)) for s in summary):
      paths.append(_save(heatmap_figure(summary, metric, (ya, xa) if xa else (ya,)),
                         os.path.join(out_dir, "throughput.png")))
  for name in os.listdir(out_dir):
    if name.endswith(".png") and os.path.join(out_dir, name) not in paths:
      os.remove(os.path.join(out_dir, name))
  return paths


# --------------------------------------------------------------------------------------------
# DataFrames
# --------------------------------------------------------------------------------------------
def load(workdir: str):
  """``(rows, summary)``: pandas DataFrames of a sweep's ``generations.jsonl`` (one row per
  generation; ``settings`` flattened into one column per setting, ``timing`` into ``timing.<field>``;
  the thinking text is ``thinking_text``, ``thinking`` the switch)
  and ``summary.csv`` (one row per cell). Reads only: a sweep still running is not disturbed (a torn
  last line or a corrupt line is skipped). Needs pandas (the ``eval`` extra)."""
  from smollm3_jax.utils.extras import needs
  with needs("eval", "sweep.load"):
    import pandas as pd

  from smollm3_jax.sweep.store import RESULTS_FILE, SUMMARY_FILE, ResultsFile

  summary_path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.isfile(summary_path):
    raise FileNotFoundError(f"{summary_path}: no summary (run or resume the sweep in {workdir!r} to write it)")
  records = list(ResultsFile(os.path.join(workdir, RESULTS_FILE)).load(repair=False).values())
  rows = pd.json_normalize(records, sep=".") if records else pd.DataFrame()
  settings = {c: c.split(".", 1)[1] for c in rows.columns if c.startswith("settings.")}
  # A row field named like a setting (the thinking text vs the thinking switch) becomes <name>_text.
  rows = rows.rename(columns={c: f"{c}_text" for c in settings.values() if c in rows.columns})
  rows = rows.rename(columns=settings)
  return rows, pd.read_csv(summary_path)
