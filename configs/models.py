"""Model presets for sweeps: ``get_config("demo" | "smollm3_3b" | "tiny")``.

The presets live in the package (:mod:`smollm3_jax.checkpoints.presets`, so an installed wheel has
them too); this file is their absl config-file form. Fields: see that module.
"""

from __future__ import annotations

from smollm3_jax.checkpoints.presets import PRESETS, model_config

__all__ = ["PRESETS", "get_config"]


def get_config(arg: str | None = None):
  return model_config(arg)
