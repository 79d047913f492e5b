"""A grid of decoding settings over ``lm-eval`` tasks: one ``simple_evaluate`` per cell, one results
file per cell, resumable by cell (what ``experiments/evaluate.py`` runs).

    grid = parse_grid(["temperature=0.0,0.6,1.0", "thinking=true,false"])   # 6 cells
    run_grid(make_lm, workdir="out/gsm8k", tasks=["gsm8k_cot"], grid=grid, config={...})

Workdir::

    config.json                      what the grid runs (tasks, checkpoint, settings, axes); a resumed
                                     run must match it (the axes may gain values: only new cells run;
                                     they may come in another order: "grid_axes" keeps the first run's,
                                     which names the cells)
    cells/<cell>/results.json        lm-eval's results of the cell (its "samples" moved out), plus
                                     "cell" (the cell's settings); written last: the cell is done
    cells/<cell>/samples_<task>.jsonl lm-eval's per-sample logs (doc, arguments, responses, metrics)
    summary.csv                      one row per finished cell: its settings, then task/metric columns

An axis is a ``gen_kwargs`` key (:data:`smollm3_jax.evaluation.lm_eval_model.GEN_KWARGS` but ``until`` and ``logit_bias``) or one
of the model's settings :data:`MODEL_AXES` (``thinking``: the chat template's enable_thinking;
``seed``). A cell with a temperature samples when it is > 0 and decodes greedily at 0 (``do_sample``
follows it unless it is an axis itself: task YAMLs such as gsm8k's say ``do_sample: false``, which
would make every temperature greedy). Cells run in grid order; a cell whose results.json exists is skipped, so a killed run
continues where it stopped (the same grid with its axes in another order is the same cells: their names
keep the first run's axis order). The workdir is locked (:class:`smollm3_jax.utils.files.DirectoryLock`) while
a run holds it. Needs the ``eval`` extra.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

from smollm3_jax.evaluation.lm_eval_model import GEN_KWARGS
from smollm3_jax.generation import sampling
from smollm3_jax.utils import workdir as workdir_config
from smollm3_jax.utils.extras import needs
from smollm3_jax.utils.files import DirectoryLock, atomic_write
from smollm3_jax.utils.workdir import CONFIG_FILE

MODEL_AXES = ("thinking", "seed")
SUMMARY_FILE, RESULTS_FILE = "summary.csv", "results.json"
GRID_AXES = "grid_axes"  # config.json's axis order: the first run's (json's sort_keys sorts the grid's keys)


def _gen_axes() -> tuple[str, ...]:
  return tuple(k for k in GEN_KWARGS if k not in ("until", "logit_bias"))


def _integer_axes() -> set[str]:
  return {"seed", "max_gen_toks"} | {k for k, s in sampling.SETTINGS.items() if s.integer}


def _value(axis: str, text: str):
  text = text.strip()
  if axis in ("thinking", "do_sample"):
    if text.lower() not in ("true", "false"):
      raise ValueError(f"grid axis {axis}: values must be true or false, got {text!r}")
    return text.lower() == "true"
  try:
    number = float(text)
  except ValueError:
    raise ValueError(f"grid axis {axis}: {text!r} is not a number") from None
  if not math.isfinite(number):
    raise ValueError(f"grid axis {axis}: {text!r} is not finite")
  if axis in _integer_axes():
    if not number.is_integer():
      raise ValueError(f"grid axis {axis}: {text!r} is not an integer")
    return int(number)
  return number


def parse_grid(specs: Sequence[str]) -> dict[str, list]:
  """Axes from ``name=v1,v2,...`` strings, in order (ValueError naming a bad name or value)."""
  allowed = _gen_axes() + MODEL_AXES
  grid: dict[str, list] = {}
  for spec in specs:
    name, sep, values = spec.partition("=")
    name = name.strip()
    if not sep or not values.strip():
      raise ValueError(f"grid: expected name=v1,v2,..., got {spec!r}")
    if name not in allowed:
      raise ValueError(f"grid: unknown axis {name!r} (axes: {', '.join(allowed)})")
    if name in grid:
      raise ValueError(f"grid: axis {name!r} given twice")
    vals = [_value(name, v) for v in values.split(",")]
    if len(set(map(repr, vals))) != len(vals):
      raise ValueError(f"grid axis {name}: repeated value in {values!r}")
    grid[name] = vals
  return grid


def cells(grid: Mapping[str, Sequence]) -> list[dict]:
  """Every combination of the axes' values (the last axis varies fastest); one empty cell without axes."""
  names = list(grid)
  return [dict(zip(names, combo)) for combo in itertools.product(*(grid[n] for n in names))]


