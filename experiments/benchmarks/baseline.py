"""Decode tokens/s of this checkout against another one (``--baseline``, say the commit before a change),
in one run: fresh processes alternate between the two checkouts, so both see the same machine load.

  python experiments/benchmark.py --baseline=/tmp/before     # a `git worktree add /tmp/before <commit>`

Rows (demo checkpoint, batch 16, 64 tokens, no early stop): greedy; sampled (T=0.7, top_p=0.95,
min_p=0.05); and for this checkout also sampled with per-token log-probabilities recorded
(``logprobs=True, top_logprobs=5``). Run as a script it is the child that measures one checkout
(``python experiments/benchmarks/baseline.py --child``, with that checkout first on PYTHONPATH): the
child imports nothing but the library of the checkout it measures (not :mod:`benchmarks.common`, which
the other checkout may lack or have in another form).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import flags

flags.DEFINE_string(
  "baseline",
  None,
  "Another checkout (e.g. `git worktree add /tmp/before <commit>`): decode "
  "tokens/s of both, greedy / sampled / sampled with log-probabilities recorded, in alternating "
  "fresh processes (experiments/benchmarks/baseline.py). Runs only these rows.",
)

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))  # this checkout
SETTINGS = {"greedy": dict(temperature=0.0), "sampled": dict(temperature=0.7, top_p=0.95, min_p=0.05)}
ROW_NAMES = {"baseline": lambda r: f"vs baseline: {r['mode']}"}


def _child(batch: int = 16, new_tokens: int = 64, repeats: int = 3) -> dict:
  import inspect

  import smollm3_jax
  from smollm3_jax.loading import load_model_and_tokenizer

  model, tok = load_model_and_tokenizer({"checkpoint": "demo"})
  text = tok.apply_chat_template(
    [{"role": "user", "content": "Tell me a story about a dragon."}],
    add_generation_prompt=True,
    tokenize=False,
    date="2025-06-15",
  )
  ids = tok.encode(text)
  records = "logprobs" in inspect.signature(smollm3_jax.generate).parameters
  # Before continuous batching the first token came from prefill: decode ran new_tokens - 1 steps.
  steps = new_tokens if "slot_utilization" in smollm3_jax.GenerationStats.__dataclass_fields__ else new_tokens - 1
  runs = dict(SETTINGS)
  if records:
    runs["sampled + logprobs"] = dict(SETTINGS["sampled"], logprobs=True, top_logprobs=5)
  out = {"checkout": os.path.dirname(os.path.dirname(smollm3_jax.__file__))}
  for label, kw in runs.items():
    times = []
    for rep in range(repeats + 1):
      r = smollm3_jax.generate(
        model, tok, [ids] * batch, max_new_tokens=new_tokens, stop_ids=[], seed=list(range(batch)), **kw
      )
      if rep:  # the first run compiles
        times.append(r.stats.decode_seconds)
    out[label] = batch * steps / min(times)
  return out


def _run(checkout: str) -> dict:
  env = dict(os.environ, PYTHONPATH=checkout)
  proc = subprocess.run(
    [sys.executable, HERE, "--child"], env=env, capture_output=True, text=True, timeout=1200, cwd=checkout
  )
  line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
  if proc.returncode or line is None:
    raise RuntimeError(f"baseline child failed in {checkout}:\n{proc.stderr[-3000:]}")
  return json.loads(line[7:])


def bench_baseline(baseline: str, rounds: int = 2) -> list[dict]:
  """Rows comparing this checkout with ``baseline``: best tokens/s of ``rounds`` alternating runs."""
  from benchmarks.common import print_row

  best: dict[str, dict[str, float]] = {"baseline": {}, "current": {}}
  for _ in range(rounds):
    for name, path in (("baseline", baseline), ("current", ROOT)):
      for label, value in _run(path).items():
        if label != "checkout":
          best[name][label] = max(best[name].get(label, 0.0), value)
  rows = []
  for label, value in best["current"].items():
    base = best["baseline"].get(label, best["current"].get("sampled"))
    row = dict(
      kind="baseline",
      mode=label,
      ours_tokens_per_second=value,
      theirs_tokens_per_second=base,
      ratio=value / base,
      baseline=baseline,
    )
    rows.append(row)
    print_row(row)
  return rows


def targets(rows) -> list[str]:
  from benchmarks.common import target

  out = []
  for r in rows:
    if r["kind"] != "baseline":
      continue
    if r["mode"] == "sampled + logprobs":
      out.append(f"  recording log-probabilities costs: {r['ratio']:.2f}x the sampled decode tokens/s (printed)")
    else:
      out += target(f"{r['mode']} decode vs the baseline checkout", r["ratio"], 0.97, "{:.2f}x")
  return out


if __name__ == "__main__" and "--child" in sys.argv:
  print("RESULT " + json.dumps(_child()), flush=True)
