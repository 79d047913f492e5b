"""The fine-tuning run: a workdir, a data set of conversations, the training loop with a progress bar,
held-out evaluation, Orbax checkpoints of parameters and optimiser state, resume, and the export.

Workdir layout (``run(config, workdir)``; ``experiments/finetune.py`` is its command line):

    config.json        the run's config (plus the chat date used); a resume must match it
    .lock              held while a run is in progress (files.DirectoryLock)
    checkpoints/<n>/   Orbax CheckpointManager steps: {"params", "opt_state"} and "meta" (JSON)
    metrics.jsonl      one line per logged step ({"step", "loss", "ce", "ul", "grad_norm", "lr",
                       "tokens_per_second"}) and per evaluation ({"step", "eval_loss", "eval_tokens"})
    export/            the final parameters as an Orbax conversion (checkpoints/orbax.py) with the
                       config and tokenizer: ``from_pretrained(export)`` and the sweep load it

A run killed at any moment resumes from its last saved checkpoint with the same config: the data
order is a function of (seed, step) (:mod:`smollm3_jax.training.data`), so the resumed run reaches
the parameters of an uninterrupted one, and ``metrics.jsonl`` holds each line once (those past the
checkpoint are dropped and logged again). A committed checkpoint that cannot be restored (files cut or
deleted) is refused naming its step and directory, never passed over in silence.

Imports the trainer, the data, the loaders and the file helpers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from typing import Mapping

from smollm3_jax.checkpoints import orbax as orbax_ckpt
from smollm3_jax.loading import load_model_and_tokenizer
from smollm3_jax.nn import sharding
from smollm3_jax.text import chat_format
from smollm3_jax.training import data as train_data
from smollm3_jax.training import train
from smollm3_jax.utils import files
from smollm3_jax.utils import workdir as workdir_config
from smollm3_jax.utils.workdir import CONFIG_FILE, to_plain

CONFIG_NAME = CONFIG_FILE
METRICS_NAME = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
# Fields that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_FIELDS = (
  "progress",
  "log_every",
  "eval_every",
  "checkpoint_every",
  "keep_checkpoints",
  "mesh",
  "export",
  "data.path",
  "data.eval_path",
)

_log = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
  workdir: str
  steps: int  # optimiser steps reached
  resumed_from: int | None  # the checkpoint step a resumed run started from
  train_loss: list  # (step, loss) per logged step of this process
  eval_loss: list  # (step, eval cross-entropy) per evaluation of this process
  export: str | None  # the export directory (None when stopped early or export=False)
  params: dict  # the final parameters (flat dict of arrays)


def _flat(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def validate_config(c: Mapping) -> None:
  """The config's own checks (before anything loads); ValueError names the field."""

  def count(name, low=1):
    v = _flat(c)[name]
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
      raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return v

  for name in ("steps", "batch_size", "data.max_length", "log_every", "keep_checkpoints"):
    count(name)
  for name in ("eval_every", "checkpoint_every", "seed"):
    count(name, 0)
  train.OptimConfig.from_mapping(optim_fields(c))
  alpha = c["unlikelihood_alpha"]
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
    raise ValueError(f"unlikelihood_alpha must be a finite number >= 0, got {alpha!r}")
  d = c["data"]
  if not os.path.isfile(d["path"]):
    raise ValueError(f"data.path: {d['path']!r} does not exist")
  if d["eval_path"] and not os.path.isfile(d["eval_path"]):
    raise ValueError(f"data.eval_path: {d['eval_path']!r} does not exist")
  if not (isinstance(d["eval_fraction"], (int, float)) and 0 <= d["eval_fraction"] < 1):
    raise ValueError(f"data.eval_fraction must lie in [0, 1), got {d['eval_fraction']!r}")
  for name in ("train_thinking", "thinking_default"):
    if not isinstance(d[name], bool):
      raise ValueError(f"data.{name} must be True or False, got {d[name]!r}")
  if c["model"].get("quantize", "none") not in ("none", "", None):
    raise ValueError(
      f"model.quantize must be 'none' to fine-tune (got {c['model']['quantize']!r}); quantize the export instead"
    )
  if c["date"]:
    chat_format.resolve_date(c["date"])
  sharding.parse_mesh(c["mesh"])


def optim_fields(c: Mapping) -> dict:
  """The OptimConfig of a run config (total steps and accumulation come from the run's fields)."""
  return dict(c["optim"], total_steps=c["steps"], accumulation=c["accumulation"])


def _check_resume(workdir: str, plain: dict) -> dict:
  """The stored record of a resumed run ({} on a first run; its chat date is reused), once its config
  matches ``plain`` except :data:`RESUMABLE_FIELDS`. ConfigMismatchError (a ValueError) names the
  differing fields, or refuses checkpoints without a readable config.json."""
  ckpt_dir = os.path.join(workdir, CHECKPOINTS_DIR)
  has_ckpt = os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir))
  stored = workdir_config.read_record(
    workdir, results=f"{ckpt_dir} has checkpoints" if has_ckpt else None, name=CONFIG_NAME
  )
  if stored is None:
    return {}
  workdir_config.refuse_changes(workdir, stored["config"], plain, may_change=RESUMABLE_FIELDS, what="a fine-tuning run")
  return stored