def cell_name(cell: Mapping[str, Any]) -> str:
  """A directory name for a cell: ``temperature=0.6,thinking=true`` ("default" for no axes)."""
  parts = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in cell.items()]
  return ",".join(parts) or "default"


def _check_config(workdir: str, config: Mapping[str, Any]) -> list[str]:
  """Writes config.json on the first run; later runs must match it, except that the axes may gain
  values (new cells) and may be given in another order (the same cells). Returns the axis order of
  the workdir (the first run's: it names the cells' folders). ConfigMismatchError (a ValueError)
  names the differences, or refuses finished cells without a readable config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(json.dumps(config))
  new_grid = current.get("grid", {})
  root = os.path.join(workdir, "cells")
  done = os.path.isdir(root) and any(os.path.exists(os.path.join(root, n, RESULTS_FILE)) for n in os.listdir(root))
  stored = workdir_config.read_record(workdir, results=f"{root} has finished cells" if done else None, section=None)
  if stored is None:
    # (sort_keys orders the grid's axes too: their order is kept apart)
    atomic_write(path, json.dumps({**current, GRID_AXES: list(new_grid)}, indent=2, sort_keys=True))
    return list(new_grid)
  old_grid = stored.get("grid", {})
  axes = (
    []
    if set(old_grid) == set(new_grid)
    else [f"grid axes ({', '.join(old_grid) or 'none'} -> {', '.join(new_grid) or 'none'})"]
  )
  workdir_config.refuse_changes(workdir, stored, current, may_change=("grid", GRID_AXES), also=axes, what="a grid run")
  order = stored.get(GRID_AXES)
  if not isinstance(order, list) or sorted(order) != sorted(new_grid):
    order = _first_axis_order(workdir, list(new_grid))
  record = {**current, "grid": {k: new_grid[k] for k in order}, GRID_AXES: order}
  if record != stored:
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True))
  return order


def _first_axis_order(workdir: str, axes: list[str]) -> list[str]:
  """The axis order of the cells' folders of a workdir whose config.json predates ``grid_axes`` (its
  grid's axes are sorted; the folders are named in the first run's order): the order of most finished
  cells, else of any cell folder, else ``axes`` (no folder to match)."""
  root = os.path.join(workdir, "cells")
  names = sorted(os.listdir(root)) if os.path.isdir(root) else []
  orders = [
    ([part.partition("=")[0] for part in name.split(",")], os.path.exists(os.path.join(root, name, RESULTS_FILE)))
    for name in names
  ]
  orders = [(o, done) for o, done in orders if sorted(o) == sorted(axes)]
  if not orders:
    return axes
  counts: dict[tuple, list[int]] = {}  # order -> [finished cells, cell folders]
  for o, done in orders:
    count = counts.setdefault(tuple(o), [0, 0])
    count[0], count[1] = count[0] + done, count[1] + 1
  return list(max(counts, key=counts.get))


def _metrics(results: Mapping[str, Any]) -> dict[str, Any]:
  """``task/metric`` -> value for the numeric metrics of lm-eval's results (stderr kept)."""
  out = {}
  for task, values in sorted(results.get("results", {}).items()):
    for key, v in values.items():
      if key in ("alias", "name", "sample_len") or isinstance(v, str) or isinstance(v, bool):
        continue
      try:
        out[f"{task}/{key}"] = float(v)
      except (TypeError, ValueError):
        pass
  return out


