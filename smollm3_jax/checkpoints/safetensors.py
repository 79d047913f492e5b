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
from smollm3_jax.nn.config import SmolLM3Config

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
  return SmolLM3Config.from_json(path)


def read_header(path: str) -> tuple[dict, int]:
  """(header dict without ``__metadata__``, byte offset of the data section) of one file."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw)
    if n > size - 8:
      raise ValueError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, "
                       f"file of {size})")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: corrupt safetensors header: {e}") from e
  header.pop("__metadata__", None)
  return header, 8 + n


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
      return mmap[data_start + begin:data_start + end].view(dt).reshape(shape)
    return read

  infos = {}
  for name, entry in header.items():
    if names is not None and name not in names:
      continue
    try:
      dtype_name, shape, (begin, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: corrupt header entry for tensor {name!r}: {entry!r}") from e
    if dtype_name not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported safetensors dtype {dtype_name}")
    dt, is_float = _DTYPES[dtype_name]
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if end - begin != nbytes or begin < 0:
      raise ValueError(f"{path}: tensor {name!r} ({dtype_name} {shape}) spans {end - begin} bytes, "
                       f"expected {nbytes}")
    if data_start + end > size:
      raise ValueError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte "
                       f"{data_start + end} but the file has {size}")
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
        raise ValueError(f"{shard_path}: tensors listed in {INDEX_NAME} are not in this shard: "
                         f"{sorted(absent)[:10]}")
      infos.update(found)
    return infos
  if os.path.isfile(single_path):
    return _tensor_infos(single_path)
  others = sorted(f for f in os.listdir(directory) if f.endswith((".bin", ".pt", ".pth")))
  hint = f" (found {others}; only safetensors weights are supported)" if others else ""
  raise FileNotFoundError(f"checkpoint directory {directory!r} has neither {SINGLE_NAME} nor "
                          f"{INDEX_NAME}{hint}")
