"""A local chat server: an OpenAI-style ``/v1/chat/completions`` API and a one-page web chat.

    app = create_app(model, tokenizer)            # a Starlette app; serve it with uvicorn
    uvicorn.run(app, host="127.0.0.1", port=3000)

Routes (one method each of :class:`ChatServer`): ``GET /`` (the page), ``POST /v1/chat/completions``
(the shape vLLM and llama.cpp's server speak: messages, temperature, top_p, top_k, min_p,
repetition_penalty, max_tokens, seed, stream, ``chat_template_kwargs.enable_thinking``; the thinking
goes to ``reasoning_content``, the answer to ``content``; ``stream: true`` sends server-sent events
ending with a usage record and ``[DONE]``), ``GET /v1/models``, ``GET /health`` (503 when the
generation worker died or has work but made no progress for ``stall_seconds``).

Settings a request leaves out take the server's defaults, and those the checkpoint's
(:mod:`smollm3_jax.generation.defaults`). A request field the server does not implement is refused
with a 400 naming it, unless it is set to the value that means "off" (``n: 1``, ``logprobs: false``,
...) or is purely informational (``user``, ``metadata``): see :data:`APPLIED_FIELDS`,
:data:`INFORMATIONAL_FIELDS`, :data:`NEUTRAL_VALUES`. Each response echoes the settings applied
(``settings``), as given.

One model serves every request. Generation runs on a single worker thread over a slot pool: up to
``slots`` choices decode together, the rest wait in arrival order; each row keeps its own cache slot,
settings and seed, so each request gets exactly the text ``generate`` gives it alone. Special-token
text inside message contents (``<|im_start|>`` typed by a user) is encoded as text, never as the
template's control tokens (``split_special_tokens``): a client cannot forge turns. A client that disconnects cancels its request, queued or
running (a running one stops after its current chunk of ``chunk_steps`` tokens). Bad requests get a
4xx JSON error ``{"error": {"message", "type", "param", "code"}}`` before anything is queued; a body
over :data:`MAX_BODY_BYTES` (chunked or not) is refused as it arrives (413), one slower than
``body_timeout`` gets a 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.resources
import json
import logging
import math
import queue
import secrets
import threading
import time
import uuid
from typing import Any, AsyncIterator

import anyio

from smollm3_jax.utils.extras import needs

with needs("serve", "the server (smollm3_jax.serving.server)"):
  from starlette.applications import Starlette
  from starlette.concurrency import run_in_threadpool
  from starlette.exceptions import HTTPException
  from starlette.requests import ClientDisconnect, Request
  from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
  from starlette.routing import Route

from smollm3_jax.generation import sampling
from smollm3_jax.generation.engine import MAX_TOP_LOGPROBS, get_engine
from smollm3_jax.generation.engine import Request as RowRequest  # (starlette's Request is the HTTP one)
from smollm3_jax.generation.results import GenerationResult, row_stats
from smollm3_jax.generation.runner import Row, Runner
from smollm3_jax.generation.settings import check_limits, row_seeds
from smollm3_jax.generation.stop import check_stop, default_stop_ids
from smollm3_jax.text.prompts import render_chat
from smollm3_jax.text.thinking import ThinkingSplitter, prompt_opens_thinking
from smollm3_jax.utils.validation import check_messages

FINISH_REASONS = {"eos": "stop", "newlines": "stop", "max_tokens": "length", "context": "length",
                  "cancelled": "stop", "stop": "stop"}
MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT = 30.0    # seconds a request body may take to arrive (then 408)
STALL_SECONDS = 60.0   # a worker with work and no progress for longer is "stalled" in /health
_LOG = logging.getLogger("smollm3_jax.serving.server")


class RequestError(Exception):
  """A client error: becomes a 4xx JSON response."""

  def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
    super().__init__(message)
    self.message, self.param, self.code, self.status = message, param, code, status


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   kind: str | None = None) -> JSONResponse:
  kind = kind or ("invalid_request_error" if status < 500 else "server_error")
  return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                      status_code=status)


# --------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChatRequest:
  messages: list[dict]
  thinking: bool
  sampling: dict[str, float]
  max_tokens: int | None
  seed: int
  stream: bool
  include_usage: bool = True  # stream_options.include_usage (a usage record ends the stream)
  n: int = 1                  # choices (samples) for this request
  stop: tuple = ()            # stop strings
  logprobs: bool = False      # per-token log-probabilities in the response
  top_logprobs: int = 0       # alternatives per token (with logprobs)


# Request field of each sampling setting (OpenAI's and vLLM's names; min_tokens is vLLM's).
REQUEST_NAMES = {name: {"min_new_tokens": "min_tokens"}.get(name, name) for name in sampling.SETTINGS
                 if name != "logit_bias"}
# Bounds the API puts on settings beyond the library's own checks (OpenAI's ranges).
_API_BOUNDS = {"temperature": dict(low=0.0, high=2.0), "top_p": dict(low=0.0, high=1.0, low_open=True),
               "top_k": dict(low=-1), "min_p": dict(low=0.0, high=1.0),
               "repetition_penalty": dict(low=0.0, high=10.0, low_open=True)}

# What the server does with each field of a chat-completions request (OpenAI's, as the official
# client sends them, plus vLLM's extras). A null value is the same as leaving the field out.
APPLIED_FIELDS = frozenset({
    "messages", "model", "max_tokens", "max_completion_tokens", "seed", "stream", "stream_options",
    "chat_template_kwargs", "n", "stop", "logit_bias", "logprobs", "top_logprobs"}) | frozenset(REQUEST_NAMES.values())
# Accepted and without effect on the text: labels and hints for a hosted service's bookkeeping.
INFORMATIONAL_FIELDS = frozenset({"user", "metadata", "safety_identifier", "prompt_cache_key",
                                  "prompt_cache_retention", "prompt_cache_options"})
# Not implemented: accepted only at the value that means "off" (the same as leaving them out);
# any other value is refused with a 400 naming the field.
NEUTRAL_VALUES: dict[str, tuple] = {
    "tools": ([],), "functions": ([],),
    "tool_choice": ("none",), "function_call": ("none",), "parallel_tool_calls": (),
    "response_format": ({"type": "text"},), "store": (False,), "modalities": (["text"],), "audio": (),
    "prediction": (), "reasoning_effort": (), "service_tier": (), "verbosity": (), "web_search_options": (),
    "moderation": ()}
MAX_N = 16  # choices per request


def _shown(value: Any, limit: int = 80) -> str:
  """``value`` as JSON for an error message, cut to about ``limit`` characters (a client may send megabytes)."""
  try:
    text = json.dumps(value)
  except (TypeError, ValueError, RecursionError):
    text = type(value).__name__
  return text if len(text) <= limit else text[:limit] + "..."


def _name(key: str, limit: int = 80) -> str:
  """A field name for an error message and ``param``, cut to ``limit`` characters."""
  return key if len(key) <= limit else key[:limit] + "..."


def _clip(message: str, limit: int = 300) -> str:
  """A library's error message, cut for a response (its repr of a huge value would be echoed whole)."""
  return message if len(message) <= limit else message[:limit] + "..."


