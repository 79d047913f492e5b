"""The default rows: prefill, decode, a settings sweep (ours vs transformers on the same weights), the
cache budgets (read window vs the whole cache) and sampled vs greedy decode.

* ``prefill``: one prompt of each --prompt_lengths (random ids), prefill tokens/s and time to first token.
* ``decode``: --batch_sizes chat prompts, greedy, --new_tokens each, no early stop; the roofline
  fraction = (weight bytes + KV bytes of the filled prefix) per step / step time / bandwidth.
* ``sweep``: 3 temperatures x 3 repetition penalties x 2 thinking modes over 8 prompts: ours as ONE
  batched call, transformers setting by setting.
* ``budget``: batch 8, the same prompt, 48 decode steps at each allocated cache of --cache_budgets,
  read through the window and whole (the engine before read windows); greedy tokens must agree.
* ``sampling``: batch 32, greedy and sampled (T=0.7, top_p=0.95, min_p=0.05).

Ours and theirs are interleaved within each repeat, so both see the same machine load.
"""

from __future__ import annotations

import time

from absl import app, flags

from benchmarks.common import best, chat_prompt_ids, decode_bytes_per_step, print_row, ratio, target, timed

FLAGS = flags.FLAGS
flags.DEFINE_list("prompt_lengths", ["128", "512", "2048"], "Prefill rows: prompt lengths in tokens.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Decode rows: batch sizes.")
flags.DEFINE_bool("sweep", True, "Add the 3x3x2-settings x 8-prompts sweep row.")
flags.DEFINE_integer("sweep_new_tokens", 32, "Sweep row: new tokens per row.")
flags.DEFINE_list(
  "cache_budgets",
  ["256", "1024", "4096"],
  "Cache-budget rows: allocated cache lengths (batch 8, "
  "the same prompt and 48 decode steps), each with the read window and with the whole cache read "
  "every step (the engine before read windows); empty = no budget rows.",
)
flags.DEFINE_bool("sampled", True, "Add the sampled-vs-greedy decode rows (batch 32, T=0.7, top_p=0.95, min_p=0.05).")

SWEEP_TEMPERATURES = (0.0, 0.7, 1.0)
SWEEP_PENALTIES = (1.0, 1.1, 1.3)
SWEEP_THINKING = (False, True)

ROW_NAMES = {
  "prefill": lambda r: f"prefill {r['prompt_length']} tok",
  "decode": lambda r: f"decode batch {r['batch']}",
  "sweep": lambda r: f"sweep {r['settings']}x{r['prompts']} ({r['rows']} rows)",
  "budget": lambda r: f"cache {r['cache']}, {r['read']}",
  "sampling": lambda r: f"decode b{r['batch']} {r['mode']}",
}


def checked_flags() -> tuple[list[int], list[int]]:
  """(prompt lengths, batch sizes) of the flags; app.UsageError naming a bad value."""
  try:
    lengths = [int(x) for x in FLAGS.prompt_lengths]
    batches = [int(x) for x in FLAGS.batch_sizes]
  except ValueError as e:
    raise app.UsageError(f"--prompt_lengths / --batch_sizes must be integers: {e}")
  if any(x < 1 for x in lengths + batches) or FLAGS.new_tokens < 2 or FLAGS.sweep_new_tokens < 1:
    raise app.UsageError("lengths and batch sizes must be >= 1, --new_tokens >= 2")
  return lengths, batches


def flag_rows(ours, theirs, model, tokenizer, bandwidth: float) -> list[dict]:
  """The rows the flags ask for (``theirs``: transformers, or None)."""
  lengths, batches = checked_flags()
  out = bench_prefill(ours, theirs, model.config, lengths, FLAGS.repeats, FLAGS.seed)
  out += bench_decode(ours, theirs, model, tokenizer, batches, FLAGS.new_tokens, FLAGS.repeats, bandwidth, FLAGS.seed)
  if FLAGS.sweep:
    out += bench_sweep(ours, theirs, model, tokenizer, FLAGS.sweep_new_tokens, FLAGS.repeats, FLAGS.seed)
  if FLAGS.cache_budgets:
    out += bench_budget(model, tokenizer, [int(b) for b in FLAGS.cache_budgets], FLAGS.repeats, FLAGS.seed)
  if FLAGS.sampled:
    out += bench_sampled(ours, model, tokenizer, FLAGS.repeats, FLAGS.seed)
  return out


