"""Sampling-sweep config: ``--config=configs/sweep.py:<model preset>``.

  python experiments/sweep.py --config=configs/sweep.py:demo --workdir=out/sweep_demo \
      --config.sweep.temperature='(0.0,0.6,1.0)' --config.samples=2

Presets (the argument) pick the model and sizes that suit it: "demo" (SmolLM2-135M on a CPU: a
small grid over a handful of prompts), "smollm3_3b" (the hub checkpoint on a GPU/TPU: the whole
prompt set, several samples, long outputs), "tiny" (a random model for tests).
Every field can be overridden on the command line; a misspelt field is an error.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

# The prompt set shipped with the project, located from this file (not from the working directory).
PROMPT_SET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "prompts",
                          "sweep.jsonl")


def _models():
  # Loaded by path: config files are imported by file name, not as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.py")
  spec = importlib.util.spec_from_file_location("_sweep_model_presets", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "demo"
  c = ml_collections.ConfigDict()
  c.model = _models().get_config(preset)

  # Axes of the grid: every combination is one cell. Tuples; a single value = fixed.
  c.sweep = ml_collections.ConfigDict()
  c.sweep.temperature = (0.0, 0.6, 1.0)       # 0 = greedy
  c.sweep.repetition_penalty = (1.0, 1.1, 1.3)  # 1 = off (HF-style: divides positive logits)
  c.sweep.thinking = (False, True)            # the chat template's enable_thinking
  c.sweep.top_p = (0.95,)                     # 1 = off
  c.sweep.top_k = (0,)                        # 0 = off
  c.sweep.min_p = (0.0,)                      # 0 = off
  # More axes (off by default; their values join the cell keys only when on):
  c.sweep.typical_p = (1.0,)                  # locally typical sampling; 1 = off
  c.sweep.epsilon_cutoff = (0.0,)             # 0 = off
  c.sweep.eta_cutoff = (0.0,)                 # 0 = off
  c.sweep.frequency_penalty = (0.0,)          # OpenAI / vLLM, in [-2, 2]; 0 = off
  c.sweep.presence_penalty = (0.0,)           # OpenAI / vLLM, in [-2, 2]; 0 = off
  c.sweep.no_repeat_ngram_size = (0,)         # 0 = off
  c.sweep.min_new_tokens = (0,)               # stop ids masked before this many tokens; 0 = off
  c.sweep.num_beams = (1,)                    # > 1: beam search (needs temperature=(0.0,)); 1 = off
  # (every axis of smollm3_jax.sweep.AXES may be given; one left out is fixed at its "off" value)

  c.samples = 1             # samples (seeds) per sampled cell; greedy cells always run once (and greedy
                            # cells differing only in top_p / top_k / min_p share that run). samples > 1
                            # adds majority-vote accuracy, pass@k and self-BLEU to the summary
  c.seed = 0                # base seed; each row's seed hashes (seed, prompt id, cell, sample)
  c.max_new_tokens = 128
  c.newline_limit = 0       # stop a row after this many consecutive newline tokens (0 = off)
  c.chat = True             # render prompts with the chat template
  c.date = ""               # the day the chat template sees, "YYYY-MM-DD"; "" = the day of the first
                            # run (stored in config.json, so a resume renders the same prompts)

  c.prompts = ml_collections.ConfigDict()
  c.prompts.path = PROMPT_SET
  c.prompts.limit = 0       # keep the first N selected prompts (0 = all)
  c.prompts.kinds = ()      # e.g. ('math',) ; empty = all kinds (open, factual, math)
  c.prompts.ids = ()        # explicit prompt ids; empty = all

  c.batch_size = 16         # rows per batch (fixed: the last batch is padded, one compile)
  c.mesh = ""               # device mesh, e.g. 'data=2,model=4'; '' = all devices on the data axis
  c.plots = True
  c.record_logprobs = False # per-token log-probabilities and entropies in generations.jsonl (4 decimals),
                            # and the cells' mean_logprob / mean_entropy (recorded in the decode loop)
  c.plot_axes = ()          # the two axes of the heatmaps and line plots, e.g. ('temperature', 'min_p');
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
