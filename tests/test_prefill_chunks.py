"""Long prompts prefill in chunks (with a progress bar), token-equal to transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smollm3_jax
from smollm3_jax.engine import COMPILE_COUNTS, Engine


@pytest.fixture(scope="module")
def tied(hf_checkpoints):
  ckpt = hf_checkpoints("tied")
  return ckpt, smollm3_jax.from_pretrained(ckpt.path)


def test_chunked_prefill_equals_transformers(tied, capsys):
  ckpt, model = tied
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 512, size=150).tolist(), rng.integers(3, 512, size=20).tolist()]
  # Slots 256: two chunks of 64 cover the longest row up to its last 64 tokens, which (like the short
  # row's whole prompt) run in the prefill program; the fourth chunk holds only padding and never runs.
  engine = Engine(model, None, buckets=(64, 128, 256, 512), batch_buckets=(2,), prefill_chunk=64)
  before = dict(COMPILE_COUNTS)
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=8, temperature=0.0, engine=engine)
  assert COMPILE_COUNTS["prefill_chunk"] - before.get("prefill_chunk", 0) == 1
  assert res.stats.prompt_bucket == 256
  assert "prefill" in capsys.readouterr().err  # the progress bar
  for prompt, c in zip(prompts, res):
    with torch.no_grad():
      ref = ckpt.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = ref[0, len(prompt):].tolist()
    assert c.token_ids == expected[:len(c.token_ids)] and len(c.token_ids) == 8
  # The same programs run a prompt that fills almost every slot.
  long = [rng.integers(3, 512, size=250).tolist()]
  again = smollm3_jax.generate(model, None, long, max_new_tokens=4, temperature=0.0, engine=engine)
  with torch.no_grad():
    ref = ckpt.model.generate(torch.tensor(long), attention_mask=torch.ones(1, 250, dtype=torch.long),
                              max_new_tokens=4, do_sample=False, eos_token_id=None, pad_token_id=0)
  assert again[0].token_ids == ref[0, 250:].tolist()


def test_chunked_prefill_cache_equals_transformers_keys_and_values(tied):
  """Greedy tokens alone are a weak check of positions; the cache after prefill is a strong one."""
  from smollm3_jax import sampling

  ckpt, model = tied
  rng = np.random.default_rng(1)
  prompts = [rng.integers(3, 512, size=150).tolist(), rng.integers(3, 512, size=90).tolist()]
  engine = Engine(model, None, buckets=(64, 128, 256, 512), batch_buckets=(2,), prefill_chunk=64)
  n, args = engine.prepare(prompts, params=sampling.SamplingParams.make(2), seeds=np.zeros(2, np.uint32),
                           max_new_tokens=np.array([4, 4]), newline_limit=np.zeros(2, np.int64), stop_ids=[])
  state, _ = next(iter(engine.run(n, args)))  # right after prefill
  for row, prompt in enumerate(prompts):
    with torch.no_grad():
      out = ckpt.model(torch.tensor([prompt]), use_cache=True)
    cache = out.past_key_values
    for layer in range(ckpt.config.num_hidden_layers):
      ref_k, ref_v = cache.layers[layer].keys[0].numpy(), cache.layers[layer].values[0].numpy()
      ours_k = np.asarray(state.cache.k[layer][row, :, :len(prompt)])  # slot = position
      ours_v = np.asarray(state.cache.v[layer][row, :, :len(prompt)])
      np.testing.assert_allclose(ours_k, ref_k, rtol=2e-4, atol=2e-4 * np.abs(ref_k).max())
      np.testing.assert_allclose(ours_v, ref_v, rtol=2e-4, atol=2e-4 * np.abs(ref_v).max())
