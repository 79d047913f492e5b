"""The one config-in-a-workdir check (smollm3_jax.utils.workdir) and its three users: the sweep's
workdir, fine-tuning and the evaluation grid each refuse a resume with another config naming the
field and both values, let the fields that may change on resume pass, and refuse results without a
readable config.json. No model runs here: every refusal comes before anything loads."""

from __future__ import annotations

import importlib.util
import json
import os

import ml_collections
import pytest
from _helpers import ROOT, override, tiny_sweep_config

from smollm3_jax import sweep
from smollm3_jax.evaluation import grid as evaluation
from smollm3_jax.training import finetune
from smollm3_jax.utils import workdir


def test_to_plain_turns_config_dicts_and_tuples_into_sorted_json_values():
  cfg = ml_collections.ConfigDict(dict(b=(1, 2), a=dict(z=1.5, y="x")))
  plain = workdir.to_plain(cfg)
  assert plain == {"a": {"y": "x", "z": 1.5}, "b": [1, 2]}
  assert list(plain) == ["a", "b"] and list(plain["a"]) == ["y", "z"]
  assert workdir.to_plain({"s": {3}}) == {"s": [3]}  # an iterable JSON lacks becomes a list
  # The sweep and fine-tuning use this one function.
  assert sweep.to_plain is workdir.to_plain and finetune.to_plain is workdir.to_plain


def test_differences_name_dotted_fields_with_both_values():
  old = dict(a=1, b=dict(c=2, d=[1, 2]), e="x", f=dict(g=1))
  new = dict(a=1, b=dict(c=3, d=[1, 2]), h=None, f=dict(g=2))
  assert workdir.differences(old, new) == [
    "b.c: 2 -> 3",
    "e: 'x' -> '<missing>'",
    "f.g: 1 -> 2",
    "h: '<missing>' -> None",
  ]
  # A field that may change is left out with everything under it; a dotted one only that leaf.
  assert workdir.differences(old, new, may_change=("b", "e", "h", "f.g")) == []
  assert workdir.differences(old, new, may_change=("b.c", "e", "h")) == ["f.g: 1 -> 2"]
  assert workdir.differences(old, new, may_change=("nothing.here", "a.b")) != []


def test_refuse_changes_names_at_most_eight_differences(tmp_path):
  old = {f"k{i}": i for i in range(10)}
  new = {f"k{i}": -i for i in range(10)}
  with pytest.raises(workdir.ConfigMismatchError) as e:
    workdir.refuse_changes(str(tmp_path), old, new, also=["extra finding"], what="a test run")
  message = str(e.value)
  assert "holds a test run of a different config (k1: 1 -> -1; " in message and message.count("->") == 8
  assert " ...)" in message and "extra finding" not in message and "Use a new --workdir" in message
  workdir.refuse_changes(str(tmp_path), old, dict(old))  # the same config passes
  with pytest.raises(ValueError, match=r"\(only this\)"):  # a ValueError, for callers that catch those
    workdir.refuse_changes(str(tmp_path), old, old, also=["only this"])


