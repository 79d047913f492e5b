"""Checks of user input at the door: counts, seeds, flags, token ids and chat messages.

Every entry point (``generate`` / ``stream``, the sweep config, the scripts' flags, the server) runs
these on the host before anything is compiled, so a bad value fails at once with a ValueError that
names the argument, instead of being truncated, wrapped or turned into NaNs inside a program.
Imports nothing from the package (numpy only), so any module may use it.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
ROLES = ("system", "user", "assistant", "tool")


def _integer(name: str, value: Any) -> int:
  """``value`` as a Python int if it is an integer (int, numpy integer, or an integral finite float
  such as JSON's 3.0); ValueError naming ``name`` otherwise (bools, strings, None, 2.7, inf)."""
  if isinstance(value, (bool, np.bool_)) or value is None:
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
    return int(value)
  raise ValueError(f"{name} must be an integer, got {value!r}")


def as_count(name: str, value: Any, *, low: int = 0, high: int = INT32_MAX) -> int:
  """An integer in ``[low, high]`` (a token count, a limit, a size), else ValueError naming it."""
  out = _integer(name, value)
  if not low <= out <= high:
    raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
  return out


def per_row(name: str, value: Any, n: int) -> list:
  """``value`` as n values: a scalar repeated, or a sequence / 1-D array of exactly n values."""
  if isinstance(value, np.ndarray):
    if value.ndim == 0:
      return [value.item()] * n
    if value.ndim != 1:
      raise ValueError(f"{name}: expected a scalar or {n} values (one per prompt), got shape {value.shape}")
    value = value.tolist()
  if isinstance(value, (list, tuple)):
    if len(value) != n:
      raise ValueError(f"{name}: expected a scalar or {n} values (one per prompt), got {len(value)}")
    return list(value)
  return [value] * n


def as_counts(name: str, value: Any, n: int, *, low: int = 0, high: int = INT32_MAX) -> np.ndarray:
  """Per-row counts [n] int64, each checked as :func:`as_count` (the message names the row)."""
  rows = per_row(name, value, n)
  return np.asarray(
    [as_count(name if n == 1 else f"{name}[{i}]", v, low=low, high=high) for i, v in enumerate(rows)], np.int64
  )


def as_seeds(name: str, value: Any, n: int) -> np.ndarray:
  """Per-row seeds [n] as uint32-range int64: integers in [0, 2**32 - 1]."""
  return as_counts(name, value, n, low=0, high=UINT32_MAX)


def as_bool(name: str, value: Any) -> bool:
  """A real bool (``True``/``False``, numpy bools); strings such as "no" or "false" and numbers are
  refused rather than read by truthiness."""
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  raise ValueError(f"{name} must be True or False, got {value!r}")


def as_bools(name: str, value: Any, n: int) -> np.ndarray:
  """Per-row bools [n], each checked as :func:`as_bool`."""
  rows = per_row(name, value, n)
  return np.asarray([as_bool(name if n == 1 else f"{name}[{i}]", v) for i, v in enumerate(rows)], bool)


def check_token_ids(name: str, ids: Sequence[Any], vocab_size: int) -> list[int]:
  """Token ids as ints, each in ``[0, vocab_size)``; ValueError names the first bad one."""
  arr = np.asarray(ids) if not isinstance(ids, np.ndarray) else ids
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D sequence of token ids, got shape {arr.shape}")
  if arr.dtype.kind not in "iu":  # bools, floats, strings, ints beyond int64: check one by one
    arr = np.asarray(
      [
        _integer(f"{name}[{j}]", t) if abs(_integer(f"{name}[{j}]", t)) < 2**62 else -1
        for j, t in enumerate(arr.tolist())
      ],
      np.int64,
    )
  bad = (arr < 0) | (arr >= vocab_size)
  if bad.any():
    j = int(np.argmax(bad))
    raise ValueError(f"{name}[{j}] = {ids[j]} is not a token id of this model (ids are in [0, {vocab_size}))")
  return arr.astype(np.int64).tolist()


def check_messages(messages: Any) -> list[dict]:
  """A chat message list checked for the template: a non-empty list of dicts, each with a ``role``
  in :data:`ROLES` and a string ``content`` (OpenAI text parts ``[{"type": "text", "text": ...}]``
  are joined into one string). Other keys are kept (tool calls, reasoning). Returns copies;
  ValueError names the offending message."""
  if not isinstance(messages, (list, tuple)) or not messages:
    raise ValueError("messages must be a non-empty list of {role, content} objects")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, Mapping):
      raise ValueError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
    if "role" not in m:
      raise ValueError(f"messages[{i}] has no 'role'")
    role = m["role"]
    if role not in ROLES:
      raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}; got {role!r}")
    if "content" not in m:
      raise ValueError(f"messages[{i}] has no 'content'")
    content = m["content"]
    if isinstance(content, list):  # OpenAI content parts: only text parts are understood
      texts = []
      for j, part in enumerate(content):
        if not (isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)):
          raise ValueError(f"messages[{i}].content[{j}] must be a text part {{'type': 'text', 'text': str}}")
        texts.append(part["text"])
      content = "".join(texts)
    if not isinstance(content, str):
      raise ValueError(f"messages[{i}].content must be a string, got {type(content).__name__}")
    out.append({**m, "content": content})
  return out


def is_ids(x: Any) -> bool:
  """Whether ``x`` is meant as one sequence of token ids: a 1-D numpy array, or a non-empty list/tuple
  whose first item is an int (its other items are checked by :func:`check_token_ids`, which names a
  bad one, rather than the sequence being taken for something else)."""
  return (isinstance(x, np.ndarray) and x.ndim == 1) or (
    isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (int, np.integer)) and not isinstance(x[0], bool)
  )


def is_messages(x: Any) -> bool:
  """Whether ``x`` is one chat (a non-empty list/tuple whose first item is a message dict)."""
  return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], dict)
