"""Sweep presets: ``get_config("demo" | "smollm3_3b" | "tiny")``, and the bundled prompt set :data:`PROMPT_SET`.

Presets pick the model (:mod:`smollm3_jax.checkpoints.presets`) and sizes that suit it: "demo"
(SmolLM2-135M on a CPU: a small grid over a handful of prompts), "smollm3_3b" (the hub checkpoint on a
GPU/TPU: the whole prompt set, several samples, long outputs), "tiny" (a random model for tests).
``configs/sweep.py`` is this module as an absl config file (``--config=configs/sweep.py:demo``); an
installed package needs no checkout: ``run_sweep(presets.get_config("demo"), workdir)``.
"""

from __future__ import annotations

import importlib.resources
import os

import ml_collections

from smollm3_jax.checkpoints.presets import model_config

__all__ = ["PRESETS", "PROMPT_SET", "get_config"]

PRESETS = ("demo", "smollm3_3b", "tiny")

# The prompt set shipped inside the package (package data), so a wheel install finds it with no checkout.
# A plain path: the config stores it as a string (the package is installed unzipped, as pip does).
PROMPT_SET = os.fspath(importlib.resources.files(__package__).joinpath("prompts", "sweep.jsonl"))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The sweep config of preset ``arg`` (default "demo"); every field may be overridden."""
  preset = arg or "demo"
  c = ml_collections.ConfigDict()
  c.model = model_config(preset)

  # Axes of the grid: every combination is one cell. Tuples; a single value = fixed.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.temperature = (0.0, 0.6, 1.0)  # 0 = greedy
  c.sweep.repetition_penalty = (1.0, 1.1, 1.3)  # 1 = off (HF-style: divides positive logits)
  c.sweep.thinking = (False, True)  # the chat template's enable_thinking
  c.sweep.top_p = (0.95,)  # 1 = off
  c.sweep.top_k = (0,)  # 0 = off
  c.sweep.min_p = (0.0,)  # 0 = off
  # More axes (off by default; their values join the cell keys only when on):
  c.sweep.typical_p = (1.0,)  # locally typical sampling; 1 = off
  c.sweep.epsilon_cutoff = (0.0,)  # 0 = off
  c.sweep.eta_cutoff = (0.0,)  # 0 = off
  c.sweep.frequency_penalty = (0.0,)  # OpenAI / vLLM, in [-2, 2]; 0 = off
  c.sweep.presence_penalty = (0.0,)  # OpenAI / vLLM, in [-2, 2]; 0 = off
  c.sweep.no_repeat_ngram_size = (0,)  # 0 = off
  c.sweep.min_new_tokens = (0,)  # stop ids masked before this many tokens; 0 = off
  c.sweep.num_beams = (1,)  # > 1: beam search (needs temperature=(0.0,)); 1 = off
  # (every axis of smollm3_jax.sweep.AXES may be given; one left out is fixed at its "off" value)

  c.samples = 1  # samples (seeds) per sampled cell; greedy cells always run once (and greedy
  # cells differing only in top_p / top_k / min_p share that run). samples > 1
  # adds majority-vote accuracy, pass@k and self-BLEU to the summary
  c.seed = 0  # base seed; each row's seed hashes (seed, prompt id, cell, sample)
  c.max_new_tokens = 128
  c.newline_limit = 0  # stop a row after this many consecutive newline tokens (0 = off)
  c.chat = True  # render prompts with the chat template
  c.date = ""  # the day the chat template sees, "YYYY-MM-DD"; "" = the day of the first
  # run (stored in config.json, so a resume renders the same prompts)

  c.prompts = ml_collections.ConfigDict()
  c.prompts.path = PROMPT_SET  # JSONL, one prompt a line (see sweep.load_prompts); default: the bundled set
  c.prompts.limit = 0  # keep the first N selected prompts (0 = all)
  c.prompts.kinds = ()  # e.g. ('math',) ; empty = all kinds (open, factual, math)
  c.prompts.ids = ()  # explicit prompt ids; empty = all

  c.batch_size = 16  # rows per batch (fixed: the last batch is padded, one compile)
  c.mesh = ""  # device mesh, e.g. 'data=2,model=4'; '' = all devices on the data axis
  c.plots = True
  c.record_logprobs = False  # per-token log-probabilities and entropies in generations.jsonl (4 decimals),
  # and the cells' mean_logprob / mean_entropy (recorded in the decode loop)
  c.plot_axes = ()  # the two axes of the heatmaps and line plots, e.g. ('temperature', 'min_p');
  # () = the two swept axes with most values; panels for the other swept axes

  # Per-cell statistics (report only: may change on resume). Percentile bootstrap over prompts and
  # their samples; the same seed for every cell, so intervals are reproducible.
  c.stats = ml_collections.ConfigDict()
  c.stats.resamples = 1000
  c.stats.level = 0.95
  c.stats.seed = 0
  c.progress = True

  if preset == "demo":
    # 3 x 3 x 2 = 18 cells over 6 prompts (2 of each kind), short outputs: a few minutes on 2 cores.
    c.prompts.limit = 6
    c.max_new_tokens = 32
    c.batch_size = 36  # 108 rows = 3 batches; a CPU decodes 36 rows about as fast as 18
  elif preset == "smollm3_3b":
    c.samples = 4
    c.max_new_tokens = 1024
    c.batch_size = 64
  elif preset == "tiny":
    c.sweep.temperature = (0.0, 1.0)
    c.sweep.repetition_penalty = (1.0, 1.3)
    c.prompts.limit = 2
    c.max_new_tokens = 6
    c.batch_size = 8
  return c
