"""Sampling sweeps: a grid of decoding settings x prompts x samples, run as batched rows.

    from smollm3_jax import sweep
    outcome = sweep.run_sweep(config, "out/my_sweep")     # config: configs/sweep.py's get_config()

The package, one module per job (lower ones never import higher ones):

* :mod:`~smollm3_jax.sweep.plan`: the config check, prompt set, grid (``AXES``, cells, cell keys)
  and rows with their seeds;
* :mod:`~smollm3_jax.sweep.store`: the workdir (lock, ``config.json`` with the chat date and the runs'
  provenance, the config check on resume) and the results file ``generations.jsonl``;
* :mod:`~smollm3_jax.sweep.report`: per-cell metrics (``METRICS``), ``summary.csv``, table, heatmaps;
* :mod:`~smollm3_jax.sweep.run`: :func:`run_sweep`, which runs the missing rows and reports.
"""

from smollm3_jax.checkpoints.spec import load_model_and_tokenizer
from smollm3_jax.files import LockedError
from smollm3_jax.sweep.plan import (AXES, cell_key, expand_grid, load_prompts, make_rows, prompts_hash,
                                    row_seed, to_plain, validate_config)
from smollm3_jax.sweep.report import METRICS, format_table, plot_heatmaps, summarize, summary_csv
from smollm3_jax.sweep.run import SweepOutcome, run_sweep
from smollm3_jax.sweep.store import (FORMAT_VERSION, RESUMABLE_FIELDS, ConfigMismatchError, ResultsFile, Workdir,
                                     provenance)

__all__ = [
    "AXES", "METRICS", "FORMAT_VERSION", "RESUMABLE_FIELDS", "ConfigMismatchError", "LockedError", "ResultsFile",
    "SweepOutcome", "Workdir", "cell_key", "expand_grid", "format_table", "load_model_and_tokenizer",
    "load_prompts", "make_rows", "plot_heatmaps", "prompts_hash", "provenance", "row_seed", "run_sweep",
    "summarize", "summary_csv", "to_plain", "validate_config",
]
