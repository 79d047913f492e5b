"""Plots follow the sweep's axes: a temperature x min_p sweep gets one heatmap per metric with both
axes and one colour scale; line plots with interval bars; figures drawn without pyplot."""

from __future__ import annotations

import os
import re
import sys

import numpy as np
import pytest
from _helpers import ROOT, tiny_sweep_config
from test_sweep import tiny  # noqa: F401  (the tiny random model and the saved demo tokenizer)

from smollm3_jax import sweep

PYPLOT_IMPORT = re.compile(
  r"^\s*(import matplotlib\.pyplot|from matplotlib(\.pyplot)? import .*pyplot|"
  r"from matplotlib\.pyplot import)",
  re.MULTILINE,
)
T_X_MINP = {
  "sweep.temperature": (0.0, 0.7, 1.0),
  "sweep.min_p": (0.0, 0.05, 0.1),
  "sweep.repetition_penalty": (1.0,),
  "sweep.top_p": (1.0,),
}


def _refuse_backend_changes(mp: pytest.MonkeyPatch) -> None:
  import matplotlib

  def refuse(*args, **kwargs):
    raise AssertionError("matplotlib.use called by the library")

  mp.setattr(matplotlib, "use", refuse)
  mp.setitem(sys.modules, "matplotlib.pyplot", None)  # importing pyplot now fails


@pytest.fixture(scope="module")
def t_x_minp(tiny, tmp_path_factory):  # noqa: F811
  """A finished tiny temperature x min_p x thinking sweep, run (and plotted) with ``matplotlib.use``
  and pyplot unavailable: (workdir, outcome)."""
  model, tokenizer, tok_dir = tiny
  workdir = tmp_path_factory.mktemp("t_x_minp")
  with pytest.MonkeyPatch.context() as mp:
    _refuse_backend_changes(mp)
    out = sweep.run_sweep(
      tiny_sweep_config(tok_dir, **T_X_MINP), str(workdir), model=model, tokenizer=tokenizer, log=lambda s: None
    )
  return workdir, out


def _panels(fig):
  return [ax for ax in fig.axes if ax.images]


def _colorbars(fig):
  return [ax for ax in fig.axes if not ax.images and ax.get_label() == "<colorbar>"]


def test_a_temperature_x_min_p_sweep_gets_one_heatmap_per_metric(t_x_minp):
  workdir, out = t_x_minp
  # 2 thinking modes x (1 greedy run shared by the 3 min_p values + 2 temperatures x 3 min_p) x 3 prompts
  assert out.total_rows == 2 * 7 * 3 and len(out.summary) == 18
  names = sorted(os.listdir(workdir / "plots"))
  metrics = [m for m in sweep.metric_names(out.summary) if any(np.isfinite(s[m]) for s in out.summary)]
  assert "accuracy" in metrics and "mean_tokens" in metrics
  # plotted: every metric that takes two values or more over the cells (a constant makes no plot)
  varying = [m for m in metrics if len({s[m] for s in out.summary if np.isfinite(s[m])}) > 1]
  assert varying and len(varying) < len(metrics)  # (the tiny model's token counts are all the budget)
  assert names == sorted([f"{m}.png" for m in varying] + [f"{m}.lines.png" for m in varying] + ["throughput.png"])
  for metric in metrics + ["decode_tokens_per_second"]:
    fig = sweep.heatmap_figure(out.summary, metric)
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["thinking=off", "thinking=on"], metric
    for ax in panels:
      assert (ax.get_ylabel(), ax.get_xlabel()) == ("temperature", "min_p")
      assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "0.7", "1"]
      assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.05", "0.1"]
      assert ax.images[0].get_array().shape == (3, 3)
    # one colour scale: the same limits on every panel, spanning every cell, one labelled colour bar
    limits = {(ax.images[0].norm.vmin, ax.images[0].norm.vmax) for ax in panels}
    values = np.array([s[metric] for s in out.summary], float)
    values = values[np.isfinite(values)]
    assert len(limits) == 1
    lo, hi = limits.pop()
    (bar,) = _colorbars(fig)
    assert metric in bar.get_ylabel()
    if metric in sweep.UNIT_RANGE:  # shares: one fixed scale, said on the bar
      assert (lo, hi) == (0.0, 1.0) and "fixed scale 0 to 1" in bar.get_ylabel()
    elif values.min() < values.max():
      assert (lo, hi) == pytest.approx((values.min(), values.max()))
      assert f"{values.min():.3g} to {values.max():.3g}" in bar.get_ylabel()
    else:
      assert f"one value, {values.min():.3g}" in bar.get_ylabel()
    # each square shows the rows its value was computed from: all 3 rows, or the scored ones
    notes = [t.get_text() for ax in panels for t in ax.texts]
    n = {s["scored"] for s in out.summary} if metric == "accuracy" else {3}
    (count,) = n
    assert sum(f"n={count}" in t for t in notes) == 18


