"""Host-loop rows (``--host_loop``): the host's seconds per decode chunk as the rows' texts grow.

``--host_rows`` rows of a random tiny model with the demo's vocabulary (so the sampling chain, the
log-probability records and the text decoding are full width while a decode step stays cheap) each
generate ``--host_tokens`` tokens (no stop) through one slot pool and the runner, with the server's
settings: log-probabilities recorded (top 20 alternatives) and text decoded as it arrives. Each pool
step's wall time less its device programs' (decode, prefill, insert and compile seconds, as the pool
counts them) is the host's: harvesting the new tokens and records, extending the rows, the runner's
text. The row reports the host milliseconds per chunk over the first and the last ``--host_window``
generated tokens and their ratio: a host loop whose work grows with the text shows a ratio well above 1.
"""

from __future__ import annotations

import time

from absl import flags

from benchmarks.common import print_row, target

FLAGS = flags.FLAGS
flags.DEFINE_bool("host_loop", False, "Only the host-loop row: host seconds per decode chunk, short vs long texts.")
flags.DEFINE_integer("host_tokens", 32768, "Host-loop row: tokens each row generates.")
flags.DEFINE_integer("host_rows", 8, "Host-loop row: rows decoding together.")
flags.DEFINE_integer("host_chunk", 64, "Host-loop row: decode steps per chunk (the pool's chunk_steps).")
flags.DEFINE_integer("host_window", 1024, "Host-loop row: generated tokens at the start and the end compared.")

ROW_NAMES = {"host": lambda r: f"host loop {r['rows']} rows x {r['tokens']} tokens"}
_DEVICE = ("decode_seconds", "prefill_seconds", "insert_seconds", "compile_seconds")


def flag_rows() -> list[dict]:
  """The host-loop row as the flags say."""
  if FLAGS.host_tokens < 2 * FLAGS.host_window or min(FLAGS.host_rows, FLAGS.host_chunk, FLAGS.host_window) < 1:
    raise ValueError("--host_tokens must be at least twice --host_window, and rows, chunk and window >= 1")
  row = bench_host(FLAGS.host_tokens, FLAGS.host_rows, FLAGS.host_chunk, FLAGS.host_window, FLAGS.seed)
  print_row(row)
  return [row]


def bench_host(tokens: int, rows: int, chunk: int, window: int, seed: int) -> dict:
  """One pool of ``rows`` rows generating ``tokens`` each; host ms per chunk early vs late."""
  from tqdm.auto import tqdm

  from smollm3_jax.generation.engine import MAX_TOP_LOGPROBS, Request, get_engine
  from smollm3_jax.generation.runner import Row, Runner
  from smollm3_jax.serving import chat

  model, tok = chat.load_chat_model("tiny", tiny_context=tokens + 128, seed=seed)
  prompt = tok.encode("Once upon a time, in a land far away,")
  eng = get_engine(model, tok)
  pool = eng.pool(
    rows,
    eng.cache_length_for(len(prompt) + tokens),
    stop_ids=(),
    chunk_steps=chunk,
    logprobs=True,
    top_logprobs=MAX_TOP_LOGPROBS,
  )
  runner = Runner(pool, tok, incremental=True)
  batch = [
    Row(Request(prompt=prompt, settings={"temperature": 1.0}, seed=seed + i, max_new=tokens)) for i in range(rows)
  ]
  runner.submit(batch)
  samples = []  # (tokens the rows had before the chunk, host seconds of the chunk)
  t_start = time.perf_counter()
  with tqdm(total=tokens, desc="host loop", unit="tok", leave=False) as bar:
    while not runner.idle:
      before = {k: pool.stats[k] for k in _DEVICE}
      had = len(batch[0].request.token_ids)
      t0 = time.perf_counter()
      runner.step()
      wall = time.perf_counter() - t0
      samples.append((had, wall - sum(pool.stats[k] - before[k] for k in _DEVICE)))
      bar.update(len(batch[0].request.token_ids) - had)
  assert all(len(r.request.token_ids) == tokens for r in batch), "a row stopped early"
  early = [s for n, s in samples if 0 < n < window]  # (the first step admits and prefills)
  late = [s for n, s in samples if n >= tokens - window]
  mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")
  return dict(
    kind="host",
    rows=rows,
    tokens=tokens,
    chunk_steps=chunk,
    window=window,
    chunks=len(samples),
    wall_seconds=time.perf_counter() - t_start,
    decode_seconds=pool.stats["decode_seconds"],
    host_seconds=sum(s for _, s in samples),
    host_ms_per_chunk_early=1e3 * mean(early),
    host_ms_per_chunk_late=1e3 * mean(late),
    late_vs_early=mean(late) / mean(early),
  )


def targets(rows) -> list[str]:
  """The host-loop target: host work per chunk does not grow with the text (late / early <= 1.5)."""
  row = next((r for r in rows if r["kind"] == "host"), None)
  if row is None:
    return []
  # (target() reads "value >= goal": early / late >= 1 / 1.5)
  name = f"host ms per chunk, first vs last {row['window']} tokens of {row['tokens']}: early / late"
  return target(name, 1 / row["late_vs_early"], 1 / 1.5)
