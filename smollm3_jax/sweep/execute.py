"""Runs a sweep's missing rows through the engine and appends each finished row to the results file.

The rest of the sweep (plan, workdir, summary, plots) is :mod:`smollm3_jax.sweep.run`'s.
"""

from __future__ import annotations

import time
from typing import Mapping

from smollm3_jax import metrics as M
from smollm3_jax.thinking import has_closed_thinking, prompt_opens_thinking


def _render(tokenizer, prompts, thinking_values, chat: bool, date: str) -> dict[tuple[str, bool], list[int]]:
  """Token ids of every (prompt id, thinking) pair used by the rows, rendered on chat day ``date``."""
  from smollm3_jax.api import render_prompts

  out = {}
  for think in sorted(thinking_values):
    _, ids = render_prompts(tokenizer, [p["prompt"] for p in prompts], chat=chat, thinking=think, date=date)
    for p, i in zip(prompts, ids):
      out[(p["id"], think)] = i
  return out


def _score(row: Mapping, prompt: Mapping) -> dict:
  answer_type = prompt.get("answer_type")
  correct = M.is_correct(row["answer"], prompt.get("reference"), answer_type) if answer_type else None
  extracted = M.extract_number(row["answer"]) if answer_type == "numeric" else None
  return dict(correct=correct, extracted=extracted)


def run_rows(model, tokenizer, cfg, prompts, todo, results, *, progress, log, max_batches=None) -> int:
  from smollm3_jax.api import generate
  from smollm3_jax.engine import get_engine

  chat = cfg.get("chat", True)
  by_id = {p["id"]: p for p in prompts}
  ids = _render(tokenizer, prompts, {r["settings"]["thinking"] for r in todo}, chat, cfg["date"])
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
