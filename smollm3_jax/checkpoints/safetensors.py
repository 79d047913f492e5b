"""Local Hugging Face checkpoint directories: ``config.json`` + ``model.safetensors`` or shards.

The safetensors header is parsed here (not with ``safetensors.safe_open``, whose numpy backend has
no bfloat16): 8-byte little-endian header length, a JSON header ``name -> {dtype, shape,
data_offsets}``, then the raw little-endian data. Tensors are read from a read-only memory map,
one at a time.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

from smollm3_jax.checkpoints.mapping import TensorInfo
from smollm3_jax.nn.config import SIZE_FIELDS, SmolLM3Config

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"

# safetensors dtype -> (numpy dtype, converts to float weights?)
_DTYPES = {
  "F64": (np.dtype("<f8"), True),
  "F32": (np.dtype("<f4"), True),
  "F16": (np.dtype("<f2"), True),
  "BF16": (np.dtype(ml_dtypes.bfloat16), True),
  "F8_E4M3": (np.dtype(ml_dtypes.float8_e4m3fn), True),
  "F8_E5M2": (np.dtype(ml_dtypes.float8_e5m2), True),
  "I64": (np.dtype("<i8"), False),
  "I32": (np.dtype("<i4"), False),
  "I16": (np.dtype("<i2"), False),
  "I8": (np.dtype("i1"), False),
  "U8": (np.dtype("u1"), False),
  "BOOL": (np.dtype("?"), False),
}


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
  return os.path.isdir(path)


def load_config(directory: str | os.PathLike) -> SmolLM3Config:
  path = os.path.join(directory, CONFIG_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint directory {os.fspath(directory)!r} has no {CONFIG_NAME}")
  return read_config(path)


# The config.json fields SmolLM3Config.from_dict reads, by the JSON type each must have (null: the
# default). Checked first: from_dict's int() / float() / bool() would read "64" or 2.7 as a number,
# "false" as true, and fail on the rest with a message naming neither the file nor the field.
_INT_FIELDS = (*SIZE_FIELDS, "no_rope_layer_interval", "bos_token_id", "pad_token_id")
_NUMBER_FIELDS = ("rope_theta", "rms_norm_eps")
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")
_OBJECT_FIELDS = ("rope_parameters", "rope_scaling")


def _is_int(v) -> bool:
  return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _config_problem(d: dict) -> str | None:
  """What is wrong with the types of a config.json dict (None: nothing)."""

  def ints(v):
    return isinstance(v, list) and all(_is_int(x) for x in v)

  for name, ok, want in [
    *((n, _is_int, "an integer") for n in _INT_FIELDS),
    *((n, lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number") for n in _NUMBER_FIELDS),
    *((n, lambda v: isinstance(v, bool), "true or false") for n in _BOOL_FIELDS),
    *((n, lambda v: isinstance(v, dict), "an object") for n in _OBJECT_FIELDS),
    ("eos_token_id", lambda v: _is_int(v) or ints(v), "an integer or a list of integers"),
    ("no_rope_layers", ints, "a list of 0/1 integers"),
  ]:
    value = d.get(name)
    if value is not None and not ok(value):
      return f"field {name!r} must be {want}, got {json.dumps(value)[:80]}"
  return None


def read_config(path: str | os.PathLike) -> SmolLM3Config:
  """A checkpoint's ``config.json`` as a SmolLM3Config; ValueError naming the file (and the field)
  when it is not JSON, not an object, or holds a value of the wrong type or range."""
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      d = json.loads(f.read())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from None
  except ValueError as e:  # an integer past Python's digit limit
    raise ValueError(f"{path} is not readable JSON: {e}") from None
  if not isinstance(d, dict):
    raise ValueError(f"{path}: expected a JSON object of config fields, got {type(d).__name__}")
  problem = _config_problem(d)
  if problem is None:
    try:
      return SmolLM3Config.from_dict(d)
    except (TypeError, ValueError, OverflowError) as e:  # a range check, or a nested field (rope scaling)
      problem = str(e)
  raise ValueError(f"{path}: {problem}")


def read_header(path: str) -> tuple[dict, int]:
  """(header dict without ``__metadata__``, byte offset of the data section) of one file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise ValueError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})")
    try:
      header = json.loads(f.read(n))
    except (RecursionError, ValueError) as e:  # (JSONDecodeError, UnicodeDecodeError, too many digits)
      raise ValueError(f"{path}: corrupt safetensors header: {e}") from e
  if not isinstance(header, dict):
    raise ValueError(f"{path}: corrupt safetensors header: a JSON {type(header).__name__}, not an object")
  header.pop("__metadata__", None)
  return header, 8 + n


def _is_count(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _tensor_infos(path: str, names: set[str] | None = None) -> dict[str, TensorInfo]:
  """TensorInfo for the tensors in one file (only ``names`` if given), validated against its size."""
  header, data_start = read_header(path)
  size = os.path.getsize(path)
  mmap = None  # opened lazily, shared by this file's tensors

  def reader(dt, shape, begin, end):
    def read():
      nonlocal mmap
      if mmap is None:
        mmap = np.memmap(path, dtype=np.uint8, mode="r")
      return mmap[data_start + begin : data_start + end].view(dt).reshape(shape)

    return read

  infos = {}
  for name, entry in header.items():
    if names is not None and name not in names:
      continue
    try:
      dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
      if not all(_is_count(x) for x in (*shape, begin, end)) or not isinstance(dtype_name, str):
        raise TypeError("shape and data_offsets must hold integers >= 0")
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: corrupt header entry for tensor {name!r}: {str(entry)[:200]}") from e
    if dtype_name not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported safetensors dtype {dtype_name}")
    dt, is_float = _DTYPES[dtype_name]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if end - begin != nbytes or begin < 0:
      raise ValueError(f"{path}: tensor {name!r} ({dtype_name} {shape}) spans {end - begin} bytes, expected {nbytes}")
    if data_start + end > size:
      raise ValueError(
        f"{path}: truncated safetensors file: tensor {name!r} ends at byte {data_start + end} but the file has {size}"
      )
    infos[name] = TensorInfo(shape, dtype_name, is_float, reader(dt, shape, begin, end), path)
  return infos


def tensor_source(directory: str | os.PathLike) -> dict[str, TensorInfo]:
  """All tensors of a checkpoint directory (single file or index + shards), headers only."""
  directory = os.fspath(directory)
  index_path = os.path.join(directory, INDEX_NAME)
  single_path = os.path.join(directory, SINGLE_NAME)
  if os.path.isfile(index_path):
    try:
      with open(index_path) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{index_path}: not a valid safetensors index (needs 'weight_map'): {e}") from e
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
      by_shard.setdefault(shard, set()).add(name)
    for shard in sorted(by_shard):
      if not os.path.isfile(os.path.join(directory, shard)):
        raise FileNotFoundError(f"shard {shard!r} listed in {index_path} is missing from {directory}")
    infos: dict[str, TensorInfo] = {}
    for shard, names in sorted(by_shard.items()):
      shard_path = os.path.join(directory, shard)
      found = _tensor_infos(shard_path, names)
      absent = names - found.keys()
      if absent:
        raise ValueError(f"{shard_path}: tensors listed in {INDEX_NAME} are not in this shard: {sorted(absent)[:10]}")
      infos.update(found)
    return infos
  if os.path.isfile(single_path):
    return _tensor_infos(single_path)
  others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth")))
  hint = f" (found {others}; only safetensors weights are supported)" if others else ""
  raise FileNotFoundError(f"checkpoint directory {directory!r} has neither {SINGLE_NAME} nor {INDEX_NAME}{hint}")
