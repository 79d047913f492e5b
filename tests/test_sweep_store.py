"""The sweep's workdir: one run at a time, the chat date and provenance in config.json, no silent
reuse or loss of rows, no stray temporary files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _helpers import ROOT, tiny_sweep_config

from smollm3_jax import sweep
from smollm3_jax.utils import files

QUIET = dict(log=lambda s: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm3_template_tokenizer):
  """(model, tokenizer with SmolLM3's template, which writes the date, and its saved directory)."""
  model, _ = sweep.load_model_and_tokenizer(tiny_sweep_config("").model.to_dict() | {"tokenizer": "demo"})
  tokenizer = smollm3_template_tokenizer
  tok_dir = str(tmp_path_factory.mktemp("tok"))
  tokenizer.save_pretrained(tok_dir)
  return model, tokenizer, tok_dir


def _rows(workdir):
  with open(os.path.join(workdir, "generations.jsonl"), encoding="utf-8") as f:
    return [json.loads(l) for l in f if l.strip()]


def _record(workdir):
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    return json.load(f)


def test_resume_on_another_day_renders_the_first_days_prompts(tiny, tmp_path, clock):
  model, tok, tok_dir = tiny
  cfg = tiny_sweep_config(tok_dir)
  clock("2031-02-03")
  whole = sweep.run_sweep(cfg, str(tmp_path / "whole"), model=model, tokenizer=tok, **QUIET)
  clock("2031-02-03")
  sweep.run_sweep(cfg, str(tmp_path / "split"), model=model, tokenizer=tok, max_batches=2, **QUIET)
  clock("2031-02-04")  # the next day: the resume must render the stored date, not today's
  sweep.run_sweep(cfg, str(tmp_path / "split"), model=model, tokenizer=tok, **QUIET)
  assert whole.total_rows == 24
  assert _record(tmp_path / "split")["config"]["date"] == "2031-02-03"
  by_key = {r["key"]: r for r in _rows(tmp_path / "whole")}
  split = _rows(tmp_path / "split")
  assert len(split) == 24
  for r in split:
    assert (r["prompt_tokens"], r["token_ids"]) == (by_key[r["key"]]["prompt_tokens"], by_key[r["key"]]["token_ids"])
  # And the rendered prompt really depends on the date (else this test could not fail).
  day1 = tok.apply_chat_template([{"role": "user", "content": "x"}], date="2031-02-03", tokenize=True)
  day2 = tok.apply_chat_template([{"role": "user", "content": "x"}], date="2031-02-04", tokenize=True)
  assert day1 != day2
  # An explicit, different date on resume is a different config.
  with pytest.raises(sweep.ConfigMismatchError, match="date"):
    sweep.run_sweep(
      tiny_sweep_config(tok_dir, date="2031-02-04"), str(tmp_path / "split"), model=model, tokenizer=tok, **QUIET
    )


def test_config_json_records_provenance(tiny, tmp_path):
  model, tok, tok_dir = tiny
  sweep.run_sweep(tiny_sweep_config(tok_dir), str(tmp_path), model=model, tokenizer=tok, max_batches=1, **QUIET)
  record = _record(tmp_path)
  (run,) = record["runs"]
  assert set(run["versions"]) == {"jax", "jaxlib", "flax", "numpy", "tokenizers", "smollm3-jax"}
  import jax
  import numpy as np

  assert run["versions"]["jax"] == jax.__version__ and run["versions"]["numpy"] == np.__version__
  assert run["backend"] == jax.default_backend() and run["device_kind"] == jax.devices()[0].device_kind
  assert run["dtype"] == "float32"
  assert run["git_commit"] is None or len(run["git_commit"].split("-")[0]) == 40
  assert record["config"]["date"] == "2025-06-15"  # the tests' pinned date
  # A resume that runs rows appends its own record; one that runs nothing adds none.
  sweep.run_sweep(tiny_sweep_config(tok_dir), str(tmp_path), model=model, tokenizer=tok, **QUIET)
  sweep.run_sweep(tiny_sweep_config(tok_dir), str(tmp_path), model=model, tokenizer=tok, **QUIET)
  assert len(_record(tmp_path)["runs"]) == 2


def test_a_held_workdir_is_refused_naming_the_holder(tiny, tmp_path):
  model, tok, tok_dir = tiny
  with files.DirectoryLock(str(tmp_path)):
    with pytest.raises(files.LockedError, match=f"pid {os.getpid()}"):
      sweep.run_sweep(tiny_sweep_config(tok_dir), str(tmp_path), model=model, tokenizer=tok, **QUIET)
  assert not os.path.exists(tmp_path / "generations.jsonl")
  # Released: the next run proceeds (a lock left by a finished or killed process never blocks).
  out = sweep.run_sweep(tiny_sweep_config(tok_dir), str(tmp_path), model=model, tokenizer=tok, max_batches=1, **QUIET)
  assert out.new_rows == 5


def test_two_sweeps_started_together_one_refuses_no_row_twice(tiny, tmp_path):
  _, _, tok_dir = tiny
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", "sweep.py"),
    "--config=" + os.path.join(ROOT, "configs", "sweep.py") + ":tiny",
    f"--workdir={tmp_path}",
    "--config.model.tokenizer=" + tok_dir,
    "--config.progress=False",
    "--config.prompts.limit=3",
    "--config.batch_size=5",
    "--config.max_new_tokens=5",
    "--nocompilation_cache",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [
    subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  codes = sorted(p.returncode for p in procs)
  assert codes == [0, 2], outs
  refused = outs[[p.returncode for p in procs].index(2)][1]
  assert "in use by another run (pid" in refused
  keys = [r["key"] for r in _rows(tmp_path)]
  assert len(keys) == 24 and len(set(keys)) == 24


def test_rows_without_a_readable_config_are_refused(tiny, tmp_path):
  model, tok, tok_dir = tiny
  cfg = tiny_sweep_config(tok_dir)
  sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tok, max_batches=1, **QUIET)
  before = (tmp_path / "generations.jsonl").read_bytes()
  os.remove(tmp_path / "config.json")
  other = tiny_sweep_config(tok_dir, max_new_tokens=3, seed=9)
  with pytest.raises(sweep.ConfigMismatchError, match="config.json is missing"):
    sweep.run_sweep(other, str(tmp_path), model=model, tokenizer=tok, **QUIET)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(sweep.ConfigMismatchError, match="unreadable"):
    sweep.run_sweep(other, str(tmp_path), model=model, tokenizer=tok, **QUIET)
  assert (tmp_path / "generations.jsonl").read_bytes() == before  # nothing rewritten
  assert (tmp_path / "config.json").read_text() == "{not json"


def test_rows_of_another_run_are_caught_row_by_row(tiny, tmp_path):
  model, tok, tok_dir = tiny
  cfg = tiny_sweep_config(tok_dir)
  sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tok, max_batches=1, **QUIET)
  rows = _rows(tmp_path)
  rows[2]["seed"] += 1  # a row written by a run with another seed
  (tmp_path / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(sweep.ConfigMismatchError, match="1 finished rows differ"):
    sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tok, **QUIET)


