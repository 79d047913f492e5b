"""A sweep's workdir: who may write it, which run its results belong to, and the results file.

* ``Workdir`` holds an exclusive lock (``files.DirectoryLock``) for the whole run: a second run on the
  same directory is refused at once, naming the holder's pid; a lock left by a killed run never blocks.
* ``config.json`` records the config (with the chat date the prompts were rendered with), a hash of
  the prompt set, and the provenance of every run (library versions, git commit, backend, device,
  dtype). A resume may grow the sweep (more ``samples``, new values on an axis: only new rows; the
  grown config is stored once its first new rows are durable, so a grow killed before them leaves the
  workdir as it was and the first command still resumes it); any other change of config is refused
  (:class:`ConfigMismatchError`), as is a workdir whose ``generations.jsonl`` has rows but whose
  ``config.json`` is missing or unreadable. The check itself (fields that may change on resume, the
  refusal naming the differing fields) is :mod:`smollm3_jax.utils.workdir`'s, shared with fine-tuning
  and the evaluation grid.
* ``generations.jsonl`` (:class:`ResultsFile`): one JSON line per finished row, appended and fsync'ed
  batch by batch, each with a ``digest`` of its results (:func:`row_digest`). A torn last line (a run
  killed mid-write) is cut off and its row redone; a corrupt line elsewhere (not JSON, a field missing
  or of the wrong type, results that do not match their digest: edited by hand) is reported with its
  line number and its row redone; a row whose settings or seed differ from the plan's row of the same
  key is refused. Rows of older versions, written without a digest, are accepted (one warning).
* :func:`load` reads a workdir's rows and summary as pandas DataFrames (read only: a sweep still
  running is not disturbed).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from typing import Any, Callable, Iterable, Mapping, Sequence

from smollm3_jax.sweep.plan import AXES, axis_values, complete_settings, validate_config
from smollm3_jax.text import chat_format
from smollm3_jax.utils import workdir as workdir_config
from smollm3_jax.utils.extras import needs
from smollm3_jax.utils.files import DirectoryLock, LockedError, atomic_write
from smollm3_jax.utils.workdir import CONFIG_FILE, ConfigMismatchError

# (Row digests left it at 2: this version reads rows without one, older ones ignore the field.)
FORMAT_VERSION = 2
# Config fields that may change between a run and its resumption (they do not change results
# beyond float noise from another batch shape).
RESUMABLE_FIELDS = ("batch_size", "prompts.path", "progress", "mesh", "plots", "plot_axes", "stats")
# Config fields a finished sweep may grow (never shrink): they add rows, never change existing ones
# (a row's key and seed depend on its prompt, cell and sample only).
GROWABLE_FIELDS = ("samples", "sweep")
RESULTS_FILE = "generations.jsonl"
SUMMARY_FILE = "summary.csv"
# What identifies a row's results besides its key: compared row by row on resume.
ROW_IDENTITY = ("prompt_id", "cell_key", "sample", "seed", "settings")
# Left out of a row's digest: its identity (an edit there is another run's row: refused by check_rows,
# not redone), the machine's timings (they differ between runs of the same row) and the digest itself.
UNDIGESTED = ("key", *ROW_IDENTITY, "timing", "digest")


__all__ = [
  "ConfigMismatchError",
  "LockedError",
  "ResultsFile",
  "Workdir",
  "load",
  "provenance",
  "row_digest",
  "row_problem",
]


def _comparable(record: Mapping) -> dict:
  """What must match on resume: the config (the fields that may change or grow are left out by the
  check), the prompt set's hash and the format version."""
  cfg = dict(record.get("config", {}))
  if not cfg.get("record_logprobs"):  # off = a workdir from before the field existed
    cfg.pop("record_logprobs", None)
  return dict(config=cfg, prompts_sha256=record.get("prompts_sha256"), version=record.get("version"))


def _shrunk(old: Mapping, new: Mapping) -> list[str]:
  """What a grown config lost of the stored one: fewer ``samples``, or values missing from an axis
  (values compared after the axis cast, so 1 and 1.0 are one value)."""
  out = []
  if new.get("samples", 1) < old.get("samples", 1):
    out.append(f"samples: {old.get('samples')!r} -> {new.get('samples')!r} (a sweep may add samples, not drop them)")
  old_axes, new_axes = old.get("sweep", {}), new.get("sweep", {})
  for name in sorted(set(old_axes) | set(new_axes)):
    if name not in AXES:
      pick = lambda axes: {"sweep": {name: axes[name]} if name in axes else {}}
      out += workdir_config.differences(pick(old_axes), pick(new_axes))
      continue
    was, now = axis_values(old_axes, name), axis_values(new_axes, name)
    lost = [v for v in was if v not in now]
    if lost:
      out.append(
        f"sweep.{name}: {list(was)!r} -> {list(now)!r} (values {lost!r} are missing; a sweep may add "
        f"values to an axis, not drop them)"
      )
  return out


