"""The import graph of the smollm3_jax package, and its cycles.

  python tools/import_graph.py            # prints the cycles (none: exit 0)
  python tools/import_graph.py --all      # also counts imports inside functions (lazy imports)

Reads the sources with ``ast`` (nothing is imported). A module-level import is an edge; with
``--all`` imports inside functions are edges too, since they still make two modules depend on each
other. ``from smollm3_jax import x`` is an edge to ``smollm3_jax.x`` when that is a module, else to
the package ``smollm3_jax`` (its ``__init__``, which is left out of the cycle search: it re-exports).
"""

from __future__ import annotations

import ast
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "smollm3_jax"


def modules() -> dict[str, str]:
  out = {}
  for dirpath, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
  return out


def edges(include_lazy: bool) -> dict[str, set[str]]:
  mods = modules()
  graph = {m: set() for m in mods}
  for mod, path in mods.items():
    tree = ast.parse(open(path, encoding="utf-8").read())
    is_pkg = path.endswith("__init__.py")
    nodes = ast.walk(tree) if include_lazy else tree.body
    for node in nodes:
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
          parts = mod.split(".")
          parts = parts if is_pkg else parts[:-1]
          base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in mods:
          t = t.rpartition(".")[0]
        if t and t != mod and t != PACKAGE:
          graph[mod].add(t)
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(10000)
  for v in graph:
    if v not in index:
      visit(v)
  return out


if __name__ == "__main__":
  found = cycles(edges("--all" in sys.argv))
  for comp in found:
    print("cycle:", " <-> ".join(comp))
  print(f"{len(found)} import cycles among {len(modules())} modules"
        f" ({'module-level and lazy' if '--all' in sys.argv else 'module-level'} imports)")
  sys.exit(1 if found else 0)
