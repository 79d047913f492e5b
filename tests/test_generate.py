"""Generation engine: parity with transformers' generate, per-row settings, stops, compile counts, streaming."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import smollm3_jax
from smollm3_jax.generation.engine import COMPILE_COUNTS, Engine

NEW = 32


PAD_PROMPT = [17, 203, 88]  # the fixture makes its greedy first token the pad id


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_hf_model):
  """A tiny random SmolLM3 (8 layers, NoPE every 4th, GQA 4, vocabulary 512 = two sampling blocks)
  saved by transformers, loaded by us, with decisive logits: conftest's O(1) activations and the LM
  head scaled x4 give |logit| <= ~16 and a median top-two gap of 0.85 (Hugging Face's default
  init gives |logit| <= 0.57 and a gap of 0.08, on which a flipped RoPE sign still passes).

  Its pad id is the greedy first token of PAD_PROMPT, so a pad slot counted as a seen token
  changes that prompt's first token under a repetition penalty."""
  ref = make_hf_model(seed=5, tie_word_embeddings=False)
  with torch.no_grad():
    ref.lm_head.weight.mul_(4.0)
  ref.config.pad_token_id = _hf_greedy(ref, PAD_PROMPT, new=1)[0]
  path = tmp_path_factory.mktemp("tiny_generate")
  ref.save_pretrained(path)
  model = smollm3_jax.from_pretrained(str(path))
  assert model.config.pad_token_id == ref.config.pad_token_id
  return model, ref


def _prompts(lengths, seed=0):
  rs = np.random.RandomState(seed)
  return [rs.randint(1, 250, n).tolist() for n in lengths]


def _hf_greedy(ref, prompt, new=NEW, repetition_penalty=1.0):
  with torch.no_grad():
    out = ref.generate(
      torch.tensor([prompt]),
      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
      max_new_tokens=new,
      do_sample=False,
      repetition_penalty=repetition_penalty,
      eos_token_id=None,
      pad_token_id=0,
      top_k=None,
      top_p=None,
    )
  return out[0, len(prompt) :].tolist()


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
      res = smollm3_jax.generate(
        model,
        None,
        prompts,
        engine=engine,
        max_new_tokens=8,
        stop_ids=[],
        temperature=temperature,
        repetition_penalty=penalty,
        seed=3,
      )
      assert [len(c.token_ids) for c in res] == [8, 8, 8]
  assert COMPILE_COUNTS["prefill"] - before.get("prefill", 0) == 1
  assert COMPILE_COUNTS["decode"] - before.get("decode", 0) == 1


def test_row_depends_only_on_its_prompt_settings_and_seed(tiny):
  model, _ = tiny
  prompts = _prompts([5, 12, 8, 14])
  kw = dict(max_new_tokens=16, stop_ids=[])
  alone = smollm3_jax.generate(model, None, [prompts[1]], temperature=0.9, top_p=0.9, seed=[1234], **kw)
  batch = smollm3_jax.generate(
    model,
    None,
    prompts,
    temperature=[1.0, 0.9, 0.0, 0.5],
    top_p=[1.0, 0.9, 1.0, 0.8],
    repetition_penalty=[1.2, 1.0, 1.0, 1.1],
    seed=[7, 1234, 8, 9],
    **kw,
  )
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
      assert c.token_ids == f.token_ids[: hit + 1]  # the stop token is reported, the text excludes it
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
  with pytest.raises(ValueError, match=r"context_length.*\[2, 512\]"):  # 512 = max_position_embeddings
    smollm3_jax.generate(model, None, prompts, max_new_tokens=4, context_length=10**6)


