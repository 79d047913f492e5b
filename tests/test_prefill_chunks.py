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
    with torch.no_grad():
      ref = ckpt.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
      )
    expected = ref[0, len(prompt) :].tolist()
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
  # The TPU/GPU choice (utils.backend): prefill chunks wider than the CPU's 64, here 128 (a 200-token
  # prompt in two calls, the second partly padding; a 37-token prompt in one).
  ckpt, model = tied
  choices = dataclasses.replace(backend.choices("cpu"), prefill_chunk=128)
  engine = Engine(model, None, buckets=(128, 256, 512), batch_buckets=(2,), choices=choices)
  assert engine.prefill_chunk == 128
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, 512, size=200).tolist(), rng.integers(3, 512, size=37).tolist()]
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=8, temperature=0.0, engine=engine)
  for prompt, c in zip(prompts, res):
    with torch.no_grad():
      ref = ckpt.model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
      )
    assert c.token_ids == ref[0, len(prompt) :].tolist()
