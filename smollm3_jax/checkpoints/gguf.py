"""GGUF checkpoints (llama.cpp): architectures ``llama`` and ``smollm3``.

The config comes from the metadata (``{arch}.block_count`` etc.), tensors from llama.cpp names
(``blk.N.attn_q.weight`` ...). Quantized tensors are dequantized with ``gguf.quants`` one at a
time. llama.cpp's converter permutes the rows of q/k projections (per head: [first half, second
half] -> interleaved pairs, for its interleaved RoPE); that permutation is undone here so that the
weights match the Hugging Face rotate-half layout.
"""

from __future__ import annotations

import functools
import os
import re

import gguf as gguflib
import ml_dtypes
import numpy as np
from gguf import GGMLQuantizationType as QT

from smollm3_jax.checkpoints.mapping import TensorInfo
from smollm3_jax.config import RopeScaling, SmolLM3Config

SUPPORTED_ARCHITECTURES = ("llama", "smollm3")
# SmolLM3 GGUFs carry no NoPE key (llama.cpp hard-codes the step): every 4th layer skips RoPE.
DEFAULT_NO_ROPE_INTERVAL = 4

_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_INT_TYPES = {QT.I8, QT.I16, QT.I32, QT.I64}


def open_reader(path: str) -> gguflib.GGUFReader:
  """A (memory-mapped) GGUFReader of ``path``, shared by the model loader and the tokenizer:
  parsing a file's metadata (its whole vocabulary) takes seconds, so it is done once per file
  version in a process."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"GGUF file not found: {path}")
  stat = os.stat(path)
  return _open_cached(os.path.realpath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, mtime_ns: int, size: int) -> gguflib.GGUFReader:
  del mtime_ns, size  # cache keys only: a rewritten file is parsed again
  try:
    return gguflib.GGUFReader(path, "r")
  except Exception as e:  # the reader raises ValueError/IndexError/... on short or garbled files
    raise ValueError(f"{path}: truncated or corrupt GGUF file ({type(e).__name__}: {e})") from e


def _fields(reader: gguflib.GGUFReader, path: str) -> dict:
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("tokenizer.ggml.") and key.rsplit(".", 1)[-1] in (
        "tokens", "scores", "token_type", "merges"):
      continue  # big vocab arrays, not needed for the config
    try:
      out[key] = field.contents()
    except Exception as e:
      raise ValueError(f"{path}: corrupt GGUF metadata field {key!r}: {e}") from e
  return out


def _architecture(meta: dict, path: str) -> str:
  arch = meta.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; supported: "
                     f"{SUPPORTED_ARCHITECTURES}")
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
  head_dim = get("{arch}.attention.key_length") or get("{arch}.rope.dimension_count") or (
      hidden // heads if heads else 0)
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
        rope_type=scaling_type, factor=float(factor),
        original_max_position_embeddings=(int(get("{arch}.rope.scaling.original_context_length"))
                                          if get("{arch}.rope.scaling.original_context_length")
                                          else None),
        attention_factor=opt("{arch}.rope.scaling.attn_factor"),
        beta_fast=float(get("{arch}.rope.scaling.yarn_beta_fast") or 32.0),
        beta_slow=float(get("{arch}.rope.scaling.yarn_beta_slow") or 1.0))

  if arch == "smollm3":
    no_rope = meta.get("smollm3.no_rope_layers")
    if no_rope is None:
      interval = (meta.get("smollm3.no_rope_layer_interval") or meta.get("smollm3.no_rope_layer_step")
                  or DEFAULT_NO_ROPE_INTERVAL)
      no_rope = [int((i + 1) % int(interval) != 0) for i in range(layers)]
  else:  # llama: RoPE on every layer
    no_rope = [1] * layers

  token_id = lambda k: None if meta.get(f"tokenizer.ggml.{k}") is None else int(
      meta[f"tokenizer.ggml.{k}"])
  eos = token_id("eos_token_id")
  return SmolLM3Config(
      vocab_size=vocab, hidden_size=hidden,
      intermediate_size=int(get("{arch}.feed_forward_length", required=True)),
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
      head_dim=int(head_dim), rope_theta=float(get("{arch}.rope.freq_base", 10000.0)),
      rope_scaling=rope_scaling,
      max_position_embeddings=int(get("{arch}.context_length", 2048)),
      rms_norm_eps=float(get("{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
      tie_word_embeddings="output.weight" not in tensor_shapes,
      no_rope_layers=tuple(int(v) for v in no_rope),
      attention_bias="blk.0.attn_q.bias" in tensor_shapes,
      mlp_bias="blk.0.ffn_gate.bias" in tensor_shapes,
      bos_token_id=token_id("bos_token_id"), eos_token_id=(eos,) if eos is not None else (),
      pad_token_id=token_id("padding_token_id"))


def _hf_shape(t) -> tuple[int, ...]:
  """numpy (row-major) shape: GGUF lists dimensions innermost first."""
  return tuple(int(d) for d in reversed(list(t.shape)))


def _tensor_shapes(reader, path) -> dict[str, tuple]:
  return {t.name: _hf_shape(t) for t in reader.tensors}


def load_config(path: str | os.PathLike) -> SmolLM3Config:
  path = os.fspath(path)
  reader = open_reader(path)
  return _config_from_meta(_fields(reader, path), _tensor_shapes(reader, path), path)


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


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp's ``LlamaModel.permute`` (for writing GGUFs in tests and tools)."""
  half = w.shape[0] // n_head // 2
  return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantizable(qtype) -> bool:
  return qtype in (QT.F32, QT.F16, QT.F64, QT.BF16) or qtype in gguflib.quants._type_traits


