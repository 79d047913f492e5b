"""The package's layout rules: layers that import only layers below them, no import cycles
(module-level or lazy), and the tokenizer module does not pull in the weight loaders."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_cycles_even_through_lazy_imports():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "import_graph.py"), "--all"],
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "0 import cycles and 0 imports from a higher layer" in proc.stdout


def test_every_module_sits_in_a_layer():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph
  outside = [m for m in import_graph.modules() if m != "smollm3_jax" and import_graph.layer(m) not in import_graph.LAYERS]
  assert not outside, outside


def test_the_layer_check_finds_planted_upward_imports():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph
  graph = import_graph.edges(True)
  assert not import_graph.upward(graph)
  graph["smollm3_jax.nn.kv_cache"].add("smollm3_jax.generation.engine")   # up the layers: refused
  graph["smollm3_jax.sweep.plan"].add("smollm3_jax.training.finetune")    # a sibling layer: refused
  graph["smollm3_jax.evaluation.scoring"].add("smollm3_jax")               # the package's __init__: refused
  graph["smollm3_jax.serving.server"].add("smollm3_jax.generation.runner")  # below: fine
  assert import_graph.upward(graph) == sorted([
      ("smollm3_jax.nn.kv_cache", "smollm3_jax.generation.engine"),
      ("smollm3_jax.sweep.plan", "smollm3_jax.training.finetune"),
      ("smollm3_jax.evaluation.scoring", "smollm3_jax")])


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph
  graph = import_graph.edges(True)
  assert not import_graph.cycles(graph)
  graph["smollm3_jax.nn.kv_cache"].add("smollm3_jax.generation.engine")  # the engine imports kv_cache
  (cycle,) = import_graph.cycles(graph)
  assert {"smollm3_jax.generation.engine", "smollm3_jax.nn.kv_cache"} <= set(cycle)


def test_tokenizer_module_imports_no_weight_loader_or_jax():
  tree = ast.parse(open(os.path.join(ROOT, "smollm3_jax", "text", "tokenizer.py"), encoding="utf-8").read())
  names = set()
  for node in tree.body:  # module-level imports only (loaders are imported inside methods, on use)
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      names.add(node.module or "")
  assert not any(n.startswith(("jax", "flax", "smollm3_jax.checkpoints", "smollm3_jax.nn.model")) for n in names), names
