"""The one driver of a slot pool: rows in, events out.

    runner = Runner(engine.pool(slots, length, stop_ids=...), tokenizer, incremental=True)
    runner.submit([Row(Request(prompt=ids, settings={"temperature": 0.7}, max_new=64), prompt_text=text)])
    for events in runner.run():          # one list per pool step
      for e in events:                   # e.row, e.token_ids (new), e.text (their text), e.done
        ...
      # e.row.completion: the row's Completion once e.done

Every user of the pool goes through here: ``generate`` and ``stream``, the sweep, the lm-eval model
(through ``generate``) and the server. The runner cuts rows at stop strings (the token that completes
one ends the row, as ``transformers``' stop strings), holds the text of a row with stop strings until
it ended (a stop string may still cut it), leaves a final stop id out of the text, decodes text as it
arrives (``incremental``) and builds each finished row's Completion (:func:`~smollm3_jax.generation.
results.completion_of`). Host side; the pool runs the compiled programs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

from smollm3_jax.generation.decode import EOS, STOP
from smollm3_jax.generation.engine import Pool, Request
from smollm3_jax.generation.results import Completion, completion_of
from smollm3_jax.generation.stop import cut_stop, stop_string_hit
from smollm3_jax.text.tokenizer import IncrementalDecoder


@dataclasses.dataclass(eq=False)
class Row:
  """One row for the runner. ``request``: the pool's row (prompt ids, settings, seed, budget; its
  ``tag`` is set to this Row); ``prompt_text``: the rendered prompt (thinking is split by whether it
  opens a think block); ``stop``: stop strings; ``settings``: echoed in ``Completion.settings``;
  ``tag``: anything the caller wants back. ``completion`` is filled in when the row ends."""

  request: Request
  prompt_text: str = ""
  stop: tuple[str, ...] = ()
  settings: dict = dataclasses.field(default_factory=dict)
  tag: Any = None
  completion: Completion | None = None
  # -- the runner's --
  fed: int = 0  # tokens already handed out in events
  checked: int = 0  # tokens already searched for stop strings
  decoder: IncrementalDecoder | None = None

  @property
  def done(self) -> bool:
    return self.request.done


@dataclasses.dataclass
class Event:
  """New output of one row in one pool step: ``token_ids`` (from index ``start`` of the row's tokens;
  a final stop id left out), their ``text`` (with ``incremental``; else ""), and whether the row
  ended (``done``: ``row.completion`` is set)."""

  row: Row
  start: int
  token_ids: list[int]
  text: str
  done: bool


class Runner:
  """Drives ``pool`` (a :class:`~smollm3_jax.generation.engine.Pool`) for rows submitted to it.
  ``tokenizer``: decodes texts and finds stop strings (None: token ids only); ``incremental``:
  decode each row's text as it arrives (``Event.text``)."""

  def __init__(self, pool: Pool, tokenizer, *, incremental: bool = False):
    self.pool = pool
    self.tokenizer = tokenizer
    self.incremental = incremental and tokenizer is not None
    self._cancelled: list[Row] = []  # rows the pool ends without reporting them (freed or never started)

  @property
  def idle(self) -> bool:
    """No row waiting, running, or ended and not yet reported."""
    return self.pool.idle and not self._cancelled

  def submit(self, rows: Sequence[Row], *, settings_checked: bool = False) -> None:
    """Queues rows (all checked first: nothing is queued when one is bad; ``settings_checked``: their
    sampling settings were checked before, by :func:`~smollm3_jax.generation.engine.check_settings`)."""
    for row in rows:
      if row.stop and self.tokenizer is None:
        raise ValueError("stop: stop strings need a tokenizer")
      row.request.tag = row
      if self.incremental:
        row.decoder = IncrementalDecoder(self.tokenizer)
    self.pool.submit([row.request for row in rows], settings_checked=settings_checked)

  def cancel(self, row: Row) -> None:
    """Stops a row at the next step (its tokens so far stay; reason "cancelled")."""
    if not row.request.done:
      self.pool.cancel(row.request)
      self._cancelled.append(row)

  def step(self) -> list[Event]:
    """One pool step (admissions, a decode chunk, finished rows): the rows' new output."""
    events = []
    changed = self.pool.step()
    seen = {id(r) for r in changed}
    changed += [row.request for row in self._cancelled if row.request.done and id(row.request) not in seen]
    self._cancelled = [row for row in self._cancelled if not row.request.done]
    for req in changed:
      row = req.tag
      if row.stop and not (req.done and req.cancelled and req.reason != STOP):
        self._cut_at_stop_string(row)
      if row.stop and not req.done:
        continue  # text with stop strings is handed out once the row ended
      start = row.fed
      ids = req.token_ids[start:]
      if req.done and req.reason == EOS and ids and ids[-1] in self.pool.stop_ids:
        ids = ids[:-1]
      row.fed = len(req.token_ids)
      text = ""
      if row.decoder is not None:
        text = "".join(row.decoder.push(t) for t in ids)
        if req.done:
          text += row.decoder.flush()
          if req.reason == STOP:
            text = cut_stop(text, row.stop)
      if req.done:
        row.completion = completion_of(self.tokenizer, req, row.prompt_text, self.pool.stop_ids, row.stop, row.settings)
      if ids or text or req.done:
        events.append(Event(row=row, start=start, token_ids=list(ids), text=text, done=req.done))
    return events

  def run(self) -> Iterator[list[Event]]:
    """Steps until every submitted row ended; yields each step's events."""
    while not self.idle:
      yield self.step()

  def _cut_at_stop_string(self, row: Row) -> None:
    """Ends the row at the first token whose text completes a stop string (tokens after it dropped,
    its slot freed, its reason "stop"), searching the tokens it generated since the last look."""
    req = row.request
    k = stop_string_hit(self.tokenizer, req.token_ids, row.stop, row.checked)
    row.checked = len(req.token_ids)
    if k is not None:
      req.token_ids = req.token_ids[:k]
      if not req.done:
        self.pool.cancel(req, STOP)
      req.reason, req.done = STOP, True