def _check_stored(config: Mapping) -> None:
  """The stored config passes a new config's checks (a damaged or hand-edited config.json is refused
  naming the field, before the resume reads its grid, samples or date)."""
  for name in ("sweep", "prompts", "stats"):  # (validate_config looks into these)
    if not isinstance(config.get(name, {}), Mapping):
      raise ValueError(f"{name}: expected an object, got {json.dumps(config[name])[:60]}")
  validate_config(config)


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------
_PACKAGES = ("jax", "jaxlib", "flax", "numpy", "tokenizers", "smollm3-jax")


def _git_commit() -> str | None:
  """The project's git commit (with "-dirty" when the tree has changes), when it runs from a clone."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    run = lambda *args: subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
    head = run("rev-parse", "HEAD")
    if head.returncode != 0:
      return None
    dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")
  except (OSError, subprocess.SubprocessError):
    return None


def provenance(dtype: str | None = None) -> dict[str, Any]:
  """What produced a run: package versions, the project's git commit, the JAX backend and devices,
  the model dtype, and the time (UTC)."""
  import datetime
  from importlib import metadata

  import jax

  versions = {}
  for name in _PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      versions[name] = None
  devices = jax.devices()
  return dict(
    versions=versions,
    git_commit=_git_commit(),
    backend=jax.default_backend(),
    device_kind=devices[0].device_kind,
    device_count=len(devices),
    process_count=jax.process_count(),
    dtype=dtype,
    started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  )


# --------------------------------------------------------------------------------------------
# The workdir
# --------------------------------------------------------------------------------------------
class Workdir:
  """A sweep's output directory, locked for one run at a time (a context manager).

  ``open(config, prompts_sha256)`` checks or writes ``config.json`` and returns the config the run
  must use (a resumed run takes the stored chat date). ``results`` is the :class:`ResultsFile`.
  """

  def __init__(self, path: str):
    self.path = path
    self.config_path = os.path.join(path, CONFIG_FILE)
    self.results = ResultsFile(os.path.join(path, RESULTS_FILE), checked=True)
    self.results.after_append = self.store_pending
    self._lock = DirectoryLock(path)
    self._pending: dict | None = None  # a grown record, stored after its first rows

  def __enter__(self) -> "Workdir":
    self._lock.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self._lock.release()

  def _read_record(self) -> dict | None:
    """The stored record; None when there is none. Refuses an unreadable one, and rows without one."""
    results = f"{self.results.path} has rows" if self.results.has_rows() else None
    return workdir_config.read_record(self.path, results=results, check=_check_stored)

  def open(self, config: Mapping, prompts_sha256: str) -> dict:
    """Checks ``config`` against the stored one (or stores it).

    ``config["date"] == ""`` means "the chat date of the first run": a new workdir stores today's
    date, a resumed one keeps its stored date. Returns the config to run with.
    """
    config = json.loads(json.dumps(config))
    old = self._read_record()
    if not config.get("date"):
      stored = (old or {}).get("config", {}).get("date")
      config["date"] = stored or chat_format.iso_date(None)
    else:
      config["date"] = chat_format.iso_date(config["date"])
    record = dict(
      version=FORMAT_VERSION, config=config, prompts_sha256=prompts_sha256, runs=list((old or {}).get("runs", []))
    )
    if old is not None:
      workdir_config.refuse_changes(
        self.path,
        _comparable(old),
        _comparable(record),
        may_change=[f"config.{f}" for f in RESUMABLE_FIELDS + GROWABLE_FIELDS],
        also=_shrunk(old["config"], config),
      )
      if any(old["config"].get(k) != config.get(k) for k in GROWABLE_FIELDS):
        self._pending = record  # grown: the stored record stays until rows of the grown grid are durable
        return config
    self._write_record(record)
    return config

  def store_pending(self) -> None:
    """Stores a grown config (called once rows are durable, or by a run with no row left to add)."""
    if self._pending is not None:
      record, self._pending = self._pending, None
      self._write_record(record)

  def add_run(self, info: Mapping) -> None:
    """Appends one run's provenance (:func:`provenance`) to ``config.json``'s ``runs`` (to the grown
    record while that waits for its first rows)."""
    record = self._pending if self._pending is not None else self._read_record()
    record.setdefault("runs", []).append(dict(info))
    if record is not self._pending:
      self._write_record(record)

  def _write_record(self, record: Mapping) -> None:
    os.makedirs(self.path, exist_ok=True)
    atomic_write(self.config_path, json.dumps(record, indent=2, sort_keys=True) + "\n")

  def write(self, name: str, data: str | bytes) -> str:
    """Writes ``name`` in the workdir atomically; returns its path."""
    path = os.path.join(self.path, name)
    atomic_write(path, data)
    return path


# --------------------------------------------------------------------------------------------
# The results file
# --------------------------------------------------------------------------------------------
def _is_count(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


_STR = ("a string", lambda v: isinstance(v, str))
_COUNT = ("an integer >= 0", _is_count)
_NUMBER = ("a number", _is_number)
# A sweep row's fields, each with what it must be (what the resume and the summary read them as). Every
# row of this format version has these (execute._row writes them); other fields are kept as they are.
ROW_FIELDS = {
  "key": _STR,
  "prompt_id": _STR,
  "cell": _COUNT,
  "cell_key": _STR,
  "sample": _COUNT,
  "seed": _COUNT,
  "settings": ("an object", lambda v: isinstance(v, dict)),
  "prompt": _STR,
  "kind": _STR,
  "text": _STR,
  "thinking": _STR,
  "answer": _STR,
  "num_tokens": _COUNT,
  "thinking_tokens": _COUNT,
  "closed_think": ("true or false", lambda v: isinstance(v, bool)),
  "stop_reason": _STR,
  "prompt_tokens": _COUNT,
  "token_ids": ("a list of token ids", lambda v: isinstance(v, list) and all(map(_is_count, v))),
  "timing": ("an object of numbers", lambda v: isinstance(v, dict) and all(map(_is_number, v.values()))),
  "correct": ("true, false or null", lambda v: v is None or isinstance(v, bool)),
  "extracted": ("a number or null", lambda v: v is None or _is_number(v)),
}
# Fields only some rows have (beam cells, record_logprobs, rows of this version on): checked when present.
OPTIONAL_ROW_FIELDS = {
  "beam_score": _NUMBER,
  "mean_logprob": _NUMBER,
  "mean_entropy": _NUMBER,
  "logprobs": (
    "an object of number lists",
    lambda v: isinstance(v, dict) and all(isinstance(x, list) and all(map(_is_number, x)) for x in v.values()),
  ),
  "digest": ("a sha256 hex digest", lambda v: isinstance(v, str) and len(v) == 64),
}


def row_digest(row: Mapping) -> str:
  """sha256 of a canonical JSON of a row's results (every field but :data:`UNDIGESTED`): written with each
  row, compared on load, so a row edited by hand is found (and redone) instead of entering the summary."""
  fields = {k: v for k, v in row.items() if k not in UNDIGESTED}
  # (through JSON first: a row about to be written and the same row read back give the same text)
  text = json.dumps(json.loads(json.dumps(fields)), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()


def row_problem(row: Any) -> str | None:
  """Why a parsed line of ``generations.jsonl`` is no sweep row (None when it is one): not an object, a field
  missing or of the wrong type (:data:`ROW_FIELDS`), or results that do not match their digest."""
  if not isinstance(row, dict):
    return f"a JSON {type(row).__name__}, not an object"
  for name, (what, ok) in ROW_FIELDS.items():
    if name not in row:
      return f"no {name!r}"
    if not ok(row[name]):
      return f"{name!r} is {json.dumps(row[name])[:40]}, not {what}"
  for name, (what, ok) in OPTIONAL_ROW_FIELDS.items():
    if name in row and not ok(row[name]):
      return f"{name!r} is {json.dumps(row[name])[:40]}, not {what}"
  if "digest" in row and row["digest"] != row_digest(row):
    return "its results do not match its digest (edited after it was written)"
  return None


class ResultsFile:
  """Append-only JSONL of finished rows, made durable batch by batch.

  A run killed mid-write leaves at most one torn (newline-less) last line: ``load`` drops it
  (truncating the file so later appends start on a fresh line). A complete line that is no row is
  never skipped in silence: ``load`` lists them in ``corrupt`` (1-based line numbers; ``problems``: why,
  by line) and the caller reports them (their rows are redone).

  ``checked=True`` (a sweep's ``generations.jsonl``): ``append`` writes each row with its
  :func:`row_digest`, and a line is a row only if :func:`row_problem` finds nothing (every field of the
  right type, the digest matching); rows without a digest (older versions) are accepted and counted in
  ``undigested``. Else any JSON object with a ``key`` is a row.
  """

  def __init__(self, path: str, *, checked: bool = False):
    self.path = path
    self.checked = checked
    self.corrupt: list[int] = []
    self.problems: dict[int, str] = {}
    self.undigested = 0
    self.after_append: Callable[[], None] | None = None  # called once each append is durable

  def has_rows(self) -> bool:
    return os.path.exists(self.path) and os.path.getsize(self.path) > 0

  def load(self, repair: bool = True) -> dict[str, dict]:
    """Finished rows by key (the first row of a key wins; corrupt lines do not count). ``repair=False``:
    read only (a torn last line is skipped, not cut off; for readers of a sweep that may still be running)."""
    self.corrupt, self.problems, self.undigested = [], {}, 0
    if not os.path.exists(self.path):
      return {}
    with open(self.path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:  # torn last line: drop it so the row is redone
      with open(self.path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    rows: dict[str, dict] = {}
    for lineno, line in enumerate(data[:end].split(b"\n")[:-1], 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError):
        self.corrupt.append(lineno)
        self.problems[lineno] = "not JSON"
        continue
      if self.checked:
        problem = row_problem(row)
      else:
        problem = None if isinstance(row, dict) and "key" in row else "not an object with a 'key'"
      if problem is not None:
        self.corrupt.append(lineno)
        self.problems[lineno] = problem
        continue
      if self.checked and row["key"] not in rows and "digest" not in row:
        self.undigested += 1
      rows.setdefault(row["key"], row)
    return rows

  def append(self, rows: Iterable[Mapping]) -> None:
    if self.checked:
      rows = [dict(r, digest=row_digest(r)) for r in rows]
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with open(self.path, "ab") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    if blob and self.after_append is not None:
      self.after_append()


def check_rows(done: Mapping[str, Mapping], planned: Sequence[Mapping], max_new_tokens: int) -> None:
  """Refuses finished rows whose identity (prompt, cell, sample, seed, settings with the token
  budget) differs from the planned row of the same key: results of another run mixed in."""
  bad = []
  for row in planned:
    got = done.get(row["key"])
    if got is None:
      continue
    want = dict(row, settings=dict(row["settings"], max_new_tokens=max_new_tokens))
    # (a row written before an axis existed ran with that axis off)
    got = dict(got, settings=complete_settings(got.get("settings") or {}))
    if any(got.get(k) != want.get(k) for k in ROW_IDENTITY):
      bad.append(row["key"])
  if bad:
    raise ConfigMismatchError(
      f"{len(bad)} finished rows differ from this config's rows of the same key (settings or seed), "
      f"e.g. {bad[0]!r}: the results file mixes runs. Use a new --workdir."
    )


# --------------------------------------------------------------------------------------------
# DataFrames
# --------------------------------------------------------------------------------------------
def load(workdir: str):
  """``(rows, summary)``: pandas DataFrames of a sweep's ``generations.jsonl`` (one row per
  generation; ``settings`` flattened into one column per setting, ``timing`` into ``timing.<field>``;
  the thinking text is ``thinking_text``, ``thinking`` the switch)
  and ``summary.csv`` (one row per cell). Reads only: a sweep still running is not disturbed (a torn
  last line or a corrupt line, as :class:`ResultsFile` finds them, is skipped). Needs pandas (the
  ``eval`` extra)."""
  with needs("eval", "sweep.load"):
    import pandas as pd

  summary_path = os.path.join(workdir, SUMMARY_FILE)
  if not os.path.isfile(summary_path):
    raise FileNotFoundError(f"{summary_path}: no summary (run or resume the sweep in {workdir!r} to write it)")
  records = list(ResultsFile(os.path.join(workdir, RESULTS_FILE), checked=True).load(repair=False).values())
  rows = pd.json_normalize(records, sep=".") if records else pd.DataFrame()
  settings = {c: c.split(".", 1)[1] for c in rows.columns if c.startswith("settings.")}
  # A row field named like a setting (the thinking text vs the thinking switch) becomes <name>_text.
  rows = rows.rename(columns={c: f"{c}_text" for c in settings.values() if c in rows.columns})
  rows = rows.rename(columns=settings)
  return rows, pd.read_csv(summary_path)
