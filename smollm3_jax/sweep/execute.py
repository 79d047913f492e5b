"""Runs a sweep's missing rows through the engine and appends each finished row to the results file.

The rest of the sweep (plan, workdir, summary, plots) is :mod:`smollm3_jax.sweep.run`'s.
"""

from __future__ import annotations

import time
from typing import Mapping

import numpy as np

from smollm3_jax.evaluation import metrics as M
from smollm3_jax.generation import sampling
from smollm3_jax.generation.api import generate
from smollm3_jax.generation.beam import PROCESSORS
from smollm3_jax.generation.engine import Request, get_engine
from smollm3_jax.generation.runner import Row, Runner
from smollm3_jax.generation.sampling import SETTINGS
from smollm3_jax.generation.stop import default_stop_ids
from smollm3_jax.text.prompts import render_prompts
from smollm3_jax.text.thinking import has_closed_thinking, prompt_opens_thinking


def _render(tokenizer, prompts, thinking_values, chat: bool, date: str) -> dict[tuple[str, bool], list[int]]:
  """Token ids of every (prompt id, thinking) pair used by the rows, rendered on chat day ``date``."""

  out = {}
  for think in sorted(thinking_values):
    _, ids = render_prompts(tokenizer, [p["prompt"] for p in prompts], chat=chat, thinking=think, date=date)
    for p, i in zip(prompts, ids):
      out[(p["id"], think)] = i
  return out


def thinking_changes_prompts(tokenizer, prompts, chat: bool, date) -> bool:
  """Whether any prompt renders to other token ids with thinking on than off (False: a chat template
  without a thinking mode, e.g. SmolLM2's, whose "thinking on" rows would repeat the "off" ones)."""
  ids = _render(tokenizer, prompts, (False, True), chat, date)
  return any(ids[(p["id"], False)] != ids[(p["id"], True)] for p in prompts)


def _score(row: Mapping, prompt: Mapping) -> dict:
  answer_type = prompt.get("answer_type")
  correct = M.is_correct(row["answer"], prompt.get("reference"), answer_type) if answer_type else None
  extracted = M.extract_number(row["answer"]) if answer_type == "numeric" else None
  return dict(correct=correct, extracted=extracted)


# Finished rows are appended (and fsync'ed) in groups of this many, or after this many seconds, or at
# the end: a crash loses at most the rows in flight and a few seconds' finished rows.
WRITE_EVERY = 8
WRITE_SECONDS = 10.0


def run_rows(
  model, tokenizer, cfg, prompts, todo, results, *, progress, log, max_batches=None, refill: bool = True
) -> int:
  """Runs ``todo`` rows through one slot pool of ``cfg["batch_size"]`` slots: a row starts as soon
  as a slot frees up, and is appended to ``results`` soon after it finishes. Rows that repeat a
  prompt (the grid's cells) run its prefill once when they start together, so the queue holds each
  prompt's rows side by side. ``max_batches``: run only the first ``max_batches x batch_size``
  rows (tests). ``refill=False``: fixed batches that wait for their longest row (for measurements).
  ``results``: None on the processes of a multi-process run other than the leader (they run the same
  rows, write nothing). Returns the number of groups written."""

  chat = cfg.get("chat", True)
  by_id = {p["id"]: p for p in prompts}
  # Both thinking modes of every prompt: the cache length (from the longest) is then the same for every run
  # of the sweep, whichever rows are left, and so are the read windows and the rows' numbers.
  ids = _render(tokenizer, prompts, (False, True), chat, cfg["date"])
  max_new = cfg["max_new_tokens"]
  slots = cfg["batch_size"]
  p_len = max(len(v) for v in ids.values())
  context = model.config.max_position_embeddings
  if p_len + max_new > context:
    raise ValueError(
      f"max_new_tokens {max_new} + the longest prompt ({p_len} tokens) exceed the model's context of {context} tokens"
    )
  # (the package's engine cache: a resumed sweep of the same model does not recompile)
  engine = get_engine(model, tokenizer)
  engine.sync()
  nl = int(cfg.get("newline_limit", 0) or 0)
  if max_batches is not None:
    todo = todo[: max_batches * slots]
  queue = queue_order(todo, by_id)
  beam_rows = [r for r in queue if r["settings"].get("num_beams", 1) > 1]  # beam cells: their own calls
  queue = [r for r in queue if r["settings"].get("num_beams", 1) <= 1]
  texts = {key: tokenizer.decode(v) for key, v in ids.items()}
  rows = [
    Row(
      Request(
        prompt=ids[(r["prompt_id"], r["settings"]["thinking"])],
        settings={k: v for k, v in r["settings"].items() if k in sampling.SETTINGS},
        seed=int(r["seed"]),
        max_new=max_new,
        newline_limit=nl,
        share=0,
      ),
      prompt_text=texts[(r["prompt_id"], r["settings"]["thinking"])],
      tag=r,
    )
    for r in queue
  ]
  if engine.sharding is not None:  # a multiple of the data axis
    slots = -(-slots // engine.sharding.data_size) * engine.sharding.data_size
  pool = engine.pool(
    slots,
    engine.cache_length_for(p_len + max_new - 1),
    stop_ids=default_stop_ids(tokenizer, model.config),
    newline_guard=nl > 0,
    refill=refill,
    chunk_steps=32,
    shrink=refill,
    logprobs=bool(cfg.get("record_logprobs")),
  )
  runner = Runner(pool, tokenizer)
  runner.submit(rows)

  bar = None
  if progress is None:
    progress = cfg.get("progress", True)
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows) + len(beam_rows), unit="row", desc="sweep", dynamic_ncols=True, smoothing=0.1)
  groups, pending, written = 0, [], time.monotonic()
  try:
    write = results.append if results is not None else (lambda rows: None)
    for cell_rows in _by_cell(beam_rows):
      pending.extend(_beam_rows(model, tokenizer, cell_rows, ids, by_id, max_new))
      write(pending)
      groups, pending = groups + 1, []
      if bar is not None:
        bar.update(len(cell_rows))
    for events in runner.run():
      finished = [e.row for e in events if e.done]
      pending.extend(_pool_row(tokenizer, row, by_id, max_new, pool) for row in finished)
      if pending and (len(pending) >= WRITE_EVERY or pool.idle or time.monotonic() - written > WRITE_SECONDS):
        write(pending)
        groups, pending, written = groups + 1, [], time.monotonic()
      if bar is not None and finished:
        bar.update(len(finished))
        bar.set_postfix_str(
          f"{pool.stats['generated'] / max(pool.stats['decode_seconds'], 1e-9):.0f} tok/s, "
          f"slots used {pool.utilization():.0%}",
          refresh=False,
        )
  finally:
    if bar is not None:
      bar.close()
  if not rows:
    return groups
  log(
    f"sweep: {len(rows)} rows through {pool.slots} slots: slot utilization {pool.utilization():.2f}, "
    f"{pool.stats['generated']} tokens in {pool.stats['decode_seconds']:.1f}s of decode"
  )
  return groups


