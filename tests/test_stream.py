"""Streaming and thinking mode on a tiny random model with a SmolLM3-format tokenizer."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import smollm3_jax
from smollm3_jax.nn import config as C


@pytest.fixture(scope="module")
def tok(smollm3_template_tokenizer):
  """The demo tokenizer with SmolLM3's own chat template (thinking mode)."""
  return smollm3_template_tokenizer


@pytest.fixture(scope="module")
def model(tok):
  cfg = C.tiny(vocab_size=tok.vocab_size)
  return smollm3_jax.SmolLM3(cfg, dtype=jnp.float32, rngs=nnx.Rngs(1))


def test_thinking_flag_maps_to_enable_thinking(model, tok):
  res = smollm3_jax.generate(model, tok, ["Hi there", "Hi there"], thinking=[True, False], max_new_tokens=3)
  on, off = res
  assert on.prompt == tok.apply_chat_template(
    [{"role": "user", "content": "Hi there"}], add_generation_prompt=True, enable_thinking=True
  )
  assert on.prompt.endswith("<|im_start|>assistant\n") and "/think" in on.prompt
  assert off.prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n") and "/no_think" in off.prompt
  for c in res:
    assert (c.thinking, c.answer) == smollm3_jax.split_thinking(c.text)
    assert c.settings["thinking"] in (True, False)
  assert on.settings["thinking"] is True and off.settings["thinking"] is False


def test_stream_pieces_concatenate_to_generated_text(model, tok):
  # Random sampling over the byte-level vocabulary produces characters split over several tokens.
  # Not every draw does: sample 16 seeds at once and stream one whose text has such a character
  # (the chance that none of 16 x 40 random tokens does is negligible, whatever the float rounding).
  kw = dict(temperature=1.0, max_new_tokens=40, thinking=False)
  seeds = list(range(16))
  batch = smollm3_jax.generate(model, tok, ["Tell me something"] * 16, seed=seeds, **kw)
  row = next(i for i, c in enumerate(batch) if any(ord(ch) > 127 for ch in c.text))
  full = batch[row]
  s = smollm3_jax.stream(model, tok, "Tell me something", chunk_steps=3, seed=[seeds[row]], **kw)
  pieces = list(s)
  assert len(pieces) > 1
  assert "".join(pieces) == full.text == s.result[0].text
  assert s.result[0].token_ids == full.token_ids
  assert all("\ufffd" not in p for p in pieces[:-1])


def test_stream_reuses_compiled_programs(model, tok):
  from smollm3_jax.generation.engine import COMPILE_COUNTS

  # (the same prompt: another length may reach another read-window bucket, one more program)
  list(smollm3_jax.stream(model, tok, "again", max_new_tokens=12, chunk_steps=2))
  before = dict(COMPILE_COUNTS)
  for chunk in (1, 2, 5):
    list(smollm3_jax.stream(model, tok, "again", max_new_tokens=12, chunk_steps=chunk, temperature=0.5))
  assert dict(COMPILE_COUNTS) == before


def test_stream_rejects_bad_input_before_compiling(model, tok):
  with pytest.raises(ValueError, match="chunk_steps"):
    smollm3_jax.stream(model, tok, "hi", chunk_steps=0)
  with pytest.raises(ValueError, match="top_p"):
    smollm3_jax.stream(model, tok, "hi", top_p=2.0)
  with pytest.raises(ValueError, match="empty"):
    smollm3_jax.stream(model, tok, "   ")


def test_the_largest_chunk_is_one_chunk(model, tok):
  # (the step limit of a chunk is capped at the buffer: step + 2**31 - 1 would overflow int32)
  s = smollm3_jax.stream(model, tok, "hi", max_new_tokens=3, chunk_steps=2**31 - 1, temperature=0.0)
  assert "".join(s) == s.result[0].text and 1 <= len(s.result[0].token_ids) <= 3


def test_stop_strings_end_rows_at_the_token_that_completes_them(model, tok):
  """A row stops at the first token whose text completes a stop string (reason "stop"), its tokens are
  the unstopped row's up to there, and the string and what follows are cut from the text; streamed
  the same."""
  kw = dict(temperature=0.0, max_new_tokens=24, stop_ids=[], thinking=False)
  free = smollm3_jax.generate(model, tok, ["Tell me a story."], **kw)[0]
  text = tok.decode(free.token_ids)
  # A stop string made of the middle of the free text, across a token boundary.
  cut = len(tok.decode(free.token_ids[:6]))
  stop = text[cut - 2 : cut + 3]
  assert len(stop) == 5 and stop in text
  res = smollm3_jax.generate(model, tok, ["Tell me a story."], stop=[stop, "never appears"], **kw)[0]
  k = next(k for k in range(1, len(free.token_ids) + 1) if stop in tok.decode(free.token_ids[:k]))
  assert res.stop_reason == "stop" and res.token_ids == free.token_ids[:k]
  assert res.text == text[: text.index(stop)]
  s = smollm3_jax.stream(model, tok, "Tell me a story.", stop=stop, **kw)
  assert "".join(s) == res.text and s.result.completions[0].token_ids == res.token_ids
  with pytest.raises(ValueError, match="stop"):
    smollm3_jax.generate(model, tok, ["hi"], stop=["a", "b", "c", "d", "e"], **kw)


