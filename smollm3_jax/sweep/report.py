"""What a sweep reports: per-cell metrics (``METRICS``), ``summary.csv``, a text table, heatmaps.

Reads finished rows only (``generations.jsonl``'s records); never runs a model.
"""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Mapping, Sequence

import numpy as np

from smollm3_jax import metrics as M
from smollm3_jax.files import atomic_write
from smollm3_jax.sweep.plan import AXES, cell_key

# name -> (column header, description); order = column order of summary.csv and the table.
METRICS = {
    "mean_tokens": ("tokens", "mean generated tokens per row (stop token included)"),
    "distinct_1": ("dist1", "mean per-row distinct-1 over words of the whole text"),
    "distinct_2": ("dist2", "mean per-row distinct-2 over words of the whole text"),
    "rep4_share": ("rep4", "mean per-row share of word 4-grams repeating an earlier one"),
    "eos_share": ("eos", "share of rows stopped by an EOS / stop token"),
    "mean_thinking_tokens": ("think_tok", "mean tokens of the thinking part"),
    "closed_think_share": ("closed", "share of rows whose text contains </think>"),
    "accuracy": ("acc", "share correct among rows whose prompt has a reference"),
    "decode_tokens_per_second": ("tok/s", "decode tokens/s of the batches holding the cell's rows"),
}




def summarize(rows: Sequence[Mapping], cells: Sequence[Mapping], prompts: Sequence[Mapping]) -> list[dict]:
  """One dict per cell: its settings, ``rows`` and every metric of :data:`METRICS` (NaN if undefined)."""
  by_id = {p["id"]: p for p in prompts}
  out = []
  for ci, cell in enumerate(cells):
    rs = [r for r in rows if r["cell_key"] == cell_key(cell)]
    ws = [M.words(r["text"]) for r in rs]
    scored = []
    for r in rs:
      p = by_id.get(r["prompt_id"], {})
      if p.get("answer_type"):
        scored.append(M.is_correct(r["answer"], p.get("reference"), p["answer_type"]))
    # tokens-weighted throughput: each row's decode time is its token share of its batch's time
    tps = [(r["num_tokens"], r["timing"]["decode_tokens_per_second"]) for r in rs
           if r["timing"]["decode_tokens_per_second"] > 0]
    tok_s = sum(n for n, _ in tps) / sum(n / v for n, v in tps) if tps else float("nan")
    out.append(dict(
        cell=ci, cell_key=cell_key(cell), **cell, rows=len(rs),
        mean_tokens=M.mean(r["num_tokens"] for r in rs),
        distinct_1=M.mean(M.distinct_n(w, 1) for w in ws),
        distinct_2=M.mean(M.distinct_n(w, 2) for w in ws),
        rep4_share=M.mean(M.repeated_ngram_share(w, 4) for w in ws),
        eos_share=M.mean(float(r["stop_reason"] == "eos") for r in rs),
        mean_thinking_tokens=M.mean(r.get("thinking_tokens", 0) for r in rs),
        closed_think_share=M.mean(float(r["closed_think"]) for r in rs),
        accuracy=M.mean(float(s) for s in scored if s is not None),
        scored=len(scored),
        decode_tokens_per_second=tok_s))
  return out


def _fmt(v) -> str:
  if isinstance(v, bool):
    return "on" if v else "off"
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
  return str(v)


def summary_csv(summary: Sequence[Mapping]) -> str:
  cols = ["cell", "cell_key", *AXES, "rows", *METRICS, "scored"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for s in summary:
    w.writerow({k: ("" if isinstance(s[k], float) and math.isnan(s[k]) else s[k]) for k in cols})
  return buf.getvalue()


def format_table(summary: Sequence[Mapping]) -> str:
  """A fixed-width text table: the swept axes (those with >1 value) then every metric."""
  axes = [a for a in AXES if len({s[a] for s in summary}) > 1] or ["temperature"]
  short = {"thinking": "think", "temperature": "temp", "repetition_penalty": "rep_pen"}
  head = [short.get(a, a) for a in axes] + ["rows"] + [METRICS[m][0] for m in METRICS]
  body = [[_fmt(s[a]) for a in axes] + [str(s["rows"])] + [_fmt(s[m]) for m in METRICS] for s in summary]
  widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
  lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
  lines.append("  ".join("-" * w for w in widths))
  lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
  return "\n".join(lines)


def plot_heatmaps(summary: Sequence[Mapping], out_dir: str) -> list[str]:
  """One PNG per metric (per combination of the other swept axes): temperature (rows) x repetition
  penalty (columns), one panel per thinking mode. Returns the written paths."""
  # A Figure with its own Agg canvas: pyplot (and the caller's backend) is never touched.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  os.makedirs(out_dir, exist_ok=True)
  temps = sorted({s["temperature"] for s in summary})
  pens = sorted({s["repetition_penalty"] for s in summary})
  modes = sorted({s["thinking"] for s in summary})
  others = ("top_p", "top_k", "min_p")
  combos = sorted({tuple(s[o] for o in others) for s in summary})
  paths = []
  for combo in combos:
    sub = [s for s in summary if tuple(s[o] for o in others) == combo]
    suffix = "" if len(combos) == 1 else "__" + "_".join(f"{o}={v:g}" for o, v in zip(others, combo))
    for metric, (header, desc) in METRICS.items():
      fig = Figure(figsize=(1.2 + 1.6 * len(pens) * len(modes), 1.4 + 0.8 * len(temps)), layout="constrained")
      FigureCanvasAgg(fig)
      axes = fig.subplots(1, len(modes), squeeze=False)
      vals = np.array([s[metric] for s in sub], float)
      finite = vals[np.isfinite(vals)]
      vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
      if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
      for ax, mode in zip(axes[0], modes):
        grid = np.full((len(temps), len(pens)), np.nan)
        for s in sub:
          if s["thinking"] == mode:
            grid[temps.index(s["temperature"]), pens.index(s["repetition_penalty"])] = s[metric]
        im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        for i in range(len(temps)):
          for j in range(len(pens)):
            v = grid[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.3g}", ha="center", va="center",
                    color="white" if np.isnan(v) or v < (vmin + vmax) / 2 else "black", fontsize=8)
        ax.set_xticks(range(len(pens)), [f"{p:g}" for p in pens])
        ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set_xlabel("repetition penalty")
        ax.set_ylabel("temperature")
        ax.set_title(f"thinking {'on' if mode else 'off'}")
      fig.colorbar(im, ax=list(axes[0]), shrink=0.9)
      title = f"{metric}: {desc}"
      if suffix:
        title += f"\n({', '.join(f'{o}={v:g}' for o, v in zip(others, combo))})"
      fig.suptitle(title, fontsize=9)
      path = os.path.join(out_dir, f"{metric}{suffix}.png")
      buf = io.BytesIO()
      fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
      atomic_write(path, buf.getvalue())
      paths.append(path)
  return paths
