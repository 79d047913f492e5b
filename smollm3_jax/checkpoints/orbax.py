"""Orbax checkpoint directories: convert once, restore straight into the target shardings.

Layout of a converted directory::

    smollm3_jax.json      marker: format, version, parameter dtype, source checkpoint
    config.json           the model config (Hugging Face form, so load_config() reads it)
    tokenizer.json, tokenizer_config.json, generation_config.json   (when a tokenizer was saved)
    params/               Orbax (OCDBT) checkpoint of {"layers.0.self_attn.q_proj.kernel": [in, out], ...}

:func:`restore` builds the abstract model, gives every parameter a ``jax.ShapeDtypeStruct`` with its
target sharding, and lets Orbax read each device's slice directly: no full host copy, and the mesh
may differ from the one the checkpoint was written from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.checkpoints.mapping import check_float_dtype
from smollm3_jax.checkpoints.safetensors import read_config
from smollm3_jax.nn.config import SmolLM3Config
from smollm3_jax.nn.model import SmolLM3, abstract_model

MARKER = "smollm3_jax.json"
FORMAT = "smollm3_jax.orbax"
VERSION = 1
PARAMS_DIR = "params"
CONFIG_NAME = "config.json"


@contextlib.contextmanager
def _quiet():
  """Orbax logs every step at INFO through absl; keep CLIs and notebooks readable."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(max(level, logging.WARNING))
  try:
    yield
  finally:
    logger.setLevel(level)


@contextlib.contextmanager
def _damaged(params_dir: str):
  """Orbax's and TensorStore's errors on a truncated or deleted file (KeyError, a bare Exception with
  pages of TensorStore spec, ...) as one ValueError naming the checkpoint."""
  try:
    yield
  except Exception as e:  # noqa: BLE001  (whatever the storage layer raises)
    detail = str(e).split("\n", 1)[0][:300]
    raise ValueError(
      f"{params_dir}: the Orbax parameters could not be read ({type(e).__name__}: {detail}); "
      "the checkpoint is truncated or damaged: convert it again"
    ) from e


def is_orbax_dir(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a directory written by :func:`save`."""
  return os.path.isfile(os.path.join(os.fspath(path), MARKER))


def _key(path) -> str:
  return ".".join(str(p) for p in path)


def _flat_params(model: SmolLM3) -> dict[str, Any]:
  return {_key(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def read_marker(directory: str | os.PathLike) -> dict:
  path = os.path.join(os.fspath(directory), MARKER)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{os.fspath(directory)!r} is not an Orbax conversion (no {MARKER})")
  try:
    with open(path, "rb") as f:
      meta = json.loads(f.read())
  except ValueError as e:  # (JSONDecodeError, UnicodeDecodeError): a truncated or hand-edited marker
    raise ValueError(f"{path} is not valid JSON ({e}): a damaged conversion; convert the checkpoint again") from None
  if not isinstance(meta, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}; convert the checkpoint again")
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
  if not isinstance(meta.get("version", 0), int) or isinstance(meta.get("version"), bool):
    raise ValueError(f"{path}: version must be an integer, got {meta.get('version')!r}")
  if meta.get("version", 0) > VERSION:
    raise ValueError(
      f"{path}: version {meta['version']} is newer than this smollm3_jax ({VERSION}); upgrade the package"
    )
  return meta


def save(
  directory: str | os.PathLike, model: SmolLM3, *, tokenizer=None, source: str | None = None, overwrite: bool = False
) -> str:
  """Writes ``model``'s parameters (in their current dtype), config and ``tokenizer`` to ``directory``.

  The marker file is written last, so an interrupted save is never mistaken for a checkpoint.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.fspath(directory))
  if os.path.exists(directory) and os.listdir(directory):
    if not overwrite:
      raise FileExistsError(
        f"output directory {directory!r} exists and is not empty (pass overwrite=True / --overwrite to replace it)"
      )
    if os.path.exists(os.path.join(directory, MARKER)):
      os.remove(os.path.join(directory, MARKER))
  os.makedirs(directory, exist_ok=True)
  params = {k: v.get_value() for k, v in _flat_params(model).items()}
  dtypes = sorted({str(x.dtype) for x in params.values()})
  with _quiet():
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(directory, PARAMS_DIR), params, force=overwrite)
    ckptr.wait_until_finished()
    ckptr.close()
  with open(os.path.join(directory, CONFIG_NAME), "w") as f:
    json.dump(model.config.to_hf_dict(), f, indent=2)
  if tokenizer is not None:
    tokenizer.save_pretrained(directory)
  meta = dict(
    format=FORMAT,
    version=VERSION,
    param_dtype=dtypes[0] if len(dtypes) == 1 else dtypes,
    source=None if source is None else str(source),
    params=PARAMS_DIR,
    num_parameters=int(sum(int(np.prod(x.shape)) for x in params.values())),
  )
  with open(os.path.join(directory, MARKER), "w") as f:
    json.dump(meta, f, indent=2)
  return directory