def bench_prefill(ours, theirs, cfg, lengths, repeats, seed):
  import numpy as np

  out = []
  rs = np.random.RandomState(seed + 1)
  for length in lengths:
    if length >= cfg.max_position_embeddings:
      print(f"skipping prompt length {length}: beyond max_position_embeddings {cfg.max_position_embeddings}")
      continue
    ids = [rs.randint(1, cfg.vocab_size, length).tolist()]
    first = ours.run(ids, 1)
    row = dict(
      kind="prefill",
      prompt_length=length,
      batch=1,
      compile_seconds=first.stats.compile_seconds,
      ours_seconds=[],
      ours_ttft=[],
      theirs_seconds=[],
    )
    if theirs is not None:
      theirs.run(ids, 1)  # warm-up
    for _ in range(repeats):
      r = ours.run(ids, 1)
      row["ours_seconds"].append(r.stats.prefill_seconds)
      row["ours_ttft"].append(r.stats.time_to_first_token)
      if theirs is not None:
        row["theirs_seconds"].append(theirs.run(ids, 1)[0])
    row["ours_tokens_per_second"] = length / best(row["ours_seconds"])
    row["time_to_first_token"] = best(row["ours_ttft"])
    if theirs is not None:
      row["theirs_tokens_per_second"] = length / best(row["theirs_seconds"])
      row["ratio"] = ratio(row["ours_tokens_per_second"], row["theirs_tokens_per_second"])
    out.append(row)
    print_row(row)
  return out


def bench_decode(ours, theirs, model, tokenizer, batch_sizes, new_tokens, repeats, bandwidth, seed):
  import numpy as np

  out = []
  cfg = model.config
  steps = new_tokens - 1  # transformers' decode steps: its first token comes with its prefill
  for b in batch_sizes:
    ids = chat_prompt_ids(tokenizer, cfg.vocab_size, b, seed=seed)
    first = ours.run(ids, new_tokens)
    row = dict(
      kind="decode",
      batch=b,
      new_tokens=new_tokens,
      prompt_tokens=[len(p) for p in ids],
      compile_seconds=first.stats.compile_seconds,
      ours_decode_seconds=[],
      ours_ttft=[],
      theirs_decode_seconds=[],
    )
    if theirs is not None:
      theirs.run(ids, min(new_tokens, 8))  # warm-up
    for _ in range(repeats):
      r = ours.run(ids, new_tokens)
      row["ours_decode_seconds"].append(r.stats.decode_seconds)
      row["ours_ttft"].append(r.stats.time_to_first_token)
      if theirs is not None:
        # Their decode time: a full generate minus a 1-token generate (its prefill + first token).
        t_full, toks = theirs.run(ids, new_tokens)
        t_one, _ = theirs.run(ids, 1)
        row["theirs_decode_seconds"].append(max(t_full - t_one, 1e-9))
    step = best(row["ours_decode_seconds"]) / new_tokens  # ours: every token from a decode step
    row["ours_tokens_per_second"] = b / step
    row["time_to_first_token"] = best(row["ours_ttft"])
    row["cache_length"] = r.stats.cache_length
    itemsize = np.dtype(model.dtype).itemsize  # the engine's cache dtype defaults to the model's
    avg_real = float(np.mean(row["prompt_tokens"])) + steps / 2
    w, kv_real, kv_full = decode_bytes_per_step(model, b, avg_real, r.stats.cache_length, itemsize)
    row.update(
      weight_bytes=w,
      kv_bytes_per_step=kv_real,
      kv_bytes_read_per_step=kv_full,
      achieved_gbps=(w + kv_real) / step / 1e9,
    )
    if bandwidth:
      row["roofline_fraction"] = row["achieved_gbps"] / bandwidth
    if theirs is not None:
      row["theirs_tokens_per_second"] = b * steps / best(row["theirs_decode_seconds"])
      row["ratio"] = ratio(row["ours_tokens_per_second"], row["theirs_tokens_per_second"])
      row["greedy_match_row0"] = r.completions[0].token_ids == toks[0]
    out.append(row)
    print_row(row)
  return out


def bench_sweep(ours, theirs, model, tokenizer, new_tokens, repeats, seed):
  """3 temperatures x 3 penalties x 2 thinking modes x 8 prompts: ours in one call, theirs per setting."""
  cfg = model.config
  prompts = {th: chat_prompt_ids(tokenizer, cfg.vocab_size, 8, thinking=th, seed=seed) for th in SWEEP_THINKING}
  grid = [(t, r, th) for t in SWEEP_TEMPERATURES for r in SWEEP_PENALTIES for th in SWEEP_THINKING]
  ids, temps, pens = [], [], []
  for t, r, th in grid:
    for p in prompts[th]:
      ids.append(p)
      temps.append(t)
      pens.append(r)
  total = len(ids) * new_tokens
  first = ours.run(ids, new_tokens, temperature=temps, repetition_penalty=pens, seed=seed, share_prefill=True)
  row = dict(
    kind="sweep",
    settings=len(grid),
    prompts=8,
    rows=len(ids),
    new_tokens=new_tokens,
    batch=first.stats.batch_size,
    compile_seconds=first.stats.compile_seconds,
    ours_seconds=[],
    theirs_seconds=[],
  )
  if theirs is not None:
    theirs.run(prompts[False], 2)  # warm-up
  for rep in range(repeats):
    t0 = time.perf_counter()
    ours.run(ids, new_tokens, temperature=temps, repetition_penalty=pens, seed=seed + rep, share_prefill=True)
    row["ours_seconds"].append(time.perf_counter() - t0)
    if theirs is not None and rep == 0:  # setting by setting is slow: one timed pass
      row["theirs_seconds"].append(
        sum(theirs.run(prompts[th], new_tokens, temperature=t, repetition_penalty=r, seed=seed)[0] for t, r, th in grid)
      )
  row["ours_tokens_per_second"] = total / best(row["ours_seconds"])
  if theirs is not None:
    row["theirs_tokens_per_second"] = total / best(row["theirs_seconds"])
    row["ratio"] = ratio(row["ours_tokens_per_second"], row["theirs_tokens_per_second"])
  print_row(row)
  return [row]


