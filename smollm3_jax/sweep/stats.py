"""A sweep's statistics: per-cell metrics of the finished rows with seeded bootstrap intervals, pass@k,
majority vote and self-BLEU (:func:`summarize`), and the summary as ``summary.csv`` and a text table.

Reads finished rows only (``generations.jsonl``'s records); never runs a model. The per-row measures,
the correctness checks and the bootstrap itself are :mod:`smollm3_jax.evaluation.metrics`'; the figures
are :mod:`smollm3_jax.sweep.plots`'.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Callable, Mapping, Sequence

from smollm3_jax.evaluation import metrics as M
from smollm3_jax.sweep.plan import AXES, cell_key, run_cell, swept_axes

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
  "decode_tokens_per_second": ("tok/s", "decode tokens/s of the rows' batches / slots (the machine, not the setting)"),
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


def counted(s: Mapping, metric: str) -> int:
  """The rows a cell's ``metric`` was computed from: the scored rows for correctness metrics
  (accuracy, majority, pass@k; open prompts have no reference), all its rows otherwise."""
  if metric in ("accuracy", "majority_accuracy") or metric.startswith("pass_at_"):
    return int(s.get("scored", 0))
  return int(s["rows"])


def pass_ks(samples: int) -> list[int]:
  """The k of the pass@k columns for ``samples`` samples per cell: powers of two below it and itself
  (none for one sample)."""
  if samples < 2:
    return []
  return sorted({2**i for i in range(samples.bit_length()) if 2**i < samples} | {samples})


def metric_names(summary: Sequence[Mapping]) -> list[str]:
  """The quality metrics present in ``summary`` (``METRICS`` then any ``pass_at_<k>``), in order."""
  keys = set(summary[0]) if summary else set()
  passes = sorted(
    (k for k in keys if k.startswith("pass_at_") and not k.endswith(("_lo", "_hi"))),
    key=lambda k: int(k.rsplit("_", 1)[1]),
  )
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


def _group_stats(
  rs: Sequence[Mapping], by_id: Mapping, *, greedy: bool, ks: Sequence[int], bleu: bool, boot: Mapping
) -> dict:
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
  scored = {
    pid: [M.is_correct(r["answer"], p.get("reference"), p["answer_type"]) for r in by_prompt[pid]]
    for pid, p in refs.items()
    if p.get("answer_type") and p.get("reference") is not None
  }
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
  out["decode_tokens_per_second"] = sum(n for n, _ in tps) / sum(n / v for n, v in tps) if tps else float("nan")
  return out


def summarize(
  rows: Sequence[Mapping],
  cells: Sequence[Mapping],
  prompts: Sequence[Mapping],
  *,
  samples: int = 1,
  resamples: int = 1000,
  level: float = 0.95,
  seed: int = 0,
  thinking_mode: bool = True,
  log: Callable[[str], None] = lambda s: None,
) -> list[dict]:
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
      cache[rk] = _group_stats(
        by_key.get(rk, []), by_id, greedy=cell["temperature"] == 0.0, ks=ks, bleu=bleu, boot=boot
      )
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


def is_finite(v) -> bool:
  """Whether ``v`` is a finite number (not a bool, None or NaN)."""
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summary_columns(summary: Sequence[Mapping]) -> list[str]:
  """summary.csv's columns: cell, key, the axes, counts, each metric with its interval, throughput."""
  axes = [a for a in AXES if not summary or a in summary[0]]
  cols = ["cell", "cell_key", "run_key", *axes, "rows", "prompts", "scored"]
  for m in metric_names(summary) if summary else METRICS:
    cols += [m, f"{m}_lo", f"{m}_hi"]
  return cols + list(THROUGHPUT)


def summary_csv(summary: Sequence[Mapping]) -> str:
  """summary.csv's text: one line per cell, :func:`summary_columns` (NaN as an empty field)."""
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
  metrics = [m for m in metric_names(summary) if any(is_finite(s.get(m)) for s in summary)]
  head = (
    [short.get(a, a) for a in axes]
    + ["rows"]
    + [describe(m)[0] for m in metrics]
    + ["|"]
    + [THROUGHPUT[t][0] for t in THROUGHPUT]
  )
  body = [
    [_fmt(s[a]) for a in axes]
    + [str(s["rows"])]
    + [_fmt(s[m]) for m in metrics]
    + ["|"]
    + [_fmt(s.get(t, float("nan"))) for t in THROUGHPUT]
    for s in summary
  ]
  widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
  lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
  lines.append("  ".join("-" * w for w in widths))
  lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
  return "\n".join(lines)
