"""The generation worker: one thread driving the slot pool that every request shares, through the
:class:`~smollm3_jax.generation.runner.Runner`. A :class:`Job` is one request (``n`` choices, each a
row of the pool); its text pieces and results go to the request's asyncio queue as they decode.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import Any

from smollm3_jax.generation.engine import MAX_TOP_LOGPROBS, get_engine
from smollm3_jax.generation.engine import Request as RowRequest
from smollm3_jax.generation.results import GenerationResult, row_stats
from smollm3_jax.generation.runner import Row, Runner
from smollm3_jax.generation.settings import row_seeds
from smollm3_jax.generation.stop import default_stop_ids

_LOG = logging.getLogger("smollm3_jax.serving.worker")


# --------------------------------------------------------------------------------------------
# The generation worker: one thread driving the slot pool that every request shares
# --------------------------------------------------------------------------------------------
class Job:
  """One request's generation (``n`` choices, each a row of the pool). Events go to ``events`` (an
  asyncio queue on the server's loop): ("text", (choice, str, logprob entries)) pieces, then ("done", [a
  GenerationResult per choice]) or ("error", Exception) or ("cancelled", None)."""

  def __init__(
    self,
    loop: asyncio.AbstractEventLoop,
    prompt_text: str,
    prompt_ids: list[int],
    *,
    settings: dict,
    max_new: int,
    seed: int,
    n: int = 1,
    stop: tuple = (),
    logprobs: bool = False,
    top_logprobs: int = 0,
  ):
    self.loop = loop
    self.prompt_text, self.prompt_ids = prompt_text, prompt_ids
    self.settings, self.max_new, self.seed, self.n, self.stop = settings, max_new, seed, n, stop
    self.logprobs, self.top_logprobs = logprobs, top_logprobs
    self.events: asyncio.Queue = asyncio.Queue()
    self.cancelled = threading.Event()
    self.rows: list = []  # the pool's Requests (set by the worker)
    self.result: list | None = None
    self.submitted = time.perf_counter()
    self.started: float | None = None
    self.finished: float | None = None
    self.outcome: str = "queued"  # -> running -> done | cancelled | error

  def cancel(self):
    self.cancelled.set()

  def post(self, kind: str, value: Any):
    try:
      self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
    except RuntimeError:  # the event loop is gone (server shutting down)
      pass


class Worker:
  """Drives one slot pool on a daemon thread, through a
  :class:`~smollm3_jax.generation.runner.Runner`: requests join it as slots free up, every running
  request advances at each decode chunk, and each gets the text ``generate`` gives it alone."""

  def __init__(self, model, tokenizer, *, chunk_steps: int, slots: int, context_length: int):
    self.model, self.tokenizer = model, tokenizer
    self.engine = get_engine(model, tokenizer)
    self._pool_args = dict(
      slots=slots,
      length=self.engine.cache_length_for(context_length),
      stop_ids=default_stop_ids(tokenizer, model.config),
      context_length=context_length,
      chunk_steps=chunk_steps,
    )
    self.runner = self._new_runner()
    self._jobs: queue.Queue = queue.Queue()
    self._running: list[Job] = []
    self.history: list[Job] = []  # finished jobs, newest last (bounded; tests and /health read it)
    # When the loop last got something done (a step finished, or work arrived while it waited): /health
    # tells a worker that has work but no progress (stalled) from one that is busy.
    self.progress = time.monotonic()
    self.waiting = False  # blocked waiting for work (idle: no progress is due)
    self._thread = threading.Thread(target=self._loop, name="smollm3-generation", daemon=True)
    self._thread.start()

  def _new_runner(self) -> Runner:
    """The runner and its slot pool (at start and after a failed step: the same settings, or later
    requests would lose what the first pool had, e.g. log-probabilities). The pool holds
    log-probability buffers; a decode step computes them only when a row asks."""
    a = self._pool_args
    pool = self.engine.pool(
      a["slots"],
      a["length"],
      stop_ids=a["stop_ids"],
      context_length=a["context_length"],
      chunk_steps=a["chunk_steps"],
      prefill_rows=(1,),
      logprobs=True,
      top_logprobs=MAX_TOP_LOGPROBS,
    )
    return Runner(pool, self.tokenizer, incremental=True)

  @property
  def pool(self):
    return self.runner.pool

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def stalled_for(self) -> float:
    """Seconds since the last progress while there is work to do (0 when idle or waiting for work)."""
    if self.waiting or not self.pending():
      return 0.0
    return max(0.0, time.monotonic() - self.progress)

  def warmup(self) -> float:
    """Compiles every program the pool can run; returns the seconds spent."""
    return self.pool.warmup()

  def submit(self, job: Job):
    self._jobs.put(job)

  def pending(self) -> int:
    return self._jobs.qsize() + len(self._running)

  def stop(self):
    self._jobs.put(None)

  def _start(self, job: Job) -> None:
    if job.cancelled.is_set():  # the client left while the job was queued
      self._end(job, "cancelled", None)
      return
    seeds = row_seeds(job.seed, job.n)
    job.rows = [
      Row(
        RowRequest(
          prompt=job.prompt_ids,
          settings=job.settings,
          seed=int(seeds[i]),
          max_new=job.max_new,
          share=id(job),
          logprobs=job.logprobs,
        ),
        prompt_text=job.prompt_text,
        stop=job.stop,
        tag=(job, i),
      )
      for i in range(job.n)
    ]
    job.closed = set()  # choices whose last piece was posted
    job.started, job.outcome = time.perf_counter(), "running"
    self.runner.submit(job.rows)
    self._running.append(job)

  def _end(self, job: Job, outcome: str, value) -> None:
    job.outcome, job.finished = outcome, time.perf_counter()
    if isinstance(value, list):
      job.result = value
    job.post(outcome, value)
    if job in self._running:
      self._running.remove(job)
    self.history = (self.history + [job])[-64:]

  def _emit(self, event) -> None:
    """Posts a choice's new text; ends its job once every choice posted its last piece."""
    job, i = event.row.tag
    entries = (
      self._logprob_entries(job, event.row.request, event.start, event.start + len(event.token_ids))
      if job.logprobs
      else None
    )
    if event.text or entries:
      job.post("text", (i, event.text, entries))
    if event.done:
      job.closed.add(i)
    # Not all(r.done for r in job.rows): the pool marks every row of a chunk done before the rows are
    # emitted one by one, so the later ones would not have posted their last piece yet.
    if len(job.closed) == job.n and job in self._running:
      self._end(job, "cancelled" if job.cancelled.is_set() else "done", self._results(job))

  def _logprob_entries(self, job: Job, request, start: int, end: int) -> list[dict]:
    """OpenAI's ``logprobs.content`` entries of tokens [start, end) of a row: the token, its raw
    log-probability (log-softmax of the model's logits), its bytes, and the top alternatives."""
    rec, tok = request.record, self.tokenizer
    out = []
    for t in range(start, min(end, len(request.token_ids))):

      def entry(token_id, logprob):
        raw = tok.token_bytes(int(token_id))
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": float(logprob), "bytes": list(raw)}

      item = entry(request.token_ids[t], rec["logprob"][t])
      item["top_logprobs"] = [
        entry(a, lp) for a, lp in zip(rec["top_ids"][t][: job.top_logprobs], rec["top_logprobs"][t][: job.top_logprobs])
      ]
      out.append(item)
    return out

  def _results(self, job: Job) -> list:
    """A GenerationResult per choice: its Completion and its own timings."""
    return [GenerationResult([row.completion], row_stats(row.request, self.pool, job.submitted)) for row in job.rows]

  def _loop(self):
    while True:
      try:  # wait for work when the pool is idle; otherwise take what arrived and go on
        if self.runner.idle:
          self.waiting = True
          jobs = [self._jobs.get()]
          self.progress, self.waiting = time.monotonic(), False
        else:
          jobs = []
        while True:
          jobs.append(self._jobs.get_nowait())
      except queue.Empty:
        pass
      if None in jobs:
        return
      try:
        for job in jobs:
          self._start(job)
        for job in list(self._running):
          if job.cancelled.is_set():
            for row in job.rows:
              self.runner.cancel(row)
        for event in self.runner.step():
          self._emit(event)
      except Exception as e:  # noqa: BLE001  (report to the clients; keep serving on a fresh pool)
        _LOG.exception("generation failed")
        for job in list(self._running):
          self._end(job, "error", e)
        self.runner = self._new_runner()
      self.progress = time.monotonic()
