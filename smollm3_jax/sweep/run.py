"""Runs (or resumes) a sweep: plan, lock the workdir, run the missing rows through one slot pool
(:mod:`smollm3_jax.sweep.execute`), write the summary and plots; over several processes, only
process 0 touches the workdir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Callable

import numpy as np

from smollm3_jax.loading import load_model_and_tokenizer, load_tokenizer
from smollm3_jax.sweep.execute import run_rows, thinking_changes_prompts
from smollm3_jax.sweep.plan import expand_grid, load_prompts, make_rows, prompts_hash, validate_config
from smollm3_jax.sweep.plots import plot_heatmaps
from smollm3_jax.sweep.stats import format_table, summarize, summary_csv
from smollm3_jax.sweep.store import SUMMARY_FILE, ResultsFile, Workdir, check_rows, provenance
from smollm3_jax.utils import distributed
from smollm3_jax.utils.workdir import to_plain


@dataclasses.dataclass
class SweepOutcome:
  workdir: str
  total_rows: int
  skipped_rows: int  # already finished before this run
  new_rows: int
  batches: int
  summary: list[dict]
  plots: list[str]
  table: str


def run_sweep(
  config,
  workdir: str,
  *,
  model=None,
  tokenizer=None,
  progress: bool | None = None,
  log: Callable[[str], None] = print,
  max_batches: int | None = None,
) -> SweepOutcome:
  """Runs (or resumes) a sweep in ``workdir`` and writes its summary and plots.

  ``config``: a ConfigDict / dict as made by configs/sweep.py. ``model``/``tokenizer``: preloaded
  ones (else built from ``config.model``). ``max_batches``: stop after that many batches (tests).
  The workdir is locked for the whole run (a second run on it raises ``files.LockedError``).

  Over several processes (:mod:`smollm3_jax.utils.distributed`) every process calls this with the same
  config; only process 0 reads the prompts and reads and writes ``workdir`` (the others get the
  stored config, the prompts, the rows to run and the outcome from it), and every process runs the
  rows through the same programs.
  """
  cfg = to_plain(config)
  validate_config(cfg)
  if not distributed.is_leader():  # only process 0 reads the prompts and touches the workdir
    return _run_rows_elsewhere(model, tokenizer, max_batches)
  with contextlib.ExitStack() as stack:
    try:  # (the lock too: a locked workdir stops every process with the same error)
      prompts, cells, rows, thinking_mode, tokenizer = _grid(cfg, tokenizer, log)
      wd = stack.enter_context(Workdir(workdir))
      cfg, todo, skipped = _plan_run(wd, cfg, prompts, cells, rows, log)
    except Exception as e:  # the others stop with the same error instead of waiting for rows
      distributed.broadcast(distributed.portable(e))
      raise
    # The leader's config (its stored chat date), prompts and rows: the others read no file of the sweep.
    distributed.broadcast((cfg, prompts, todo))
    outcome = _run_locked(
      wd, cfg, prompts, cells, rows, todo, skipped, model, tokenizer, progress, log, max_batches, thinking_mode
    )
  return distributed.broadcast(outcome)


def _grid(cfg, tokenizer, log):
  """(prompts, cells, rows, thinking_mode, tokenizer) of a sweep config. With both thinking values on the grid,
  the prompts are rendered both ways (``tokenizer``, else the config's): when no prompt changes, the
  checkpoint has no thinking mode and the thinking-on cells share the thinking-off rows (said once).
  The tokenizer returned is the one given, or the one loaded for this (None when neither)."""
  pcfg = cfg.get("prompts", {})
  if not pcfg.get("path"):
    raise ValueError("prompts.path: no prompt set given")
  prompts = load_prompts(pcfg["path"], limit=pcfg.get("limit", 0), kinds=pcfg.get("kinds", ()), ids=pcfg.get("ids", ()))
  cells = expand_grid(cfg["sweep"])
  thinking_mode = True
  if len({c["thinking"] for c in cells}) > 1:
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg["model"])
    if tokenizer is not None:
      thinking_mode = thinking_changes_prompts(tokenizer, prompts, cfg.get("chat", True), cfg.get("date") or None)
    if not thinking_mode:
      log(
        "note: the chat template renders every prompt the same with thinking on and off (this checkpoint "
        "has no thinking mode): the thinking=on cells share the thinking=off rows"
      )
  rows = make_rows(prompts, cells, samples=cfg["samples"], seed=cfg.get("seed", 0), thinking_mode=thinking_mode)
  return prompts, cells, rows, thinking_mode, tokenizer


def _plan_run(wd, cfg, prompts, cells, rows, log):
  """(the stored config, the rows left to run, the rows already done) of a workdir (the leader's)."""
  results = wd.results
  cfg = wd.open(cfg, prompts_hash(prompts))  # the stored chat date on a resume
  done = results.load()
  _report_corrupt(results, log)
  check_rows(done, rows, cfg["max_new_tokens"])
  todo = [r for r in rows if r["key"] not in done]
  skipped = len(rows) - len(todo)
  log(
    f"sweep: {len(cells)} cells x {len(prompts)} prompts -> {len(rows)} rows "
    f"({skipped} already done, {len(todo)} to run) in {wd.path}"
    + (f" on {distributed.process_count()} processes" if distributed.process_count() > 1 else "")
  )
  return cfg, todo, skipped


def _run_rows_elsewhere(model, tokenizer, max_batches) -> SweepOutcome:
  """A process other than the leader: runs the leader's rows through the same programs (its devices'
  share of every batch), writes nothing, and returns the leader's outcome."""
  plan = distributed.broadcast(None)
  if isinstance(plan, Exception):
    raise plan
  cfg, prompts, todo = plan
  if todo:
    if model is None or tokenizer is None:
      model, tokenizer = load_model_and_tokenizer(cfg["model"], mesh=cfg.get("mesh", ""))
    run_rows(model, tokenizer, cfg, prompts, todo, None, progress=False, log=lambda s: None, max_batches=max_batches)
  return distributed.broadcast(None)


def _run_locked(
  wd, cfg, prompts, cells, rows, todo, skipped, model, tokenizer, progress, log, max_batches, thinking_mode
) -> SweepOutcome:
  workdir, results = wd.path, wd.results
  wanted = {r["key"] for r in rows}
  batches = 0
  if todo:
    if model is None or tokenizer is None:
      t0 = time.perf_counter()
      model, tokenizer = load_model_and_tokenizer(cfg["model"], mesh=cfg.get("mesh", ""), tokenizer=tokenizer)
      log(f"loaded model {cfg['model'].get('name', '')!r} in {time.perf_counter() - t0:.1f}s")
    wd.add_run(provenance(str(np.dtype(model.dtype)) if hasattr(model, "dtype") else None))
    batches = run_rows(
      model, tokenizer, cfg, prompts, todo, results, progress=progress, log=log, max_batches=max_batches
    )
  else:
    wd.store_pending()  # a grown grid whose rows were all done already (greedy rows shared by new cells)

  done = results.load()
  finished = [done[r["key"]] for r in rows if r["key"] in done]
  extra = len(set(done) - wanted)
  if extra:
    log(f"note: {extra} rows in generations.jsonl are not part of this grid; ignored")
  stats = cfg.get("stats", {})
  summary = summarize(
    finished,
    cells,
    prompts,
    samples=cfg["samples"],
    resamples=stats.get("resamples", 1000),
    level=stats.get("level", 0.95),
    seed=stats.get("seed", 0),
    thinking_mode=thinking_mode,
    log=log,
  )
  wd.write(SUMMARY_FILE, summary_csv(summary))
  table = format_table(summary)
  plots = []
  if cfg.get("plots", True) and finished:
    plots = plot_heatmaps(summary, os.path.join(workdir, "plots"), axes=cfg.get("plot_axes", ()))
  return SweepOutcome(
    workdir=workdir,
    total_rows=len(rows),
    skipped_rows=skipped,
    new_rows=len(finished) - skipped,
    batches=batches,
    summary=summary,
    plots=plots,
    table=table,
  )


def _report_corrupt(results: ResultsFile, log) -> None:
  """Warns of the lines of the results file that are no rows (with why), and once of rows of older versions
  (no digest: their results cannot be checked)."""
  if results.corrupt:
    lines = "; ".join(f"line {n}: {results.problems.get(n, 'corrupt')}" for n in results.corrupt[:10])
    log(
      f"warning: {len(results.corrupt)} corrupt lines in {results.path} ({lines}"
      f"{' ...' if len(results.corrupt) > 10 else ''}) are not rows; their rows (if any) run again"
    )
  if results.undigested:
    log(
      f"note: {results.undigested} rows in {results.path} have no digest (written by an older version): "
      f"accepted, but an edit of their results would go unnoticed"
    )
