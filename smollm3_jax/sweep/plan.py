"""The plan of a sweep: its config, prompt set, grid of cells and rows with their seeds.

Pure functions of the config (no files written, no model): the same config gives the same rows, in
the same order, with the same seeds, on any machine. ``AXES`` names the swept settings; a *cell* is
one combination of them; a *row* is (prompt, cell, sample).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Mapping, Sequence

AXES = ("thinking", "temperature", "repetition_penalty", "top_p", "top_k", "min_p")


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------
def to_plain(config) -> dict:
  """A ConfigDict / mapping as a JSON-compatible dict (tuples become lists)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(config, sort_keys=True))


def _as_tuple(name: str, value) -> tuple:
  if isinstance(value, (list, tuple)):
    out = tuple(value)
  else:
    out = (value,)
  if not out:
    raise ValueError(f"sweep.{name}: needs at least one value")
  return out


def validate_config(cfg: Mapping) -> None:
  """Checks the sweep config (plain dict) before anything expensive; ValueError names the field."""
  from smollm3_jax import chat_format, validation

  for name in ("batch_size", "samples", "max_new_tokens"):
    validation.as_count(name, cfg.get(name), low=1)
  validation.as_count("newline_limit", cfg.get("newline_limit", 0))
  validation.as_count("seed", cfg.get("seed", 0), high=validation.UINT32_MAX)
  validation.as_bool("chat", cfg.get("chat", True))
  prompts = cfg.get("prompts", {})
  validation.as_count("prompts.limit", prompts.get("limit", 0))
  if cfg.get("date"):
    try:
      chat_format.resolve_date(cfg["date"])
    except ValueError as e:
      raise ValueError(f"date: {e}") from None
  expand_grid(cfg["sweep"])


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def load_prompts(path: str, *, limit: int = 0, kinds: Sequence[str] = (), ids: Sequence[str] = ()) -> list[dict]:
  """Reads a JSONL prompt set: one object per line with ``id``, ``prompt`` and optionally ``kind``,
  ``answer_type`` ("text" | "numeric" | null) and ``reference``. Filters by ``ids`` / ``kinds``,
  then keeps the first ``limit`` (0 = all)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompts.path: no such file {path!r}")
  prompts, seen = [], set()
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        p = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
      if not isinstance(p, dict) or not isinstance(p.get("id"), str) or not isinstance(p.get("prompt"), str):
        raise ValueError(f"{path}:{lineno}: each line needs string fields 'id' and 'prompt'")
      if p["id"] in seen:
        raise ValueError(f"{path}:{lineno}: duplicate prompt id {p['id']!r}")
      if p.get("answer_type") not in (None, "text", "numeric"):
        raise ValueError(f"{path}:{lineno}: answer_type must be 'text', 'numeric' or null")
      seen.add(p["id"])
      p.setdefault("kind", "open")
      p.setdefault("answer_type", None)
      p.setdefault("reference", None)
      prompts.append(p)
  unknown = set(ids) - seen
  if unknown:
    raise ValueError(f"prompts.ids: unknown prompt ids {sorted(unknown)} in {path}")
  if ids:
    prompts = [p for p in prompts if p["id"] in set(ids)]
  if kinds:
    prompts = [p for p in prompts if p["kind"] in set(kinds)]
  if limit:
    prompts = prompts[:limit]
  if not prompts:
    raise ValueError(f"prompts: the selection from {path} is empty")
  return prompts


def prompts_hash(prompts: Sequence[Mapping]) -> str:
  blob = json.dumps(list(prompts), sort_keys=True, ensure_ascii=False).encode()
  return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Grid and rows
# --------------------------------------------------------------------------------------------
def expand_grid(sweep: Mapping) -> list[dict]:
  """The cells of the grid, thinking-major then temperature, penalty, top_p, top_k, min_p."""
  axes = {}
  for name in AXES:
    if name not in sweep:
      raise ValueError(f"sweep.{name}: missing axis")
    axes[name] = _as_tuple(name, sweep[name])
  from smollm3_jax.sampling import validate_sampling_args

  from smollm3_jax import validation

  for i, value in enumerate(axes["thinking"]):
    validation.as_bool(f"sweep.thinking[{i}]", value)
  for name in AXES[1:]:
    try:
      validate_sampling_args(**{name: list(axes[name])})
    except ValueError as e:
      raise ValueError(f"sweep.{name}: {e}") from None
  cells = []
  for values in itertools.product(*(axes[a] for a in AXES)):
    cell = dict(zip(AXES, values))
    cell["thinking"] = bool(cell["thinking"])
    cell["top_k"] = int(cell["top_k"])
    for name in ("temperature", "repetition_penalty", "top_p", "min_p"):
      cell[name] = float(cell[name])
    if cell not in cells:
      cells.append(cell)
  return cells


def cell_key(cell: Mapping) -> str:
  """A short stable name, e.g. ``think=1,t=0.6,rp=1.1,top_p=0.95,top_k=0,min_p=0``."""
  return (f"think={int(cell['thinking'])},t={cell['temperature']:g},rp={cell['repetition_penalty']:g},"
          f"top_p={cell['top_p']:g},top_k={cell['top_k']},min_p={cell['min_p']:g}")


def row_seed(seed: int, prompt_id: str, key: str, sample: int) -> int:
  """A uint32 seed from (base seed, prompt, cell, sample): a row samples the same whatever batch
  or position it runs in."""
  h = hashlib.blake2b(f"{seed}|{prompt_id}|{key}|{sample}".encode(), digest_size=4)
  return int.from_bytes(h.digest(), "little")


def make_rows(prompts: Sequence[Mapping], cells: Sequence[Mapping], *, samples: int, seed: int) -> list[dict]:
  """Rows in run order (cell-major, so a batch mostly holds one cell). Greedy cells
  (temperature 0) get one sample: more would repeat it."""
  rows = []
  for ci, cell in enumerate(cells):
    ck = cell_key(cell)
    n = 1 if cell["temperature"] == 0.0 else samples
    for p in prompts:
      for s in range(n):
        rows.append(dict(key=f"{p['id']}|{ck}|s{s}", prompt_id=p["id"], cell=ci, cell_key=ck, sample=s,
                         seed=row_seed(seed, p["id"], ck, s), settings=dict(cell)))
  return rows