def test_a_corrupt_middle_line_is_reported_and_its_row_redone(tiny, tmp_path):
  model, tok, tok_dir = tiny
  cfg = tiny_sweep_config(tok_dir)
  sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tok, max_batches=1, **QUIET)
  lines = (tmp_path / "generations.jsonl").read_text().splitlines(keepends=True)
  lines[1] = '{"key": "broken' + "\n"
  (tmp_path / "generations.jsonl").write_text("".join(lines))
  messages = []
  out = sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tok, log=messages.append)
  assert any("1 corrupt lines" in m and "line 2" in m for m in messages), messages
  assert out.skipped_rows == 4 and out.new_rows == 20
  keys = [r["key"] for r in sweep.ResultsFile(str(tmp_path / "generations.jsonl")).load().values()]
  assert len(keys) == 24


@pytest.fixture(scope="module")
def five_rows(tiny, tmp_path_factory):
  """A workdir holding the sweep's first 5 rows (and its config), to copy and damage."""
  model, tok, tok_dir = tiny
  path = str(tmp_path_factory.mktemp("five"))
  sweep.run_sweep(tiny_sweep_config(tok_dir), path, model=model, tokenizer=tok, max_batches=1, **QUIET)
  return path


def _damaged_copy(five_rows, tmp_path, lineno, **changes):
  """A copy of ``five_rows`` whose line ``lineno`` (1-based) has ``changes``; (workdir, the original row)."""
  import shutil

  workdir = str(tmp_path / "wd")
  shutil.copytree(five_rows, workdir)
  rows = _rows(workdir)
  original = dict(rows[lineno - 1])
  rows[lineno - 1].update(changes)
  for k in [k for k, v in changes.items() if v is _DROP]:
    del rows[lineno - 1][k]
  with open(os.path.join(workdir, "generations.jsonl"), "w", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows))
  return workdir, original


_DROP = object()
_RESULTS = lambda row: {k: v for k, v in row.items() if k not in ("timing", "digest")}


