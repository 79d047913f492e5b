"""Hugging Face tensor names -> NNX parameter paths, and building a model from a tensor source.

A *tensor source* is a mapping ``hf_name -> TensorInfo`` whose entries know their shape and dtype
(from a file header, cheap) and can read their data on demand. :func:`build_model` validates the
whole source against the abstract model (missing / unexpected tensors, shapes, dtypes) before it
reads anything, then reads, converts and places one tensor at a time, so peak host memory stays
near one tensor beyond what ``place`` keeps.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import re
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.nn.config import SmolLM3Config
from smollm3_jax.nn.model import SmolLM3, abstract_model

ParamPath = tuple  # e.g. ("layers", 3, "self_attn", "q_proj", "kernel")
Place = Callable[[ParamPath, np.ndarray], jax.Array]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """One stored tensor: HF-layout ``shape`` ([out, in] for linear weights), its stored dtype name
  (e.g. "BF16", "Q4_1") and whether that dtype converts to floats, and ``read()`` -> np.ndarray."""

  shape: tuple[int, ...]
  dtype: str
  is_float: bool
  read: Callable[[], np.ndarray]
  origin: str = ""  # the file it lives in, for error messages


# HF name patterns -> (param path template, transpose?). "{i}" is the layer index.
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_PARAMS = {
  **{f"self_attn.{n}_proj.weight": (("self_attn", f"{n}_proj", "kernel"), True) for n in "qkvo"},
  **{f"self_attn.{n}_proj.bias": (("self_attn", f"{n}_proj", "bias"), False) for n in "qkvo"},
  **{f"mlp.{n}_proj.weight": (("mlp", f"{n}_proj", "kernel"), True) for n in ("gate", "up", "down")},
  **{f"mlp.{n}_proj.bias": (("mlp", f"{n}_proj", "bias"), False) for n in ("gate", "up", "down")},
  "input_layernorm.weight": (("input_layernorm", "scale"), False),
  "post_attention_layernorm.weight": (("post_attention_layernorm", "scale"), False),
}
_TOP_PARAMS = {
  "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
  "model.norm.weight": (("norm", "scale"), False),
  "lm_head.weight": (("lm_head", "kernel"), True),
}
# Stored tensors that carry no parameters (old checkpoints saved RoPE buffers).
_IGNORED_RE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def hf_to_param(name: str) -> tuple[ParamPath, bool] | None:
  """(param path, transpose?) for an HF tensor name; None if the name is not a model parameter."""
  if name in _TOP_PARAMS:
    return _TOP_PARAMS[name]
  m = _LAYER_RE.match(name)
  if m and m.group(2) in _LAYER_PARAMS:
    sub, transpose = _LAYER_PARAMS[m.group(2)]
    return ("layers", int(m.group(1))) + sub, transpose
  return None


def param_to_hf(path: ParamPath) -> str:
  """The HF tensor name of a param path (inverse of :func:`hf_to_param`)."""
  for name, (p, _) in _TOP_PARAMS.items():
    if p == tuple(path):
      return name
  if path[0] == "layers":
    for sub_name, (sub, _) in _LAYER_PARAMS.items():
      if tuple(path[2:]) == sub:
        return f"model.layers.{path[1]}.{sub_name}"
  raise KeyError(f"no Hugging Face name for parameter {path}")


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # the names configs and flags accept


def dtype_from_name(name: str, field: str = "dtype"):
  """The jnp dtype a config/flag name stands for; ValueError naming ``field`` otherwise."""
  if name not in DTYPES:
    raise ValueError(f"{field} must be one of {sorted(DTYPES)}, got {name!r}")
  return DTYPES[name]


def check_float_dtype(dtype, name: str):
  """Returns np.dtype(dtype); ValueError naming ``name`` unless it is a floating dtype."""
  try:
    dt = np.dtype(dtype)
  except TypeError as e:
    raise ValueError(f"{name}={dtype!r} is not a dtype") from e
  if not jnp.issubdtype(dt, jnp.floating):
    raise ValueError(f"{name} must be a floating dtype (float32, bfloat16, float16), got {dt.name}")
  return dt


def default_place(path: ParamPath, host: np.ndarray) -> jax.Array:
  del path
  return jax.device_put(host)


def build_model(
  config: SmolLM3Config,
  tensors: Mapping[str, TensorInfo],
  *,
  dtype=jnp.float32,
  param_dtype=None,
  place: Place | None = None,
  source: str = "checkpoint",
) -> SmolLM3:
  """Builds a :class:`SmolLM3` from HF-named tensors.

  Every check (names, shapes, stored dtypes) runs before the first tensor is read. Each tensor is
  then read, transposed to [in, out] where needed, converted to ``param_dtype`` (default ``dtype``)
  on the host (a few at once, on worker threads), handed to ``place(path, array)`` and dropped.
  """
  dtype = check_float_dtype(dtype, "dtype")
  param_dtype = check_float_dtype(param_dtype if param_dtype is not None else dtype, "param_dtype")
  place = place or default_place

  abstract = abstract_model(config, dtype=dtype, param_dtype=param_dtype)
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  if jax.tree_util.tree_leaves(rest):
    raise AssertionError("SmolLM3 holds non-parameter state; the loader does not know how to fill it")
  expected = {tuple(path): var for path, var in nnx.to_flat_state(params)}

  # -- validate everything cheap first -------------------------------------------------------
  plan: dict[ParamPath, tuple[str, bool]] = {}
  unexpected = []
  for name in tensors:
    mapped = hf_to_param(name)
    if mapped is None:
      if not _IGNORED_RE.search(name):
        unexpected.append(name)
      continue
    path, transpose = mapped
    if path not in expected:
      if name == "lm_head.weight" and config.tie_word_embeddings:
        continue  # a tied head saved anyway: it duplicates the embedding
      unexpected.append(name)
      continue
    plan[path] = (name, transpose)
  if unexpected:
    raise ValueError(f"{source}: unexpected tensors not used by this SmolLM3 config: {_listing(unexpected)}")
  missing = [param_to_hf(p) for p in expected if p not in plan]
  if missing:
    raise ValueError(f"{source}: missing tensors: {_listing(missing)}")
  for path, (name, transpose) in plan.items():
    info = tensors[name]
    want = tuple(expected[path].shape)
    want_stored = want[::-1] if transpose else want
    if tuple(info.shape) != want_stored:
      raise ValueError(
        f"{source}: tensor {name!r} has shape {tuple(info.shape)}, expected {want_stored} for this config"
      )
    if not info.is_float:
      raise ValueError(
        f"{source}: tensor {name!r} is stored as {info.dtype}, which cannot be converted to {param_dtype.name} weights"
      )

  # -- read -> convert -> place -> drop, a few tensors at a time ------------------------------
  # Reading and converting (dequantizing, transposing, casting: numpy, which releases the GIL) runs
  # on worker threads a small window ahead of placement, so host memory holds at most `window`
  # converted tensors at once.
  def convert(path):
    name, transpose = plan[tuple(path)]
    host = tensors[name].read()
    if transpose:
      host = host.T
    # An owned, contiguous copy in the parameter dtype: never a view of a memory-mapped file.
    return np.array(host, dtype=param_dtype, order="C", copy=True)

  flat = list(nnx.to_flat_state(params))
  window = max(1, min(4, os.cpu_count() or 1))
  loaded = []
  with concurrent.futures.ThreadPoolExecutor(window) as pool:
    pending = collections.deque(pool.submit(convert, path) for path, _ in flat[:window])
    for i, (path, var) in enumerate(flat):
      host = pending.popleft().result()
      if i + window < len(flat):
        pending.append(pool.submit(convert, flat[i + window][0]))
      value = place(tuple(path), host)
      del host
      if tuple(value.shape) != tuple(var.shape):
        raise ValueError(f"place() returned shape {value.shape} for {path}, expected {var.shape}")
      loaded.append((path, var.replace(value)))
  return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def _listing(names, limit: int = 10) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(repr(n) for n in names[:limit]) + more
