"""The app of the local chat server: an OpenAI-style ``/v1/chat/completions`` API and a one-page web
chat (Starlette). The request protocol is :mod:`smollm3_jax.serving.protocol`, the generation thread
:mod:`smollm3_jax.serving.worker`; this module holds the routes and :class:`BackgroundServer`.

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
with a 400 naming it (:mod:`smollm3_jax.serving.protocol`). Each response echoes the settings
applied (``settings``), as given.

One model serves every request. Generation runs on a single worker thread over a slot pool: up to
``slots`` choices decode together, the rest wait in arrival order; each row keeps its own cache slot,
settings and seed, so each request gets exactly the text ``generate`` gives it alone. Special-token
text inside message contents (``<|im_start|>`` typed by a user) is encoded as text, never as the
template's control tokens (``split_special_tokens``): a client cannot forge turns. A client that
disconnects cancels its request, queued or running (a running one stops after its current chunk of ``chunk_steps`` tokens). Bad requests get a
4xx JSON error ``{"error": {"message", "type", "param", "code"}}`` before anything is queued; a body
over :data:`MAX_BODY_BYTES` (chunked or not) is refused as it arrives (413), one slower than
``body_timeout`` gets a 408.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import logging
import math
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

from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.generation.settings import check_limits
from smollm3_jax.serving.protocol import FINISH_REASONS, REQUEST_NAMES, ChatRequest, RequestError, parse_request
from smollm3_jax.serving.worker import Job, Worker
from smollm3_jax.text import chat_format
from smollm3_jax.text.prompts import render_chat
from smollm3_jax.text.thinking import ThinkingSplitter, prompt_opens_thinking
from smollm3_jax.utils import validation

MAX_BODY_BYTES = 16 * 1024 * 1024
BODY_TIMEOUT = 30.0  # seconds a request body may take to arrive (then 408)
STALL_SECONDS = 60.0  # a worker with work and no progress for longer is "stalled" in /health
_LOG = logging.getLogger("smollm3_jax.serving.server")


def error_response(
  status: int, message: str, *, param: str | None = None, code: str | None = None, kind: str | None = None
) -> JSONResponse:
  kind = kind or ("invalid_request_error" if status < 500 else "server_error")
  return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


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
  return dict(
    queue_ms=1000 * ((job.started or job.submitted) - job.submitted),
    prompt_n=st.prompt_tokens,
    prompt_ms=1000 * st.prefill_seconds,
    time_to_first_token_ms=1000 * st.time_to_first_token,
    compile_ms=1000 * st.compile_seconds,
    predicted_n=st.generated_tokens,
    predicted_ms=1000 * st.decode_seconds,
    predicted_per_second=st.decode_tokens_per_second,
  )


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

  def __init__(
    self,
    model,
    tokenizer,
    *,
    model_name: str,
    defaults: dict,
    context_length: int,
    chunk_steps: int,
    slots: int,
    date=None,
    body_timeout: float = BODY_TIMEOUT,
    stall_seconds: float = STALL_SECONDS,
    api_key: str | None = None,
  ):
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
      lifespan=self.lifespan,
    )
    self.app.state.server = self
    self.app.state.worker = None  # set when the worker starts (tests read its history)

  # ---- the worker -----------------------------------------------------------------------------
  @property
  def worker(self) -> Worker:
    if self._worker is None:
      self._worker = Worker(
        self.model, self.tokenizer, chunk_steps=self.chunk_steps, slots=self.slots, context_length=self.context_length
      )
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
      raise RequestError(
        f"the prompt has {len(ids)} tokens, but the context is {context} tokens (it needs "
        "room for at least one new token); shorten the messages",
        param="messages",
        code="context_length_exceeded",
      )
    room = context - len(ids)
    if req.max_tokens is None:
      max_new = min(self.defaults["max_tokens"], room)
    elif req.max_tokens > room:
      raise RequestError(
        f"max_tokens={req.max_tokens} is too large: the prompt has {len(ids)} tokens and the "
        f"context is {context}, so at most {room} new tokens fit",
        param="max_tokens",
        code="context_length_exceeded",
      )
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
      raise RequestError(
        f"the request body did not arrive within {self.body_timeout:g} seconds", status=408, code="request_timeout"
      ) from None
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
    return error_response(
      401, "a valid API key is required (header 'Authorization: Bearer <key>')", code="invalid_api_key"
    )

  async def models(self, request: Request) -> Response:
    if (refused := self._refused_key(request)) is not None:
      return refused
    return JSONResponse(
      {
        "object": "list",
        "data": [
          {
            "id": self.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "smollm3-jax",
            "max_model_len": self.context_length,
          }
        ],
      }
    )

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
    job = Job(
      asyncio.get_running_loop(),
      prompt_text,
      ids,
      settings=req.sampling,
      max_new=max_new,
      seed=req.seed,
      n=req.n,
      stop=req.stop,
      logprobs=req.logprobs,
      top_logprobs=req.top_logprobs,
    )
    self.worker.submit(job)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    inside = prompt_opens_thinking(prompt_text)
    if req.stream:
      events = self._stream_events(job, rid, created, inside, settings, req.include_usage)
      return _DisconnectAwareStream(
        events, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
      )
    return await self._complete(request, job, rid, created, inside, settings)

  async def _complete(
    self, request: Request, job: Job, rid: str, created: int, inside: bool, settings: dict
  ) -> Response:
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
      choices.append(
        {
          "index": i,
          "message": message,
          "finish_reason": _finish_reason(job, result),
          "logprobs": {"content": entries[i]} if job.logprobs else None,
        }
      )
    return JSONResponse(
      {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": self.model_name,
        "choices": choices,
        "usage": _usage(value),
        "timings": _timings(job, value),
        "settings": settings,
      }
    )

  async def _stream_events(
    self, job: Job, rid: str, created: int, inside: bool, settings: dict, include_usage: bool
  ) -> AsyncIterator[bytes]:
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
          yield _sse(
            {
              "error": {
                "message": f"generation failed: {type(value).__name__}: {value}",
                "type": "server_error",
                "param": None,
                "code": None,
              }
            }
          )
          yield _sse("[DONE]")
          return
        else:  # cancelled before it started
          return
    finally:
      job.cancel()  # a no-op when the job finished; otherwise the client left

  # ---- errors -------------------------------------------------------------------------------
  async def http_error(self, request: Request, exc: HTTPException) -> Response:
    return error_response(
      exc.status_code, exc.detail or "error", kind="not_found_error" if exc.status_code == 404 else None
    )

  async def server_error(self, request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error: {type(exc).__name__}: {exc}")


def create_app(
  model,
  tokenizer,
  *,
  model_name: str = "smollm3-jax",
  temperature: float | None = None,
  top_p: float | None = None,
  top_k: int | None = None,
  min_p: float | None = None,
  repetition_penalty: float | None = None,
  max_tokens: int | None = None,
  thinking: bool | None = None,
  seed: int | None = None,
  context_length: int | None = None,
  chunk_steps: int = 4,
  slots: int = 8,
  date=None,
  body_timeout: float = BODY_TIMEOUT,
  stall_seconds: float = STALL_SECONDS,
  api_key: str | None = None,
) -> Starlette:
  """The Starlette app serving ``model``. Keyword arguments are the defaults for requests that leave
  a setting out; None takes the checkpoint's (:mod:`smollm3_jax.generation.defaults`; ``seed=None``:
  a fresh random seed per request). ``context_length`` (default: the model's) bounds prompt +
  answer; ``chunk_steps`` decode steps run between streamed pieces; ``slots``: requests (choices)
  decoding at once, the rest wait for a free slot; ``date`` is the day the chat template sees (None:
  the day of each request); ``body_timeout``: seconds a request body may take to arrive (then 408);
  ``stall_seconds``: how long the worker may have work without progress before ``/health`` says
  "stalled" (503); ``api_key``: when set, ``/v1/*`` requests must send ``Authorization: Bearer
  <api_key>`` (else 401; ``/`` and ``/health`` stay open)."""
  filled = generation_defaults.for_tokenizer(tokenizer).fill(
    temperature=temperature,
    top_p=top_p,
    top_k=top_k,
    min_p=min_p,
    repetition_penalty=repetition_penalty,
    max_new_tokens=max_tokens,
    thinking=thinking,
  )
  max_tokens = filled.pop("max_new_tokens")
  thinking = validation.as_bool("thinking", filled.pop("thinking"))
  context = check_limits(
    model,
    context_length=context_length,
    max_new_tokens=max_tokens,
    chunk_steps=chunk_steps,
    max_name="max_tokens",
    **filled,
  )
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
  return ChatServer(
    model,
    tokenizer,
    model_name=model_name,
    defaults=defaults,
    context_length=context,
    chunk_steps=int(chunk_steps),
    slots=slots,
    date=date,
    body_timeout=float(body_timeout),
    stall_seconds=float(stall_seconds),
    api_key=api_key,
  ).app


# --------------------------------------------------------------------------------------------
# Running in the background (notebooks, tests)
# --------------------------------------------------------------------------------------------
class BackgroundServer:
  """uvicorn serving ``app`` on a daemon thread: ``.url``, ``.stop()``; a context manager."""

  def __init__(
    self,
    app: Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
    access_log: bool = False,
    start_timeout: float = 30.0,
  ):
    import socket

    import uvicorn

    self.app = app
    self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    self._socket.bind((host, port))  # port 0: a free port
    self.host, self.port = self._socket.getsockname()[:2]
    self.url = f"http://{self.host}:{self.port}"
    self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=access_log, lifespan="on"))
    self._thread = threading.Thread(
      target=self._server.run, kwargs={"sockets": [self._socket]}, name="smollm3-uvicorn", daemon=True
    )
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