def bench_budget(model, tokenizer, budgets, repeats, seed, batch=8, steps=48):
  """Decode tokens/s at allocated caches ``budgets`` for the same prompt and steps, with the read
  window (this engine) and with the whole cache read every step; greedy tokens must agree."""
  import smollm3_jax
  from smollm3_jax.generation.engine import Engine

  ids = chat_prompt_ids(tokenizer, model.config.vocab_size, 1, seed=seed) * batch
  out, reference = [], None
  for budget in budgets:
    for label, windows in (("window", None), ("whole cache", ())):
      kw = {} if windows is None else dict(window_buckets=windows)
      engine = Engine(model, tokenizer, batch_buckets=(batch,), **kw)
      run = lambda: smollm3_jax.generate(
        model,
        tokenizer,
        ids,
        max_new_tokens=steps + 1,
        stop_ids=[],
        temperature=0.0,
        engine=engine,
        cache_length=budget,
      )
      first, times = timed(run, repeats, lambda r: r.stats.decode_seconds)
      toks = [c.token_ids for c in first]
      reference = reference or toks
      row = dict(
        kind="budget",
        cache=budget,
        read=label,
        batch=batch,
        steps=steps,
        cache_length=first.stats.cache_length,
        compile_seconds=first.stats.compile_seconds,
        ours_decode_seconds=times,
        ours_tokens_per_second=batch * (steps + 1) / best(times),
        same_tokens=toks == reference,
      )
      out.append(row)
      print_row(row)
  return out


def bench_sampled(ours, model, tokenizer, repeats, seed, batch=32, new_tokens=40):
  """Decode tokens/s at batch ``batch``: greedy, and sampled with T=0.7, top_p=0.95, min_p=0.05."""
  ids = chat_prompt_ids(tokenizer, model.config.vocab_size, batch, seed=seed)
  out = []
  for label, settings in (
    ("greedy", dict(temperature=0.0)),
    ("sampled", dict(temperature=0.7, top_p=0.95, min_p=0.05, seed=seed)),
  ):
    first, times = timed(lambda: ours.run(ids, new_tokens, **settings), repeats, lambda r: r.stats.decode_seconds)
    row = dict(
      kind="sampling",
      mode=label,
      batch=batch,
      compile_seconds=first.stats.compile_seconds,
      ours_decode_seconds=times,
      ours_tokens_per_second=batch * new_tokens / best(times),
    )
    out.append(row)
    print_row(row)
  return out


def targets(rows) -> list[str]:
  """The CPU targets of the demo checkpoint for the rows that ran, met or not."""
  by = {(r["kind"], r.get("batch")): r for r in rows}
  out = []
  d1, d8 = by.get(("decode", 1)), by.get(("decode", 8))
  sweep = next((r for r in rows if r["kind"] == "sweep"), None)
  if d1:
    out += target("decode batch 1 vs transformers", d1.get("ratio"), 4.0)
    out += target("decode batch 1 roofline", d1.get("roofline_fraction"), 0.65, "{:.0%}")
  if d8:
    out += target("decode batch 8 vs transformers", d8.get("ratio"), 3.0)
  if sweep:
    out += target("sweep vs transformers", sweep.get("ratio"), 5.0)
  windowed = {r["cache"]: r for r in rows if r["kind"] == "budget" and r["read"] == "window"}
  if windowed:
    small, large = windowed[min(windowed)], windowed[max(windowed)]
    out += target(
      f"decode with a {large['cache']}-slot cache vs {small['cache']} (read window)",
      large["ours_tokens_per_second"] / small["ours_tokens_per_second"],
      0.85,
    )
    out.append(
      f"  greedy tokens identical across the cache budgets: "
      f"{all(r['same_tokens'] for r in rows if r['kind'] == 'budget')}"
    )
  return out