def _lone_surrogate(body: Any) -> tuple[str, bool] | None:
  """(path, is a key) of the first string or key of ``body`` holding a lone surrogate (JSON's unpaired
  ``\\ud800``-``\\udfff`` escapes; path e.g. ``messages[0].content``), else None. Such text is not
  Unicode: encoding it later (the tokenizer, a response or log line echoing it) would fail."""
  escaped = lambda k: k.encode("utf-8", "backslashreplace").decode("utf-8")
  bad = lambda s: not s.isascii() and not _encodes(s)
  stack = [(body, "")]  # (an explicit stack: a deeply nested body must not exhaust the recursion limit)
  while stack:
    value, path = stack.pop()
    if isinstance(value, str):
      if bad(value):
        return path, False
    elif isinstance(value, dict):
      items = []
      for key, item in value.items():
        at = f"{path}.{escaped(key)}" if path else escaped(key)
        if bad(key):
          return at, True
        items.append((item, at))
      stack.extend(reversed(items))
    elif isinstance(value, list):
      stack.extend(reversed([(item, f"{path}[{i}]") for i, item in enumerate(value)]))
  return None


def _encodes(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def _number(body: dict, name: str, default, *, low=None, high=None, low_open=False, integer=False):
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {_shown(value)}",
                       param=name)
  if isinstance(value, float):  # (a JSON integer stays a Python int of any size: never float() it)
    if not math.isfinite(value):
      raise RequestError(f"'{name}' must be finite", param=name)
    if integer and not value.is_integer():
      raise RequestError(f"'{name}' must be an integer, got {value}", param=name)
  if low is not None and (value <= low if low_open else value < low):
    raise RequestError(f"'{name}' must be {'>' if low_open else '>='} {low}, got {value}", param=name)
  if high is not None and value > high:
    raise RequestError(f"'{name}' must be <= {high}, got {value}", param=name)
  if isinstance(value, int) and not _fits_float(value):  # (the settings' checks convert to float64)
    raise RequestError(f"'{name}' is out of range (a number of {len(str(value))} digits)", param=name)
  return int(value) if integer else value