def _metrics_lines(workdir: str, keep_until: int) -> None:
  """Drops metric lines past step ``keep_until`` (a resumed run logs those steps again; -1: every line, for
  a run that starts over, its baseline evaluation at step 0 included)."""
  path = os.path.join(workdir, METRICS_NAME)
  if not os.path.isfile(path):
    return
  kept = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        if json.loads(line)["step"] <= keep_until:
          kept.append(line if line.endswith("\n") else line + "\n")
      except (json.JSONDecodeError, KeyError, TypeError):
        continue  # a torn last line
  files.atomic_write(path, "".join(kept))


def _append_metrics(workdir: str, record: dict) -> None:
  with open(os.path.join(workdir, METRICS_NAME), "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


def _closed_loop_filter(previous):
  """``sys.unraisablehook`` less the "Event loop is closed" RuntimeErrors of a failed Orbax restore: TensorStore
  reads still in flight when the first one failed finish after Orbax's event loop closed, and their callbacks'
  errors would print a traceback each on stderr (even after the restore returned). Others go to ``previous``."""
  if getattr(previous, "closed_loop_filter", False):
    return previous

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.closed_loop_filter = True
  return hook


def _restore(mngr, step: int, args, workdir: str):
  """(params, opt_state) of checkpoint ``step``; a damaged one (array files cut, its state deleted: Orbax's
  KeyError or pages of TensorStore error) is a short ValueError naming the step and its directory."""
  previous = sys.unraisablehook
  sys.unraisablehook = _closed_loop_filter(previous)
  try:
    restored = mngr.restore(step, args=args)
  except Exception as e:  # noqa: BLE001  (whatever the storage layer raises for a damaged file)
    mngr.close()  # (the filter stays: the reads in flight end later)
    directory = os.path.join(workdir, CHECKPOINTS_DIR, str(step))
    detail = str(e).split("\n", 1)[0][:300]
    # No fall-back to an older step: a checkpoint is committed atomically, so damage is the disk's or a
    # hand's, which the user should hear of; deleting the step is the one-line way to fall back.
    raise ValueError(
      f"{directory}: checkpoint step {step} is damaged and cannot be restored ({type(e).__name__}: "
      f"{detail}). Delete {directory} to resume from the checkpoint before it (or from the start), "
      "or use a new --workdir."
    ) from None
  sys.unraisablehook = previous
  return restored["state"]["params"], restored["state"]["opt_state"]


def _checkpoint_manager(workdir: str, keep: int):
  import orbax.checkpoint as ocp

  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    create=True,
    # Synchronous: the step donates the arrays a save reads.
    enable_async_checkpointing=False,
  )
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR), options=options)


def evaluate(
  trainer: train.Trainer, params, examples, *, batch_size: int, pad_id: int, max_length: int
) -> tuple[float, int]:
  """Cross-entropy per target token over ``examples`` (batches padded with empty rows), and the count."""
  ce, n = 0.0, 0
  for i in range(0, len(examples), batch_size):
    tokens, mask = train_data.pad_batch(examples[i : i + batch_size], pad_id, rows=batch_size, max_length=max_length)
    sums = trainer.eval_sums(params, trainer.place_batch(tokens, mask))
    ce += float(sums["ce"])
    n += int(sums["tokens"])
  return ce / max(n, 1), n


def run(config, workdir: str, *, stop_after: int | None = None) -> Outcome:
  """Fine-tunes as ``config`` (configs/finetune.py) says, in ``workdir``; resumes a run found there.

  ``stop_after``: leave after this many optimiser steps of this process (no extra checkpoint: it
  stands for a run killed there; the next run resumes from the last saved step).
  """
  from tqdm.auto import tqdm

  plain = to_plain(config)
  validate_config(plain)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with files.DirectoryLock(workdir):
    stored = _check_resume(workdir, plain)
    date = stored.get("date") or chat_format.iso_date(plain["date"] or None)
    files.atomic_write(os.path.join(workdir, CONFIG_NAME), json.dumps(dict(config=plain, date=date), indent=2) + "\n")
    return _run(plain, workdir, date, stop_after, tqdm)


