"""The decode program sorts nothing of vocabulary width, with every filter on (top-k, top-p, min-p)."""

from __future__ import annotations

import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

import smollm3_jax
from smollm3_jax import config as C
from smollm3_jax import sampling
from smollm3_jax.engine import Engine
from smollm3_jax.decode import decode_jit


def _decode_hlo(params) -> str:
  model = smollm3_jax.SmolLM3(C.tiny(vocab_size=1000), dtype=jnp.float32, rngs=nnx.Rngs(0))
  engine = Engine(model, None, buckets=(16, 32), batch_buckets=(4,))
  n, batch = engine.prepare([[5, 6, 7]] * 4, params=params, seeds=np.arange(4, dtype=np.uint32),
                            max_new_tokens=np.full(4, 8), newline_limit=np.zeros(4, np.int64), stop_ids=[])
  state, _ = next(iter(engine.run(n, batch)))
  return decode_jit.lower(engine.graphdef, engine.state, state, batch.rows, batch.shared, np.int32(8),
                          window=32).compile().as_text()


def test_decode_program_has_no_vocabulary_sort():
  params = sampling.SamplingParams.make(4, temperature=[0.7, 1.0, 0.7, 0.0], top_k=[0, 50, 0, 0],
                                        top_p=[0.95, 0.9, 1.0, 1.0], min_p=[0.05, 0.0, 0.1, 0.0])
  hlo = _decode_hlo(params)
  assert "while" in hlo  # the decode loop is there
  sorts = [line for line in hlo.splitlines() if re.search(r"\bsort\(", line)]
  assert not sorts, sorts[:3]
  # The check can fail: a program that sorts the logits shows it.
  import jax
  text = jax.jit(lambda x: jnp.sort(x, axis=-1)).lower(jnp.zeros((4, 1000))).compile().as_text()
  assert any(re.search(r"\bsort\(", line) for line in text.splitlines())


def test_signed_zero_ties_are_kept_like_transformers():
  """-0.0 and +0.0 are equal values: a top-k cut-off at zero keeps both, as TopKLogitsWarper does
  (order keys that told them apart dropped one)."""
  import torch
  from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

  logits = np.asarray([[0.0, -0.0, -1.0, -2.0], [-0.0, 0.0, 1.0, -3.0]], np.float32)
  ours = np.asarray(sampling.apply_top_k(jnp.asarray(logits), jnp.asarray([1, 2], jnp.int32)))
  for row, k in enumerate((1, 2)):
    ref = TopKLogitsWarper(k)(None, torch.tensor(logits[row:row + 1])).numpy()
    np.testing.assert_array_equal(np.isinf(ours[row:row + 1]), np.isinf(ref))
  ours_p = np.asarray(sampling.apply_top_p(jnp.asarray(logits[:1]), jnp.asarray([0.3], jnp.float32)))
  assert np.isfinite(ours_p[0, :2]).all()  # the two zeros are one value: both kept or both dropped