@pytest.mark.parametrize(
  "kwargs, name",
  [
    (dict(temperature=-0.1), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=0), "max_new_tokens"),
  ],
)
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
  res = smollm3_jax.generate(
    model, tok, [prompt, prompt], engine=engine, max_new_tokens=24, stop_ids=[], newline_limit=[limit, 0]
  )
  guarded, unguarded = res
  assert guarded.stop_reason == "newlines"
  assert guarded.token_ids == free[:expected]
  assert guarded.text.endswith("\n" * limit)
  assert unguarded.stop_reason == "max_tokens" and unguarded.token_ids == free


def test_shared_prefill_gives_the_same_tokens(tiny):
  model, _ = tiny
  distinct = _prompts([5, 12, 9])
  # Repeats before the last distinct prompt first appears: row i's prompt is not prompt i.
  prompts = [distinct[i] for i in (0, 0, 1, 0, 2, 1, 2, 2, 0, 1)]
  kw = dict(
    max_new_tokens=12,
    stop_ids=[],
    temperature=[0.0, 0.8] * 5,
    repetition_penalty=[1.0] * 5 + [1.3] * 5,
    seed=list(range(10)),
  )
  plain = smollm3_jax.generate(model, None, prompts, share_prefill=False, **kw)
  shared = smollm3_jax.generate(model, None, prompts, share_prefill=True, **kw)
  assert [c.token_ids for c in shared] == [c.token_ids for c in plain]
  assert (plain.stats.prefilled_prompts, shared.stats.prefilled_prompts) == (10, 3)
  before = dict(COMPILE_COUNTS)
  flipped = {k: (v[::-1] if isinstance(v, list) and k != "stop_ids" else v) for k, v in kw.items()}
  again = smollm3_jax.generate(model, None, prompts[::-1], share_prefill=True, **flipped)
  assert [c.token_ids for c in again] == [c.token_ids for c in shared][::-1]
  assert dict(COMPILE_COUNTS) == before  # same shapes: every program reused


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


# --------------------------------------------------------------------------------------------
# Stop rules and penalties at their edges (each of these once let a planted bug through)
# --------------------------------------------------------------------------------------------
def test_pad_slots_are_not_penalised(tiny):
  """Prompts are left-padded to a bucket: only the real prompt counts as seen for the penalty.
  The pad id here is PAD_PROMPT's greedy first token, and a penalty of 3 would demote it."""
  model, ref = tiny
  pad = model.config.pad_token_id
  assert pad not in PAD_PROMPT
  with torch.no_grad():
    first = ref(torch.tensor([PAD_PROMPT])).logits[0, -1]
  top2 = first.topk(2).values
  assert int(first.argmax()) == pad and top2[0] / 3 < top2[1]  # a penalised pad would lose the argmax
  long = _prompts([20], seed=3)[0]
  res = smollm3_jax.generate(
    model, None, [PAD_PROMPT, long], max_new_tokens=6, stop_ids=[], repetition_penalty=[3.0, 1.0]
  )
  assert res[0].token_ids == _hf_greedy(ref, PAD_PROMPT, new=6, repetition_penalty=3.0)
  assert res[0].token_ids[0] == pad


def test_stop_token_on_the_last_allowed_step_is_eos(tiny):
  """A row whose budget ends exactly on a stop token stopped on the stop token (eos), not on
  its budget."""
  model, _ = tiny
  prompt = _prompts([7], seed=4)[0]
  free = smollm3_jax.generate(model, None, [prompt], max_new_tokens=12, stop_ids=[])[0].token_ids
  k = max(i for i in range(1, 12) if free[i] not in free[:i])  # a token's first appearance
  res = smollm3_jax.generate(model, None, [prompt, prompt], max_new_tokens=[k + 1, k + 2], stop_ids=[free[k]])
  for c in res:
    assert (c.stop_reason, c.token_ids) == ("eos", free[: k + 1])


class _IdTokenizer:
  """Decodes every id as "<id>" (stop ids included): shows which ids reached the text."""

  vocab_size = 512
  stop_token_ids = ()

  def decode(self, ids, skip_special_tokens=False):
    return "".join(f"<{i}>" for i in ids)


