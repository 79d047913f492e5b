"""GGUF checkpoints (llama.cpp): architectures ``llama`` and ``smollm3``.

The config comes from the metadata (``{arch}.block_count`` etc.), tensors from llama.cpp names
(``blk.N.attn_q.weight`` ...). Quantized tensors are dequantized one at a time with ``gguf.quants``.
llama.cpp's converter permutes the rows of q/k projections (per head: [first half, second half] ->
interleaved pairs, for its interleaved RoPE); that permutation is undone here so that the weights
match the Hugging Face rotate-half layout.

Header index (a start-up cache): parsing a GGUF header with ``gguf.GGUFReader`` takes seconds (it
walks the whole vocabulary field by field). :func:`read_header` parses it once per file version
and process; where :func:`smollm3_jax.utils.runtime.gguf_index_dir` names a directory (on together with
the persistent compilation cache, in ``<compilation cache dir>/gguf_index``; off by default), it
also writes a JSON index there (the metadata values, and per tensor its name, GGML type, shape,
data offset and byte count) that later processes read in milliseconds instead. An index is used
only while the file's real path, size, mtime and inode are unchanged; an unreadable or stale index
is ignored and rewritten. Tensor bytes are memory-mapped from the GGUF file itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
from typing import Any, Mapping

import gguf as gguflib
import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as QT

from smollm3_jax.checkpoints.mapping import TensorInfo
from smollm3_jax.nn.config import RopeScaling, SmolLM3Config
from smollm3_jax.utils import runtime
from smollm3_jax.utils.files import atomic_write

SUPPORTED_ARCHITECTURES = ("llama", "smollm3")
# SmolLM3 GGUFs carry no NoPE key (llama.cpp hard-codes the step): every 4th layer skips RoPE.
DEFAULT_NO_ROPE_INTERVAL = 4
# Bump when the index layout or the meaning of a stored value changes: older indexes are ignored.
INDEX_VERSION = 1

_TOP_NAMES = {
  "token_embd.weight": "model.embed_tokens.weight",
  "output_norm.weight": "model.norm.weight",
  "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
  "attn_q": "self_attn.q_proj",
  "attn_k": "self_attn.k_proj",
  "attn_v": "self_attn.v_proj",
  "attn_output": "self_attn.o_proj",
  "ffn_gate": "mlp.gate_proj",
  "ffn_up": "mlp.up_proj",
  "ffn_down": "mlp.down_proj",
  "attn_norm": "input_layernorm",
  "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_INT_TYPES = {QT.I8, QT.I16, QT.I32, QT.I64}
# Stored dtypes that are read by reinterpreting the bytes (everything else goes through gguf.quants).
_VIEW_DTYPES = {
  QT.F32: np.float32,
  QT.F16: np.float16,
  QT.F64: np.float64,
  QT.BF16: ml_dtypes.bfloat16,
  QT.I8: np.int8,
  QT.I16: np.int16,
  QT.I32: np.int32,
  QT.I64: np.int64,
}
# Metadata arrays nothing here reads (the vocabulary's scores: ~49k floats for SmolLM3).
_UNUSED_FIELDS = ("tokenizer.ggml.scores",)
# Big vocabulary arrays: the tokenizer reads them, the config does not.
_VOCAB_FIELDS = ("tokens", "scores", "token_type", "merges")

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# The header: metadata + tensor directory, parsed once or read from the on-disk index
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TensorHeader:
  """One tensor of a GGUF file: numpy (row-major) ``shape``, GGML type, absolute byte ``offset``
  of its data in the file and its size ``nbytes``."""

  name: str
  qtype: QT
  shape: tuple[int, ...]
  offset: int
  nbytes: int


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
  """What this package reads of a GGUF file besides tensor data: ``fields`` maps every metadata key
  (but ``tokenizer.ggml.scores``) to its value as plain Python (str/int/float/bool or lists of
  them); ``tensors`` lists the tensors in file order. ``path`` is the real path; ``size``,
  ``mtime_ns`` and ``inode`` identify the file version the header describes."""

  path: str
  size: int
  mtime_ns: int
  inode: int
  fields: Mapping[str, Any]
  tensors: tuple[TensorHeader, ...]

  def tensor_bytes(self, t: TensorHeader) -> np.ndarray:
    """The raw bytes of ``t``: a read-only uint8 memory map [nbytes] of the file."""
    if t.nbytes == 0:  # mmap cannot map zero bytes
      return np.zeros((0,), np.uint8)
    return np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))


def read_header(path: str | os.PathLike) -> GGUFHeader:
  """The :class:`GGUFHeader` of ``path``, shared by the model loader and the tokenizer: cached per
  file version in this process, and in the on-disk index where one is enabled (see the module
  docstring). Raises FileNotFoundError, or ValueError for a truncated/corrupt file."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")
  st = os.stat(path)
  return _read_header_cached(os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=4)