def test_read_record_refuses_unreadable_records_and_results_without_one(tmp_path):
  wd = str(tmp_path)
  assert workdir.read_record(wd, results=None) is None
  with pytest.raises(workdir.ConfigMismatchError, match=r"x has rows but .*config.json is missing"):
    workdir.read_record(wd, results="x has rows")
  for text in ("{not json", "[1, 2]", '{"config": 3}', "\xff"):
    (tmp_path / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(workdir.ConfigMismatchError, match="config.json is unreadable"):
      workdir.read_record(wd, results=None)
  (tmp_path / "config.json").write_text('{"a": 1}')
  assert workdir.read_record(wd, results=None, section=None) == {"a": 1}
  (tmp_path / "config.json").write_text('{"config": {"a": 1}}')
  assert workdir.read_record(wd, results="rows") == {"config": {"a": 1}}


# ---- the sweep ---------------------------------------------------------------------------------
def test_sweep_workdir_refuses_another_config_and_lets_resumable_fields_change(tmp_path):
  cfg = sweep.to_plain(tiny_sweep_config("demo"))
  with sweep.Workdir(str(tmp_path)) as wd:
    stored = wd.open(cfg, "sha")
  changed = dict(stored, batch_size=cfg["batch_size"] + 1, progress=True, stats=dict(resamples=7))
  with sweep.Workdir(str(tmp_path)) as wd:
    wd.open(changed, "sha")  # RESUMABLE_FIELDS may change
    with pytest.raises(sweep.ConfigMismatchError, match=r"config\.max_new_tokens: 5 -> 6"):
      wd.open(dict(stored, max_new_tokens=6), "sha")
    with pytest.raises(sweep.ConfigMismatchError, match=r"prompts_sha256: 'sha' -> 'other'"):
      wd.open(stored, "other")
  assert sweep.ConfigMismatchError is workdir.ConfigMismatchError


@pytest.mark.parametrize(
  "field,value,needle",
  [
    ("sweep", "x", 'sweep: expected an object, got "x"'),
    ("samples", "two", "samples"),
    ("sweep.temperature", ["hot"], "sweep.temperature"),
    ("date", 5, "date"),
    ("stats", [], "stats: expected an object"),
  ],
)
def test_sweep_workdir_refuses_a_damaged_stored_config_naming_the_field(tmp_path, field, value, needle):
  """A mistyped field of the stored config (a hand-edited or damaged config.json): a ConfigMismatchError
  naming the file and the field, before the resume reads it (once 'sweep.temperature: missing axis')."""
  cfg = sweep.to_plain(tiny_sweep_config("demo"))
  with sweep.Workdir(str(tmp_path)) as wd:
    stored = wd.open(cfg, "sha")
  record = json.loads((tmp_path / "config.json").read_text())
  *parents, leaf = field.split(".")
  node = record["config"]
  for p in parents:
    node = node[p]
  node[leaf] = value
  (tmp_path / "config.json").write_text(json.dumps(record))
  with sweep.Workdir(str(tmp_path)) as wd:
    with pytest.raises(sweep.ConfigMismatchError, match="config.json is damaged") as e:
      wd.open(stored, "sha")
  assert needle in str(e.value) and len(str(e.value)) < 500, str(e.value)


def test_read_record_check_names_the_file_and_the_field(tmp_path):
  (tmp_path / "config.json").write_text('{"config": {"n": "x"}}')

  def check(config):
    if not isinstance(config["n"], int):
      raise ValueError(f"n: expected an integer, got {config['n']!r}")

  with pytest.raises(workdir.ConfigMismatchError, match=r"config.json is damaged: .*n: expected an integer, got 'x'"):
    workdir.read_record(str(tmp_path), results=None, check=check)
  (tmp_path / "config.json").write_text('{"config": {"n": 1}}')
  assert workdir.read_record(str(tmp_path), results=None, check=check) == {"config": {"n": 1}}


# ---- fine-tuning -------------------------------------------------------------------------------
def _finetune_config(**changes):
  spec = importlib.util.spec_from_file_location("finetune_config", os.path.join(ROOT, "configs", "finetune.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return override(module.get_config("tiny"), changes)


def test_finetune_refuses_checkpoints_without_a_readable_config(tmp_path):
  os.makedirs(tmp_path / "checkpoints" / "2")
  with pytest.raises(workdir.ConfigMismatchError, match=r"has checkpoints but .*config.json is missing"):
    finetune.run(_finetune_config(), str(tmp_path))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(workdir.ConfigMismatchError, match="config.json is unreadable"):
    finetune.run(_finetune_config(), str(tmp_path))
  assert (tmp_path / "config.json").read_text() == "{not json"  # nothing rewritten


def test_finetune_resume_check_names_the_field_and_skips_resumable_ones(tmp_path):
  # (the stored record as run() writes it; test_train.py refuses a real run's resume the same way)
  plain = workdir.to_plain(_finetune_config())
  (tmp_path / "config.json").write_text(json.dumps(dict(config=plain, date="2025-06-15")))
  other = _finetune_config(**{"optim.learning_rate": 0.5, "progress": True, "data.eval_path": ""})
  with pytest.raises(
    workdir.ConfigMismatchError,
    match=r"a fine-tuning run of a different config "
    r"\(optim.learning_rate: 0.001 -> 0.5\)",
  ):
    finetune.run(other, str(tmp_path))
  stored = json.loads((tmp_path / "config.json").read_text())
  assert stored["config"]["optim"]["learning_rate"] == 0.001
  assert finetune._check_resume(str(tmp_path), workdir.to_plain(_finetune_config(progress=False, log_every=3)))


# ---- the evaluation grid -----------------------------------------------------------------------
class _Stop(Exception):
  pass


def _stop(cell):
  raise _Stop(cell)  # make_lm of a cell that would run: the checks before it passed


def test_grid_refuses_another_config_naming_the_field(tmp_path):
  kwargs = dict(workdir=str(tmp_path), tasks=["t1"], config={"checkpoint": "demo"}, log=lambda s: None)
  grid = evaluation.parse_grid(["temperature=0.0,0.7"])
  with pytest.raises(_Stop):  # the first run stores config.json, then would run its first cell
    evaluation.run_grid(_stop, grid=grid, **kwargs)
  with pytest.raises(_Stop):  # a grown axis and another axis order pass
    evaluation.run_grid(_stop, grid=evaluation.parse_grid(["temperature=0.7,0.0,1.0"]), **kwargs)
  with pytest.raises(
    workdir.ConfigMismatchError,
    match=r"a grid run of a different config \(tasks: \['t1'\] -> "
    r"\['t2'\]\)",
  ):
    evaluation.run_grid(_stop, grid=grid, **{**kwargs, "tasks": ["t2"]})
  with pytest.raises(workdir.ConfigMismatchError, match=r"checkpoint: 'demo' -> 'other'.*grid axes"):
    evaluation.run_grid(
      _stop, grid=evaluation.parse_grid(["top_p=0.9"]), **{**kwargs, "config": {"checkpoint": "other"}}
    )


def test_grid_refuses_finished_cells_without_a_readable_config(tmp_path):
  cell = tmp_path / "cells" / "temperature=0.0"
  os.makedirs(cell)
  (cell / "results.json").write_text("{}")
  kwargs = dict(
    workdir=str(tmp_path), tasks=["t1"], grid=evaluation.parse_grid(["temperature=0.0"]), config={}, log=lambda s: None
  )
  with pytest.raises(workdir.ConfigMismatchError, match="has finished cells but .*config.json is missing"):
    evaluation.run_grid(_stop, **kwargs)
  (tmp_path / "config.json").write_text("[]")
  with pytest.raises(workdir.ConfigMismatchError, match="config.json is unreadable"):
    evaluation.run_grid(_stop, **kwargs)
  os.remove(cell / "results.json")  # a cell folder without results is not a finished cell
  os.remove(tmp_path / "config.json")
  with pytest.raises(_Stop):
    evaluation.run_grid(_stop, **kwargs)
