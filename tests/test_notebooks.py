"""The notebooks run top to bottom (nbclient) on a tiny random model with the demo tokenizer.

The model is saved as an Orbax conversion and handed over through ``SMOLLM3_CHECKPOINT``;
``SMOLLM3_NOTEBOOK_FAST=1`` keeps generations and the sweep short. The notebooks themselves skip
their Colab/TPU-only cells when not on that hardware.
"""

from __future__ import annotations

import os

import nbformat
import pytest

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
NAMES = ["quickstart", "sweep_analysis", "colab_tpu"]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.nn import config as C
  from smollm3_jax.checkpoints import orbax as O
  from smollm3_jax.nn.model import SmolLM3

  tok = smollm3_jax.Tokenizer.from_pretrained("demo")
  cfg = C.tiny(num_layers=2, vocab_size=tok.vocab_size, eos_token_id=(int(tok.eos_token_id),),
               pad_token_id=int(tok.pad_token_id))
  path = tmp_path_factory.mktemp("nb") / "tiny_orbax"
  O.save(path, SmolLM3(cfg, rngs=nnx.Rngs(0)), tokenizer=tok, source="tiny random (tests)")
  return str(path)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_without_outputs(name):
  nb = nbformat.read(os.path.join(NOTEBOOKS, f"{name}.ipynb"), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.parametrize("name", NAMES)
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
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": NOTEBOOKS}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
                   if o.get("output_type") == "stream")
  if name == "quickstart":
    assert "loaded" in text and "tokens, stop:" in text and "GenerationStats" in text
  elif name == "sweep_analysis":
    assert os.path.isfile(tmp_path / "sweep" / "summary.csv")
    assert "cells," in text and "generations" in text
    # The figures are in the outputs: the library's line plots and heatmaps, and the notebook's own
    # pyplot figure drawn after the sweep ran in this kernel (the sweep left the backend alone).
    images = {marker: sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                          and marker in c.source for o in c.outputs)
              for marker in ("sweep.line_figure(", "sweep.heatmap_figure(", "plt.show()")}
    assert images == {"sweep.line_figure(": 3, "sweep.heatmap_figure(": 2, "plt.show()": 1}, images
  else:
    assert "not on Colab: skipping the install cell" in text
    assert "mesh: data=" in text and "loaded" in text
    assert os.path.isfile(tmp_path / "sweep" / "summary.csv")
