"""The package's layout rules: layers that import only layers below them, no import cycles
(module-level or lazy), and function-local imports only where they say why."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_import_cycles_even_through_lazy_imports():
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "tools", "import_graph.py"), "--all"],
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "0 import cycles and 0 imports from a higher layer" in proc.stdout


def test_every_module_sits_in_a_layer():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph

  outside = [
    m for m in import_graph.modules() if m != "smollm3_jax" and import_graph.layer(m) not in import_graph.LAYERS
  ]
  assert not outside, outside


def test_the_layer_check_finds_planted_upward_imports():
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph

  graph = import_graph.edges(True)
  assert not import_graph.upward(graph)
  graph["smollm3_jax.nn.kv_cache"].add("smollm3_jax.generation.engine")  # up the layers: refused
  graph["smollm3_jax.sweep.plan"].add("smollm3_jax.training.finetune")  # a sibling layer: refused
  graph["smollm3_jax.evaluation.scoring"].add("smollm3_jax")  # the package's __init__: refused
  graph["smollm3_jax.serving.server"].add("smollm3_jax.generation.runner")  # below: fine
  assert import_graph.upward(graph) == sorted(
    [
      ("smollm3_jax.nn.kv_cache", "smollm3_jax.generation.engine"),
      ("smollm3_jax.sweep.plan", "smollm3_jax.training.finetune"),
      ("smollm3_jax.evaluation.scoring", "smollm3_jax"),
    ]
  )


def test_the_cycle_check_finds_a_planted_cycle(tmp_path):
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph

  graph = import_graph.edges(True)
  assert not import_graph.cycles(graph)
  graph["smollm3_jax.nn.kv_cache"].add("smollm3_jax.generation.engine")  # the engine imports kv_cache
  (cycle,) = import_graph.cycles(graph)
  assert {"smollm3_jax.generation.engine", "smollm3_jax.nn.kv_cache"} <= set(cycle)


def test_function_local_package_imports_say_why():
  """A package import inside a function hides an edge of the graph: allowed only where it breaks a cycle
  or keeps an optional dependency lazy, and then its line says so (a ``lazy:`` comment)."""
  sys.path.insert(0, os.path.join(ROOT, "tools"))
  import import_graph

  unexplained = []
  for mod, line, target in import_graph.lazy_imports():
    path = import_graph.modules()[mod]
    text = open(path, encoding="utf-8").read().split("\n")[line - 1]
    if "lazy:" not in text:
      unexplained.append(f"{mod}:{line} -> {target}")
  assert not unexplained, unexplained