def test_a_cancelled_stream_ends_with_what_it_decoded(model, tok):
  """cancel() after the first piece: the loop ends after at most one more chunk, and the result is the
  row cut there (reason "cancelled"), its tokens the start of the uncancelled row's."""
  kw = dict(temperature=0.0, max_new_tokens=48, stop_ids=[], thinking=False)
  free = smollm3_jax.generate(model, tok, ["Tell me a story."], **kw)[0]
  s = smollm3_jax.stream(model, tok, "Tell me a story.", chunk_steps=4, **kw)
  pieces = []
  for piece in s:
    pieces.append(piece)
    s.cancel()
  c = s.result[0]
  assert c.stop_reason == "cancelled" and len(c.token_ids) < 48
  assert c.token_ids == free.token_ids[: len(c.token_ids)]
  assert "".join(pieces) == c.text == tok.decode(c.token_ids)


def test_chunks_longer_than_one_copy_slice_lose_no_token(model, tok):
  """A decode chunk that makes more tokens than the host copies in one slice (engine.TAIL): the row is
  still the one a short-chunk run gives, token for token, with its log-probabilities."""
  from smollm3_jax.generation.engine import TAIL

  kw = dict(temperature=0.0, max_new_tokens=2 * TAIL + 9, stop_ids=[], thinking=False, logprobs=True)
  short = smollm3_jax.generate(model, tok, ["Tell me a story."], **kw)[0]
  s = smollm3_jax.stream(model, tok, "Tell me a story.", chunk_steps=2 * TAIL + 9, **kw)
  "".join(s)
  long = s.result[0]
  assert len(long.token_ids) == 2 * TAIL + 9 and long.token_ids == short.token_ids
  np.testing.assert_array_equal(long.logprobs.logprob, short.logprobs.logprob)
  np.testing.assert_array_equal(long.logprobs.rank, short.logprobs.rank)


@pytest.mark.parametrize(
  "call, needle",
  [
    (lambda m, t: smollm3_jax.generate(m, t, ["hi"], chat="no"), "chat"),
    (lambda m, t: smollm3_jax.generate(m, t, ["hi"], split_special_tokens="no"), "split_special_tokens"),
    (lambda m, t: smollm3_jax.generate(m, t, ["hi"], share_prefill="no"), "share_prefill"),
    (lambda m, t: smollm3_jax.generate(m, t, ["hi"], progress="no"), "progress"),
    (lambda m, t: smollm3_jax.stream(m, t, "hi", hide_thinking="no"), "hide_thinking"),
    (lambda m, t: smollm3_jax.score(m, t, ["hi"], [" there"], chat="no"), "chat"),
    (lambda m, t: smollm3_jax.generate(m, t, ["hi"], temperature=10**400), "temperature"),
    (lambda m, t: smollm3_jax.generate(m, t, ["hi"], top_k=10**400), "top_k"),
    (lambda m, t: smollm3_jax.generate(m, t, ["a\ud800b"]), "prompt 0"),
    (lambda m, t: smollm3_jax.generate(m, t, [[{"role": "user", "content": "x\udfffy"}]]), "prompt 0"),
  ],
  ids=[
    "chat",
    "split_special_tokens",
    "share_prefill",
    "progress",
    "hide_thinking",
    "score_chat",
    "huge_temperature",
    "huge_top_k",
    "surrogate_text",
    "surrogate_message",
  ],
)
def test_mistyped_arguments_are_refused_by_name_before_compiling(model, tok, call, needle):
  """Flags given as strings ("no" is truthy), integers beyond float64 and text with a lone surrogate:
  a ValueError naming the argument, before anything compiles."""
  from smollm3_jax.generation.engine import COMPILE_COUNTS

  before = dict(COMPILE_COUNTS)
  with pytest.raises(ValueError, match=needle):
    call(model, tok)
  assert dict(COMPILE_COUNTS) == before