def test_line_plot_of_a_metric_against_one_axis_per_value_of_another(t_x_minp):
  _, out = t_x_minp
  fig = sweep.line_figure(out.summary, "distinct_1", "temperature", "min_p")
  panels = [ax for ax in fig.axes if ax.lines]
  assert [ax.get_title() for ax in panels] == ["thinking=off", "thinking=on"]
  for ax, mode in zip(panels, (False, True)):
    handles, labels = ax.get_legend_handles_labels()
    assert labels == ["min_p=0", "min_p=0.05", "min_p=0.1"]
    assert ax.get_xlabel() == "temperature"
    for (line, caps, (bars,)), m in zip(ax.containers, (0.0, 0.05, 0.1)):
      cells = sorted(
        (s for s in out.summary if s["thinking"] == mode and s["min_p"] == m), key=lambda s: s["temperature"]
      )
      assert line.get_ydata() == pytest.approx([s["distinct_1"] for s in cells])
      # the error bar of each point spans the cell's bootstrap interval
      spans = [v for seg in bars.get_segments() for v in seg[:, 1]]
      assert spans == pytest.approx([v for s in cells for v in (s["distinct_1_lo"], s["distinct_1_hi"])])


def test_plot_axes_chosen_by_the_config_or_by_value_counts(t_x_minp):
  _, out = t_x_minp
  assert sweep.plot_pair(out.summary) == ("temperature", "min_p")  # 3 values each: AXES order
  two_minp = [s for s in out.summary if s["min_p"] != 0.1]  # min_p and thinking with 2 values each
  assert sweep.plot_pair(two_minp) == ("temperature", "min_p")  # thinking makes the panels
  assert sweep.plot_pair(out.summary, ("min_p", "thinking")) == ("min_p", "thinking")
  assert sweep.plot_pair(out.summary, ("thinking",)) == ("thinking", "temperature")
  fig = sweep.heatmap_figure(out.summary, "accuracy", ("min_p", "thinking"))
  panels = _panels(fig)
  assert [ax.get_title() for ax in panels] == ["temperature=0", "temperature=0.7", "temperature=1"]
  assert {(ax.get_ylabel(), ax.get_xlabel()) for ax in panels} == {("min_p", "thinking")}
  with pytest.raises(ValueError, match="plot_axes"):
    sweep.plot_pair(out.summary, ("temprature",))


def test_figures_never_touch_pyplot_or_the_backend(t_x_minp):
  # the sweep above drew its plots with matplotlib.use and pyplot refused
  workdir, out = t_x_minp
  assert out.plots and all(os.path.isfile(p) for p in out.plots)
  # and no source file of the library calls matplotlib.use or imports pyplot
  for folder, _, files in os.walk(os.path.join(ROOT, "smollm3_jax")):
    for name in files:
      if name.endswith(".py"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          text = f.read()
        assert "matplotlib.use(" not in text and not PYPLOT_IMPORT.search(text), name


def test_constant_metrics_are_not_plotted_and_counts_are_of_scored_rows(tmp_path):
  """A metric with one value over the cells gets no plot; a cell's n= is the rows its value used."""
  off = {
    a.name: a.off
    if a.off is not None
    else {"thinking": False, "repetition_penalty": 1.0, "top_p": 1.0}.get(a.name, 0.0)
    for a in sweep.SWEEP_AXES
  }
  cells = [
    dict(
      off,
      cell=i,
      cell_key=f"c{i}",
      run_key=f"c{i}",
      temperature=t,
      rows=6,
      prompts=3,
      scored=2,
      mean_tokens=10.0 + i,
      mean_thinking_tokens=0.0,
      accuracy=0.5 * i,
      decode_tokens_per_second=80.0 - i,
    )
    for i, t in enumerate((0.0, 1.0))
  ]
  for s in cells:
    s.update({f"{m}_lo": np.nan for m in ("mean_tokens", "mean_thinking_tokens", "accuracy")})
    s.update({f"{m}_hi": np.nan for m in ("mean_tokens", "mean_thinking_tokens", "accuracy")})
  paths = sweep.plot_heatmaps(cells, str(tmp_path))
  assert sorted(os.path.basename(p) for p in paths) == [
    "accuracy.lines.png",
    "accuracy.png",
    "mean_tokens.lines.png",
    "mean_tokens.png",
    "throughput.png",
  ]
  notes = [t.get_text() for ax in _panels(sweep.heatmap_figure(cells, "accuracy")) for t in ax.texts]
  assert notes == ["0\nn=2", "0.5\nn=2"]
  notes = [t.get_text() for ax in _panels(sweep.heatmap_figure(cells, "mean_tokens")) for t in ax.texts]
  assert notes == ["10\nn=6", "11\nn=6"]
  (bar,) = _colorbars(sweep.heatmap_figure(cells, "decode_tokens_per_second"))
  assert "79 to 80" in bar.get_ylabel()
