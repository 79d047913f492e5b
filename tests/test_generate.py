"""Generation engine: parity with transformers' generate, per-row settings, stops, compile counts, streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import smollm3_jax
from smollm3_jax import config as C
from smollm3_jax.generate import COMPILE_COUNTS, Engine

NEW = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny random SmolLM3 (8 layers, NoPE every 4th, GQA 4) saved by transformers, loaded by us."""
  cfg = C.tiny(vocab_size=256)
  hf_cfg = transformers.SmolLM3Config(**{k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"})
  torch.manual_seed(0)
  ref = transformers.SmolLM3ForCausalLM(hf_cfg).eval()
  path = tmp_path_factory.mktemp("tiny_generate")
  ref.save_pretrained(path)
  model = smollm3_jax.from_pretrained(str(path))
  return model, ref


def _prompts(lengths, seed=0):
  rs = np.random.RandomState(seed)
  return [rs.randint(1, 250, n).tolist() for n in lengths]


def _hf_greedy(ref, prompt, new=NEW, repetition_penalty=1.0):
  with torch.no_grad():
    out = ref.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                       max_new_tokens=new, do_sample=False, repetition_penalty=repetition_penalty,
                       eos_token_id=None, pad_token_id=0, top_k=None, top_p=None)
  return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_single_prompt_equals_transformers(tiny, penalty):
  model, ref = tiny
  prompt = _prompts([9])[0]
  res = smollm3_jax.generate(model, None, [prompt], max_new_tokens=NEW, stop_ids=[], repetition_penalty=penalty)
  assert res[0].token_ids == _hf_greedy(ref, prompt, repetition_penalty=penalty)
  assert res[0].stop_reason == "max_tokens"
  assert len(res[0].token_ids) == NEW


def test_greedy_batch_of_different_lengths_equals_transformers_row_by_row(tiny):
  model, ref = tiny
  prompts = _prompts([3, 11, 17, 6, 25])
  penalties = [1.0, 1.3, 1.0, 1.2, 1.5]
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=NEW, stop_ids=[], repetition_penalty=penalties)
  for prompt, pen, c in zip(prompts, penalties, res):
    assert c.token_ids == _hf_greedy(ref, prompt, repetition_penalty=pen)
    assert c.prompt_token_ids == prompt


def test_compiles_once_for_lengths_and_settings_in_a_bucket(tiny):
  model, _ = tiny
  engine = Engine(model)
  prompts = _prompts([4, 10, 19])
  before = dict(COMPILE_COUNTS)
  for temperature in (0.0, 0.7, 1.2):
    for penalty in (1.0, 1.1, 1.4):
      res = smollm3_jax.generate(model, None, prompts, engine=engine, max_new_tokens=8, stop_ids=[],
                                 temperature=temperature, repetition_penalty=penalty, seed=3)
      assert [len(c.token_ids) for c in res] == [8, 8, 8]
  assert COMPILE_COUNTS["prefill"] - before.get("prefill", 0) == 1
  assert COMPILE_COUNTS["decode"] - before.get("decode", 0) == 1


def test_row_depends_only_on_its_prompt_settings_and_seed(tiny):
  model, _ = tiny
  prompts = _prompts([5, 12, 8, 14])
  kw = dict(max_new_tokens=16, stop_ids=[])
  alone = smollm3_jax.generate(model, None, [prompts[1]], temperature=0.9, top_p=0.9, seed=[1234], **kw)
  batch = smollm3_jax.generate(model, None, prompts, temperature=[1.0, 0.9, 0.0, 0.5], top_p=[1.0, 0.9, 1.0, 0.8],
                               repetition_penalty=[1.2, 1.0, 1.0, 1.1], seed=[7, 1234, 8, 9], **kw)
  assert alone[0].token_ids == batch[1].token_ids
  again = smollm3_jax.generate(model, None, [prompts[1]], temperature=0.9, top_p=0.9, seed=[1234], **kw)
  assert again[0].token_ids == alone[0].token_ids
  other = smollm3_jax.generate(model, None, [prompts[1]], temperature=0.9, top_p=0.9, seed=[4321], **kw)
  assert other[0].token_ids != alone[0].token_ids


def test_base_seed_derives_distinct_row_seeds(tiny):
  model, _ = tiny
  prompt = _prompts([6])[0]
  res = smollm3_jax.generate(model, None, [prompt] * 4, temperature=1.0, seed=11, max_new_tokens=12, stop_ids=[])
  assert len({tuple(c.token_ids) for c in res}) > 1  # identical prompts, different derived seeds
  again = smollm3_jax.generate(model, None, [prompt] * 4, temperature=1.0, seed=11, max_new_tokens=12, stop_ids=[])
  assert [c.token_ids for c in res] == [c.token_ids for c in again]


def test_per_row_stops_and_reasons(tiny):
  model, _ = tiny
  prompts = _prompts([5, 9, 13])
  free = smollm3_jax.generate(model, None, prompts, max_new_tokens=20, stop_ids=[])
  # Stop on the token row 0 emits at step 4 unless another row emits it earlier.
  stop = free[0].token_ids[4]
  first_hit = [c.token_ids.index(stop) if stop in c.token_ids else None for c in free]
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=[20, 20, 7], stop_ids=[stop])
  for c, f, hit, budget in zip(res, free, first_hit, [20, 20, 7]):
    if hit is not None and hit < budget:
      assert c.stop_reason == "eos"
      assert c.token_ids == f.token_ids[:hit + 1]  # the stop token is reported, the text excludes it
    else:
      assert c.stop_reason == "max_tokens"
      assert c.token_ids == f.token_ids[:budget]
  assert res[0].stop_reason == "eos" and len(res[0].token_ids) <= 5


