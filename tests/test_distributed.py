"""Sweeps over several processes (JAX's multi-controller runtime) on this machine: 2 processes on
127.0.0.1 with 4 fake CPU devices each (CPU collectives over gloo) against one process with 8, on the
same data=4 x model=2 mesh.

* the rows (texts, token ids) equal the single-process run's, line for line, and every process
  compiles the same programs, once each;
* a process SIGKILLed mid-run (after the first group of rows is durable) makes the other one exit
  with a clear error well within 60 s; a rerun resumes without losing or duplicating rows.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from smollm3_jax.utils import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each process runs experiments/sweep.py through this wrapper: it prints the compile counts at exit
# and, when SWEEP_TEST_MARKER is set (on the leader), pauses after its first group of rows is durable
# until the test has killed a process (a kill at a point the test chose, on any machine speed).
_WRAPPER = """
import json, os, runpy, sys, time
from smollm3_jax.generation.engine import COMPILE_COUNTS
from smollm3_jax.sweep import store
marker = os.environ.get("SWEEP_TEST_MARKER")
if marker:
  _append = store.ResultsFile.append
  def append(self, rows):
    rows = list(rows)
    _append(self, rows)
    if not os.path.exists(marker):
      with open(marker + ".tmp", "w") as f:
        f.write(str(len(rows)))
      os.replace(marker + ".tmp", marker)
      while not os.path.exists(marker + ".go"):
        time.sleep(0.05)
  store.ResultsFile.append = append
sys.argv = sys.argv[1:]
try:
  runpy.run_path(sys.argv[0], run_name="__main__")
finally:
  print("COMPILES " + json.dumps(dict(COMPILE_COUNTS)), flush=True)
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smollm3_template_tokenizer):
  """(tokenizer dir, wrapper path, base directory). The tokenizer has SmolLM3's template (a thinking
  mode: the grid's thinking on and off are distinct rows)."""
  base = tmp_path_factory.mktemp("distributed")
  tok_dir = str(base / "tok")
  smollm3_template_tokenizer.save_pretrained(tok_dir)
  wrapper = base / "wrapper.py"
  wrapper.write_text(_WRAPPER)
  return tok_dir, str(wrapper), base


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(setup, workdir, processes: int, *, marker=None) -> list[subprocess.Popen]:
  """Starts the sweep on ``processes`` processes (8 fake devices in all); returns them."""
  tok_dir, wrapper, _ = setup
  flags = [
    "--config=" + os.path.join(ROOT, "configs", "sweep.py") + ":tiny",
    f"--workdir={workdir}",
    "--config.model.tokenizer=" + tok_dir,
    "--config.progress=False",
    "--config.prompts.limit=3",
    "--config.batch_size=8",
    "--config.max_new_tokens=8",
    "--config.mesh=data=4,model=2",
    "--config.plots=False",
    "--nocompilation_cache",
  ]
  if processes > 1:
    flags += [f"--coordinator_address=127.0.0.1:{_free_port()}", f"--num_processes={processes}"]
  procs = []
  for i in range(processes):
    env = dict(
      os.environ,
      XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
      JAX_PLATFORMS="cpu",
      PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.pop("SWEEP_TEST_MARKER", None)
    if marker is not None and i == 0:
      env["SWEEP_TEST_MARKER"] = str(marker)
    cmd = [sys.executable, wrapper, os.path.join(ROOT, "experiments", "sweep.py"), *flags]
    if processes > 1:
      cmd.append(f"--process_id={i}")
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout=600) -> list[tuple[int, str, str]]:
  out = []
  try:
    for p in procs:
      stdout, stderr = p.communicate(timeout=timeout)
      out.append((p.returncode, stdout, stderr))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return out


def _compiles(stdout: str) -> dict:
  line = next(l for l in stdout.splitlines() if l.startswith("COMPILES "))
  return json.loads(line[len("COMPILES ") :])


def _rows(workdir) -> list[tuple]:
  """(key, text, token ids) of every line of generations.jsonl, in file order."""
  with open(os.path.join(workdir, "generations.jsonl")) as f:
    return [(r["key"], r["text"], r["token_ids"]) for r in map(json.loads, filter(str.strip, f))]


@pytest.fixture(scope="module")
def single(setup):
  """The single-process run (8 devices): its rows and compile counts."""
  workdir = setup[2] / "single"
  ((rc, stdout, stderr),) = _finish(_start(setup, workdir, 1))
  assert rc == 0, stderr[-3000:]
  return _rows(workdir), _compiles(stdout)


def test_two_processes_write_the_rows_of_one(setup, single):
  rows, compiles = single
  workdir = setup[2] / "two"
  results = _finish(_start(setup, workdir, 2))
  for rc, stdout, stderr in results:
    assert rc == 0, stderr[-3000:]
  assert len(rows) == 24 and len({k for k, _, _ in rows}) == 24
  assert _rows(workdir) == rows  # same texts and token ids, line for line
  # Only process 0 wrote the workdir and printed the summary; both compiled what one process does.
  assert "rows: 24 (0 resumed, 24 new" in results[0][1] and "rows:" not in results[1][1]
  assert sorted(os.listdir(workdir)) == sorted(os.listdir(setup[2] / "single"))
  for _, stdout, _ in results:
    assert _compiles(stdout) == compiles
  assert min(compiles[k] for k in ("prefill", "insert", "decode")) >= 1