def load_config(directory: str | os.PathLike) -> SmolLM3Config:
  path = os.path.join(os.fspath(directory), CONFIG_NAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Orbax checkpoint {os.fspath(directory)!r} has no {CONFIG_NAME}")
  return read_config(path)


def _target_sharding(place) -> Callable[[tuple, tuple], jax.sharding.Sharding] | None:
  """The ``param_sharding(path, shape)`` of a sharding-aware place hook (MeshSharding), if any."""
  owner = getattr(place, "__self__", place)
  fn = getattr(owner, "param_sharding", None)
  return fn if callable(fn) else None


def restore(
  directory: str | os.PathLike,
  *,
  dtype=jnp.float32,
  param_dtype=None,
  place: Callable[[tuple, np.ndarray], jax.Array] | None = None,
  sharding=None,
) -> SmolLM3:
  """Restores a model written by :func:`save`.

  Target shardings come from ``sharding`` (a ``smollm3_jax.nn.sharding.MeshSharding``) or from a
  ``place`` hook that is one; each device then reads only its slice. Without either, parameters
  land on the default device. Any other ``place`` callable receives each restored host tensor.
  ``param_dtype`` (default ``dtype``) is the restored weight dtype (Orbax casts while reading).
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(os.fspath(directory))
  read_marker(directory)
  dtype = check_float_dtype(dtype, "dtype")
  param_dtype = check_float_dtype(param_dtype if param_dtype is not None else dtype, "param_dtype")
  config = load_config(directory)
  abstract = abstract_model(config, dtype=dtype, param_dtype=param_dtype)
  graphdef, params = nnx.split(abstract, nnx.Param)
  flat = nnx.to_flat_state(params)

  shard_fn = _target_sharding(sharding if sharding is not None else place)
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {}
  for path, var in flat:
    s = shard_fn(tuple(path), tuple(var.shape)) if shard_fn is not None else default
    target[_key(path)] = jax.ShapeDtypeStruct(tuple(var.shape), param_dtype, sharding=s)

  params_dir = os.path.join(directory, PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{params_dir}: missing; the conversion is incomplete: convert the checkpoint again")
  with _quiet(), _damaged(params_dir):
    ckptr = ocp.StandardCheckpointer()
    stored = ckptr.metadata(params_dir)
    stored = getattr(stored, "item_metadata", stored)
    if not hasattr(stored, "items"):  # (Orbax answers None for a directory without its metadata)
      raise ValueError(f"no parameter metadata ({type(stored).__name__})")
  stored_keys = set(stored.keys())
  missing, unexpected = sorted(set(target) - stored_keys), sorted(stored_keys - set(target))
  if missing or unexpected:
    raise ValueError(
      f"{directory}: parameters do not match its config.json (missing: {missing[:5]}, unexpected: {unexpected[:5]})"
    )
  for k, meta in stored.items():
    shape = tuple(getattr(meta, "shape", target[k].shape))
    if shape != target[k].shape:
      raise ValueError(f"{directory}: parameter {k!r} has shape {shape}, expected {target[k].shape}")
  with _quiet(), _damaged(params_dir):
    restored = ckptr.restore(params_dir, target)
    ckptr.close()

  loaded = []
  for path, var in flat:
    value = restored[_key(path)]
    if shard_fn is None and place is not None:
      value = place(tuple(path), np.asarray(value))
    loaded.append((path, var.replace(value)))
  return nnx.merge(graphdef, nnx.from_flat_state(loaded))