def _fits_float(value: int) -> bool:
  try:
    float(value)
    return True
  except OverflowError:
    return False


def _same(value: Any, off: Any) -> bool:
  """JSON equality that keeps booleans apart from numbers (0 == false in Python, not in JSON)."""
  if isinstance(off, bool) or isinstance(value, bool):
    return value is off
  return value == off


def _check_fields(body: dict) -> None:
  """Refuses every field the server would otherwise ignore (unknown, or not implemented and not off)."""
  for name, value in body.items():
    if value is None or name in APPLIED_FIELDS or name in INFORMATIONAL_FIELDS:
      continue
    if name not in NEUTRAL_VALUES:
      raise RequestError(f"unknown field '{_name(name)}': this server does not implement it", param=_name(name))
    if not any(_same(value, off) for off in NEUTRAL_VALUES[name]):
      raise RequestError(f"'{name}' is not supported by this server", param=name)


def _object(body: dict, name: str, keys: dict) -> dict:
  """An optional object field whose keys must all be known (``keys``: key -> its check)."""
  value = body.get(name)
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise RequestError(f"'{name}' must be an object", param=name)
  for key, item in value.items():
    if key not in keys:
      raise RequestError(f"'{name}.{_name(key)}' is not supported by this server (known: {', '.join(keys)})",
                         param=f"{name}.{_name(key)}")
    if item is not None and not keys[key](item):
      raise RequestError(f"'{name}.{key}' must be true or false", param=f"{name}.{key}")
  return {k: v for k, v in value.items() if v is not None}


def parse_request(body: Any, defaults: dict, model_name: str | None = None,
                  vocab_size: int | None = None) -> ChatRequest:
  """Validates a chat-completions body (before any work); RequestError names the bad field.
  ``defaults``: the values of unset settings; ``model_name``: the one model served (another
  ``model`` gets a 404); ``vocab_size``: bounds ``logit_bias`` ids."""
  if not isinstance(body, dict):
    raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
  found = _lone_surrogate(body)
  if found is not None:
    path, is_key = found
    raise RequestError(f"{'the field name ' if is_key else ''}'{path}' holds a lone surrogate (an unpaired "
                       "\\ud800-\\udfff escape): it is not Unicode text; send valid UTF-8", param=path)
  if "messages" not in body:
    raise RequestError("'messages' is required", param="messages")
  try:
    messages = check_messages(body["messages"])
  except ValueError as e:
    raise RequestError(_clip(str(e)), param="messages") from None
  _check_fields(body)
  model = body.get("model")
  if model is not None and not isinstance(model, str):
    raise RequestError(f"'model' must be a string, got {_shown(model)}", param="model")
  if model is not None and model_name is not None and model != model_name:
    raise RequestError(f"the model {_shown(model)} does not exist; this server serves {json.dumps(model_name)}",
                       param="model", code="model_not_found", status=404)

  stream = body.get("stream", False)
  if stream is None:
    stream = False
  if not isinstance(stream, bool):
    raise RequestError("'stream' must be true or false", param="stream")
  is_bool = lambda v: isinstance(v, bool)
  options = _object(body, "stream_options", {"include_usage": is_bool})
  if options and not stream:
    raise RequestError("'stream_options' is only allowed with 'stream': true", param="stream_options")
  kwargs = _object(body, "chat_template_kwargs", {"enable_thinking": is_bool})
  thinking = kwargs.get("enable_thinking", defaults["thinking"])

  settings = {}
  for name, field in REQUEST_NAMES.items():
    spec = sampling.SETTINGS[name]
    value = _number(body, field, defaults.get(name, spec.off), integer=spec.integer, **_API_BOUNDS.get(name, {}))
    if name == "top_k":
      value = max(value, 0)  # vLLM's -1 means off, as our 0 does
    try:
      sampling.validate_sampling_args(**{name: value})
    except ValueError as e:
      raise RequestError(str(e), param=field) from None
    if name in defaults or value != spec.off:
      settings[name] = value
  bias = body.get("logit_bias")
  if bias is not None and not isinstance(bias, dict):  # ([], 0 or "" are no "off": refused, not ignored)
    raise RequestError("'logit_bias' must be an object mapping token ids to biases", param="logit_bias")
  if bias:
    parsed = {}
    for key, value in bias.items():
      try:
        token = int(key)
      except ValueError:
        raise RequestError(f"'logit_bias' keys must be token ids, got {_shown(key)}", param="logit_bias") from None
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
        raise RequestError(f"'logit_bias' values must be numbers in [-100, 100], got {_shown(value)}",
                           param="logit_bias")
      parsed[token] = float(value)
    try:
      sampling.validate_sampling_args(logit_bias=parsed, vocab_size=vocab_size)
    except ValueError as e:
      raise RequestError(str(e), param="logit_bias") from None
    settings["logit_bias"] = parsed
  n = _number(body, "n", 1, low=1, high=MAX_N, integer=True)
  logprobs = body.get("logprobs")
  if logprobs is not None and not isinstance(logprobs, bool):
    raise RequestError(f"'logprobs' must be true or false, got {_shown(logprobs)}", param="logprobs")
  top_logprobs = _number(body, "top_logprobs", 0, low=0, high=MAX_TOP_LOGPROBS, integer=True)
  if top_logprobs and not logprobs:
    raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
  stop = body.get("stop")
  try:

    stop = check_stop(stop if stop != "" else None)
  except ValueError as e:
    raise RequestError(_clip(str(e)), param="stop") from None

  max_tokens = _number(body, "max_tokens", None, low=1, integer=True)
  max_completion = _number(body, "max_completion_tokens", None, low=1, integer=True)
  if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
    raise RequestError(f"'max_tokens' ({max_tokens}) and 'max_completion_tokens' ({max_completion}) differ; "
                       "send one of them", param="max_completion_tokens")
  max_tokens = max_completion if max_completion is not None else max_tokens
  seed = _number(body, "seed", None, low=0, high=2 ** 32 - 1, integer=True)
  if seed is None:
    seed = defaults["seed"] if defaults["seed"] is not None else secrets.randbits(32)
  return ChatRequest(messages=messages, thinking=thinking, sampling=settings, max_tokens=max_tokens,
                     seed=seed, stream=stream, include_usage=options.get("include_usage", True), n=n, stop=stop,
                     logprobs=bool(logprobs), top_logprobs=top_logprobs)


