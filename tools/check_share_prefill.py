"""Shared prefill changes no row: the demo sweep's shape (the first 24 bundled prompts x thinking
off/on, T=0.6, top_p=0.95, the checkpoint's repetition penalty, one seed per row) through few slots,
with ``share_prefill`` on and off; prints how many rows differ (0 expected).

  .venv/bin/python tools/check_share_prefill.py [--slots=8] [--max_new_tokens=64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--slots", type=int, default=8)
  parser.add_argument("--max_new_tokens", type=int, default=64)
  parser.add_argument("--prompts", type=int, default=24)
  args = parser.parse_args()

  import smollm3_jax
  from smollm3_jax.sweep import plan, presets

  model, tok = smollm3_jax.from_pretrained("demo"), smollm3_jax.Tokenizer.from_pretrained("demo")
  prompts = plan.load_prompts(presets.PROMPT_SET, limit=args.prompts)
  texts = [p["prompt"] for p in prompts for _ in (False, True)]
  thinking = [think for _ in prompts for think in (False, True)]
  seeds = [plan.row_seed(0, p["id"], f"think={int(think)}", 0) for p in prompts for think in (False, True)]
  out = {}
  for share in (True, False):
    t0 = time.perf_counter()
    res = smollm3_jax.generate(
      model,
      tok,
      texts,
      thinking=thinking,
      temperature=0.6,
      top_p=0.95,
      seed=seeds,
      max_new_tokens=args.max_new_tokens,
      slots=args.slots,
      share_prefill=share,
      date="2025-06-15",
    )
    out[share] = [c.token_ids for c in res]
    print(
      f"share_prefill={share}: {len(res)} rows, {sum(map(len, out[share]))} tokens, {time.perf_counter() - t0:.1f} s",
      flush=True,
    )
  differ = [i for i, (a, b) in enumerate(zip(out[True], out[False])) if a != b]
  print(f"rows differing between share_prefill on and off: {len(differ)} of {len(texts)} {differ}")
  sys.exit(1 if differ else 0)


if __name__ == "__main__":
  main()