def write_summary(workdir: str, grid: Mapping[str, Sequence]) -> str:
  """summary.csv from the finished cells of ``grid``; returns its path."""
  rows = []
  for cell in cells(grid):
    path = os.path.join(workdir, "cells", cell_name(cell), RESULTS_FILE)
    if os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        rows.append({"cell": cell_name(cell), **cell, **_metrics(json.load(f))})
  columns = ["cell", *grid] + sorted({k for r in rows for k in r} - {"cell", *grid})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns)
  writer.writeheader()
  writer.writerows(rows)
  path = os.path.join(workdir, SUMMARY_FILE)
  atomic_write(path, buf.getvalue())
  return path


def run_cell(
  lm,
  *,
  directory: str,
  cell: Mapping[str, Any],
  tasks: Sequence[str],
  gen_kwargs: Mapping[str, Any],
  evaluate_kwargs: Mapping[str, Any],
) -> dict:
  """One ``lm_eval.simple_evaluate`` with the cell's gen_kwargs; writes its samples, then its results."""
  with needs("eval", "grid evaluation (smollm3_jax.evaluation.grid)"):
    import lm_eval
    from lm_eval.utils import handle_non_serializable

  kwargs = {**gen_kwargs, **{k: v for k, v in cell.items() if k not in MODEL_AXES}}
  if "temperature" in cell and "do_sample" not in cell:  # a task's YAML often says do_sample: false
    kwargs["do_sample"] = cell["temperature"] > 0
  results = lm_eval.simple_evaluate(
    model=lm, tasks=list(tasks), gen_kwargs=kwargs or None, log_samples=True, **evaluate_kwargs
  )
  os.makedirs(directory, exist_ok=True)
  dump = lambda x, **kw: json.dumps(x, default=handle_non_serializable, ensure_ascii=False, **kw)
  for task, samples in (results.pop("samples", None) or {}).items():
    atomic_write(os.path.join(directory, f"samples_{task}.jsonl"), "".join(dump(s) + "\n" for s in samples))
  results["cell"] = dict(cell)
  atomic_write(os.path.join(directory, RESULTS_FILE), dump(results, indent=2))
  return results


def run_grid(
  make_lm: Callable[[Mapping[str, Any]], Any],
  *,
  workdir: str,
  tasks: Sequence[str],
  grid: Mapping[str, Sequence],
  config: Mapping[str, Any],
  gen_kwargs: Mapping[str, Any] | None = None,
  evaluate_kwargs: Mapping[str, Any] | None = None,
  on_cell_done: Callable[[str], None] | None = None,
  log: Callable[[str], None] = print,
) -> dict:
  """Runs every unfinished cell of ``grid`` into ``workdir`` (module docstring) and writes the
  summary. ``make_lm(cell)`` returns the lm-eval model for a cell (it reads the cell's
  :data:`MODEL_AXES`); ``config``: the run's settings, checked against the workdir's;
  ``evaluate_kwargs``: more ``simple_evaluate`` arguments (task_manager, num_fewshot, limit,
  apply_chat_template, ...). Returns ``{"ran": [...], "skipped": [...], "summary": path}``."""
  if not tasks:
    raise ValueError("tasks: name at least one lm-eval task")
  os.makedirs(workdir, exist_ok=True)
  ran, skipped = [], []
  with DirectoryLock(workdir):
    order = _check_config(
      workdir,
      {
        **config,
        "tasks": list(tasks),
        "gen_kwargs": dict(gen_kwargs or {}),
        "grid": {k: list(v) for k, v in grid.items()},
      },
    )
    grid = {k: grid[k] for k in order}  # the workdir's axis order: its cells keep their names
    todo = cells(grid)
    for i, cell in enumerate(todo):
      name = cell_name(cell)
      directory = os.path.join(workdir, "cells", name)
      if os.path.exists(os.path.join(directory, RESULTS_FILE)):
        skipped.append(name)
        log(f"[{i + 1}/{len(todo)}] {name}: done before, skipped")
        continue
      log(f"[{i + 1}/{len(todo)}] {name}: running")
      run_cell(
        make_lm(cell),
        directory=directory,
        cell=cell,
        tasks=tasks,
        gen_kwargs=gen_kwargs or {},
        evaluate_kwargs=evaluate_kwargs or {},
      )
      ran.append(name)
      write_summary(workdir, grid)
      if on_cell_done is not None:
        on_cell_done(name)
    summary = write_summary(workdir, grid)
  return {"ran": ran, "skipped": skipped, "summary": summary}
