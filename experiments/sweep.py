"""Run a sampling sweep: every prompt x every cell of a decoding-settings grid x samples.

  python experiments/sweep.py --config=configs/sweep.py:demo --workdir=out/sweep_demo
  python experiments/sweep.py --config=configs/sweep.py:smollm3_3b --workdir=out/sweep_3b \
      --config.sweep.temperature='(0.0,0.6,1.0)' --config.samples=8

Writes workdir/config.json, generations.jsonl, summary.csv and plots/*.png, prints the summary.
Rerunning with the same workdir and config resumes; a different config is refused.

Over several processes (hosts), every process runs this with the same flags plus its own
--process_id (and --coordinator_address, --num_processes; or --distributed on Cloud TPU / SLURM);
only process 0 writes the workdir (see docs/sharding-and-multihost.md).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Sweep config file, e.g. configs/sweep.py:demo (argument: model preset).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created; reused to resume).")
cli.define_compilation_cache_flag()
cli.define_distributed_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from smollm3_jax import sweep

  try:  # the config's own checks: a usage error, before loading anything
    sweep.validate_config(sweep.to_plain(_CONFIG.value))
  except ValueError as e:
    raise app.UsageError(f"--config: {e}") from None
  from smollm3_jax.utils import distributed

  try:
    outcome = sweep.run_sweep(_CONFIG.value, _WORKDIR.value)
  except (sweep.ConfigMismatchError, sweep.LockedError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if not distributed.is_leader():
    return
  print()
  print(outcome.table)
  print()
  print(
    f"rows: {outcome.total_rows} ({outcome.skipped_rows} resumed, {outcome.new_rows} new, {outcome.batches} batches)"
  )
  wd = outcome.workdir
  print(f"generations: {os.path.join(wd, 'generations.jsonl')}")
  print(f"summary:     {os.path.join(wd, 'summary.csv')}")
  if outcome.plots:
    print(
      f"plots:       {os.path.join(wd, 'plots')}/ ({len(outcome.plots)} PNGs: "
      f"{', '.join(os.path.basename(p) for p in outcome.plots[:3])}, ...)"
    )


if __name__ == "__main__":
  cli.run(main)