# Expected length by prompt kind, longest first (the bundled prompt set, demo sweep at a 512-token budget:
# 9 of 16 open-ended rows reached the budget, 2 of 32 factual and math rows did). Starting the long rows
# first keeps slots busy to the end: the short ones fill in around them.
KIND_ORDER = {"open": 0, "math": 1, "factual": 2}


def queue_order(rows, by_id):
  """The order rows enter the pool: longest-expected prompt kinds first; within a kind, each prompt's
  rows side by side (so they share its prefill), prompts in the plan's order."""
  first_seen: dict = {}
  for r in rows:
    first_seen.setdefault(r["prompt_id"], len(first_seen))
  kind = lambda r: KIND_ORDER.get(by_id.get(r["prompt_id"], {}).get("kind"), len(KIND_ORDER))
  return sorted(rows, key=lambda r: (kind(r), first_seen[r["prompt_id"]], r["settings"]["thinking"]))


def _by_cell(rows):
  cells: dict = {}
  for r in rows:
    cells.setdefault(r["cell_key"], []).append(r)
  return list(cells.values())


def _beam_rows(model, tokenizer, rows, ids, by_id, max_new) -> list[dict]:
  """One beam-search call for a cell's rows (beam search is not sampled: one row per prompt)."""

  s = rows[0]["settings"]
  processors = {k: s[k] for k in PROCESSORS if k in s and s[k] != SETTINGS[k].off}
  t0 = time.perf_counter()
  res = generate(
    model,
    tokenizer,
    [ids[(r["prompt_id"], s["thinking"])] for r in rows],
    num_beams=s["num_beams"],
    max_new_tokens=max_new,
    **processors,
  )
  wall = time.perf_counter() - t0
  timing = dict(
    wall_seconds=wall,
    queue_seconds=0.0,
    slots=len(rows) * s["num_beams"],
    decode_seconds=res.stats.decode_seconds,
    decode_tokens_per_second=res.stats.decode_tokens_per_second,
  )
  return [_row(tokenizer, r, c, by_id, max_new, timing) for r, c in zip(rows, res)]


def _pool_row(tokenizer, row, by_id, max_new, pool) -> dict:
  """The results line of a finished runner row (its ``tag`` is the planned row)."""
  req, c = row.request, row.completion
  st = pool.stats
  # This row's wait and run, and the pool's figures when it finished (the sweep's throughput).
  timing = dict(
    queue_seconds=req.admitted - req.submitted,
    wall_seconds=req.finished - req.admitted,
    slots=pool.slots,
    slot_utilization=pool.utilization(),
    decode_seconds=st["decode_seconds"],
    compile_seconds=st["compile_seconds"],
    prefill_seconds=st["prefill_seconds"],
    decode_tokens_per_second=st["generated"] / st["decode_seconds"] if st["decode_seconds"] else 0.0,
  )
  return _row(tokenizer, row.tag, c, by_id, max_new, timing)


def _row(tokenizer, r, c, by_id, max_new, timing) -> dict:
  """The results line of planned row ``r`` and its Completion ``c``."""
  prompt = by_id[r["prompt_id"]]
  row = dict(r, settings=dict(r["settings"], max_new_tokens=max_new))
  row.update(
    prompt=prompt["prompt"],
    kind=prompt["kind"],
    text=c.text,
    thinking=c.thinking,
    answer=c.answer,
    num_tokens=len(c.token_ids),
    thinking_tokens=len(tokenizer.encode(c.thinking)) if c.thinking else 0,
    closed_think=has_closed_thinking(c.text, inside=prompt_opens_thinking(c.prompt)),
    stop_reason=c.stop_reason,
    prompt_tokens=len(c.prompt_token_ids),
    token_ids=c.token_ids,
    timing=timing,
  )
  if c.score is not None:
    row["beam_score"] = c.score
  if c.logprobs is not None and c.token_ids:  # compact: 4 decimals
    lp = c.logprobs
    row["logprobs"] = {
      name: [round(float(v), 4) for v in getattr(lp, name)] for name in ("logprob", "processed_logprob", "entropy")
    }
    row.update(mean_logprob=float(np.mean(lp.logprob)), mean_entropy=float(np.mean(lp.entropy)))
  row.update(_score(row, prompt))
  return row