@pytest.mark.parametrize(
  "changes",
  [
    dict(settings="x"),
    dict(num_tokens="five"),
    dict(text=5),
    dict(closed_think="no"),
    dict(token_ids=None),
    dict(answer=_DROP),
  ],
  ids=["settings", "num_tokens", "text", "closed_think", "token_ids", "no_answer"],
)
def test_a_row_with_a_field_of_the_wrong_type_is_corrupt_and_redone(tiny, five_rows, tmp_path, changes):
  """A mistyped (or missing) field is a corrupt line, like one that does not parse: warned with the file and
  line, its row redone; never a crash in the check or the summary, never accepted."""
  model, tok, tok_dir = tiny
  workdir, original = _damaged_copy(five_rows, tmp_path, 2, **changes)
  messages = []
  out = sweep.run_sweep(
    tiny_sweep_config(tok_dir), workdir, model=model, tokenizer=tok, max_batches=1, log=messages.append
  )
  path = os.path.join(workdir, "generations.jsonl")
  (name,) = changes
  assert any(f"1 corrupt lines in {path} (line 2: " in m and repr(name) in m for m in messages), messages
  assert out.skipped_rows == 4 and out.new_rows == 5  # the damaged row first among the rows run
  kept = sweep.ResultsFile(path, checked=True).load()
  assert _RESULTS(kept[original["key"]]) == _RESULTS(original)  # the same generation, run again
  assert len(_rows(workdir)) == 10  # the damaged line stays (reported on each resume), nothing rewritten


def test_a_hand_edited_row_is_found_by_its_digest_and_redone(tiny, five_rows, tmp_path):
  """A row's results carry a digest: an edited text is redone (never in the summary or sweep.load); a row
  without a digest (an older version's) is accepted with one note."""
  model, tok, tok_dir = tiny
  assert all(r["digest"] == sweep.store.row_digest(r) for r in _rows(five_rows))
  workdir, original = _damaged_copy(five_rows, tmp_path, 2, text="HACKED hacked", answer="HACKED")
  lines = (tmp_path / "wd" / "generations.jsonl").read_text().splitlines(keepends=True)
  old_style = json.loads(lines[3])
  del old_style["digest"]
  lines[3] = json.dumps(old_style) + "\n"
  (tmp_path / "wd" / "generations.jsonl").write_text("".join(lines))
  messages = []
  out = sweep.run_sweep(
    tiny_sweep_config(tok_dir), workdir, model=model, tokenizer=tok, max_batches=1, log=messages.append
  )
  assert any("1 corrupt lines" in m and "line 2: its results do not match its digest" in m for m in messages)
  assert [m for m in messages if "no digest" in m] == [
    f"note: 1 rows in {workdir}/generations.jsonl have no digest (written by an older version): accepted, but an "
    "edit of their results would go unnoticed"
  ]
  assert out.skipped_rows == 4 and out.new_rows == 5
  rows, _ = sweep.load(workdir)
  assert not rows["text"].str.contains("HACKED").any() and len(rows) == 9
  assert rows.set_index("key").loc[original["key"], "text"] == original["text"]


def test_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
  target = tmp_path / "out.json"
  target.write_text("old")
  real_fsync = os.fsync

  def full_disk(fd):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(os, "fsync", full_disk)
  with pytest.raises(OSError, match="No space"):
    files.atomic_write(target, "new")
  monkeypatch.setattr(os, "fsync", real_fsync)
  assert os.listdir(tmp_path) == ["out.json"] and target.read_text() == "old"
  (tmp_path / "adir").mkdir()
  with pytest.raises(IsADirectoryError):
    files.atomic_write(tmp_path / "adir", "x")
  assert sorted(os.listdir(tmp_path)) == ["adir", "out.json"]
  files.atomic_write(target, "new")
  assert target.read_text() == "new" and os.listdir(tmp_path) != []


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("prompts.limit", -1, "prompts.limit"),
    ("seed", 2**32, "seed"),
    ("seed", 1.5, "seed"),
    ("sweep.thinking", ("no",), r"sweep.thinking\[0\]"),
    ("sweep.temperature", (1e39,), "too large for float32"),
    ("date", "31/12/2025", "date"),
    ("newline_limit", -4, "newline_limit"),
  ],
)
def test_bad_config_fields_are_refused_before_anything_runs(field, value, message, tmp_path):
  cfg = sweep.to_plain(tiny_sweep_config("demo"))
  node = cfg
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = list(value) if isinstance(value, tuple) else value
  with pytest.raises(ValueError, match=message):
    sweep.run_sweep(cfg, str(tmp_path / "wd"), **QUIET)
  assert not os.path.exists(tmp_path / "wd")


def test_plots_leave_the_callers_matplotlib_backend_alone(tiny, tmp_path):
  import matplotlib

  before = matplotlib.get_backend()
  model, tok, tok_dir = tiny
  sweep.run_sweep(tiny_sweep_config(tok_dir), str(tmp_path), model=model, tokenizer=tok, max_batches=1, **QUIET)
  assert matplotlib.get_backend() == before
  assert all(n.endswith(".png") for n in os.listdir(tmp_path / "plots"))
