"""The plan of a sweep: its config, prompt set, grid of cells and rows with their seeds.

Pure functions of the config (no files written, no model): the same config gives the same rows, in
the same order, with the same seeds, on any machine. ``AXES`` names the swept settings; a *cell* is
one combination of them; a *row* is (prompt, cell, sample).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from typing import Any, Mapping, Sequence

from smollm3_jax.evaluation import metrics
from smollm3_jax.generation.settings import SETTINGS, validate_sampling_args
from smollm3_jax.text import chat_format
from smollm3_jax.utils import validation


@dataclasses.dataclass(frozen=True)
class Axis:
  """One swept setting: ``sweep.<name>`` in the config, ``settings[name]`` in a row.

  ``kind``: bool, int or float (values are cast to it). ``off``: the value that turns the setting
  off (an axis missing from the config is ``(off,)``); None = a required axis. ``label``: its name in
  cell keys. ``always_keyed``: in every cell key (the first six, so keys of older workdirs stay
  valid); other axes appear in a key only when not ``off``. ``greedy_free``: a greedy row (temperature
  0) does not depend on it (a warper applied to sampled rows only: greedy is the argmax of the
  processed logits), so greedy cells that differ only in such axes share one run.
  """

  name: str
  kind: type
  off: Any = None
  label: str = ""
  always_keyed: bool = False
  greedy_free: bool = False

  @property
  def key_label(self) -> str:
    return self.label or self.name


def _setting(name: str, *, required: bool = False, **kw) -> Axis:
  """The axis of the sampling setting ``name``: its kind and ``off`` value are the setting's
  (:data:`smollm3_jax.generation.sampling.SETTINGS`); ``required``: no ``off``, the config must give it."""
  setting = SETTINGS[name]
  return Axis(name, int if setting.integer else float, off=None if required else setting.off, **kw)


# The axes of a grid, in cell order (thinking-major). A new sampling setting is one line here, e.g.
# ``_setting("typical_p", greedy_free=True)`` for a warper of sampled rows, or
# ``_setting("frequency_penalty")`` for a processor that changes greedy rows too (its check lives in
# sampling.validate_sampling_args).
SWEEP_AXES = (
  Axis("thinking", bool, label="think", always_keyed=True),
  _setting("temperature", required=True, label="t", always_keyed=True),
  _setting("repetition_penalty", label="rp", always_keyed=True),
  _setting("top_p", always_keyed=True, greedy_free=True),
  _setting("top_k", always_keyed=True, greedy_free=True),
  _setting("min_p", always_keyed=True, greedy_free=True),
  _setting("typical_p", greedy_free=True),
  _setting("epsilon_cutoff", label="eps", greedy_free=True),
  _setting("eta_cutoff", label="eta", greedy_free=True),
  _setting("frequency_penalty", label="fp"),
  _setting("presence_penalty", label="pp"),
  _setting("no_repeat_ngram_size", label="ngram"),
  _setting("min_new_tokens", label="min_new"),
  Axis("num_beams", int, off=1, label="beams"),  # > 1: beam search (greedy cells only), its own calls
)
AXES = tuple(a.name for a in SWEEP_AXES)
AXIS = {a.name: a for a in SWEEP_AXES}
# The axes passed to the sampler (all but the chat template's thinking switch).
SAMPLING_AXES = tuple(a.name for a in SWEEP_AXES if a.name not in ("thinking", "num_beams"))


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------
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
  for name in ("batch_size", "samples", "max_new_tokens"):
    validation.as_count(name, cfg.get(name), low=1)
  validation.as_count("newline_limit", cfg.get("newline_limit", 0))
  validation.as_count("seed", cfg.get("seed", 0), high=validation.UINT32_MAX)
  validation.as_bool("chat", cfg.get("chat", True))
  validation.as_bool("record_logprobs", cfg.get("record_logprobs", False))
  prompts = cfg.get("prompts", {})
  validation.as_count("prompts.limit", prompts.get("limit", 0))
  if cfg.get("date"):
    try:
      chat_format.resolve_date(cfg["date"])
    except ValueError as e:
      raise ValueError(f"date: {e}") from None
  stats = cfg.get("stats", {})
  validation.as_count("stats.resamples", stats.get("resamples", 1000), low=1)
  validation.as_count("stats.seed", stats.get("seed", 0), high=validation.UINT32_MAX)
  level = stats.get("level", 0.95)
  if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
    raise ValueError(f"stats.level: must be a number in (0, 1), got {level!r}")
  plot_axes = list(cfg.get("plot_axes", ()))
  bad = [a for a in plot_axes if a not in AXES]
  if bad or len(set(plot_axes)) != len(plot_axes) or len(plot_axes) > 2:
    raise ValueError(f"plot_axes: at most two distinct axes of {list(AXES)}, got {plot_axes!r}")
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
      check_prompt(p, f"{path}:{lineno}")
      if p["id"] in seen:
        raise ValueError(f"{path}:{lineno}: duplicate prompt id {p['id']!r}")
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


def _got(record: Mapping, field: str) -> str:
  if field not in record:
    return "nothing (the field is missing)"
  return f"{record[field]!r} ({type(record[field]).__name__})"


def check_prompt(record, where: str) -> None:
  """Refuses a prompt record with a missing or mistyped field: ValueError naming the record (``where``,
  and its id), the field and the type expected. Checked when the prompt set is read, before anything
  compiles: a reference that cannot be scored would otherwise fail after its rows were generated, on
  every rerun."""
  if not isinstance(record, dict):
    raise ValueError(
      f"{where}: expected a JSON object with string fields 'id' and 'prompt', got {type(record).__name__}"
    )
  name = f"{where} (prompt {record['id']!r})" if isinstance(record.get("id"), str) else where
  for field in ("id", "prompt"):
    if not isinstance(record.get(field), str):
      raise ValueError(f"{name}: {field}: expected a string, got {_got(record, field)}")
  if record.get("kind") is not None and not isinstance(record["kind"], str):
    raise ValueError(f"{name}: kind: expected a string (open, factual, math, ...), got {_got(record, 'kind')}")
  if record.get("answer_type") not in (None, "text", "numeric"):
    raise ValueError(f"{name}: answer_type: expected 'text', 'numeric' or null, got {_got(record, 'answer_type')}")
  if record.get("reference") is not None and record.get("answer_type") is None:
    raise ValueError(
      f"{name}: reference: given without answer_type, so nothing would score it; add "
      f"\"answer_type\": \"numeric\" or \"text\""
    )
  problem = metrics.reference_error(record.get("reference"), record.get("answer_type"))
  if problem:
    raise ValueError(f"{name}: reference: {problem}")


def prompts_hash(prompts: Sequence[Mapping]) -> str:
  blob = json.dumps(list(prompts), sort_keys=True, ensure_ascii=False).encode()
  return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Grid and rows
# --------------------------------------------------------------------------------------------
def _raw_values(sweep: Mapping, name: str) -> tuple:
  axis = AXIS[name]
  if name not in sweep:
    if axis.off is None:
      raise ValueError(f"sweep.{name}: missing axis")
    return (axis.off,)
  return _as_tuple(name, sweep[name])


def _cast(axis: Axis, value):
  return bool(value) if axis.kind is bool else axis.kind(value)


def axis_values(sweep: Mapping, name: str) -> tuple:
  """The values of axis ``name`` in ``sweep`` cast to its kind (``(off,)`` when an optional axis
  is missing); not validated (:func:`expand_grid` does that)."""
  return tuple(_cast(AXIS[name], v) for v in _raw_values(sweep, name))


def expand_grid(sweep: Mapping) -> list[dict]:
  """The cells of the grid: every combination of the axes' values, in ``AXES`` order (thinking-major).

  An optional axis missing from ``sweep`` is fixed at its ``off`` value; an unknown one is an error."""
  unknown = sorted(set(sweep) - set(AXES))
  if unknown:
    raise ValueError(f"sweep: unknown axes {unknown}; known: {list(AXES)}")
  raw = {name: _raw_values(sweep, name) for name in AXES}
  for i, value in enumerate(raw["thinking"]):
    validation.as_bool(f"sweep.thinking[{i}]", value)
  for name in SAMPLING_AXES:
    try:
      validate_sampling_args(**{name: list(raw[name])})
    except ValueError as e:
      raise ValueError(f"sweep.{name}: {e}") from None
  for i, value in enumerate(raw["num_beams"]):
    validation.as_count(f"sweep.num_beams[{i}]", value, low=1)
  if max(raw["num_beams"]) > 1 and any(t != 0 for t in raw["temperature"]):
    raise ValueError("sweep.num_beams: beam search is not sampled; sweep num_beams > 1 with temperature=(0.0,)")
  cells = []
  for values in itertools.product(*(raw[a] for a in AXES)):
    cell = {a: _cast(AXIS[a], v) for a, v in zip(AXES, values)}
    if cell not in cells:
      cells.append(cell)
  return cells


def swept_axes(cells: Sequence[Mapping]) -> list[str]:
  """The axes with more than one value among ``cells``, in ``AXES`` order."""
  return [a for a in AXES if len({c[a] for c in cells}) > 1]


def complete_settings(settings: Mapping) -> dict:
  """``settings`` with every optional axis it lacks set to ``off`` (rows written before that axis
  existed ran with it off)."""
  out = {a.name: a.off for a in SWEEP_AXES if a.off is not None}
  out.update(settings)
  return out


def run_cell(cell: Mapping, *, thinking_mode: bool = True) -> dict:
  """The settings a cell's rows run with: a greedy cell (temperature 0) has its greedy-free axes
  (top-p, top-k, min-p, ...) set to ``off``, so greedy cells differing only in them share rows.
  ``thinking_mode=False`` (a chat template that renders every prompt the same with thinking on and
  off, e.g. SmolLM2's): every cell runs with thinking off, so cells differing only in it share rows."""
  cell = dict(cell)
  if not thinking_mode and "thinking" in cell:
    cell["thinking"] = False
  if cell["temperature"] != 0.0:
    return cell
  return {k: (AXIS[k].off if k in AXIS and AXIS[k].greedy_free else v) for k, v in cell.items()}


def _key_value(axis: Axis, value) -> str:
  return str(int(value)) if axis.kind in (bool, int) else f"{value:g}"


def cell_key(cell: Mapping) -> str:
  """A short stable name, e.g. ``think=1,t=0.6,rp=1.1,top_p=0.95,top_k=0,min_p=0`` (axes other than
  the first six appear only when not off)."""
  parts = []
  for a in SWEEP_AXES:
    value = cell.get(a.name, a.off)
    if a.always_keyed or value != a.off:
      parts.append(f"{a.key_label}={_key_value(a, value)}")
  return ",".join(parts)


def row_seed(seed: int, prompt_id: str, key: str, sample: int) -> int:
  """A uint32 seed from (base seed, prompt, cell, sample): a row samples the same whatever batch
  or position it runs in."""
  h = hashlib.blake2b(f"{seed}|{prompt_id}|{key}|{sample}".encode(), digest_size=4)
  return int.from_bytes(h.digest(), "little")


def make_rows(
  prompts: Sequence[Mapping], cells: Sequence[Mapping], *, samples: int, seed: int, thinking_mode: bool = True
) -> list[dict]:
  """Rows in run order (cell-major, so a batch mostly holds one cell). Greedy cells
  (temperature 0) get one sample (more would repeat it) and run once per :func:`run_cell`: their
  rows carry the shared cell's key and settings (``cell``: the index of the first cell using them);
  so do cells that differ only in thinking when ``thinking_mode`` is False."""
  ids = set()
  for i, p in enumerate(prompts):  # (a prompt set not read by load_prompts: its rows are keyed by id)
    if not isinstance(p, Mapping) or not isinstance(p.get("id"), str):
      raise ValueError(
        f"prompts[{i}]: id: expected a string, got "
        f"{_got(p, 'id') if isinstance(p, Mapping) else type(p).__name__ + ' (not a record)'}"
      )
    if p["id"] in ids:
      raise ValueError(f"prompts[{i}]: duplicate prompt id {p['id']!r}")
    ids.add(p["id"])
  rows, seen = [], set()
  for ci, cell in enumerate(cells):
    settings = run_cell(cell, thinking_mode=thinking_mode)
    ck = cell_key(settings)
    if ck in seen:
      continue
    seen.add(ck)
    n = 1 if cell["temperature"] == 0.0 else samples
    for p in prompts:
      for s in range(n):
        rows.append(
          dict(
            key=f"{p['id']}|{ck}|s{s}",
            prompt_id=p["id"],
            cell=ci,
            cell_key=ck,
            sample=s,
            seed=row_seed(seed, p["id"], ck, s),
            settings=dict(settings),
          )
        )
  return rows
