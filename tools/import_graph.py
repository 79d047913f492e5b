"""The import graph of the smollm3_jax package: its cycles, and imports that climb the layers.

  python tools/import_graph.py            # cycles and upward imports among module-level imports (none: exit 0)
  python tools/import_graph.py --all      # imports inside functions (lazy imports) count too
  python tools/import_graph.py --lazy     # lists every function-local package import

The layers, lowest first (:data:`LAYERS`): a module may import its own layer and the layers below,
never one above nor a sibling of the same rank. The package's ``__init__`` (the public names) sits
on top.

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

# Layer (a subpackage or a top-level module of the package) -> rank; equal ranks are siblings.
LAYERS = {
  "utils": 0,  # validation, files, workdirs, runtime, distributed, shape buckets
  "nn": 1,  # config, model, KV cache, quantization, sharding
  "checkpoints": 2,  # weight files: GGUF, safetensors, Orbax, the hub, the demo
  "text": 3,  # tokenizer, chat template and format, thinking, prompt rendering
  "loading": 4,  # model + tokenizer from one checkpoint spec
  "generation": 5,  # settings and sampling, decode programs, engine and pool, runner, beam search
  "evaluation": 6,  # scoring, metrics, lm-eval model, the evaluation grid
  "sweep": 7,  # decoding sweeps: plan, run, store, statistics, plots
  "training": 7,  # fine-tuning
  "serving": 8,  # chat session, OpenAI-style server
  "cli": 9,  # the scripts' shared flags
}


def layer(module: str) -> str | None:
  """The layer of a package module (None for the package's __init__)."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else None


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
  """(importer, imported) pairs that climb the layers or cross to a sibling layer."""
  out = []
  for mod, targets in graph.items():
    a = layer(mod)
    if a is None:
      continue
    for t in targets:
      if t == PACKAGE:  # the top: its __init__ imports every layer
        out.append((mod, t))
        continue
      b = layer(t)
      if b == a:
        continue
      if a not in LAYERS or b not in LAYERS:
        out.append((mod, t))  # a module outside every layer
      elif LAYERS[b] >= LAYERS[a]:
        out.append((mod, t))
  return sorted(out)


def lazy_imports() -> list[tuple[str, int, str]]:
  """(module, line, imported) of every package import inside a function."""
  mods = modules()
  out = []
  for mod, path in mods.items():
    tree = ast.parse(open(path, encoding="utf-8").read())
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
      if id(node) in top:
        continue
      if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
        out.append((mod, node.lineno, node.module))
      elif isinstance(node, ast.Import):
        out += [(mod, node.lineno, a.name) for a in node.names if a.name.startswith(PACKAGE)]
  return sorted(out)


def modules() -> dict[str, str]:
  out = {}
  for dirpath, _, names in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
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
          base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
      else:
        continue
      for t in targets:
        while t and t not in mods:
          t = t.rpartition(".")[0]
        if t and t != mod:
          graph[mod].add(t)  # (PACKAGE: the public names of the package's __init__)
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

  # The package's __init__ re-exports from every layer: left out of the cycle search.
  graph = {m: {t for t in ts if t != PACKAGE} for m, ts in graph.items() if m != PACKAGE}
  sys.setrecursionlimit(10000)
  for v in graph:
    if v not in index:
      visit(v)
  return out


if __name__ == "__main__":
  if "--lazy" in sys.argv:
    found = lazy_imports()
    for mod, line, target in found:
      print(f"{mod}:{line} -> {target}")
    print(f"{len(found)} function-local package imports")
    sys.exit(0)
  graph = edges("--all" in sys.argv)
  found = cycles(graph)
  for comp in found:
    print("cycle:", " <-> ".join(comp))
  up = upward(graph)
  for mod, target in up:
    print(f"upward: {mod} -> {target}")
  kind = "module-level and lazy" if "--all" in sys.argv else "module-level"
  print(
    f"{len(found)} import cycles and {len(up)} imports from a higher layer among {len(modules())} modules"
    f" ({kind} imports)"
  )
  sys.exit(1 if found or up else 0)
