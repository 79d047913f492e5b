"""The accelerator check (``--accelerator_check``): decode tokens/s, the roofline fraction and compile
seconds at each batch of --check_batches x each allocated cache of --check_budgets, greedy and
sampled (T=0.6, top_p=0.95). On a GPU/TPU:

  python experiments/benchmark.py --checkpoint=random --preset=smollm3_3b --dtype=bfloat16 --accelerator_check
"""

from __future__ import annotations

from absl import app, flags

from benchmarks.common import best, chat_prompt_ids, decode_bytes_per_step, print_row, timed

FLAGS = flags.FLAGS
flags.DEFINE_bool(
  "accelerator_check",
  False,
  "Only the accelerator check: decode tokens/s, roofline and compile "
  "seconds at --check_batches x --check_budgets, greedy and sampled (T=0.6, top_p=0.95). "
  "On a GPU/TPU: --checkpoint=random --preset=smollm3_3b --dtype=bfloat16 --accelerator_check.",
)
flags.DEFINE_list("check_batches", ["1", "8", "64"], "Accelerator check: batch sizes.")
flags.DEFINE_list("check_budgets", ["1024", "8192"], "Accelerator check: allocated cache lengths (token budgets).")
flags.DEFINE_integer("check_steps", 64, "Accelerator check: decode steps per run.")

ROW_NAMES = {"accelerator": lambda r: f"b{r['batch']} budget {r['budget']} {r['mode']}"}


def flag_rows(model, tokenizer, bandwidth: float) -> list[dict]:
  """The check's rows as the flags say."""
  try:
    batches, budgets = [int(x) for x in FLAGS.check_batches], [int(x) for x in FLAGS.check_budgets]
  except ValueError as e:
    raise app.UsageError(f"--check_batches / --check_budgets must be integers: {e}")
  return bench_accelerator(model, tokenizer, batches, budgets, FLAGS.check_steps, FLAGS.repeats, bandwidth, FLAGS.seed)


def bench_accelerator(model, tokenizer, batches, budgets, steps, repeats, bandwidth, seed):
  """Decode at each batch size and allocated cache (budget), greedy and sampled: tokens/s, the
  roofline fraction (weights + the filled KV per step), compile seconds of the first run."""
  import numpy as np

  import smollm3_jax
  from smollm3_jax.generation.defaults import GREEDY
  from smollm3_jax.generation.engine import Engine

  cfg = model.config
  itemsize = np.dtype(model.dtype).itemsize
  out = []
  for budget in budgets:
    for b in batches:
      ids = chat_prompt_ids(tokenizer, cfg.vocab_size, b, seed=seed)
      engine = Engine(model, tokenizer, batch_buckets=(b,))
      for mode, settings in (("greedy", GREEDY), ("sampled", dict(GREEDY, temperature=0.6, top_p=0.95))):
        # cache_length: the cache allocated is the budget itself
        run = lambda: smollm3_jax.generate(
          model,
          tokenizer,
          ids,
          max_new_tokens=steps + 1,
          stop_ids=[],
          engine=engine,
          seed=seed,
          cache_length=budget,
          **settings,
        )
        first, times = timed(run, repeats, lambda r: r.stats.decode_seconds)
        step = best(times) / (steps + 1)  # every token from a decode step
        filled = float(np.mean([len(p) for p in ids])) + steps / 2
        w, kv, _ = decode_bytes_per_step(model, b, filled, first.stats.cache_length, itemsize)
        row = dict(
          kind="accelerator",
          batch=b,
          budget=budget,
          mode=mode,
          cache_length=first.stats.cache_length,
          compile_seconds=first.stats.compile_seconds,
          step_ms=step * 1e3,
          ours_tokens_per_second=b / step,
          achieved_gbps=(w + kv) / step / 1e9,
        )
        if bandwidth:
          row["roofline_fraction"] = row["achieved_gbps"] / bandwidth
        out.append(row)
        print_row(row)
  return out


def targets(rows) -> list[str]:
  return []  # (no CPU target: the check's figures are read against the device's roofline)