def _read_header_cached(path: str, size: int, mtime_ns: int, inode: int) -> GGUFHeader:
  key = dict(path=path, size=size, mtime_ns=mtime_ns, inode=inode)
  index_dir = runtime.gguf_index_dir()
  index_path = _index_path(index_dir, path) if index_dir else None
  if index_path is not None:
    header = _read_index(index_path, key)
    if header is not None:
      return header
  header = _parse(**key)
  if index_path is not None and _file_version(path) == key:  # not rewritten while being parsed
    _write_index(index_path, header)
  return header


def _file_version(path: str) -> dict | None:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return dict(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def _parse(path: str, size: int, mtime_ns: int, inode: int) -> GGUFHeader:
  """Parses the header with ``gguf.GGUFReader`` (seconds for a 49k-token vocabulary)."""
  try:
    reader = gguflib.GGUFReader(path, "r")
  except Exception as e:  # the reader raises ValueError/IndexError/... on short or garbled files
    raise ValueError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from e
  if reader.byte_order != "I":
    raise ValueError(f"{path}: big-endian GGUF files are not supported")
  fields = {}
  for key, field in reader.fields.items():
    if key in _UNUSED_FIELDS:
      continue
    try:
      fields[key] = field.contents()
    except Exception as e:
      raise ValueError(f"{path}: corrupt GGUF metadata field {key!r}: {e}") from e
  tensors = tuple(
    TensorHeader(
      name=t.name,
      qtype=QT(int(t.tensor_type)),
      shape=tuple(int(d) for d in reversed(t.shape.tolist())),  # GGUF: innermost first
      offset=int(t.data_offset),
      nbytes=int(t.data.nbytes),
    )
    for t in reader.tensors
  )
  return GGUFHeader(path, size, mtime_ns, inode, fields, tensors)


def _index_path(index_dir: str, path: str) -> str:
  # One index per GGUF path (a rewritten file replaces its stale index rather than adding one).
  digest = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()[:32]
  return os.path.join(index_dir, f"{digest}.v{INDEX_VERSION}.json")


def _read_index(index_path: str, key: dict) -> GGUFHeader | None:
  """The header stored at ``index_path`` if it describes exactly the file version ``key``; None if
  it is missing, stale or unreadable in any way (the caller parses the file and rewrites it)."""
  try:
    with open(index_path, "rb") as f:
      record = json.loads(f.read())
  except FileNotFoundError:
    return None
  except Exception as e:  # garbled, half-written by a foreign tool, unreadable...
    _log.info("ignoring unreadable GGUF index %s: %s", index_path, e)
    return None
  try:
    if record.get("version") != INDEX_VERSION or any(record.get(k) != v for k, v in key.items()):
      return None
    fields = record["fields"]
    if not isinstance(fields, dict):
      raise TypeError("fields is not an object")
    tensors = tuple(
      TensorHeader(
        name=str(name), qtype=QT(int(qtype)), shape=tuple(int(d) for d in shape), offset=int(offset), nbytes=int(nbytes)
      )
      for name, qtype, shape, offset, nbytes in record["tensors"]
    )
  except Exception as e:
    _log.info("ignoring malformed GGUF index %s: %s", index_path, e)
    return None
  return GGUFHeader(key["path"], key["size"], key["mtime_ns"], key["inode"], fields, tensors)


def _write_index(index_path: str, header: GGUFHeader) -> None:
  """Writes the index atomically (temporary file + rename); failures only cost the next process
  a parse, so they are logged, never raised."""
  record = dict(
    version=INDEX_VERSION,
    path=header.path,
    size=header.size,
    mtime_ns=header.mtime_ns,
    inode=header.inode,
    fields=dict(header.fields),
    tensors=[[t.name, int(t.qtype), list(t.shape), t.offset, t.nbytes] for t in header.tensors],
  )
  try:
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    os.makedirs(os.path.dirname(index_path), exist_ok=True)
    atomic_write(index_path, data, fsync=False)
  except Exception as e:  # read-only cache, full disk, a value JSON cannot hold...
    _log.warning("could not write the GGUF index %s: %s", index_path, e)


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def _fields(header: GGUFHeader) -> dict:
  """The metadata without the big vocabulary arrays (not needed for the config)."""
  return {
    k: v
    for k, v in header.fields.items()
    if not (k.startswith("tokenizer.ggml.") and k.rsplit(".", 1)[-1] in _VOCAB_FIELDS)
  }


def _architecture(meta: dict, path: str) -> str:
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {SUPPORTED_ARCHITECTURES}")
  return arch


def _config_from_meta(meta: dict, tensor_shapes: dict[str, tuple], path: str) -> SmolLM3Config:
  arch = _architecture(meta, path)

  def get(key, default=None, required=False):
    full = key.format(arch=arch)
    value = meta.get(full, default)
    if value is None and required:
      raise ValueError(f"{path}: GGUF metadata lacks {full!r}")
    if isinstance(value, list):  # per-layer arrays (some converters): must be uniform here
      if len(set(value)) != 1:
        raise ValueError(f"{path}: per-layer {full!r} = {value} is not supported")
      value = value[0]
    return value

  layers = int(get("{arch}.block_count", required=True))
  hidden = int(get("{arch}.embedding_length", required=True))
  heads = int(get("{arch}.attention.head_count", required=True))
  kv_heads = int(get("{arch}.attention.head_count_kv", heads))
  head_dim = (
    get("{arch}.attention.key_length") or get("{arch}.rope.dimension_count") or (hidden // heads if heads else 0)
  )
  if "token_embd.weight" not in tensor_shapes:
    raise ValueError(f"{path}: missing tensor 'token_embd.weight'")
  vocab = int(get("{arch}.vocab_size") or tensor_shapes["token_embd.weight"][0])

  rope_scaling = None
  scaling_type = get("{arch}.rope.scaling.type")
  if scaling_type not in (None, "none"):
    if scaling_type not in ("linear", "yarn"):
      raise ValueError(f"{path}: unsupported RoPE scaling type {scaling_type!r}")
    factor = get("{arch}.rope.scaling.factor", required=True)
    opt = lambda k: None if get(k) is None else float(get(k))
    rope_scaling = RopeScaling(
      rope_type=scaling_type,
      factor=float(factor),
      original_max_position_embeddings=(
        int(get("{arch}.rope.scaling.original_context_length"))
        if get("{arch}.rope.scaling.original_context_length")
        else None
      ),
      attention_factor=opt("{arch}.rope.scaling.attn_factor"),
      beta_fast=float(get("{arch}.rope.scaling.yarn_beta_fast") or 32.0),
      beta_slow=float(get("{arch}.rope.scaling.yarn_beta_slow") or 1.0),
    )

  if arch == "smollm3":
    no_rope = meta.get("smollm3.no_rope_layers")
    if no_rope is None:
      interval = (
        meta.get("smollm3.no_rope_layer_interval") or meta.get("smollm3.no_rope_layer_step") or DEFAULT_NO_ROPE_INTERVAL
      )
      no_rope = [int((i + 1) % int(interval) != 0) for i in range(layers)]
  else:  # llama: RoPE on every layer
    no_rope = [1] * layers

  token_id = lambda k: None if meta.get(f"tokenizer.ggml.{k}") is None else int(meta[f"tokenizer.ggml.{k}"])
  eos = token_id("eos_token_id")
  return SmolLM3Config(
    vocab_size=vocab,
    hidden_size=hidden,
    intermediate_size=int(get("{arch}.feed_forward_length", required=True)),
    num_hidden_layers=layers,
    num_attention_heads=heads,
    num_key_value_heads=kv_heads,
    head_dim=int(head_dim),
    rope_theta=float(get("{arch}.rope.freq_base", 10000.0)),
    rope_scaling=rope_scaling,
    max_position_embeddings=int(get("{arch}.context_length", 2048)),
    rms_norm_eps=float(get("{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
    tie_word_embeddings="output.weight" not in tensor_shapes,
    no_rope_layers=tuple(int(v) for v in no_rope),
    attention_bias="blk.0.attn_q.bias" in tensor_shapes,
    mlp_bias="blk.0.ffn_gate.bias" in tensor_shapes,
    bos_token_id=token_id("bos_token_id"),
    eos_token_id=(eos,) if eos is not None else (),
    pad_token_id=token_id("padding_token_id"),
  )


def _tensor_shapes(header: GGUFHeader) -> dict[str, tuple]:
  return {t.name: t.shape for t in header.tensors}


def load_config(path: str | os.PathLike) -> SmolLM3Config:
  path = os.fspath(path)
  header = read_header(path)
  return _config_from_meta(_fields(header), _tensor_shapes(header), path)


def hf_name(name: str) -> str | None:
  """Hugging Face name of a llama.cpp tensor name (None if unknown)."""
  if name in _TOP_NAMES:
    return _TOP_NAMES[name]
  m = _BLOCK_RE.match(name)
  if m is None:
    return None
  layer, part, kind = m.groups()
  if part == "attn_rot_embd":  # legacy per-layer RoPE buffer, carries no parameters
    return f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"
  if part not in _BLOCK_NAMES:
    return None
  return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """Inverse of llama.cpp's ``LlamaModel.permute``: rows [n_head * 2 * half] (interleaved pairs per
  head) -> rotate-half order. Works for weights [out, in] and biases [out]."""
  half = w.shape[0] // n_head // 2
  return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantizable(qtype) -> bool:
  return qtype in _VIEW_DTYPES or qtype in gguflib.quants._type_traits


def _reader_fn(header: GGUFHeader, t: TensorHeader, n_head: int | None):
  def read():
    data = header.tensor_bytes(t)
    if t.qtype in _VIEW_DTYPES:
      out = data.view(_VIEW_DTYPES[t.qtype])
    else:
      out = gguflib.quants.dequantize(data, t.qtype)
    out = out.reshape(t.shape)
    if n_head is not None:
      out = unpermute_qk(out, n_head)
    return out

  return read


def load(path: str | os.PathLike) -> tuple[SmolLM3Config, dict[str, TensorInfo]]:
  """(config, HF-named tensor source) of a GGUF file; checks every tensor header first."""
  path = os.fspath(path)
  header = read_header(path)
  shapes = _tensor_shapes(header)
  config = _config_from_meta(_fields(header), shapes, path)
  size = header.size
  tensors: dict[str, TensorInfo] = {}
  unknown = []
  for t in header.tensors:
    name = hf_name(t.name)
    if name is None:
      unknown.append(t.name)
      continue
    qtype, shape = t.qtype, t.shape
    if qtype not in _INT_TYPES and not _dequantizable(qtype):
      raise ValueError(f"{path}: tensor {t.name!r} has type {qtype.name}, which gguf.quants cannot dequantize")
    block, type_size = gguflib.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    expected_bytes = n // block * type_size
    if n % block or t.nbytes != expected_bytes or t.offset + expected_bytes > size:
      raise ValueError(
        f"{path}: truncated or corrupt GGUF file: tensor {t.name!r} ({qtype.name} "
        f"{shape}) needs {expected_bytes} bytes at offset {t.offset}, file has "
        f"{size} bytes"
      )
    n_head = None
    if t.name.startswith("blk.") and (".attn_q." in t.name or ".attn_k." in t.name):
      n_head = config.num_attention_heads if ".attn_q." in t.name else config.num_key_value_heads
    tensors[name] = TensorInfo(shape, qtype.name, qtype not in _INT_TYPES, _reader_fn(header, t, n_head), path)
  if unknown:
    raise ValueError(f"{path}: unexpected tensors (not part of a llama/smollm3 model): {sorted(unknown)[:10]}")
  return config, tensors