# --------------------------------------------------------------------------------------------
# The generation worker: one thread driving the slot pool that every request shares
# --------------------------------------------------------------------------------------------
class Job:
  """One request's generation (``n`` choices, each a row of the pool). Events go to ``events`` (an
  asyncio queue on the server's loop): ("text", (choice, str, logprob entries)) pieces, then ("done", [a
  GenerationResult per choice]) or ("error", Exception) or ("cancelled", None)."""

  def __init__(self, loop: asyncio.AbstractEventLoop, prompt_text: str, prompt_ids: list[int], *, settings: dict,
               max_new: int, seed: int, n: int = 1, stop: tuple = (), logprobs: bool = False, top_logprobs: int = 0):
    self.loop = loop
    self.prompt_text, self.prompt_ids = prompt_text, prompt_ids
    self.settings, self.max_new, self.seed, self.n, self.stop = settings, max_new, seed, n, stop
    self.logprobs, self.top_logprobs = logprobs, top_logprobs
    self.events: asyncio.Queue = asyncio.Queue()
    self.cancelled = threading.Event()
    self.rows: list = []         # the pool's Requests (set by the worker)
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
    self._pool_args = dict(slots=slots, length=self.engine.cache_length_for(context_length),
                           stop_ids=default_stop_ids(tokenizer, model.config), context_length=context_length, chunk_steps=chunk_steps)
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
    pool = self.engine.pool(a["slots"], a["length"], stop_ids=a["stop_ids"], context_length=a["context_length"],
                            chunk_steps=a["chunk_steps"], prefill_rows=(1,), logprobs=True,
                            top_logprobs=MAX_TOP_LOGPROBS)
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
    job.rows = [Row(RowRequest(prompt=job.prompt_ids, settings=job.settings, seed=int(seeds[i]), max_new=job.max_new,
                            share=id(job), logprobs=job.logprobs),
                    prompt_text=job.prompt_text, stop=job.stop, tag=(job, i)) for i in range(job.n)]
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
    entries = (self._logprob_entries(job, event.row.request, event.start, event.start + len(event.token_ids))
               if job.logprobs else None)
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
      item["top_logprobs"] = [entry(a, lp) for a, lp in zip(rec["top_ids"][t][:job.top_logprobs],
                                                            rec["top_logprobs"][t][:job.top_logprobs])]
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


