"""The config a resumable run keeps in its workdir, and the check a resume must pass.

A sweep (:mod:`smollm3_jax.sweep.store`), a fine-tuning run (:mod:`smollm3_jax.training.finetune`) and an
evaluation grid (:mod:`smollm3_jax.evaluation.grid`) each store their config in ``<workdir>/config.json``
on the first run. A later run in the same workdir must bring the same config, except the fields each
names as free to change on resume (progress bars, batch size, ...); a refusal names every differing
field with its stored and its new value. Results without a readable config are refused too: nothing
says which config they are of.

    plain = workdir.to_plain(config)                             # ConfigDict / mapping -> JSON values
    stored = workdir.read_record(path, results=None)             # None on a first run
    workdir.refuse_changes(path, stored["config"], plain, may_change=("progress",), what="a run")
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

CONFIG_FILE = "config.json"
MISSING = "<missing>"  # the value shown for a field one of the two configs lacks
SHOWN = 8  # differences named in a refusal (then "...")


class ConfigMismatchError(ValueError):
  """The workdir holds results of another config, or results no readable config can be matched to."""


def to_plain(config) -> dict:
  """A ConfigDict (anything with ``to_dict``) or mapping as JSON values: mappings with sorted keys,
  tuples (and other iterables JSON lacks) as lists."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(config, sort_keys=True, default=list))


def read_record(
  workdir: str,
  *,
  results: str | None,
  section: str | None = "config",
  name: str = CONFIG_FILE,
  check: Callable[[dict], None] | None = None,
) -> dict | None:
  """The JSON object stored in ``<workdir>/<name>``, or None when there is none.

  ConfigMismatchError when the file is unreadable (not JSON, not an object, or its ``section`` not an
  object), or when it is missing while the workdir holds results: ``results`` says what they are
  (e.g. ``"out/x/generations.jsonl has rows"``; None = the workdir holds none). ``check``: the caller's
  check of the stored ``section`` (the record without one), e.g. its config's own validation; its
  ValueError or TypeError naming a field is a ConfigMismatchError naming the file and that field."""
  path = os.path.join(workdir, name)
  if not os.path.exists(path):
    if results:
      raise ConfigMismatchError(
        f"{results} but {path} is missing: they cannot be matched to a config. Use a new "
        f"--workdir, or delete {workdir!r} to start over."
      )
    return None
  try:
    with open(path, encoding="utf-8") as f:
      record = json.load(f)
    if not isinstance(record, dict) or (section is not None and not isinstance(record.get(section), dict)):
      raise ValueError(f"not a record with a {section!r} object" if section else "not a JSON object")
  except (OSError, ValueError) as e:  # (json.JSONDecodeError and UnicodeDecodeError are ValueErrors)
    raise ConfigMismatchError(
      f"{path} is unreadable ({e}); the results in this workdir cannot be matched to a "
      f"config. Use a new --workdir, or delete {workdir!r} to start over."
    ) from None
  if check is not None:
    try:
      check(record[section] if section is not None else record)
    except (TypeError, ValueError) as e:  # a damaged or hand-edited field: never a crash further on
      where = f"its stored {section!r}" if section is not None else "it"
      raise ConfigMismatchError(
        f"{path} is damaged: {where} fails the config check ({e}). Restore the field, use a "
        f"new --workdir, or delete {workdir!r} to start over."
      ) from None
  return record


def _without(config: Any, fields: Iterable[str]) -> Any:
  """A copy of ``config`` without the dotted ``fields`` (each with everything under it)."""
  out = json.loads(json.dumps(config))
  for dotted in fields:
    d, parts = out, dotted.split(".")
    for part in parts[:-1]:
      d = d.get(part) if isinstance(d, dict) else None
    if isinstance(d, dict):
      d.pop(parts[-1], None)
  return out


def _diff(a: Any, b: Any, prefix: str) -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k, MISSING), b.get(k, MISSING), f"{prefix}{k}.")
    return out
  return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def differences(old: Mapping, new: Mapping, *, may_change: Iterable[str] = ()) -> list[str]:
  """``"field: old -> new"`` for each field (a dotted path) whose value differs between two plain
  configs, depth first in sorted order; a field only one side has shows ``'<missing>'`` on the other.
  ``may_change``: dotted fields left out of the comparison, each with everything under it."""
  may_change = tuple(may_change)
  return _diff(_without(old, may_change), _without(new, may_change), "")


def refuse_changes(
  workdir: str,
  old: Mapping,
  new: Mapping,
  *,
  may_change: Iterable[str] = (),
  also: Sequence[str] = (),
  what: str = "results",
) -> None:
  """ConfigMismatchError naming the differences (:func:`differences`, then ``also``: the caller's own
  findings, e.g. values dropped from a grid) when the stored config ``old`` and the new ``new`` differ
  in more than the fields that ``may_change``; ``what`` the workdir holds names them in the message."""
  diffs = differences(old, new, may_change=may_change) + list(also)
  if diffs:
    raise ConfigMismatchError(
      f"workdir {workdir!r} holds {what} of a different config ({'; '.join(diffs[:SHOWN])}"
      f"{' ...' if len(diffs) > SHOWN else ''}). Use a new --workdir, or delete {workdir!r} to start over."
    )
