"""Sampling sweeps: a grid of decoding settings x prompts x samples, run as batched rows.

    from smollm3_jax import sweep
    outcome = sweep.run_sweep(config, "out/my_sweep")     # config: configs/sweep.py's get_config()
    rows, summary = sweep.load("out/my_sweep")             # pandas DataFrames

The package, one module per job (lower ones never import higher ones):

* :mod:`~smollm3_jax.sweep.plan`: the config check, prompt set, grid (``SWEEP_AXES``: one line per
  axis; cells, cell keys, greedy cells sharing rows) and rows with their seeds;
* :mod:`~smollm3_jax.sweep.store`: the workdir (lock, ``config.json`` with the chat date and the runs'
  provenance, the config check on resume) and the results file ``generations.jsonl``;
* :mod:`~smollm3_jax.sweep.report`: per-cell metrics (``METRICS``) with bootstrap intervals,
  ``summary.csv``, table, heatmaps and line plots over the swept axes, :func:`load` (DataFrames);
* :mod:`~smollm3_jax.sweep.run`: :func:`run_sweep`, which runs the missing rows and reports.
"""

from smollm3_jax.loading import load_model_and_tokenizer
from smollm3_jax.utils.files import LockedError
from smollm3_jax.sweep.plan import (AXES, SAMPLING_AXES, SWEEP_AXES, Axis, cell_key, check_prompt, expand_grid,
                                    load_prompts, make_rows, prompts_hash, row_seed, run_cell, swept_axes,
                                    to_plain, validate_config)
from smollm3_jax.sweep.report import (METRICS, THROUGHPUT, UNIT_RANGE, format_table, heatmap_figure, line_figure, load,
                                      metric_names, pass_ks, plot_heatmaps, plot_pair, summarize, summary_csv)
from smollm3_jax.sweep.run import SweepOutcome, run_sweep
from smollm3_jax.sweep.store import (FORMAT_VERSION, RESUMABLE_FIELDS, ConfigMismatchError, ResultsFile, Workdir,
                                     provenance)

__all__ = [
    "AXES", "Axis", "METRICS", "FORMAT_VERSION", "RESUMABLE_FIELDS", "SAMPLING_AXES", "SWEEP_AXES", "THROUGHPUT", "UNIT_RANGE",
    "ConfigMismatchError", "LockedError", "ResultsFile", "SweepOutcome", "Workdir", "cell_key", "check_prompt",
    "expand_grid", "format_table", "heatmap_figure", "line_figure", "load", "load_model_and_tokenizer", "load_prompts",
    "make_rows", "metric_names", "pass_ks", "plot_heatmaps", "plot_pair", "prompts_hash", "provenance",
    "row_seed", "run_cell", "run_sweep", "summarize", "summary_csv", "swept_axes", "to_plain",
    "validate_config",
]
