"""End to end on the real demo checkpoint (SmolLM2-135M-Instruct GGUF): generation vs transformers."""

from __future__ import annotations

import pytest
import torch

import smollm3_jax


@pytest.fixture(scope="module")
def ours(demo_model, demo_tokenizer):
  return demo_model, demo_tokenizer


@pytest.fixture(scope="module")
def theirs(demo_hf_model):
  return demo_hf_model


def test_greedy_48_tokens_equal_transformers(ours, theirs):
  model, tok = ours
  prompt = "Give me three tips for learning to play the guitar."
  res = smollm3_jax.generate(
    model, tok, [prompt], max_new_tokens=48, stop_ids=[], temperature=0.0, repetition_penalty=1.0, top_p=1.0
  )  # plain greedy (the demo's defaults sample)
  ids = res[0].prompt_token_ids
  with torch.no_grad():
    out = theirs.generate(
      torch.tensor([ids]),
      attention_mask=torch.ones(1, len(ids), dtype=torch.long),
      max_new_tokens=48,
      do_sample=False,
      top_k=None,
      top_p=None,
      temperature=None,
      eos_token_id=None,
      pad_token_id=tok.pad_token_id,
    )
  assert res[0].token_ids == out[0, len(ids) :].tolist()
  assert len(res[0].token_ids) == 48


def test_capital_of_france_is_paris(ours):
  model, tok = ours
  res = smollm3_jax.generate(model, tok, ["What is the capital of France?"], max_new_tokens=32, temperature=0.0)
  c = res[0]
  assert "Paris" in c.answer
  assert c.stop_reason == "eos"
  assert c.token_ids[-1] in tok.stop_token_ids


def test_stream_equals_generate_on_demo(ours):
  model, tok = ours
  kw = dict(max_new_tokens=24, temperature=0.7, top_p=0.9, seed=3)
  full = smollm3_jax.generate(model, tok, ["Write one sentence about autumn."], **kw)[0]
  pieces = list(smollm3_jax.stream(model, tok, "Write one sentence about autumn.", chunk_steps=4, **kw))
  assert "".join(pieces) == full.text
