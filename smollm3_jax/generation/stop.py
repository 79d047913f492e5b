"""Where a row ends: stop ids (tokens that end it, kept in its ``token_ids`` and left out of its
text) and stop strings (text that ends it, cut from its text with what follows; reason "stop").
One home for their defaults and checks: the API, beam search, the sweep and the server read them here.
"""

from __future__ import annotations

import numpy as np

from smollm3_jax.generation.decode import MAX_STOP_IDS
from smollm3_jax.utils import validation

MAX_STOP_STRINGS = 4  # stop strings per call (OpenAI's limit)


def check_stop(stop) -> tuple[str, ...]:
  """Stop strings as a tuple: None, one non-empty string or a list of up to :data:`MAX_STOP_STRINGS`."""
  if stop is None:
    return ()
  if isinstance(stop, str):
    stop = (stop,)
  if not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) and x for x in stop):
    raise ValueError(f"stop: a non-empty string or a list of them, got {stop!r}")
  if len(stop) > MAX_STOP_STRINGS:
    raise ValueError(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
  return tuple(stop)


def cut_stop(text: str, stop) -> str:
  """``text`` up to the first of the stop strings it contains (all of it when none)."""
  hits = [text.find(x) for x in stop if x in text]
  return text[: min(hits)] if hits else text


def stop_string_hit(tokenizer, ids: list[int], stop, checked: int) -> int | None:
  """The smallest k > checked with a stop string in the text of ids[:k] (the token that completes
  it ends the row, as ``transformers``' stop strings), else None."""
  longest = max(len(x) for x in stop)
  for k in range(checked + 1, len(ids) + 1):
    # The stop string ends within token k-1: decoding a tail of a few tokens is enough.
    tail = tokenizer.decode(ids[max(0, k - longest - 4) : k])
    if any(x in tail for x in stop):
      return k
  return None


def default_stop_ids(tokenizer, config) -> tuple[int, ...]:
  """The ids that end a row when the caller names none: the tokenizer's stop ids (its eos and the
  chat template's end-of-turn), else the model config's eos ids."""
  return tuple(tokenizer.stop_token_ids) if tokenizer is not None else tuple(config.eos_token_id)


def check_stop_ids(stop_ids, tokenizer, config) -> tuple[int, ...]:
  """``stop_ids`` (None: :func:`default_stop_ids`; an int or a sequence) checked against the
  vocabulary and the limit of :data:`~smollm3_jax.generation.decode.MAX_STOP_IDS`."""
  if stop_ids is None:
    stop_ids = default_stop_ids(tokenizer, config)
  if isinstance(stop_ids, (int, np.integer)):
    stop_ids = (stop_ids,)
  stop_ids = tuple(validation.check_token_ids("stop_ids", list(stop_ids), config.vocab_size))
  if len(stop_ids) > MAX_STOP_IDS:
    raise ValueError(f"stop_ids: at most {MAX_STOP_IDS} stop ids, got {len(stop_ids)}")
  return stop_ids