def test_stop_token_is_reported_but_not_in_the_text(tiny):
  model, _ = tiny
  prompt = _prompts([8], seed=5)[0]
  free = smollm3_jax.generate(model, None, [prompt], max_new_tokens=10, stop_ids=[])[0].token_ids
  k = next(i for i in range(2, 10) if free[i] not in free[:i])
  tok = _IdTokenizer()
  c = smollm3_jax.generate(model, tok, [prompt], max_new_tokens=10, stop_ids=[free[k]], engine=Engine(model, tok))[0]
  assert c.stop_reason == "eos" and c.token_ids == free[: k + 1]
  assert c.text == tok.decode(free[:k]) and c.answer == c.text


def _newline_stop(tokens, newline_ids, limit):
  """Reference guard: (stop index + 1) after ``limit`` consecutive newline tokens, else None."""
  run = 0
  for i, t in enumerate(tokens):
    run = run + 1 if t in newline_ids else 0
    if run >= limit:
      return i + 1
  return None


def test_newline_guard_counts_consecutive_newlines_only(tiny):
  """A newline token that appears alone, before a later one, does not start a run."""
  model, _ = tiny
  prompt = _prompts([7])[0]
  free = smollm3_jax.generate(model, None, [prompt], max_new_tokens=24, stop_ids=[])[0].token_ids
  # Two "newline" tokens that each appear but never next to one another: a guard with limit 2
  # must not fire (one that never resets its count stops at the second).
  newline_ids = next(
    {a, b} for a, b in itertools.combinations(sorted(set(free)), 2) if _newline_stop(free, {a, b}, 2) is None
  )
  tok = _NewlineTokenizer(model.config.vocab_size, newline_ids)
  res = smollm3_jax.generate(
    model, tok, [prompt], engine=Engine(model, tok), max_new_tokens=24, stop_ids=[], newline_limit=2
  )
  assert res[0].stop_reason == "max_tokens" and res[0].token_ids == free


def test_row_seeds_are_distinct_and_reproducible():
  """Per-row seeds from a base seed: distinct across 4096 rows, the same on every call, different
  for another base; explicit per-row seeds pass through unchanged."""
  from smollm3_jax.generation.api import row_seeds

  a = row_seeds(11, 4096)
  assert a.dtype == np.uint32 and len(set(a.tolist())) == 4096
  np.testing.assert_array_equal(a, row_seeds(11, 4096))
  np.testing.assert_array_equal(a[:5], row_seeds(11, 5))  # a row's seed does not depend on n
  assert not set(a.tolist()) & set(row_seeds(12, 4096).tolist()[:16])
  assert row_seeds([5, 5, 2**32 - 1], 3).tolist() == [5, 5, 2**32 - 1]


def test_one_decode_program_per_read_window_used(tiny):
  """A row that writes past slot 256 moves from the 256-slot read window to the 512 one: two decode
  programs, each compiled once; a second run compiles nothing. Tokens equal an engine that reads the
  whole cache every step."""
  model, _ = tiny
  prompt = _prompts([250])[0]
  kw = dict(max_new_tokens=12, stop_ids=[], temperature=0.0)
  engine = Engine(model, None, buckets=(256, 512), batch_buckets=(1,))
  before = dict(COMPILE_COUNTS)
  windowed = smollm3_jax.generate(model, None, [prompt], engine=engine, **kw)[0].token_ids
  assert COMPILE_COUNTS["decode"] - before.get("decode", 0) == 2
  again = dict(COMPILE_COUNTS)
  assert smollm3_jax.generate(model, None, [prompt], engine=engine, **kw)[0].token_ids == windowed
  assert dict(COMPILE_COUNTS) == again
  whole = Engine(model, None, buckets=(256, 512), batch_buckets=(1,), window_buckets=())
  assert smollm3_jax.generate(model, None, [prompt], engine=whole, **kw)[0].token_ids == windowed
