"""Runs (or resumes) a sweep: plan, lock the workdir, run the missing rows in fixed-shape batches,
write the summary and plots.

Rows run in batches of one fixed size through one :class:`~smollm3_jax.engine.Engine` whose
prompt and cache buckets are fixed for the whole sweep, so prefill compiles once and decode once per
read window its rows reach.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Mapping

import numpy as np

from smollm3_jax import metrics as M
from smollm3_jax.checkpoints.spec import load_model_and_tokenizer
from smollm3_jax.sweep.plan import expand_grid, load_prompts, make_rows, prompts_hash, to_plain, validate_config
from smollm3_jax.sweep.report import format_table, plot_heatmaps, summarize, summary_csv
from smollm3_jax.sweep.store import ResultsFile, Workdir, check_rows, provenance
from smollm3_jax.thinking import has_closed_thinking, prompt_opens_thinking

@dataclasses.dataclass
class SweepOutcome:
  workdir: str
  total_rows: int
  skipped_rows: int   # already finished before this run
  new_rows: int
  batches: int
  summary: list[dict]
  plots: list[str]
  table: str


def _render(tokenizer, prompts, cells, chat: bool, date: str) -> dict[tuple[str, bool], list[int]]:
  """Token ids of every (prompt id, thinking) pair used by the grid, rendered on chat day ``date``."""
  from smollm3_jax.api import render_prompts

  out = {}
  for think in sorted({c["thinking"] for c in cells}):
    _, ids = render_prompts(tokenizer, [p["prompt"] for p in prompts], chat=chat, thinking=think, date=date)
    for p, i in zip(prompts, ids):
      out[(p["id"], think)] = i
  return out


def _score(row: Mapping, prompt: Mapping) -> dict:
  answer_type = prompt.get("answer_type")
  correct = M.is_correct(row["answer"], prompt.get("reference"), answer_type) if answer_type else None
  extracted = M.extract_number(row["answer"]) if answer_type == "numeric" else None
  return dict(correct=correct, extracted=extracted)


def run_sweep(config, workdir: str, *, model=None, tokenizer=None, progress: bool | None = None,
              log: Callable[[str], None] = print, max_batches: int | None = None) -> SweepOutcome:
  """Runs (or resumes) a sweep in ``workdir`` and writes its summary and plots.

  ``config``: a ConfigDict / dict as made by configs/sweep.py. ``model``/``tokenizer``: preloaded
  ones (else built from ``config.model``). ``max_batches``: stop after that many batches (tests).
  The workdir is locked for the whole run (a second run on it raises ``files.LockedError``).
  """
  cfg = to_plain(config)
  validate_config(cfg)
  pcfg = cfg.get("prompts", {})
  if not pcfg.get("path"):
    raise ValueError("prompts.path: no prompt set given")
  prompts = load_prompts(pcfg["path"], limit=pcfg.get("limit", 0), kinds=pcfg.get("kinds", ()),
                         ids=pcfg.get("ids", ()))
  cells = expand_grid(cfg["sweep"])
  rows = make_rows(prompts, cells, samples=cfg["samples"], seed=cfg.get("seed", 0))
  with Workdir(workdir) as wd:
    return _run_locked(wd, cfg, prompts, cells, rows, model, tokenizer, progress, log, max_batches)


def _run_locked(wd, cfg, prompts, cells, rows, model, tokenizer, progress, log, max_batches) -> SweepOutcome:
  workdir, results = wd.path, wd.results
  cfg = wd.open(cfg, prompts_hash(prompts))  # the stored chat date on a resume
  done = results.load()
  _report_corrupt(results, log)
  check_rows(done, rows, cfg["max_new_tokens"])
  wanted = {r["key"] for r in rows}
  todo = [r for r in rows if r["key"] not in done]
  skipped = len(rows) - len(todo)
  log(f"sweep: {len(cells)} cells x {len(prompts)} prompts -> {len(rows)} rows "
      f"({skipped} already done, {len(todo)} to run) in {workdir}")

  batches = 0
  if todo:
    if model is None or tokenizer is None:
      t0 = time.perf_counter()
      model, tokenizer = load_model_and_tokenizer(cfg["model"], mesh=cfg.get("mesh", ""))
      log(f"loaded model {cfg['model'].get('name', '')!r} in {time.perf_counter() - t0:.1f}s")
    wd.add_run(provenance(str(np.dtype(model.dtype)) if hasattr(model, "dtype") else None))
    batches = _run_rows(model, tokenizer, cfg, prompts, cells, todo, results, progress, log, max_batches)

  done = results.load()
  finished = [done[r["key"]] for r in rows if r["key"] in done]
  extra = len(set(done) - wanted)
  if extra:
    log(f"note: {extra} rows in generations.jsonl are not part of this grid; ignored")
  summary = summarize(finished, cells, prompts)
  wd.write("summary.csv", summary_csv(summary))
  table = format_table(summary)
  plots = []
  if cfg.get("plots", True) and finished:
    plots = plot_heatmaps(summary, os.path.join(workdir, "plots"))
  return SweepOutcome(workdir=workdir, total_rows=len(rows), skipped_rows=skipped,
                      new_rows=len(finished) - skipped, batches=batches, summary=summary, plots=plots,
                      table=table)


def _run_rows(model, tokenizer, cfg, prompts, cells, todo, results, progress, log, max_batches) -> int:
  from smollm3_jax.api import generate
  from smollm3_jax.engine import get_engine

  chat = cfg.get("chat", True)
  by_id = {p["id"]: p for p in prompts}
  ids = _render(tokenizer, prompts, cells, chat, cfg["date"])
  max_new = cfg["max_new_tokens"]
  batch = cfg["batch_size"]
  # One prompt bucket and one cache length for the whole sweep: every batch has the same shapes.
  p_len = max(len(v) for v in ids.values())
  context = model.config.max_position_embeddings
  if p_len + max_new > context:
    raise ValueError(f"max_new_tokens {max_new} + the longest prompt ({p_len} tokens) exceed the "
                     f"model's context of {context} tokens")
  # (the package's engine cache: a resumed sweep of the same model and shapes does not recompile)
  engine = get_engine(model, tokenizer, buckets=(p_len, p_len + max_new - 1), batch_buckets=(batch,))
  nl = cfg.get("newline_limit", 0) or None

  bar = None
  if progress is None:
    progress = cfg.get("progress", True)
  total = len(todo)
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="row", desc="sweep", dynamic_ncols=True, smoothing=0.1)
  n_batches = 0
  try:
    for start in range(0, total, batch):
      if max_batches is not None and n_batches >= max_batches:
        break
      chunk = todo[start:start + batch]
      sets = [r["settings"] for r in chunk]
      t0 = time.perf_counter()
      res = generate(
          model, tokenizer, [ids[(r["prompt_id"], s["thinking"])] for r, s in zip(chunk, sets)], chat=chat,
          thinking=[s["thinking"] for s in sets], temperature=[s["temperature"] for s in sets],
          top_k=[s["top_k"] for s in sets], top_p=[s["top_p"] for s in sets],
          min_p=[s["min_p"] for s in sets], repetition_penalty=[s["repetition_penalty"] for s in sets],
          seed=[r["seed"] for r in chunk], max_new_tokens=max_new, newline_limit=nl, engine=engine,
          date=cfg["date"])
      wall = time.perf_counter() - t0
      st = res.stats
      out = []
      for r, c in zip(chunk, res.completions):
        row = dict(r, settings=dict(r["settings"], max_new_tokens=max_new))
        row.update(
            prompt=by_id[r["prompt_id"]]["prompt"], kind=by_id[r["prompt_id"]]["kind"],
            text=c.text, thinking=c.thinking, answer=c.answer,
            num_tokens=len(c.token_ids), thinking_tokens=len(tokenizer.encode(c.thinking)) if c.thinking else 0,
            closed_think=has_closed_thinking(c.text, inside=prompt_opens_thinking(c.prompt)), stop_reason=c.stop_reason,
            prompt_tokens=len(c.prompt_token_ids), token_ids=c.token_ids,
            timing=dict(batch=n_batches, batch_rows=len(chunk), batch_size=st.batch_size,
                        wall_seconds=wall, compile_seconds=st.compile_seconds,
                        prefill_seconds=st.prefill_seconds, decode_seconds=st.decode_seconds,
                        decode_tokens_per_second=st.decode_tokens_per_second))
        row.update(_score(row, by_id[r["prompt_id"]]))
        out.append(row)
      results.append(out)
      n_batches += 1
      if bar is not None:
        bar.update(len(chunk))
        bar.set_postfix_str(f"{st.decode_tokens_per_second:.0f} tok/s", refresh=False)
  finally:
    if bar is not None:
      bar.close()
  return n_batches




def _report_corrupt(results: ResultsFile, log) -> None:
  if results.corrupt:
    lines = ", ".join(map(str, results.corrupt[:10])) + (" ..." if len(results.corrupt) > 10 else "")
    log(f"warning: {len(results.corrupt)} corrupt lines in {results.path} (line {lines}) are not "
        f"rows; their rows (if any) run again")