def _reader_fn(t, shape, qtype, n_head):
  def read():
    data = t.data
    if qtype == QT.F32:
      out = data.view(np.float32)
    elif qtype == QT.F16:
      out = data.view(np.float16)
    elif qtype == QT.F64:
      out = data.view(np.float64)
    elif qtype == QT.BF16:
      out = data.view(ml_dtypes.bfloat16)
    else:
      out = gguflib.quants.dequantize(data, qtype)
    out = out.reshape(shape)
    if n_head is not None:
      out = unpermute_qk(out, n_head)
    return out
  return read


def load(path: str | os.PathLike) -> tuple[SmolLM3Config, dict[str, TensorInfo]]:
  """(config, HF-named tensor source) of a GGUF file; checks every tensor header first."""
  path = os.fspath(path)
  reader = open_reader(path)
  shapes = _tensor_shapes(reader, path)
  config = _config_from_meta(_fields(reader, path), shapes, path)
  size = os.path.getsize(path)
  tensors: dict[str, TensorInfo] = {}
  unknown = []
  for t in reader.tensors:
    name = hf_name(t.name)
    if name is None:
      unknown.append(t.name)
      continue
    qtype = t.tensor_type
    shape = shapes[t.name]
    if qtype not in _INT_TYPES and not _dequantizable(qtype):
      raise ValueError(f"{path}: tensor {t.name!r} has type {qtype.name}, which gguf.quants "
                       f"cannot dequantize")
    block, type_size = gguflib.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape, dtype=np.int64))
    expected_bytes = n // block * type_size
    if n % block or t.data.nbytes != expected_bytes or t.data_offset + expected_bytes > size:
      raise ValueError(f"{path}: truncated or corrupt GGUF file: tensor {t.name!r} ({qtype.name} "
                       f"{shape}) needs {expected_bytes} bytes at offset {t.data_offset}, file has "
                       f"{size} bytes")
    n_head = None
    if t.name.startswith("blk.") and (".attn_q." in t.name or ".attn_k." in t.name):
      n_head = config.num_attention_heads if ".attn_q." in t.name else config.num_key_value_heads
    tensors[name] = TensorInfo(shape, qtype.name, qtype not in _INT_TYPES,
                               _reader_fn(t, shape, qtype, n_head), path)
  if unknown:
    raise ValueError(f"{path}: unexpected tensors (not part of a llama/smollm3 model): "
                     f"{sorted(unknown)[:10]}")
  return config, tensors
