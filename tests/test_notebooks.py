"""The notebooks run top to bottom (nbclient) on a tiny random model with the demo tokenizer.

The model is saved as an Orbax conversion and handed over through ``SMOLLM3_CHECKPOINT``;
``SMOLLM3_NOTEBOOK_FAST=1`` keeps generations and the sweep short. The notebooks themselves skip
their Colab/TPU-only cells when not on that hardware. The Colab notebook runs as on Colab: from the
project's wheel installed into a scratch interpreter, in a directory without the repository.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import site
import subprocess
import sys

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
NAMES = ["quickstart", "sweep_analysis", "colab_tpu"]
KERNEL = "smollm3-wheel"  # the scratch interpreter's kernelspec


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.checkpoints import orbax as O
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn.model import SmolLM3

  tok = smollm3_jax.Tokenizer.from_pretrained("demo")
  cfg = C.tiny(
    num_layers=2, vocab_size=tok.vocab_size, eos_token_id=(int(tok.eos_token_id),), pad_token_id=int(tok.pad_token_id)
  )
  path = tmp_path_factory.mktemp("nb") / "tiny_orbax"
  O.save(path, SmolLM3(cfg, rngs=nnx.Rngs(0)), tokenizer=tok, source="tiny random (tests)")
  return str(path)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
  nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def _run(*cmd, cwd=None) -> str:
  proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"{cmd}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
  return proc.stdout


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
  """(JUPYTER_PATH, site-packages, python) of a scratch interpreter holding the project's wheel, no checkout.

  The wheel is built from a copy of the package sources (nothing is written into the repository). The
  scratch venv reaches the dependencies through a .pth line naming this environment's site-packages:
  a path entry only, so the editable install's finder there (which maps smollm3_jax to the checkout)
  is never activated."""
  base = tmp_path_factory.mktemp("wheel")
  src = base / "src"
  shutil.copytree(
    os.path.join(ROOT, "smollm3_jax"), src / "smollm3_jax", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
  )
  for name in ("pyproject.toml", "README.md", "LICENSE"):
    if os.path.exists(os.path.join(ROOT, name)):
      shutil.copy(os.path.join(ROOT, name), src / name)
  _run(
    sys.executable,
    "-m",
    "pip",
    "wheel",
    "-q",
    "--no-deps",
    "--no-build-isolation",
    "--no-index",
    "-w",
    str(base / "dist"),
    str(src),
  )
  (wheel,) = glob.glob(str(base / "dist" / "smollm3_jax-*.whl"))
  _run(sys.executable, "-m", "venv", "--without-pip", str(base / "venv"))
  python = str(base / "venv" / "bin" / "python")
  purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
  with open(os.path.join(purelib, "_smollm3_test_deps.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  _run(sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", purelib, wheel)
  kernels = base / "jupyter" / "kernels" / KERNEL
  kernels.mkdir(parents=True)
  (kernels / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "smollm3-jax wheel",
        "language": "python",
      }
    )
  )
  return str(base / "jupyter"), purelib, python


@pytest.mark.parametrize("name", [n for n in NAMES if n != "colab_tpu"])  # colab_tpu: from the wheel, below
def test_notebook_runs(name, tiny_checkpoint, tmp_path, monkeypatch):
  from nbclient import NotebookClient

  monkeypatch.setenv("SMOLLM3_CHECKPOINT", tiny_checkpoint)
  monkeypatch.setenv("SMOLLM3_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("SMOLLM3_SWEEP_DIR", str(tmp_path / "sweep"))
  if name == "sweep_analysis":
    # the kernel's own (inline) backend: figures must reach the cell outputs after the sweep ran
    monkeypatch.delenv("MPLBACKEND", raising=False)
  else:
    monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOKS}}).execute()
  text = "\n".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "stream"
  )
  if name == "quickstart":
    assert "loaded" in text and "tokens, stop:" in text and "GenerationStats" in text
  elif name == "sweep_analysis":
    assert os.path.isfile(tmp_path / "sweep" / "summary.csv")
    assert "cells," in text and "generations" in text
    # The figures are in the outputs: the library's line plots and heatmaps, and the notebook's own
    # pyplot figure drawn after the sweep ran in this kernel (the sweep left the backend alone).
    images = {
      marker: sum(
        "image/png" in o.get("data", {})
        for c in nb.cells
        if c.cell_type == "code" and marker in c.source
        for o in c.outputs
      )
      for marker in ("sweep.line_figure(", "sweep.heatmap_figure(", "plt.show()")
    }
    assert images == {"sweep.line_figure(": 3, "sweep.heatmap_figure(": 2, "plt.show()": 1}, images


def test_colab_notebook_runs_from_an_installed_wheel_without_the_repository(
  wheel_install, tiny_checkpoint, tmp_path, monkeypatch
):
  """As on Colab after the install cell: only the installed package, no configs/, experiments/ or data/."""
  from nbclient import NotebookClient

  jupyter_path, purelib, python = wheel_install
  run = tmp_path / "run"  # the kernel's working directory: the notebook alone, as uploaded to Colab
  run.mkdir()
  shutil.copy(os.path.join(NOTEBOOKS, "colab_tpu.ipynb"), run)
  for var in ("PYTHONPATH", "SMOLLM3_JAX_REPO", "SMOLLM3_NOTEBOOK_INSTALL", "SMOLLM3_ORBAX_DIR"):
    monkeypatch.delenv(var, raising=False)
  probe = _run(
    python,
    "-c",
    "import importlib.util as u, smollm3_jax; "
    "print(smollm3_jax.__file__, [m for m in ('configs', 'experiments') if u.find_spec(m)])",
    cwd=run,
  )
  assert probe.split() == [os.path.join(purelib, "smollm3_jax", "__init__.py"), "[]"], probe

  monkeypatch.setenv("JUPYTER_PATH", jupyter_path)
  monkeypatch.setenv("SMOLLM3_CHECKPOINT", tiny_checkpoint)
  monkeypatch.setenv("SMOLLM3_ORBAX_DIR", str(tmp_path / "orbax"))  # the packaged conversion runs too
  monkeypatch.setenv("SMOLLM3_NOTEBOOK_FAST", "1")
  monkeypatch.setenv("SMOLLM3_SWEEP_DIR", str(tmp_path / "sweep"))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  nb = nbformat.read(str(run / "colab_tpu.ipynb"), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(run)}}).execute()
  text = "\n".join(
    o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "stream"
  )
  assert "not installing" in text
  assert f"smollm3_jax from {os.path.join(purelib, 'smollm3_jax')}\n" in text
  assert f"converted {tiny_checkpoint!r} to {tmp_path / 'orbax'}" in text
  assert f"loaded {str(tmp_path / 'orbax')!r}" in text and "mesh: data=" in text
  assert os.path.isfile(tmp_path / "sweep" / "summary.csv")
  # the tiny preset's prompts: the prompt set inside the installed package
  with open(tmp_path / "sweep" / "config.json") as f:
    assert json.load(f)["config"]["prompts"]["path"] == os.path.join(
      purelib, "smollm3_jax", "sweep", "prompts", "sweep.jsonl"
    )