def test_context_stop_and_context_error(tiny):
  model, _ = tiny
  prompts = _prompts([10, 4])
  res = smollm3_jax.generate(model, None, prompts, max_new_tokens=40, stop_ids=[], context_length=24)
  assert [c.stop_reason for c in res] == ["context", "context"]
  assert [len(c.token_ids) for c in res] == [14, 20]  # prompt + generated == context
  with pytest.raises(ValueError, match="prompt 1 has 30 tokens.*context of 24"):
    smollm3_jax.generate(model, None, _prompts([5, 30]), max_new_tokens=4, context_length=24)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    smollm3_jax.generate(model, None, prompts, max_new_tokens=4, context_length=10**6)


@pytest.mark.parametrize("kwargs, name", [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=0), "max_new_tokens"),
])
def test_bad_arguments_raise_before_compiling(tiny, kwargs, name):
  model, _ = tiny
  before = dict(COMPILE_COUNTS)
  with pytest.raises(ValueError, match=name):
    smollm3_jax.generate(model, None, _prompts([5]), **{"max_new_tokens": 4, **kwargs})
  assert dict(COMPILE_COUNTS) == before


def test_empty_prompt_raises(tiny):
  model, _ = tiny
  with pytest.raises(ValueError, match="prompt 1 is empty"):
    smollm3_jax.generate(model, None, [[1, 2], []], max_new_tokens=4)


def test_stats_are_filled(tiny):
  model, _ = tiny
  res = smollm3_jax.generate(model, None, _prompts([5, 7]), max_new_tokens=6, stop_ids=[])
  s = res.stats
  assert s.prompt_tokens == 12 and s.generated_tokens == 12
  assert s.prefill_seconds > 0 and s.time_to_first_token >= s.prefill_seconds
  assert s.decode_tokens_per_second > 0 and s.compile_seconds >= 0


class _NewlineTokenizer:
  """Decodes a chosen set of ids as "\\n" (everything else as "x"): drives the newline guard."""

  def __init__(self, vocab_size, newline_ids):
    self.vocab_size = vocab_size
    self.newline_ids = set(newline_ids)
    self.stop_token_ids = ()

  def decode(self, ids, skip_special_tokens=False):
    return "".join("\n" if i in self.newline_ids else "x" for i in ids)


def test_newline_guard_stops_after_n_consecutive_newline_tokens(tiny):
  model, _ = tiny
  prompt = _prompts([7])[0]
  free = smollm3_jax.generate(model, None, [prompt], max_new_tokens=24, stop_ids=[])[0].token_ids
  newline_ids = {free[5], free[6]}
  limit = 2
  run, expected = 0, None
  for i, t in enumerate(free):
    run = run + 1 if t in newline_ids else 0
    if run >= limit:
      expected = i + 1
      break
  tok = _NewlineTokenizer(model.config.vocab_size, newline_ids)
  engine = Engine(model, tok)
  res = smollm3_jax.generate(model, tok, [prompt, prompt], engine=engine, max_new_tokens=24, stop_ids=[],
                             newline_limit=[limit, 0])
  guarded, unguarded = res
  assert guarded.stop_reason == "newlines"
  assert guarded.token_ids == free[:expected]
  assert guarded.text.endswith("\n" * limit)
  assert unguarded.stop_reason == "max_tokens" and unguarded.token_ids == free


def test_shared_prefill_gives_the_same_tokens(tiny):
  model, _ = tiny
  distinct = _prompts([5, 12, 9])
  prompts = [distinct[i % 3] for i in range(10)]
  kw = dict(max_new_tokens=12, stop_ids=[], temperature=[0.0, 0.8] * 5, repetition_penalty=[1.0] * 5 + [1.3] * 5,
            seed=list(range(10)))
  plain = smollm3_jax.generate(model, None, prompts, **kw)
  before = dict(COMPILE_COUNTS)
  shared = smollm3_jax.generate(model, None, prompts, share_prefill=True, **kw)
  assert [c.token_ids for c in shared] == [c.token_ids for c in plain]
  assert COMPILE_COUNTS["prefill"] - before.get("prefill", 0) == 1  # its own program: 3 distinct -> 4 rows
  smollm3_jax.generate(model, None, prompts[::-1], share_prefill=True, **kw)
  assert COMPILE_COUNTS["prefill"] - before.get("prefill", 0) == 1  # same buckets: reused


def test_weights_assigned_after_a_call_are_used_by_the_next(tiny):
  model, _ = tiny
  prompt = _prompts([6])[0]
  before = smollm3_jax.generate(model, None, [prompt], max_new_tokens=8, stop_ids=[])[0].token_ids
  layer = model.norm.scale
  original = layer[...]
  try:
    layer[...] = original * 0  # ablate the final norm: every logit becomes 0, argmax token 0
    ablated = smollm3_jax.generate(model, None, [prompt], max_new_tokens=8, stop_ids=[])[0].token_ids
    fresh = smollm3_jax.generate(model, None, [prompt], max_new_tokens=8, stop_ids=[], engine=Engine(model))
    assert ablated == fresh[0].token_ids
  finally:
    layer[...] = original
  assert smollm3_jax.generate(model, None, [prompt], max_new_tokens=8, stop_ids=[])[0].token_ids == before
  assert ablated == [0] * 8 and ablated != before
