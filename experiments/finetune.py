"""Fine-tune a checkpoint on JSONL conversations (masked cross-entropy on the assistant tokens,
optionally with token-level unlikelihood), with Orbax checkpoints and an export the sweep loads.

  python experiments/finetune.py --config=configs/finetune.py:demo --workdir=out/ft_demo
  python experiments/sweep.py --config=configs/sweep.py:demo --workdir=out/sweep_ft_demo \
      --config.model.checkpoint=out/ft_demo/export

Rerunning with the same workdir and config resumes from the last checkpoint; a different config is
refused. --stop_after=N leaves after N steps (as if killed there; for trying resumption).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Fine-tuning config file, e.g. configs/finetune.py:demo (argument: model preset).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (created; reused to resume).")
_STOP_AFTER = flags.DEFINE_integer(
  "stop_after", None, "Leave after this many steps of this run (no extra checkpoint: stands for a kill).", lower_bound=1
)
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from smollm3_jax.training import finetune
  from smollm3_jax.utils.files import LockedError

  logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO

  try:  # the config's own checks: a usage error, before loading anything
    finetune.validate_config(finetune.to_plain(_CONFIG.value))
  except ValueError as e:
    raise app.UsageError(f"--config: {e}") from None
  try:
    out = finetune.run(_CONFIG.value, _WORKDIR.value, stop_after=_STOP_AFTER.value)
  except LockedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if out.resumed_from is not None:
    print(f"resumed from step {out.resumed_from}")
  if out.train_loss:
    (s0, l0), (s1, l1) = out.train_loss[0], out.train_loss[-1]
    print(f"train loss: step {s0} {l0:.4f} -> step {s1} {l1:.4f}")
  for s, l in out.eval_loss:
    print(f"eval loss at step {s}: {l:.4f}")
  print(f"steps: {out.steps}; metrics: {os.path.join(out.workdir, 'metrics.jsonl')}")
  if out.export:
    print(f"export: {out.export}")
    preset = _CONFIG.value.model.get("name", "demo")
    print(
      f"sweep it: python experiments/sweep.py --config=configs/sweep.py:{preset} "
      f"--workdir=<dir> --config.model.checkpoint={out.export}"
    )


if __name__ == "__main__":
  cli.run(main)
