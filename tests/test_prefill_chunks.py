"""Prompts prefill into their slots in fixed-size chunks (long ones with a progress bar), token-equal
to transformers, and the cache they leave equals transformers' keys and values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import smollm3_jax
from smollm3_jax.generation.engine import COMPILE_COUNTS, Engine
from smollm3_jax.utils import backend


@pytest.fixture(scope="module")
def tied(hf_checkpoints):
  ckpt = hf_checkpoints("tied")
  return ckpt, smollm3_jax.from_pretrained(ckpt.path)


def _greedy_reference(ckpt, prompt: list[int], new: int) -> list[int]:
  """transformers' greedy continuation of ``prompt`` (no stop token)."""
  with torch.no_grad():
    ref = ckpt.model.generate(
      torch.tensor([prompt]),
      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
      max_new_tokens=new,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    )
  return ref[0, len(prompt) :].tolist()


def test_chunked_prefill_equals_transformers(tied, capsys):
  ckpt, model = tied
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 512, size=150).tolist(), rng.integers(3, 512, size=20).tolist()]
  # Cache 256 slots: the long prompt's first 149 tokens take three calls of 64, the short one's 19 one
  # call (one prompt per call): one program, one read window. Its last token runs in the first decode step.
  engine = Engine(model, None, buckets=(64, 128, 256, 512), batch_buckets=(2,), prefill_chunk=64)
  before = dict(COMPILE_COUNTS)
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=8, temperature=0.0, engine=engine)
  assert COMPILE_COUNTS["prefill"] - before.get("prefill", 0) == 1
  assert res.stats.cache_length == 256
  for prompt, c in zip(prompts, res):
    expected = _greedy_reference(ckpt, prompt, 8)
    assert c.token_ids == expected[: len(c.token_ids)] and len(c.token_ids) == 8
  # The same programs run a prompt that fills almost every slot.
  long = [rng.integers(3, 512, size=250).tolist()]
  capsys.readouterr()
  before = dict(COMPILE_COUNTS)
  again = smollm3_jax.generate(model, None, long, max_new_tokens=4, temperature=0.0, engine=engine, slots=2)
  assert dict(COMPILE_COUNTS) == before
  assert "prefill" in capsys.readouterr().err  # four chunks: a progress bar
  with torch.no_grad():
    ref = ckpt.model.generate(
      torch.tensor(long),
      attention_mask=torch.ones(1, 250, dtype=torch.long),
      max_new_tokens=4,
      do_sample=False,
      eos_token_id=None,
      pad_token_id=0,
    )
  assert again[0].token_ids == ref[0, 250:].tolist()


def test_chunked_prefill_cache_equals_transformers_keys_and_values(tied):
  """Greedy tokens alone are a weak check of positions; the cache after prefill is a strong one."""
  from smollm3_jax.generation.engine import Request

  ckpt, model = tied
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, 512, size=150).tolist(), rng.integers(3, 512, size=90).tolist()]
  engine = Engine(model, None, buckets=(64, 128, 256, 512), batch_buckets=(2,), prefill_chunk=64)
  pool = engine.pool(2, 256)
  pool.submit([Request(prompt=p, max_new=4) for p in prompts])
  pool._admit()  # prefill and insert, no decode step yet: slots [0, len - 1) hold the prompt
  state = pool.state
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      out = ckpt.model(torch.tensor([prompt]), use_cache=True)
    cache = out.past_key_values
    for layer in range(ckpt.config.num_hidden_layers):
      ref_k, ref_v = cache.layers[layer].keys[0].numpy(), cache.layers[layer].values[0].numpy()
      filled = len(prompt) - 1  # the last token is written by the first decode step
      ours_k = np.asarray(state.cache.k[layer][row, :, :filled])  # slot = position
      ours_v = np.asarray(state.cache.v[layer][row, :, :filled])
      ref_k, ref_v = ref_k[:, :filled], ref_v[:, :filled]
      np.testing.assert_allclose(ours_k, ref_k, rtol=2e-4, atol=2e-4 * np.abs(ref_k).max())
      np.testing.assert_allclose(ours_v, ref_v, rtol=2e-4, atol=2e-4 * np.abs(ref_v).max())


def test_the_accelerators_prefill_shape_equals_transformers(tied):
  # The TPU/GPU choices (utils.backend): prefill chunks wider than the CPU's 64, here 128 (a 200-token
  # prompt in two calls, the second partly padding; a 37-token prompt in one), whose attention takes
  # the queries in blocks (here of 16, at every window).
  ckpt, model = tied
  choices = dataclasses.replace(backend.choices("cpu"), prefill_chunk=128, query_block=16, query_block_window=0)
  engine = Engine(model, None, buckets=(128, 256, 512), batch_buckets=(2,), choices=choices)
  assert engine.prefill_chunk == 128
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, 512, size=200).tolist(), rng.integers(3, 512, size=37).tolist()]
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=8, temperature=0.0, engine=engine)
  for prompt, c in zip(prompts, res):
    assert c.token_ids == _greedy_reference(ckpt, prompt, 8)


def _attention_numpy(q, k, v, mask):
  """Grouped-query softmax attention in float64: q [B, T, H, D], k/v [B, KVH, S, D], mask [B, T, S]."""
  b, t, h, d = q.shape
  g = h // k.shape[1]
  kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)  # [B, H, S, D]
  scores = np.einsum("bthd,bhsd->bhts", q, kk) / np.sqrt(d)
  scores = np.where(mask[:, None], scores, -np.inf)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhts,bhsd->bthd", p, vv).reshape(b, t, h * d)


def test_attention_in_query_blocks_equals_the_formula():
  import jax
  import jax.numpy as jnp

  from smollm3_jax.nn import model as model_lib

  rng = np.random.default_rng(2)
  q = rng.standard_normal((2, 40, 8, 16))
  k, v = rng.standard_normal((2, 2, 2, 64, 16))
  mask = np.tril(np.ones((40, 64), bool), k=24)[None].repeat(2, 0)
  mask[1, :, :5] = False  # rows differ: a block must take its own rows of the mask
  ref = _attention_numpy(q, k, v, mask)
  for block in (0, 16, 7):  # off, dividing 40 unevenly, not dividing it
    args = (*(jnp.asarray(a, jnp.float32) for a in (q, k, v)), jnp.asarray(mask))
    out = jax.jit(lambda *a, b=block: model_lib.attend(*a, query_block=b))(*args)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-5, atol=2e-5)
