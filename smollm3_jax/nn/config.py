"""SmolLM3 model configuration, read from a Hugging Face ``config.json``.

Only fields that change the computation are kept. Both ``config.json`` layouts
load: the published SmolLM3-3B one (``rope_theta`` / ``rope_scaling`` at the
top level) and the one current ``transformers`` writes (``rope_parameters``).

Imports nothing from the package.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

# rope_type values this implementation computes; "default" is plain RoPE.
SUPPORTED_ROPE_TYPES = ("default", "yarn", "linear")


# The fields that are sizes: positive integers.
SIZE_FIELDS = (
  "vocab_size",
  "hidden_size",
  "intermediate_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "head_dim",
  "max_position_embeddings",
)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling (None in the config means plain RoPE)."""

  rope_type: str = "default"
  factor: float = 1.0
  original_max_position_embeddings: int | None = None
  attention_factor: float | None = None
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  mscale: float | None = None
  mscale_all_dim: float | None = None
  truncate: bool = True


@dataclasses.dataclass(frozen=True)
class SmolLM3Config:
  """Architecture hyper-parameters. ``no_rope_layers[i] == 1`` means layer i USES RoPE."""

  vocab_size: int = 128256
  hidden_size: int = 2048
  intermediate_size: int = 11008
  num_hidden_layers: int = 36
  num_attention_heads: int = 16
  num_key_value_heads: int = 4
  head_dim: int = 128
  rope_theta: float = 5_000_000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 65536
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = True
  no_rope_layers: tuple[int, ...] = (1, 1, 1, 0) * 9
  attention_bias: bool = False
  mlp_bias: bool = False
  bos_token_id: int | None = 128000
  eos_token_id: tuple[int, ...] = (128012,)
  pad_token_id: int | None = 128004

  def __post_init__(self):
    for name in SIZE_FIELDS:
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config field {name!r} must be a positive integer, got {value!r}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ValueError(
        f"config field 'num_attention_heads' ({self.num_attention_heads}) must be divisible "
        f"by 'num_key_value_heads' ({self.num_key_value_heads})"
      )
    if len(self.no_rope_layers) != self.num_hidden_layers:
      raise ValueError(
        f"config field 'no_rope_layers' has {len(self.no_rope_layers)} entries but "
        f"'num_hidden_layers' is {self.num_hidden_layers}"
      )
    if any(v not in (0, 1) for v in self.no_rope_layers):
      raise ValueError(f"config field 'no_rope_layers' must hold only 0/1, got {self.no_rope_layers}")
    if self.head_dim % 2:
      raise ValueError(f"config field 'head_dim' must be even for RoPE, got {self.head_dim}")
    if self.rope_scaling is not None and self.rope_scaling.rope_type not in SUPPORTED_ROPE_TYPES:
      raise ValueError(
        f"config field 'rope_scaling' has unknown type {self.rope_scaling.rope_type!r}; "
        f"supported: {SUPPORTED_ROPE_TYPES}"
      )
    # Values no checkpoint can mean: each would load and give NaN or garbage logits in silence.
    positive = dict(rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta)
    if self.rope_scaling is not None:
      sc = self.rope_scaling
      positive.update(
        {
          "rope_scaling.factor": sc.factor,
          "rope_scaling.beta_fast": sc.beta_fast,
          "rope_scaling.beta_slow": sc.beta_slow,
          "rope_scaling.original_max_position_embeddings": sc.original_max_position_embeddings,
          "rope_scaling.attention_factor": sc.attention_factor,
        }
      )
    for name, value in positive.items():
      if value is None and name.startswith("rope_scaling."):
        continue
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"config field {name!r} must be a finite number > 0, got {value!r}")

  # -- derived -------------------------------------------------------------------------------
  @property
  def num_query_groups(self) -> int:
    """Query heads per kv head (GQA ratio)."""
    return self.num_attention_heads // self.num_key_value_heads

  def uses_rope(self, layer: int) -> bool:
    return bool(self.no_rope_layers[layer])

  def replace(self, **changes) -> "SmolLM3Config":
    return dataclasses.replace(self, **changes)

  # -- (de)serialisation ---------------------------------------------------------------------
  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "SmolLM3Config":
    """Builds a config from a Hugging Face config dict; unknown fields are ignored."""
    d = dict(d)
    defaults = cls()
    get = lambda k, default: d[k] if d.get(k) is not None else default
    hidden = int(get("hidden_size", defaults.hidden_size))
    heads = int(get("num_attention_heads", defaults.num_attention_heads))
    layers = int(get("num_hidden_layers", defaults.num_hidden_layers))
    if heads <= 0:
      raise ValueError(f"config field 'num_attention_heads' must be positive, got {heads}")
    head_dim = d.get("head_dim") or hidden // heads

    # Newer transformers: rope_parameters = {"rope_type": ..., "rope_theta": ..., ...}.
    rope_params = d.get("rope_parameters")
    if isinstance(rope_params, Mapping) and rope_params:
      rope_params = dict(rope_params)
      rope_theta = rope_params.pop("rope_theta", d.get("rope_theta", defaults.rope_theta))
      rope_scaling_d = (
        rope_params if rope_params.get("rope_type", rope_params.get("type", "default")) != "default" else None
      )
    else:
      rope_theta = get("rope_theta", defaults.rope_theta)
      rope_scaling_d = d.get("rope_scaling")
    rope_scaling = _parse_rope_scaling(rope_scaling_d)

    no_rope = d.get("no_rope_layers")
    if no_rope is None:
      interval = d.get("no_rope_layer_interval")
      if interval:
        no_rope = [int((i + 1) % interval != 0) for i in range(layers)]
      elif d.get("model_type") == "smollm3" or "no_rope_layer_interval" in d:
        no_rope = [int((i + 1) % 4 != 0) for i in range(layers)]
      else:  # Llama-style checkpoints: RoPE everywhere
        no_rope = [1] * layers

    eos = d.get("eos_token_id", defaults.eos_token_id)
    eos = tuple(int(e) for e in eos) if isinstance(eos, (list, tuple)) else ((int(eos),) if eos is not None else ())

    return cls(
      vocab_size=int(get("vocab_size", defaults.vocab_size)),
      hidden_size=hidden,
      intermediate_size=int(get("intermediate_size", defaults.intermediate_size)),
      num_hidden_layers=layers,
      num_attention_heads=heads,
      num_key_value_heads=int(get("num_key_value_heads", heads)),
      head_dim=int(head_dim),
      rope_theta=float(rope_theta),
      rope_scaling=rope_scaling,
      max_position_embeddings=int(get("max_position_embeddings", defaults.max_position_embeddings)),
      rms_norm_eps=float(get("rms_norm_eps", defaults.rms_norm_eps)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
      no_rope_layers=tuple(int(v) for v in no_rope),
      attention_bias=bool(d.get("attention_bias", False)),
      mlp_bias=bool(d.get("mlp_bias", False)),
      bos_token_id=d.get("bos_token_id"),
      eos_token_id=eos,
      pad_token_id=d.get("pad_token_id"),
    )

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "SmolLM3Config":
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config file not found: {path}")
    with open(path) as f:
      try:
        d = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return cls.from_dict(d)

  def to_hf_dict(self) -> dict[str, Any]:
    """A ``config.json`` dict in the layout current ``transformers`` reads."""
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
    if self.rope_scaling is not None:
      rs = {k: v for k, v in dataclasses.asdict(self.rope_scaling).items() if v is not None}
      rope_parameters.update(rs)
    eos = list(self.eos_token_id)
    return {
      "architectures": ["SmolLM3ForCausalLM"],
      "model_type": "smollm3",
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "intermediate_size": self.intermediate_size,
      "num_hidden_layers": self.num_hidden_layers,
      "num_attention_heads": self.num_attention_heads,
      "num_key_value_heads": self.num_key_value_heads,
      "head_dim": self.head_dim,
      "rope_theta": self.rope_theta,
      "rope_parameters": rope_parameters,
      "max_position_embeddings": self.max_position_embeddings,
      "rms_norm_eps": self.rms_norm_eps,
      "tie_word_embeddings": self.tie_word_embeddings,
      "no_rope_layers": list(self.no_rope_layers),
      "attention_bias": self.attention_bias,
      "mlp_bias": self.mlp_bias,
      "bos_token_id": self.bos_token_id,
      "eos_token_id": eos[0] if len(eos) == 1 else eos,
      "pad_token_id": self.pad_token_id,
      "hidden_act": "silu",
    }


def _parse_rope_scaling(d: Mapping[str, Any] | None) -> RopeScaling | None:
  if not d:
    return None
  d = dict(d)
  rope_type = d.get("rope_type", d.get("type", "default"))
  if rope_type not in SUPPORTED_ROPE_TYPES:
    raise ValueError(f"config field 'rope_scaling' has unknown type {rope_type!r}; supported: {SUPPORTED_ROPE_TYPES}")
  if rope_type == "default":
    return None
  if "factor" not in d:
    raise ValueError(f"config field 'rope_scaling' ({rope_type}) needs 'factor'")
  opt = lambda k: None if d.get(k) is None else float(d[k])
  return RopeScaling(
    rope_type=rope_type,
    factor=float(d["factor"]),
    original_max_position_embeddings=(
      int(d["original_max_position_embeddings"]) if d.get("original_max_position_embeddings") else None
    ),
    attention_factor=opt("attention_factor"),
    beta_fast=float(d.get("beta_fast") or 32.0),
    beta_slow=float(d.get("beta_slow") or 1.0),
    mscale=opt("mscale"),
    mscale_all_dim=opt("mscale_all_dim"),
    truncate=bool(d.get("truncate", True)),
  )


# -- presets ---------------------------------------------------------------------------------
def smollm3_3b() -> SmolLM3Config:
  """HuggingFaceTB/SmolLM3-3B (its published config.json)."""
  return SmolLM3Config()


def smollm2_135m() -> SmolLM3Config:
  """SmolLM2-135M(-Instruct): Llama layout, RoPE on every layer."""
  return SmolLM3Config(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    no_rope_layers=(1,) * 30,
    bos_token_id=1,
    eos_token_id=(2,),
    pad_token_id=2,
  )


def tiny(num_layers: int = 8, vocab_size: int = 512, **changes) -> SmolLM3Config:
  """A tiny random-weight SmolLM3 for tests: NoPE every 4th layer, GQA ratio 4."""
  cfg = SmolLM3Config(
    vocab_size=vocab_size,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=num_layers,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    no_rope_layers=tuple(int((i + 1) % 4 != 0) for i in range(num_layers)),
    bos_token_id=None,
    eos_token_id=(vocab_size - 1,),
    pad_token_id=0,
  )
  return cfg.replace(**changes) if changes else cfg


PRESETS = {"smollm3_3b": smollm3_3b, "smollm2_135m": smollm2_135m, "tiny": tiny}
