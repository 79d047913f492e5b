"""Sampling-sweep config: ``--config=configs/sweep.py:<model preset>``.

  python experiments/sweep.py --config=configs/sweep.py:demo --workdir=out/sweep_demo \
      --config.sweep.temperature='(0.0,0.6,1.0)' --config.samples=2

Presets (the argument) pick the model and sizes that suit it: "demo" (SmolLM2-135M on a CPU: a
small grid over a handful of prompts), "smollm3_3b" (the hub checkpoint on a GPU/TPU: the whole
prompt set, several samples, long outputs), "tiny" (a random model for tests).
Every field can be overridden on the command line; a misspelt field is an error.

The presets and the prompt set live in the package (:mod:`smollm3_jax.sweep.presets`, so an installed
wheel has them too, e.g. in the Colab notebook); this file is their absl config-file form.
"""

from __future__ import annotations

from smollm3_jax.sweep.presets import PRESETS, PROMPT_SET, get_config

__all__ = ["PRESETS", "PROMPT_SET", "get_config"]