def warmup(app: Starlette) -> float:
  """Compiles every program the server's slot pool can run (prefill, insert, each decode window),
  so no request waits for a compile. Runs on the caller's thread, before serving; returns seconds."""
  return app.state.server.worker.warmup()


class _DisconnectAwareStream(StreamingResponse):
  """Streams and, whatever ASGI spec version the server reports, watches for the client leaving:
  then the body iterator is cancelled (its ``finally`` cancels the generation)."""

  async def __call__(self, scope, receive, send):
    async with anyio.create_task_group() as tg:

      async def run_body():
        with contextlib.suppress(OSError):
          await self.stream_response(send)
        tg.cancel_scope.cancel()

      async def watch():
        await self.listen_for_disconnect(receive)
        tg.cancel_scope.cancel()

      tg.start_soon(run_body)
      tg.start_soon(watch)


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def _client(request: Request) -> str:
  """The client's "host:port" for log lines ("?" when unknown)."""
  client = request.client
  return f"{client.host}:{client.port}" if client else "?"


def _sse(data: Any) -> bytes:
  text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
  return f"data: {text}\n\n".encode("utf-8")


def _timings(job: Job, results) -> dict:
  """llama.cpp-style timings of a finished job's first choice (milliseconds, tokens, tokens per second)."""
  st = results[0].stats
  return dict(queue_ms=1000 * ((job.started or job.submitted) - job.submitted),
              prompt_n=st.prompt_tokens, prompt_ms=1000 * st.prefill_seconds,
              time_to_first_token_ms=1000 * st.time_to_first_token,
              compile_ms=1000 * st.compile_seconds,
              predicted_n=st.generated_tokens, predicted_ms=1000 * st.decode_seconds,
              predicted_per_second=st.decode_tokens_per_second)


def _usage(results) -> dict:
  p, c = results[0].stats.prompt_tokens, sum(r.stats.generated_tokens for r in results)
  return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _finish_reason(job: Job, result) -> str:
  if job.cancelled.is_set():
    return "stop"
  return FINISH_REASONS.get(result.completions[0].stop_reason, "stop")


