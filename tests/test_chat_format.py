"""The chat date: pinned, parsed, and the only thing that differs between two days' prompts."""

from __future__ import annotations

import datetime

import jax.numpy as jnp
import pytest
from flax import nnx

import smollm3_jax
from smollm3_jax.nn import config as C
from smollm3_jax.text import chat_format

MESSAGES = [{"role": "user", "content": "What day is it?"}]


@pytest.fixture(scope="module")
def tok(smollm3_template_tokenizer):
  return smollm3_template_tokenizer


def test_resolve_date_forms(monkeypatch):
  assert chat_format.resolve_date("2025-03-05") == datetime.datetime(2025, 3, 5)
  assert chat_format.resolve_date(datetime.date(2025, 3, 5)) == datetime.datetime(2025, 3, 5)
  moment = datetime.datetime(2025, 3, 5, 7, 8)
  assert chat_format.resolve_date(moment) is moment
  assert chat_format.today_string("2025-03-05") == "05 March 2025"
  assert chat_format.iso_date(datetime.date(2024, 2, 29)) == "2024-02-29"
  monkeypatch.setenv(chat_format.DATE_ENV, "2030-12-31")
  assert chat_format.iso_date(None) == "2030-12-31"
  for bad in ("2025-13-01", "yesterday", 20250305):
    with pytest.raises(ValueError, match="date"):
      chat_format.resolve_date(bad)


def test_default_date_follows_the_clock_and_a_pinned_one_does_not(tok, clock):
  clock("2031-02-03")
  day1 = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
  pinned1 = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, date="2025-01-01")
  clock("2031-02-04")
  day2 = tok.apply_chat_template(MESSAGES, add_generation_prompt=True)
  pinned2 = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, date="2025-01-01")
  assert "Today Date: 03 February 2031" in day1 and "Today Date: 04 February 2031" in day2
  assert pinned1 == pinned2 and "Today Date: 01 January 2025" in pinned1
  # The Python formatter (checkpoints without a template) takes the same date.
  assert chat_format.format_smollm3_chat(MESSAGES, add_generation_prompt=True, date="2025-01-01") == pinned1


def test_generate_with_a_pinned_date_is_the_same_on_any_day(tok, clock):
  model = smollm3_jax.SmolLM3(C.tiny(vocab_size=tok.vocab_size), dtype=jnp.float32, rngs=nnx.Rngs(3))
  kw = dict(temperature=1.0, seed=7, max_new_tokens=6, date="2025-01-01")
  clock("2031-02-03")
  a = smollm3_jax.generate(model, tok, ["Hi"], **kw)[0]
  clock("2031-02-04")
  b = smollm3_jax.generate(model, tok, ["Hi"], **kw)[0]
  assert a.prompt == b.prompt and a.prompt_token_ids == b.prompt_token_ids and a.token_ids == b.token_ids
  # Unpinned, the prompt follows the day (what a pinned date protects a resumed sweep from).
  c = smollm3_jax.generate(model, tok, ["Hi"], **{**kw, "date": None})[0]
  assert "04 February 2031" in c.prompt and c.prompt_token_ids != b.prompt_token_ids
