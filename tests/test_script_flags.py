"""Bad flags of the scripts fail at parsing, as usage errors, before any model loads; no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GENERATE = os.path.join(ROOT, "experiments", "generate.py")
SWEEP = os.path.join(ROOT, "experiments", "sweep.py")


def _run(script, *args, tmp_path):
  env = dict(os.environ, SMOLLM3_JAX_CACHE_DIR=str(tmp_path / "jax_cache"), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--newline_limit=-4", "newline_limit"),
    ("--prompt=", "--prompt must not be empty"),
    ("--mesh=garbage", "mesh 'garbage'"),
    ("--output_json={tmp}", "is a directory"),
    ("--output_json={tmp}/missing/out.json", "does not exist"),
    ("--seed=4294967296", "--seed"),
    ("--max_new_tokens=0", "--max_new_tokens"),
    ("--date=2025-13-01", "date must be an ISO date"),
    ("--temperature=1e39", "too large for float32"),
  ],
)
def test_generate_script_refuses_bad_flags_at_parsing(flag, message, tmp_path):
  proc = _run(GENERATE, "--checkpoint=/nonexistent/never/loaded", flag.format(tmp=tmp_path), tmp_path=tmp_path)
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert os.listdir(tmp_path) in ([], ["jax_cache"])  # nothing written (no stray .tmp either)


@pytest.mark.parametrize(
  "override,message",
  [
    ("--config.sweep.temprature=(0.0,)", 'Did you mean "temperature"'),
    ("--config.prompts.limit=-1", "prompts.limit"),
    ("--config.seed=-3", "seed"),
  ],
)
def test_sweep_script_refuses_bad_config_without_a_traceback(override, message, tmp_path):
  proc = _run(
    SWEEP,
    "--config=" + os.path.join(ROOT, "configs", "sweep.py") + ":tiny",
    f"--workdir={tmp_path / 'wd'}",
    override,
    tmp_path=tmp_path,
  )
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert message in proc.stderr and "Traceback" not in proc.stderr
  assert not os.path.exists(tmp_path / "wd")


def test_scripts_print_no_backend_noise(tmp_path):
  proc = _run(GENERATE, "--checkpoint=demo", "--max_new_tokens=2", "--nocompilation_cache", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  for noise in ("Unable to initialize backend", "Resetting cache"):
    assert noise not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
  "script,expected",
  [
    ("generate", ["--temperature", "--top_p", "--num_beams", "--dtype", "--quantize", "--stop", "--date"]),
    ("serve", ["--temperature", "--top_p", "--dtype", "--quantize"]),
    ("score", ["--dtype", "--quantize"]),
    ("sweep", ["--compilation_cache"]),
    ("chat", ["--temperature", "--top_p", "--dtype"]),
  ],
)
def test_help_lists_the_shared_flags(script, expected, tmp_path):
  """--help shows the flags defined in smollm3_jax.cli for the script (absl lists only key flags)."""
  proc = _run(os.path.join(ROOT, "experiments", f"{script}.py"), "--help", tmp_path=tmp_path)
  listed = {
    line.split(":")[0].strip().replace("--[no]", "--")
    for line in proc.stdout.splitlines()
    if line.strip().startswith("--")
  }
  missing = [f for f in expected if f not in listed]
  assert listed and not missing and "Traceback" not in proc.stderr, (missing, proc.stdout[-2000:])  # (absl exits 1)


def test_stop_flag_decodes_escapes_repeats_and_keeps_commas(tmp_path):
  from smollm3_jax import cli

  assert cli.unescape(r"\n") == "\n" and cli.unescape(r"a\tb\\n") == "a\tb\\n" and cli.unescape(r"\u00e9") == "é"
  assert cli.unescape("x\\q") == "x\\q"
  out = tmp_path / "gen.json"
  proc = _run(
    GENERATE,
    "--checkpoint=demo",
    "--prompt=Say hi.",
    "--max_new_tokens=1",
    "--temperature=0",
    "--stop=\\n",
    "--stop=a,b",
    "--stop=\n\n",
    f"--output_json={out}",
    tmp_path=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json

  assert json.loads(out.read_text())["settings"]["stop"] == ["\n", "a,b", "\n\n"]
  first = next(line for line in proc.stdout.splitlines() if line.startswith("settings: "))
  # The run's effective settings, defaults the checkpoint adds at temperature 0 included.
  assert "temperature=0.0" in first and "repetition_penalty=1.1 (default)" in first
  assert "stop=['\\n', 'a,b', '\\n\\n']" in first
  proc = _run(GENERATE, "--checkpoint=/nonexistent", *[f"--stop=s{i}" for i in range(5)], tmp_path=tmp_path)
  assert proc.returncode == 1 and "at most 4 stop strings" in proc.stderr