class ChatServer:
  """One model behind the routes: one method per route, and the owner of the generation worker
  (started on the first request) and its queue. ``create_app`` builds it and its Starlette app."""

  def __init__(self, model, tokenizer, *, model_name: str, defaults: dict, context_length: int,
               chunk_steps: int, slots: int, date=None, body_timeout: float = BODY_TIMEOUT,
               stall_seconds: float = STALL_SECONDS, api_key: str | None = None):
    self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
    self.api_key = api_key
    self.defaults, self.context_length, self.chunk_steps, self.date = defaults, context_length, chunk_steps, date
    self.slots, self.body_timeout, self.stall_seconds = slots, body_timeout, stall_seconds
    self._worker: Worker | None = None
    self.app = Starlette(
        routes=[
            Route("/", self.index, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
        ],
        exception_handlers={HTTPException: self.http_error, Exception: self.server_error},
        lifespan=self.lifespan)
    self.app.state.server = self
    self.app.state.worker = None  # set when the worker starts (tests read its history)

  # ---- the worker -----------------------------------------------------------------------------
  @property
  def worker(self) -> Worker:
    if self._worker is None:
      self._worker = Worker(self.model, self.tokenizer, chunk_steps=self.chunk_steps, slots=self.slots,
                            context_length=self.context_length)
      self.app.state.worker = self._worker
    return self._worker

  @contextlib.asynccontextmanager
  async def lifespan(self, app):
    yield
    if self._worker is not None:
      self._worker.stop()

  # ---- request -> job ------------------------------------------------------------------------
  def prepare(self, req: ChatRequest) -> tuple[str, list[int], int]:
    """(prompt text, prompt ids, token budget) of a request; RequestError when it does not fit."""
    context = self.context_length
    try:
      text, ids = render_chat(self.tokenizer, req.messages, req.thinking, self.date, split_special_tokens=True)
    except Exception as e:  # a template may reject a conversation (e.g. role order)
      raise RequestError(f"the chat template could not render these messages: {e}", param="messages")
    if len(ids) >= context:
      raise RequestError(f"the prompt has {len(ids)} tokens, but the context is {context} tokens (it needs "
                         "room for at least one new token); shorten the messages",
                         param="messages", code="context_length_exceeded")
    room = context - len(ids)
    if req.max_tokens is None:
      max_new = min(self.defaults["max_tokens"], room)
    elif req.max_tokens > room:
      raise RequestError(f"max_tokens={req.max_tokens} is too large: the prompt has {len(ids)} tokens and the "
                         f"context is {context}, so at most {room} new tokens fit",
                         param="max_tokens", code="context_length_exceeded")
    else:
      max_new = req.max_tokens
    return text, ids, max_new

  async def _read_json(self, request: Request) -> Any:
    """The JSON body, read with its limits enforced as it arrives: a body without Content-Length
    (chunked) or longer than it says stops at MAX_BODY_BYTES (413) before it is held whole, and a
    body still incomplete after ``body_timeout`` seconds gets a 408 (a slow client holds no
    connection for ever)."""
    limit = MAX_BODY_BYTES
    length = request.headers.get("content-length") or "0"
    if length.isdigit() and int(length) > limit:
      raise RequestError(f"the request body is {length} bytes; the limit is {limit}", status=413)
    chunks, size = [], 0
    try:
      with anyio.fail_after(self.body_timeout):
        async for chunk in request.stream():
          size += len(chunk)
          if size > limit:
            raise RequestError(f"the request body is over the limit of {limit} bytes", status=413)
          chunks.append(chunk)
    except TimeoutError:
      raise RequestError(f"the request body did not arrive within {self.body_timeout:g} seconds", status=408,
                         code="request_timeout") from None
    raw = b"".join(chunks)
    try:
      return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise RequestError(f"the request body is not valid JSON: {e}") from None
    except ValueError:  # an integer past Python's int-string digit limit (4300): not a JSON syntax error
      raise RequestError("the request body holds an integer with too many digits to read") from None
    except RecursionError:
      raise RequestError("the request body is nested too deeply") from None

  # ---- routes -------------------------------------------------------------------------------
  async def index(self, request: Request) -> Response:
    page = importlib.resources.files("smollm3_jax").joinpath("serving/static/index.html").read_text("utf-8")
    config = dict(model=self.model_name, context_length=self.context_length, **self.defaults)
    page = page.replace("/*SERVER_CONFIG*/null", json.dumps(config).replace("</", "<\\/"))
    return HTMLResponse(page)

  async def health(self, request: Request) -> Response:
    """ok (200), or 503 when the worker cannot serve: its thread died ("dead"), or it has work and
    made no progress for more than ``stall_seconds`` ("stalled", with the seconds since progress)."""
    w = self._worker
    out = {"status": "ok", "model": self.model_name, "pending": w.pending() if w else 0}
    if w is not None and not w.alive:
      out["status"] = "dead"
      out["error"] = "the generation worker stopped"
    elif w is not None and w.stalled_for() > self.stall_seconds:
      out["status"] = "stalled"
      out["seconds_since_progress"] = round(w.stalled_for(), 3)
    return JSONResponse(out, status_code=200 if out["status"] == "ok" else 503)

  def _refused_key(self, request: Request) -> Response | None:
    """A 401 when the server has an API key and the request does not carry it (``Authorization:
    Bearer <key>``, as OpenAI's clients send it), else None."""
    if self.api_key is None:
      return None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
      return None
    _LOG.warning("refused a request from %s with 401: no valid API key", _client(request))
    return error_response(401, "a valid API key is required (header 'Authorization: Bearer <key>')",
                          code="invalid_api_key")

  async def models(self, request: Request) -> Response:
    if (refused := self._refused_key(request)) is not None:
      return refused
    return JSONResponse({"object": "list", "data": [
        {"id": self.model_name, "object": "model", "created": 0, "owned_by": "smollm3-jax",
         "max_model_len": self.context_length}]})

  async def chat_completions(self, request: Request) -> Response:
    if (refused := self._refused_key(request)) is not None:
      return refused
    try:
      body = await self._read_json(request)
      try:
        req = parse_request(body, self.defaults, self.model_name, self.model.config.vocab_size)
      except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
      prompt_text, ids, max_new = await run_in_threadpool(self.prepare, req)
    except RequestError as e:
      # Its traceback's frames hold the body and the prompt's tokens, and through the thread pool they form a
      # reference cycle: without this, each refused 4 MB prompt stays until the garbage collector runs.
      e.__traceback__ = e.__context__ = None
      _LOG.warning("refused a request from %s with %d: %s", _client(request), e.status, e.message)
      return error_response(e.status, e.message, param=e.param, code=e.code)
    except ClientDisconnect:
      _LOG.warning("client %s disconnected while sending its request", _client(request))
      return Response(status_code=499)

    settings = {REQUEST_NAMES.get(k, k): v for k, v in req.sampling.items()}  # echoed under the request's names
    settings.update(max_tokens=max_new, seed=req.seed, thinking=req.thinking)
    if req.n > 1:
      settings["n"] = req.n
    if req.stop:
      settings["stop"] = list(req.stop)
    if req.logprobs:
      settings.update(logprobs=True, top_logprobs=req.top_logprobs)
    if not self.worker.alive:  # nothing would ever answer the job
      return error_response(503, "the generation worker stopped; restart the server")
    job = Job(asyncio.get_running_loop(), prompt_text, ids, settings=req.sampling, max_new=max_new, seed=req.seed,
              n=req.n, stop=req.stop, logprobs=req.logprobs, top_logprobs=req.top_logprobs)
    self.worker.submit(job)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    inside = prompt_opens_thinking(prompt_text)
    if req.stream:
      events = self._stream_events(job, rid, created, inside, settings, req.include_usage)
      return _DisconnectAwareStream(events, media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await self._complete(request, job, rid, created, inside, settings)

  async def _complete(self, request: Request, job: Job, rid: str, created: int, inside: bool,
                      settings: dict) -> Response:
    pieces: list[list[str]] = [[] for _ in range(job.n)]
    entries: list[list[dict]] = [[] for _ in range(job.n)]

    async def consume():
      while True:
        kind, value = await job.events.get()
        if kind == "text":
          pieces[value[0]].append(value[1])
          entries[value[0]].extend(value[2] or [])
        else:
          return kind, value

    async def disconnected():
      while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
          return

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(disconnected())
    try:
      await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
      if not consumer.done():  # the client left (or the server is stopping)
        job.cancel()
        consumer.cancel()
      watcher.cancel()
    if consumer.cancelled():
      return Response(status_code=499)
    kind, value = consumer.result()
    if kind == "error":
      return error_response(500, f"generation failed: {type(value).__name__}: {value}")
    if kind == "cancelled":
      return Response(status_code=499)
    choices = []
    for i, result in enumerate(value):
      thinking, answer = ThinkingSplitter.split("".join(pieces[i]), inside=inside)
      message = {"role": "assistant", "content": answer}
      if thinking:
        message["reasoning_content"] = thinking
      choices.append({"index": i, "message": message, "finish_reason": _finish_reason(job, result),
                      "logprobs": {"content": entries[i]} if job.logprobs else None})
    return JSONResponse({
        "id": rid, "object": "chat.completion", "created": created, "model": self.model_name,
        "choices": choices, "usage": _usage(value), "timings": _timings(job, value), "settings": settings})

  async def _stream_events(self, job: Job, rid: str, created: int, inside: bool, settings: dict,
                           include_usage: bool) -> AsyncIterator[bytes]:
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name}

    pending: list[list[dict]] = [[] for _ in range(job.n)]  # log-prob entries not sent yet

    def chunk(delta: dict, finish: str | None = None, index: int = 0, **extra) -> bytes:
      choice = {"index": index, "delta": delta, "finish_reason": finish}
      if job.logprobs and (pending[index] or finish):
        choice["logprobs"] = {"content": pending[index]}
        pending[index] = []
      return _sse({**head, "choices": [choice], **extra})

    def deltas(parts, index):
      for kind, text in parts:
        yield chunk({"reasoning_content" if kind == "thinking" else "content": text}, index=index)

    splitters = [ThinkingSplitter(inside=inside) for _ in range(job.n)]
    try:
      for i in range(job.n):
        yield chunk({"role": "assistant", "content": ""}, index=i)
      while True:
        kind, value = await job.events.get()
        if kind == "text":
          i, text, entries = value
          pending[i].extend(entries or [])
          for event in deltas(splitters[i].feed(text), i):
            yield event
        elif kind == "done":
          for i, result in enumerate(value):
            for event in deltas(splitters[i].finish(), i):
              yield event
            yield chunk({}, _finish_reason(job, result), index=i, settings=settings)
          if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(value), "timings": _timings(job, value)})
          yield _sse("[DONE]")
          return
        elif kind == "error":
          yield _sse({"error": {"message": f"generation failed: {type(value).__name__}: {value}",
                                "type": "server_error", "param": None, "code": None}})
          yield _sse("[DONE]")
          return
        else:  # cancelled before it started
          return
    finally:
      job.cancel()  # a no-op when the job finished; otherwise the client left

  # ---- errors -------------------------------------------------------------------------------
  async def http_error(self, request: Request, exc: HTTPException) -> Response:
    return error_response(exc.status_code, exc.detail or "error",
                          kind="not_found_error" if exc.status_code == 404 else None)

  async def server_error(self, request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(model, tokenizer, *, model_name: str = "smollm3-jax", temperature: float | None = None,
               top_p: float | None = None, top_k: int | None = None, min_p: float | None = None,
               repetition_penalty: float | None = None, max_tokens: int | None = None,
               thinking: bool | None = None, seed: int | None = None, context_length: int | None = None,
               chunk_steps: int = 4, slots: int = 8, date=None, body_timeout: float = BODY_TIMEOUT,
               stall_seconds: float = STALL_SECONDS, api_key: str | None = None) -> Starlette:
  """The Starlette app serving ``model``. Keyword arguments are the defaults for requests that leave
  a setting out; None takes the checkpoint's (:mod:`smollm3_jax.generation.defaults`; ``seed=None``:
  a fresh random seed per request). ``context_length`` (default: the model's) bounds prompt +
  answer; ``chunk_steps`` decode steps run between streamed pieces; ``slots``: requests (choices)
  decoding at once, the rest wait for a free slot; ``date`` is the day the chat template sees (None:
  the day of each request); ``body_timeout``: seconds a request body may take to arrive (then 408);
  ``stall_seconds``: how long the worker may have work without progress before ``/health`` says
  "stalled" (503); ``api_key``: when set, ``/v1/*`` requests must send ``Authorization: Bearer
  <api_key>`` (else 401; ``/`` and ``/health`` stay open)."""
  from smollm3_jax.text import chat_format
  from smollm3_jax.generation import defaults as generation_defaults
  from smollm3_jax.utils import validation

  filled = generation_defaults.for_tokenizer(tokenizer).fill(
      temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty,
      max_new_tokens=max_tokens, thinking=thinking)
  max_tokens = filled.pop("max_new_tokens")
  thinking = validation.as_bool("thinking", filled.pop("thinking"))
  context = check_limits(model, context_length=context_length, max_new_tokens=max_tokens, chunk_steps=chunk_steps,
                         max_name="max_tokens", **filled)
  if seed is not None:
    seed = validation.as_count("seed", seed, low=0, high=validation.UINT32_MAX)
  if date is not None:
    chat_format.resolve_date(date)  # a malformed date fails now, not at the first request
  defaults = dict(filled, max_tokens=int(max_tokens), thinking=thinking, seed=seed)
  slots = validation.as_count("slots", slots, low=1)
  for name, value in (("body_timeout", body_timeout), ("stall_seconds", stall_seconds)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
      raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
  if api_key is not None and (not isinstance(api_key, str) or not api_key.strip() or api_key != api_key.strip()):
    raise ValueError("api_key must be a non-empty string without surrounding whitespace")
  return ChatServer(model, tokenizer, model_name=model_name, defaults=defaults, context_length=context,
                    chunk_steps=int(chunk_steps), slots=slots, date=date, body_timeout=float(body_timeout),
                    stall_seconds=float(stall_seconds), api_key=api_key).app


# --------------------------------------------------------------------------------------------
# Running in the background (notebooks, tests)
# --------------------------------------------------------------------------------------------
class BackgroundServer:
  """uvicorn serving ``app`` on a daemon thread: ``.url``, ``.stop()``; a context manager."""

  def __init__(self, app: Starlette, *, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
               access_log: bool = False, start_timeout: float = 30.0):
    import socket

    import uvicorn

    self.app = app
    self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self._socket.bind((host, port))  # port 0: a free port
    self.host, self.port = self._socket.getsockname()[:2]
    self.url = f"http://{self.host}:{self.port}"
    self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on"))
    self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                    name="smollm3-uvicorn", daemon=True)
    self._thread.start()
    deadline = time.monotonic() + start_timeout
    while not self._server.started:
      if not self._thread.is_alive() or time.monotonic() > deadline:
        raise RuntimeError(f"the server on {self.url} did not start")
      time.sleep(0.02)

  def stop(self, timeout: float = 10.0):
    self._server.should_exit = True
    self._thread.join(timeout)
    self._socket.close()

  def __enter__(self) -> "BackgroundServer":
    return self

  def __exit__(self, *exc):
    self.stop()
    return False
