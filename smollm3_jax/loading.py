"""One loader of a (model, tokenizer) pair from a spec: the sweep, the chat, the server and the
benchmark all load through :func:`load_model_and_tokenizer`.

A spec is a mapping: ``checkpoint`` ("demo", a directory, a .gguf, an Orbax directory or a hub id;
empty for a random model), ``tokenizer`` (default: the checkpoint), ``dtype`` ("float32",
"bfloat16", or "auto" / empty: float32 on CPU, bfloat16 on GPU/TPU), ``quantize`` ("none" /
"int8") and, for a random model, ``random`` (``preset``, ``num_layers``, ``seed``,
``max_position_embeddings``; without a
tokenizer the model keeps the preset's vocabulary and no tokenizer is returned).
"""

from __future__ import annotations

from typing import Mapping

from smollm3_jax.checkpoints import default_dtype, from_pretrained
from smollm3_jax.checkpoints.mapping import dtype_from_name
from smollm3_jax.nn import config as config_lib
from smollm3_jax.nn import quantize as quantize_lib
from smollm3_jax.nn import sharding
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.text.tokenizer import Tokenizer


def load_tokenizer(spec: Mapping):
  """The spec's tokenizer (``tokenizer``, else ``checkpoint``), or None when it names neither."""

  source = spec.get("tokenizer") or spec.get("checkpoint") or ""
  return Tokenizer.from_pretrained(source) if source else None


def load_model_and_tokenizer(spec: Mapping, mesh: str = "", tokenizer=None):
  """(model, tokenizer) from a spec (see the module docstring; a random model's vocabulary matches
  its tokenizer). ``tokenizer``: the spec's tokenizer when the caller has loaded it already
  (:func:`load_tokenizer`; not read again). ``mesh`` (e.g. "data=2,model=4"; "" = all devices on the data axis) places
  the weights shard by shard as they load; on one device nothing is sharded."""
  from flax import nnx

  name = spec.get("dtype") or "auto"
  dtype = default_dtype() if name == "auto" else dtype_from_name(name, "model.dtype")
  quantize = quantize_lib.check_mode(spec.get("quantize", "none"))
  checkpoint = spec.get("checkpoint") or ""
  tokenizer = tokenizer if tokenizer is not None else load_tokenizer(spec)
  if checkpoint:
    return from_pretrained(checkpoint, mesh=mesh or "auto", dtype=dtype, quantize=quantize), tokenizer
  rnd = spec.get("random") or {}
  preset = rnd.get("preset", "tiny")
  if preset not in config_lib.PRESETS:
    raise ValueError(f"model.random.preset must be one of {sorted(config_lib.PRESETS)}, got {preset!r}")
  # With a tokenizer, the random model takes its vocabulary and special ids (to decode its text).
  changes = (
    {}
    if tokenizer is None
    else dict(
      vocab_size=tokenizer.vocab_size,
      eos_token_id=(int(tokenizer.eos_token_id),),
      pad_token_id=int(tokenizer.pad_token_id),
    )
  )
  num_layers = int(rnd.get("num_layers", 2 if preset == "tiny" else 0))
  if rnd.get("max_position_embeddings"):
    changes["max_position_embeddings"] = int(rnd["max_position_embeddings"])
  if preset == "tiny":
    cfg = config_lib.tiny(num_layers=num_layers, **changes)
  else:
    cfg = config_lib.PRESETS[preset]().replace(**changes)
    if num_layers:  # the preset's widths, fewer layers (its RoPE / NoPE pattern repeated)
      cfg = cfg.replace(
        num_hidden_layers=num_layers,
        no_rope_layers=tuple(cfg.no_rope_layers[i % len(cfg.no_rope_layers)] for i in range(num_layers)),
      )
  model = SmolLM3(cfg, dtype=dtype, rngs=nnx.Rngs(int(rnd.get("seed", 0))))
  sharding.engine_sharding(model, mesh or None)  # moves the weights onto a multi-device mesh
  return quantize_lib.apply(model, quantize), tokenizer
