"""Loading SmolLM3 weights: ``from_pretrained("demo" | file.gguf | local HF dir | Orbax dir | hub id)``,
optionally straight onto a device mesh (``mesh=``); :mod:`smollm3_jax.loading` loads a (model, tokenizer) pair.

Imports the config, the model, ``sharding`` and ``quantize``; never the engine, the sweep or serving.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from smollm3_jax.checkpoints import demo, hub
from smollm3_jax.checkpoints import gguf as gguf_ckpt
from smollm3_jax.checkpoints import orbax as orbax_ckpt
from smollm3_jax.checkpoints import safetensors as st_ckpt
from smollm3_jax.checkpoints.mapping import build_model, check_float_dtype
from smollm3_jax.nn import quantize as quantize_lib
from smollm3_jax.nn.config import SmolLM3Config
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.nn.sharding import MeshSharding
from smollm3_jax.utils import runtime

__all__ = ["default_dtype", "from_pretrained", "load_config", "resolve"]


def resolve(
  checkpoint: str | os.PathLike, *, revision: str | None = None, config_only: bool = False
) -> tuple[str, str]:
  """(kind, local path) with kind "gguf" (a file) or "dir" (an HF checkpoint directory).

  "demo" is the bundled GGUF; an existing ``.gguf`` file or directory is used as is; any other
  ``name`` / ``org/name`` string is a Hugging Face Hub id (cache first, download unless offline).
  """
  if demo.is_demo(checkpoint):
    return "gguf", demo.demo_gguf_path()
  path = os.fspath(checkpoint)
  if os.path.isdir(path):
    return "dir", path
  if os.path.isfile(path):
    if path.endswith(".gguf"):
      return "gguf", path
    with open(path, "rb") as f:
      if f.read(4) == b"GGUF":
        return "gguf", path
    raise ValueError(
      f"checkpoint {path!r} is a file but not a GGUF; pass a .gguf file, a "
      "checkpoint directory (config.json + *.safetensors) or a Hub id"
    )
  if hub.looks_like_repo_id(path):
    return "dir", hub.snapshot(path, revision=revision, config_only=config_only)
  raise FileNotFoundError(f"checkpoint {path!r}: no such file or directory (and not a Hub id)")


def load_config(checkpoint: str | os.PathLike, *, revision: str | None = None) -> SmolLM3Config:
  """The config of a checkpoint, without reading any weights."""
  kind, path = resolve(checkpoint, revision=revision, config_only=True)
  if kind == "gguf":
    return gguf_ckpt.load_config(path)
  return st_ckpt.load_config(path)


def default_dtype():
  """The dtype when none is given: float32 on CPU (XLA:CPU decodes bfloat16 ~3x slower than
  float32: 5.9 vs 16.7 tokens/s on the demo), bfloat16 on GPU and TPU (half the bytes per step)."""
  return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16


def from_pretrained(
  checkpoint: str | os.PathLike,
  *,
  dtype=None,
  param_dtype=None,
  place: Callable[[tuple, np.ndarray], jax.Array] | None = None,
  revision: str | None = None,
  quantize: str | None = None,
  mesh=None,
) -> SmolLM3:
  """Loads a :class:`SmolLM3` from "demo", a ``.gguf`` file, a local HF directory or a Hub id.

  dtype: activation dtype (None: :func:`default_dtype`, float32 on CPU, bfloat16 on GPU/TPU);
  param_dtype: weight storage dtype (default ``dtype``). Quantized GGUF
  tensors are dequantized to ``param_dtype``. ``place(param_path, host_array)`` puts one tensor on
  device(s) (default ``jax.device_put``); tensors are read, converted and placed one at a time.
  quantize: None / "none", or an int8 scheme of :data:`smollm3_jax.nn.quantize.MODES` ("int8": the
  backend's; :func:`smollm3_jax.nn.quantize.apply` after loading).
  mesh: load straight onto a device mesh (a ``Mesh``, a ``sharding.MeshSharding`` or a spec such as
  "data=2,model=4"; "" / "auto": all devices on the data axis): tensors are placed shard by shard as
  they are read, by the logical-axis rules of :mod:`smollm3_jax.nn.sharding`. None: one device.
  Turns on the start-up caches unless told otherwise (:func:`smollm3_jax.utils.runtime.enable_default_caches`).
  """
  dtype = default_dtype() if dtype is None else dtype
  check_float_dtype(dtype, "dtype")
  if param_dtype is not None:
    check_float_dtype(param_dtype, "param_dtype")
  quantize = quantize_lib.check_mode(quantize)
  if mesh is not None:
    if place is not None:
      raise ValueError("from_pretrained: pass mesh or place, not both")
    sharding = MeshSharding.of(mesh, load_config(checkpoint, revision=revision))
    place = sharding if sharding.mesh.size > 1 else None  # one device: exactly the plain loader
  kind, path = resolve(checkpoint, revision=revision)
  runtime.enable_default_caches()  # before the GGUF header is read and anything compiles
  if kind == "dir" and orbax_ckpt.is_orbax_dir(path):  # converted by experiments/convert.py
    model = orbax_ckpt.restore(path, dtype=dtype, param_dtype=param_dtype, place=place)
  else:
    if kind == "gguf":
      config, tensors = gguf_ckpt.load(path)
    else:
      config = st_ckpt.load_config(path)
      tensors = st_ckpt.tensor_source(path)
    model = build_model(config, tensors, dtype=dtype, param_dtype=param_dtype, place=place, source=path)
  return quantize_lib.apply(model, quantize)
