"""Sampling sweeps: a grid of decoding settings x prompts x samples, run as batched rows.

    from smollm3_jax import sweep
    outcome = sweep.run_sweep(config, "out/my_sweep")     # config: configs/sweep.py's get_config()
    rows, summary = sweep.load("out/my_sweep")             # pandas DataFrames

The package, one module per job (lower ones never import higher ones):

* :mod:`~smollm3_jax.sweep.plan`: the config check, prompt set, grid (``SWEEP_AXES``: one line per
  axis; cells, cell keys, greedy cells sharing rows) and rows with their seeds;
* :mod:`~smollm3_jax.sweep.store`: the workdir (lock, ``config.json`` with the chat date and the runs'
  provenance, the config check on resume), the results file ``generations.jsonl`` and :func:`load`
  (a workdir's rows and summary as DataFrames);
* :mod:`~smollm3_jax.sweep.stats`: per-cell metrics (``METRICS``) with bootstrap intervals, pass@k,
  ``summary.csv`` and the text table;
* :mod:`~smollm3_jax.sweep.plots`: heatmaps and line plots of the summary over the swept axes;
* :mod:`~smollm3_jax.sweep.execute`: the missing rows through the engine, appended as they finish;
* :mod:`~smollm3_jax.sweep.run`: :func:`run_sweep`, which runs the missing rows and writes the
  summary and plots.
"""

from smollm3_jax.loading import load_model_and_tokenizer
from smollm3_jax.sweep.plan import (
  AXES,
  SAMPLING_AXES,
  SWEEP_AXES,
  Axis,
  cell_key,
  check_prompt,
  expand_grid,
  load_prompts,
  make_rows,
  prompts_hash,
  row_seed,
  run_cell,
  swept_axes,
  validate_config,
)
from smollm3_jax.sweep.plots import UNIT_RANGE, heatmap_figure, line_figure, plot_heatmaps, plot_pair
from smollm3_jax.sweep.run import SweepOutcome, run_sweep
from smollm3_jax.sweep.stats import METRICS, THROUGHPUT, format_table, metric_names, pass_ks, summarize, summary_csv
from smollm3_jax.sweep.store import (
  FORMAT_VERSION,
  RESUMABLE_FIELDS,
  ConfigMismatchError,
  ResultsFile,
  Workdir,
  load,
  provenance,
)
from smollm3_jax.utils.files import LockedError
from smollm3_jax.utils.workdir import to_plain

__all__ = [
  "AXES",
  "Axis",
  "METRICS",
  "FORMAT_VERSION",
  "RESUMABLE_FIELDS",
  "SAMPLING_AXES",
  "SWEEP_AXES",
  "THROUGHPUT",
  "UNIT_RANGE",
  "ConfigMismatchError",
  "LockedError",
  "ResultsFile",
  "SweepOutcome",
  "Workdir",
  "cell_key",
  "check_prompt",
  "expand_grid",
  "format_table",
  "heatmap_figure",
  "line_figure",
  "load",
  "load_model_and_tokenizer",
  "load_prompts",
  "make_rows",
  "metric_names",
  "pass_ks",
  "plot_heatmaps",
  "plot_pair",
  "prompts_hash",
  "provenance",
  "row_seed",
  "run_cell",
  "run_sweep",
  "summarize",
  "summary_csv",
  "swept_axes",
  "to_plain",
  "validate_config",
]
