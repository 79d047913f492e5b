"""The package's layout rules: no import cycles (module-level or lazy), and the tokenizer module does
not pull in the weight loaders."""

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
  assert "0 import cycles" in proc.stdout


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
