"""The sampling settings, on the host: the registry (:data:`SETTINGS`: name, off value, dtype, range,
help) and their validation, in numpy, before anything is traced. ``SamplingParams.make``, the
API, the server, the sweep and the CLI flags all read it; the traced chain is
:mod:`smollm3_jax.generation.sampling`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import numpy as np

from smollm3_jax.utils import validation

MAX_LOGIT_BIAS = 16  # (id, bias) pairs per row for ``logit_bias``
# Largest ``no_repeat_ngram_size``: blocking compares the history once per n-gram position (O(L x n)
# per step), so an unbounded n would stall the decode loop; n-grams longer than this are not a
# setting anyone sweeps (transformers' usual values are 2-10).
MAX_NO_REPEAT_NGRAM = 64
_F32_MAX = float(np.finfo(np.float32).max)
_I32_MAX = int(np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class Setting:
  """One sampling setting: its off value, dtype, help line and range check.

  ``check(arr)`` gets the values as float64 numpy (finite, checked before) and returns an error
  message, or None when they are in range. ``integer``: values must be whole numbers."""

  off: Any
  dtype: type
  help: str
  check: Callable[[np.ndarray], str | None]
  integer: bool = False


def _rule(ok: Callable[[np.ndarray], np.ndarray], message: str) -> Callable[[np.ndarray], str | None]:
  return lambda arr: None if np.all(ok(arr)) else message


# The registry, in the order of SamplingParams' fields (logit_bias last: two fields, ids and values).
SETTINGS: dict[str, Setting] = {
  "temperature": Setting(
    0.0,
    np.float32,
    "0 = greedy (argmax of the processed logits).",
    _rule(lambda a: a >= 0, "must be >= 0 (0 = greedy)"),
  ),
  "top_k": Setting(
    0,
    np.int32,
    "Keep the k most likely tokens; 0 = off.",
    _rule(lambda a: a >= 0, "must be >= 0 (0 = off)"),
    integer=True,
  ),
  "top_p": Setting(
    1.0,
    np.float32,
    "Nucleus: keep the smallest set with this mass; 1 = off.",
    _rule(lambda a: (a > 0) & (a <= 1), "must be in (0, 1] (1 = off)"),
  ),
  "min_p": Setting(
    0.0,
    np.float32,
    "Drop tokens below min_p x the top probability; 0 = off.",
    _rule(lambda a: (a >= 0) & (a <= 1), "must be in [0, 1] (0 = off)"),
  ),
  "repetition_penalty": Setting(
    1.0,
    np.float32,
    "Divide (logit > 0) or multiply the logits of prompt and generated tokens; 1 = off.",
    _rule(lambda a: a > 0, "must be > 0 (1 = off)"),
  ),
  "typical_p": Setting(
    1.0,
    np.float32,
    "Locally typical sampling (Meister et al. 2022): keep the tokens closest to the entropy up to this mass; 1 = off.",
    _rule(lambda a: (a > 0) & (a <= 1), "must be in (0, 1] (1 = off)"),
  ),
  "epsilon_cutoff": Setting(
    0.0,
    np.float32,
    "Drop tokens with probability < epsilon (Hewitt et al. 2022); 0 = off.",
    _rule(lambda a: (a >= 0) & (a < 1), "must be in [0, 1) (0 = off)"),
  ),
  "eta_cutoff": Setting(
    0.0,
    np.float32,
    "Drop tokens with probability < min(eta, sqrt(eta) exp(-entropy)) (Hewitt et al. 2022); 0 = off.",
    _rule(lambda a: (a >= 0) & (a < 1), "must be in [0, 1) (0 = off)"),
  ),
  "no_repeat_ngram_size": Setting(
    0,
    np.int32,
    f"Ban every token that would repeat an n-gram of the prompt or the answer; 0 = off, at most {MAX_NO_REPEAT_NGRAM}.",
    _rule(lambda a: (a >= 0) & (a <= MAX_NO_REPEAT_NGRAM), f"must be in [0, {MAX_NO_REPEAT_NGRAM}] (0 = off)"),
    integer=True,
  ),
  "frequency_penalty": Setting(
    0.0,
    np.float32,
    "OpenAI / vLLM: subtract penalty x count of each generated token from its logit; in [-2, 2], 0 = off.",
    _rule(lambda a: (a >= -2) & (a <= 2), "must be in [-2, 2] (0 = off)"),
  ),
  "presence_penalty": Setting(
    0.0,
    np.float32,
    "OpenAI / vLLM: subtract penalty from the logit of every token generated so far; in [-2, 2], 0 = off.",
    _rule(lambda a: (a >= -2) & (a <= 2), "must be in [-2, 2] (0 = off)"),
  ),
  "min_new_tokens": Setting(
    0,
    np.int32,
    "The stop ids are masked until a row generated this many tokens; 0 = off.",
    _rule(lambda a: a >= 0, "must be >= 0 (0 = off)"),
    integer=True,
  ),
  "logit_bias": Setting(
    {},
    np.float32,
    f"OpenAI: {{token id: bias}} added to the logits (at most {MAX_LOGIT_BIAS} ids per row); empty = off.",
    lambda a: None,
  ),
}


def _clip(value: Any, limit: int = 80) -> str:
  """repr(value), cut to ``limit`` characters (an error message never echoes a huge value whole)."""
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + "..."


def as_host_array(name: str, value: Any, batch: int | None) -> np.ndarray:
  """Scalar or sequence -> 1-D float64 numpy array (length-checked)."""
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError, OverflowError):  # (OverflowError: an int beyond float64)
    raise ValueError(f"`{name}` must be a number or a sequence of numbers, got {_clip(value)}") from None
  if arr.ndim > 1:
    raise ValueError(f"`{name}` must be a scalar or 1-D, got shape {arr.shape}")
  if arr.ndim == 1 and batch is not None and arr.shape[0] != batch:
    raise ValueError(f"`{name}` has length {arr.shape[0]}, expected batch size {batch}")
  if arr.ndim == 0 and batch is not None:
    arr = np.full((batch,), float(arr))
  return np.atleast_1d(arr)


def bias_pairs(value: Any, batch: int | None, vocab_size: int | None) -> tuple[np.ndarray, np.ndarray]:
  """``logit_bias`` -> ids [R, MAX_LOGIT_BIAS] int32 (-1 = none) and biases [R, MAX_LOGIT_BIAS] f32.

  ``value``: None / one mapping {token id: bias} for every row, or a sequence of per-row mappings
  (R = its length; with ``batch``, one mapping is repeated to ``batch`` rows). Ids are ints >= 0
  (< ``vocab_size`` when given); a bias is a finite float32 number."""
  if value is None or isinstance(value, Mapping):
    rows = [value or {}] * (1 if batch is None else batch)
  elif isinstance(value, (list, tuple)) and all(v is None or isinstance(v, Mapping) for v in value):
    rows = [v or {} for v in value]
    if batch is not None and len(rows) != batch:
      raise ValueError(f"`logit_bias` has length {len(rows)}, expected batch size {batch}")
  else:
    raise ValueError(f"`logit_bias` must be a mapping {{token id: bias}} or a sequence of them, got {value!r}")
  ids = np.full((len(rows), MAX_LOGIT_BIAS), -1, np.int32)
  bias = np.zeros((len(rows), MAX_LOGIT_BIAS), np.float32)
  for r, row in enumerate(rows):
    if len(row) > MAX_LOGIT_BIAS:
      raise ValueError(f"`logit_bias` has {len(row)} ids in a row, at most {MAX_LOGIT_BIAS} are supported")
    for j, (tok, b) in enumerate(row.items()):
      if isinstance(tok, str) and tok.strip().isdigit():  # JSON keys arrive as strings
        tok_i = int(tok)
      elif isinstance(tok, (int, np.integer)) and not isinstance(tok, bool) and tok >= 0:
        tok_i = int(tok)
      else:
        raise ValueError(f"`logit_bias` token ids must be integers >= 0, got {tok!r}")
      if tok_i > _I32_MAX:
        raise ValueError(f"`logit_bias` token id {tok_i} is too large")
      if vocab_size is not None and tok_i >= vocab_size:
        raise ValueError(f"`logit_bias` token id {tok_i} is outside the vocabulary (size {vocab_size})")
      if (
        isinstance(b, bool)
        or not isinstance(b, (int, float, np.integer, np.floating))
        or not np.isfinite(b)
        or abs(b) > _F32_MAX
      ):
        raise ValueError(f"`logit_bias` biases must be finite numbers, got {b!r} for id {tok_i}")
      ids[r, j], bias[r, j] = tok_i, b
  return ids, bias


def validate_sampling_args(*, batch: int | None = None, vocab_size: int | None = None, **kwargs: Any) -> None:
  """Host-side check of sampling settings; raises ValueError naming the parameter.

  Each keyword is a name of :data:`SETTINGS`, a scalar or a length-``batch`` sequence
  (``logit_bias``: a mapping {id: bias} or a sequence of them). ``vocab_size``, when given, bounds
  the ``logit_bias`` ids. Runs in numpy: call it before jit.
  """
  if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1):
    raise ValueError(f"`batch` must be a positive int, got {batch!r}")
  for name, value in kwargs.items():
    if name not in SETTINGS:
      raise ValueError(f"unknown sampling parameter `{name}`; expected one of {sorted(SETTINGS)}")
    if name == "logit_bias":
      bias_pairs(value, batch, vocab_size)
      continue
    setting = SETTINGS[name]
    arr = as_host_array(name, value, batch)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"`{name}` must be finite, got {value!r}")
    if np.any(np.abs(arr) > _F32_MAX):  # becomes inf in the f32 program
      raise ValueError(f"`{name}` is too large for float32, got {value!r}")
    if setting.integer:
      if np.any(arr != np.round(arr)):
        raise ValueError(f"`{name}` must be an integer, got {value!r}")
      if np.any(np.abs(arr) > _I32_MAX):
        raise ValueError(f"`{name}` is too large, got {value!r}")
    message = setting.check(arr)
    if message:
      raise ValueError(f"`{name}` {message}, got {value!r}")


def check_limits(
  model,
  *,
  context_length: int | None,
  max_new_tokens: Any,
  chunk_steps: Any,
  max_name: str = "max_new_tokens",
  **sampling_settings: Any,
) -> int:
  """Checks the limits a chat session and the server share (and sampling settings); returns the context length (default:
  the model's ``max_position_embeddings``). ValueError names the bad setting."""
  validate_sampling_args(**sampling_settings)
  limit = model.config.max_position_embeddings
  context = (
    limit if context_length is None else validation.as_count("context_length", context_length, low=2, high=limit)
  )
  validation.as_count(max_name, max_new_tokens, low=1)
  validation.as_count("chunk_steps", chunk_steps, low=1)
  return context


def row_seeds(seed, n: int) -> np.ndarray:
  """Per-row seeds [n] uint32: given per row, or derived from a base seed and the row's index.
  Seeds are integers in [0, 2**32 - 1] (ValueError otherwise: never truncated or wrapped)."""
  if isinstance(seed, (list, tuple, np.ndarray)) and np.ndim(seed) == 1:
    return validation.as_seeds("seed", seed, n).astype(np.uint32)
  base = np.uint64(validation.as_count("seed", seed, low=0, high=validation.UINT32_MAX))
  idx = np.arange(n, dtype=np.uint64)
  mixed = base * np.uint64(0x9E3779B1) + idx * np.uint64(0x85EBCA77) + np.uint64(0x165667B1)
  return (mixed & np.uint64(0xFFFFFFFF)).astype(np.uint32)