def _run(c: dict, workdir: str, date: str, stop_after: int | None, tqdm) -> Outcome:
  import orbax.checkpoint as ocp

  d = c["data"]
  records = train_data.load_conversations(d["path"])
  if d["eval_path"]:
    train_recs, eval_recs = records, train_data.load_conversations(d["eval_path"])
  else:
    train_recs, eval_recs = train_data.split(records, d["eval_fraction"], c["seed"])

  model, tokenizer = load_model_and_tokenizer(c["model"], mesh=c["mesh"])
  if tokenizer is None:
    raise ValueError("model: fine-tuning needs a tokenizer (set model.tokenizer for a random model)")
  pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
  enc = dict(
    max_length=d["max_length"], thinking_default=d["thinking_default"], train_thinking=d["train_thinking"], date=date
  )
  train_ex, cut = train_data.encode_records(tokenizer, train_recs, **enc)
  eval_ex, _ = train_data.encode_records(tokenizer, eval_recs, **enc)
  if not train_ex:
    raise ValueError(f"{d['path']}: no conversation has a target token within data.max_length")
  if cut:
    _log.warning("%d training conversations were cut to data.max_length=%d", cut, d["max_length"])

  trainer = train.Trainer(
    model,
    train.OptimConfig.from_mapping(optim_fields(c)),
    unlikelihood_alpha=c["unlikelihood_alpha"],
    mesh=c["mesh"] or None,
  )
  accum, total = c["accumulation"], c["steps"]
  mngr = _checkpoint_manager(workdir, c["keep_checkpoints"])
  start = mngr.latest_step()
  if start is not None:
    params, opt_state = _restore(
      mngr,
      start,
      ocp.args.Composite(state=ocp.args.StandardRestore(trainer.abstract_state()), meta=ocp.args.JsonRestore()),
      workdir,
    )
    _metrics_lines(workdir, start)
  else:
    params = trainer.params(model)
    opt_state = trainer.init_opt_state(params)
    _metrics_lines(workdir, -1)  # no checkpoint: everything runs again, the step-0 baseline too
  del model
  step = start or 0

  def save(at: int):
    mngr.save(
      at,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
        meta=ocp.args.JsonSave(dict(step=at, micro_steps=at * accum, date=date)),
      ),
    )
    mngr.wait_until_finished()

  def run_eval(at: int):
    if not eval_ex:
      return None
    loss, n = evaluate(trainer, params, eval_ex, batch_size=c["batch_size"], pad_id=pad_id, max_length=d["max_length"])
    _append_metrics(workdir, dict(step=at, eval_loss=loss, eval_tokens=n))
    return loss

  train_losses, eval_losses = [], []
  if start is None and c["eval_every"] and eval_ex:  # the baseline: the held-out loss before training
    eval_losses.append((0, run_eval(0)))
  bar = tqdm(total=total, initial=step, desc="fine-tune", unit="step", disable=not c["progress"])
  done_here = 0
  # tokens/s of the training steps only (not evaluation or checkpoints), from the second step of this
  # process on (the first one compiles); the first step shows its own.
  step_seconds, step_tokens = [], []
  try:
    while step < total and (stop_after is None or done_here < stop_after):
      sums, t_step, n_tokens = {}, time.perf_counter(), 0
      for micro in range(step * accum, (step + 1) * accum):
        idx = train_data.batch_indices(len(train_ex), c["batch_size"], c["seed"], micro)
        tokens, mask = train_data.pad_batch([train_ex[i] for i in idx], pad_id, max_length=d["max_length"])
        params, opt_state, metrics = trainer.step(params, opt_state, trainer.place_batch(tokens, mask))
        for k, v in metrics.items():
          sums[k] = sums.get(k, 0.0) + float(v) / accum
        n_tokens += sum(len(train_ex[i]) for i in idx)
      step_seconds.append(time.perf_counter() - t_step)
      step_tokens.append(n_tokens)
      step += 1
      done_here += 1
      recent = slice(1, None) if len(step_seconds) > 1 else slice(0, 1)
      rate = sum(step_tokens[recent]) / max(sum(step_seconds[recent]), 1e-9)
      bar.update(1)
      bar.set_postfix(loss=f"{sums['loss']:.4f}", tok_s=f"{rate:.0f}")
      if step % c["log_every"] == 0 or step == total:
        train_losses.append((step, sums["loss"]))
        _append_metrics(
          workdir,
          dict(
            step=step,
            loss=sums["loss"],
            ce=sums["ce"],
            ul=sums["ul"],
            grad_norm=sums["grad_norm"],
            lr=trainer.learning_rate(step - 1),
            tokens_per_second=rate,
          ),
        )
      if eval_ex and c["eval_every"] and step % c["eval_every"] == 0 and step < total:
        eval_losses.append((step, run_eval(step)))
        bar.set_postfix(loss=f"{sums['loss']:.4f}", eval=f"{eval_losses[-1][1]:.4f}", tok_s=f"{rate:.0f}")
      if c["checkpoint_every"] and step % c["checkpoint_every"] == 0 and step < total:
        save(step)
  finally:
    bar.close()

  export = None
  if step == total:
    if start != total:  # (a run that had already finished only exports again)
      # The last evaluation before the last checkpoint: a run killed between them resumes before the end
      # and logs it then (after the checkpoint, a resume would find the run finished, its line missing).
      eval_losses.append((total, run_eval(total)))
      if mngr.latest_step() != total:
        save(total)
    if c["export"]:
      export = orbax_ckpt.save(
        os.path.join(workdir, EXPORT_DIR),
        trainer.model(params),
        tokenizer=tokenizer,
        source=f"fine-tuned from {c['model']['checkpoint'] or 'a random model'}",
        overwrite=True,
      )
  mngr.close()
  return Outcome(
    workdir=workdir,
    steps=step,
    resumed_from=start,
    train_loss=train_losses,
    eval_loss=[e for e in eval_losses if e[1] is not None],
    export=export,
    params=params,
  )
