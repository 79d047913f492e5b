"""Fresh-process start-up (``--startup``): time to the first token and to the end of the first generation
(--new_tokens tokens), without a compilation cache, with a cold (empty) one and with the warm one.
Each measurement is a child process of experiments/benchmark.py (``--startup_child``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks.common import EXPERIMENTS, chat_prompt_ids, load_from_flags

FLAGS = flags.FLAGS
flags.DEFINE_bool(
  "startup",
  False,
  "Measure fresh-process start-up instead: time to first token and to the "
  "end of the first generation, without / with a cold / with a warm compilation cache.",
)
flags.DEFINE_bool("startup_child", False, "(internal) one fresh-process start-up measurement.")

SCRIPT = os.path.join(EXPERIMENTS, "benchmark.py")
MARK = "STARTUP_JSON "


def child(t_start: float) -> None:
  """One fresh-process run: load, stream the first prompt; prints a JSON line of timings (seconds
  since ``t_start``, the process's first line)."""
  import jax

  from smollm3_jax.utils import runtime

  t_import = time.time() - t_start
  if FLAGS.compilation_cache:
    runtime.enable_compilation_cache(FLAGS.cache_dir)
  import smollm3_jax

  model, tokenizer, _ = load_from_flags()
  jax.block_until_ready(jax.tree.leaves(model))
  t_load = time.time() - t_start
  ids = chat_prompt_ids(tokenizer, model.config.vocab_size, 1)[0]
  s = smollm3_jax.stream(model, tokenizer, ids, max_new_tokens=FLAGS.new_tokens, stop_ids=[], chunk_steps=8)
  t_first = None
  for _ in s:
    if t_first is None:
      t_first = time.time() - t_start
  t_done = time.time() - t_start
  print(
    MARK
    + json.dumps(
      dict(
        import_seconds=t_import,
        loaded_seconds=t_load,
        first_token_seconds=t_first or t_done,
        first_generation_seconds=t_done,
        compile_seconds=s.result.stats.compile_seconds,
        new_tokens=FLAGS.new_tokens,
      )
    ),
    flush=True,
  )


def run() -> dict:
  """Fresh processes: no cache, an empty (cold) cache, then the warm cache."""
  results = {}
  with tempfile.TemporaryDirectory(prefix="smollm3_jax_cache_") as tmp:
    for name, cache_flags in [
      ("no_cache", ["--nocompilation_cache"]),
      ("cold_cache", ["--compilation_cache", f"--cache_dir={tmp}"]),
      ("warm_cache", ["--compilation_cache", f"--cache_dir={tmp}"]),
    ]:
      cmd = [
        sys.executable,
        SCRIPT,
        "--startup_child",
        f"--checkpoint={FLAGS.checkpoint}",
        f"--preset={FLAGS.preset}",
        f"--dtype={FLAGS.dtype}",
        f"--new_tokens={FLAGS.new_tokens}",
        f"--num_layers={FLAGS.num_layers}",
        f"--seed={FLAGS.seed}",
      ] + cache_flags
      t0 = time.time()
      proc = subprocess.run(cmd, capture_output=True, text=True)
      wall = time.time() - t0
      line = next((l for l in proc.stdout.splitlines() if l.startswith(MARK)), None)
      if proc.returncode != 0 or line is None:
        raise RuntimeError(f"start-up child ({name}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
      results[name] = dict(json.loads(line[len(MARK) :]), process_seconds=wall)
      r = results[name]
      print(
        f"{name:<11} import {r['import_seconds']:.1f}s  loaded {r['loaded_seconds']:.1f}s  "
        f"first token {r['first_token_seconds']:.1f}s  first generation ({r['new_tokens']} tokens) "
        f"{r['first_generation_seconds']:.1f}s  compile {r['compile_seconds']:.1f}s",
        flush=True,
      )
  cold, warm = results["cold_cache"], results["warm_cache"]
  results["warm_speedup_first_token"] = cold["first_token_seconds"] / warm["first_token_seconds"]
  results["warm_speedup_after_load"] = (cold["first_token_seconds"] - cold["loaded_seconds"]) / max(
    warm["first_token_seconds"] - warm["loaded_seconds"], 1e-9
  )
  print(
    f"warm cache: first token {results['warm_speedup_first_token']:.2f}x sooner "
    f"({results['warm_speedup_after_load']:.2f}x counting from the end of loading)"
  )
  return results