@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_process_stops_the_other_and_a_rerun_resumes(setup, single, victim):
  rows, _ = single
  workdir = setup[2] / f"killed{victim}"
  marker = setup[2] / f"marker{victim}"
  procs = _start(setup, workdir, 2, marker=marker)
  try:
    deadline = time.monotonic() + 300
    while not marker.exists() and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
      time.sleep(0.05)
    assert marker.exists(), "the leader did not write its first group: " + procs[0].communicate()[1][-3000:]
    os.kill(procs[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    (marker.parent / (marker.name + ".go")).touch()  # the leader (if alive) goes on
    other = procs[1 - victim]
    _, stderr = other.communicate(timeout=120)
    waited = time.monotonic() - killed
  finally:
    _finish(procs, timeout=5)
  assert other.returncode != 0
  assert waited < 60, f"the surviving process took {waited:.0f}s to stop"
  # Our message (the survivor saw a collective fail) or JAX's (its coordination service saw the death).
  assert ("another process died" in stderr) or ("another task died" in stderr), stderr[-3000:]
  kept = _rows(workdir)
  assert 0 < len(kept) == int(marker.read_text()) < 24  # exactly the first group

  results = _finish(_start(setup, workdir, 2))
  for rc, _, stderr in results:
    assert rc == 0, stderr[-3000:]
  assert f"rows: 24 ({len(kept)} resumed, {24 - len(kept)} new" in results[0][1]
  after = _rows(workdir)
  assert after[: len(kept)] == kept  # finished rows are never rewritten
  assert sorted(after) == sorted(rows)  # none lost, none twice, the same texts and tokens


def _generate_child() -> None:
  """Child mode (``python tests/test_distributed.py generate``): generate with a tiny random model on
  the data=4 x model=2 mesh, in a multi-process run when the TEST_* variables say so."""
  n = int(os.environ.get("TEST_NUM_PROCESSES", "1"))
  if n > 1:
    distributed.initialize(os.environ["TEST_COORDINATOR"], n, int(os.environ["TEST_PROCESS_ID"]))
  import numpy as np
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn.model import SmolLM3

  model = SmolLM3(C.tiny(num_layers=2), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 500, k).tolist() for k in (3, 17, 9, 30, 5)]
  res = smollm3_jax.generate(
    model,
    None,
    prompts,
    stop_ids=[],
    max_new_tokens=[6, 4, 7, 5, 6],
    temperature=[0.0, 0.9, 0.0, 1.0, 0.7],
    top_p=[1.0, 0.9, 1.0, 1.0, 0.95],
    seed=[1, 2, 3, 4, 5],
    mesh="data=4,model=2",
  )
  print("RESULT " + json.dumps([c.token_ids for c in res]), flush=True)


def test_generate_over_two_processes_equals_one():
  def run(processes):
    port = _free_port()
    procs = []
    for i in range(processes):
      env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={8 // processes}",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
        TEST_NUM_PROCESSES=str(processes),
        TEST_PROCESS_ID=str(i),
        TEST_COORDINATOR=f"127.0.0.1:{port}",
      )
      procs.append(
        subprocess.Popen(
          [sys.executable, os.path.abspath(__file__), "generate"],
          cwd=ROOT,
          env=env,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
        )
      )
    out = []
    for rc, stdout, stderr in _finish(procs):
      line = next((l for l in stdout.splitlines() if l.startswith("RESULT ")), None)
      assert rc == 0 and line, stderr[-3000:]
      out.append(json.loads(line[len("RESULT ") :]))
    return out

  (one,) = run(1)
  assert [len(t) for t in one] == [6, 4, 7, 5, 6]
  assert run(2) == [one, one]  # every process gets every completion, the single-process tokens


def test_a_locked_workdir_stops_every_process_with_its_error(setup):
  """An error of the leader's before any row runs (here: the workdir is another run's) reaches every
  process: all exit with its message, none waits for rows."""
  from smollm3_jax.sweep.store import Workdir

  workdir = setup[2] / "locked"
  with Workdir(str(workdir)):  # held by this (test) process
    results = _finish(_start(setup, workdir, 2), timeout=120)
  for rc, _, stderr in results:
    assert rc == 2 and "is in use by another run" in stderr, stderr[-3000:]
  assert not (workdir / "generations.jsonl").exists()


def test_bad_process_flags_are_usage_errors(tmp_path):
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", "sweep.py"),
    "--config=" + os.path.join(ROOT, "configs", "sweep.py") + ":tiny",
    f"--workdir={tmp_path / 'wd'}",
    "--coordinator_address=127.0.0.1:1",
    "--num_processes=2",
    "--process_id=2",
  ]
  res = subprocess.run(
    cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu")
  )
  assert res.returncode == 1 and "--process_id=2 must be < --num_processes=2" in res.stderr
  assert not (tmp_path / "wd").exists()


def test_single_process_helpers_are_no_ops():
  assert distributed.initialize() is False  # no coordinator, no auto-detection: one process
  assert distributed.is_leader() and distributed.process_count() == 1
  assert distributed.broadcast({"a": 1}) == {"a": 1}
  distributed.barrier("x")
  import jax.numpy as jnp
  import numpy as np

  x = jnp.arange(6).reshape(2, 3)
  host = distributed.fetch({"x": x})["x"]
  assert isinstance(host, np.ndarray) and host.tolist() == [[0, 1, 2], [3, 4, 5]] and host.flags.writeable
  with pytest.raises(ValueError, match="process_id"):
    distributed.initialize("127.0.0.1:1", 2, 5)


if __name__ == "__main__":
  if sys.argv[1:] == ["generate"]:
    _generate_child()
