"""The host side of generation: the slot pool and its queue (:class:`Pool`), shape buckets, the
compiled-program cache and placement on a mesh (:class:`Engine`), and one bounded cache of engines
for the package (:func:`get_engine`).

Continuous batching. A :class:`Pool` holds B slots over one cache of S slots per row. Rows
(:class:`Request`) wait in its queue; between decode chunks the host takes finished rows out and
puts waiting rows in: their prompts are written chunk by chunk into the free slots' cache
(:func:`~smollm3_jax.generation.decode.prefill_slots`, ``[U, C]`` tokens a call, C = ``prefill_chunk``), and
one call of :func:`~smollm3_jax.generation.decode.insert` starts them (rows that repeat a prompt copy its
cache: the prompt is prefilled once). A pool's programs are one prefill program per (rows bucket U,
read window), one insert program and one decode program per read window: each compiles once per
engine (and lands in the persistent compilation cache), and :meth:`Pool.warmup` compiles them all
before a user waits.

Decode cost follows the text, not the budget: a decode program reads only a window ``[0, W)`` of the
cache, W a static bucket (:data:`WINDOW_BUCKETS`) that covers every active row's length. The loop
leaves when a row is about to outgrow the window, and the host continues with the next bucket
(the measurements behind this: docs/performance.md). The window keeps attention one plain product
per (row, kv head).

The pool is driven by :class:`~smollm3_jax.generation.runner.Runner` (stop strings, texts, results);
this module imports the decode programs, the cache, sampling and sharding, never the runner or the API.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.generation import sampling
from smollm3_jax.generation.decode import (
  CANCELLED,
  MAX_STOP_IDS,
  DecodeState,
  Record,
  RowSettings,
  SharedSettings,
  compact_jit,
  decode_jit,
  insert_jit,
  prefill_slots_jit,
  tails_jit,
)
from smollm3_jax.generation.settings import SETTINGS, validate_sampling_args
from smollm3_jax.nn.kv_cache import KVCache
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.nn.sharding import batch_shards, engine_sharding
from smollm3_jax.utils import backend, distributed, runtime
from smollm3_jax.utils.buckets import DEFAULT_BUCKETS, bucket_length, window_length

# How many programs the engines compiled in this process, by name ("prefill", "insert", "decode";
# each read window and rows bucket is a program of its own). Tests read it.
COMPILE_COUNTS: collections.Counter = collections.Counter()
MAX_TOP_LOGPROBS = 20  # alternatives a pool may record per token (OpenAI's limit)
# Outputs per row the host copies in one slice after a decode chunk (more slices when a chunk made more).
TAIL = 64
# A prefill of at least this many calls shows a progress bar.
PREFILL_BAR_CALLS = 4
# Tokens a decode chunk runs before the host looks at the pool again (streaming granularity).
CHUNK_STEPS = 16
# Read windows of the decode programs (slots); the last one used is the cache length itself.
WINDOW_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
MAX_ENGINES = 4  # engines hold their model and compiled programs: keep the latest few


def _aval_key(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return (treedef, tuple((tuple(x.shape), str(x.dtype), str(getattr(x, "sharding", None))) for x in leaves))


# --------------------------------------------------------------------------------------------
# Request: one row to generate, and what it produced
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class Request:
  """One row to generate, and (filled in by the pool) what it produced. Host side.

  ``settings``: the row's sampling settings (names of :class:`~smollm3_jax.generation.sampling.SamplingParams`;
  missing ones are off). Rows with the same ``share`` key (not None) and the same prompt run its
  prefill once. ``tag``: anything the caller wants back.
  """

  prompt: Sequence[int]
  settings: dict = dataclasses.field(default_factory=dict)
  seed: int = 0
  max_new: int = 1
  newline_limit: int = 0
  share: Any = None
  tag: Any = None
  logprobs: bool = True  # record this row's log-probabilities (in a pool that records)
  # -- filled in by the pool --
  token_ids: list = dataclasses.field(default_factory=list)  # generated so far (all of them once done)
  record: dict | None = None  # per-token arrays aligned with token_ids (pools that record)
  reason: int = 0  # index into decode.STOP_REASONS once done
  done: bool = False
  cancelled: bool = False
  submitted: float = 0.0  # perf_counter times
  admitted: float | None = None
  first_token: float | None = None
  finished: float | None = None

  @property
  def queue_seconds(self) -> float:
    """Seconds from submission to the start of its prefill."""
    return (self.admitted or time.perf_counter()) - self.submitted


# --------------------------------------------------------------------------------------------
# Engine: compiled programs per shape bucket for one model
# --------------------------------------------------------------------------------------------
def check_settings(requests: Sequence[Request], vocab_size: int) -> None:
  """ValueError naming the setting when a row's sampling settings are unknown or out of range (the one
  check of a row's settings: when it is submitted, before anything runs for it)."""
  names = sorted({k for r in requests for k in r.settings})
  unknown = [k for k in names if k not in SETTINGS]
  if unknown:
    raise ValueError(f"unknown sampling setting(s): {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
  if names:  # one value per row and setting
    validate_sampling_args(
      batch=len(requests),
      vocab_size=vocab_size,
      **{k: [r.settings.get(k, SETTINGS[k].off) for r in requests] for k in names},
    )


class Engine:
  """Holds a model split into (graphdef, state) and its compiled programs.

  ``buckets`` are the lengths prompts and caches round up to; ``batch_buckets`` the slot counts
  (and prefill row counts) pools round up to; ``prefill_chunk`` the prompt tokens a prefill call
  writes per row; ``window_buckets`` the read windows of the programs (() = the whole cache);
  ``choices`` the backend's (:mod:`~smollm3_jax.utils.backend`; default: those of the platform the
  parameters live on).
  """

  def __init__(
    self,
    model: SmolLM3,
    tokenizer=None,
    *,
    buckets: Sequence[int] = DEFAULT_BUCKETS,
    batch_buckets: Sequence[int] | None = None,
    cache_dtype=None,
    sharding=None,
    prefill_chunk: int | None = None,
    window_buckets: Sequence[int] = WINDOW_BUCKETS,
    choices: backend.Choices | None = None,
  ):
    runtime.enable_default_caches()  # the persistent compilation cache, unless switched off
    self.model = model
    self.tokenizer = tokenizer
    self.config = model.config
    self.graphdef, state = nnx.split(model)
    self._source_leaves = jax.tree.leaves(state)
    self.buckets = tuple(buckets)
    # The backend's choices (utils/backend.py), from where the parameters live.
    self.choices = choices or backend.choices(backend.platform_of(state))
    self.batch_buckets = tuple(sorted(batch_buckets or self.choices.batch_buckets))
    self.cache_dtype = cache_dtype or model.dtype
    prefill_chunk = self.choices.prefill_chunk if prefill_chunk is None else prefill_chunk
    if prefill_chunk < 1 or prefill_chunk & (prefill_chunk - 1):
      raise ValueError(f"prefill_chunk must be a power of two, got {prefill_chunk}")
    self.prefill_chunk = prefill_chunk
    self.window_buckets = tuple(window_buckets)  # () = every decode step reads the whole cache
    if sharding is None:  # a model loaded onto a mesh brings its mesh (None on one device)
      sharding = engine_sharding(model)
    self.sharding = sharding  # optional smollm3_jax.nn.sharding.MeshSharding (places params, cache, batch)
    self._set_state(state)
    self._compiled: dict[tuple, Any] = {}
    self._newline_ids: np.ndarray | None = None
    self._lock = threading.Lock()  # one compile of a program, whichever thread asks first

  def _set_state(self, state):
    if self.sharding is not None:
      state = self.sharding.shard_state(state)  # a no-op when the model is already on the mesh
    self.state = state
    self._state_key = _aval_key(state)

  def sync(self) -> None:
    """Picks up parameter values assigned to the model since the engine split it (say, a weight
    ablation between two calls); same shapes and dtypes reuse the compiled programs."""
    state = nnx.state(self.model)
    leaves = jax.tree.leaves(state)
    if len(leaves) != len(self._source_leaves) or any(a is not b for a, b in zip(leaves, self._source_leaves)):
      self._source_leaves = leaves
      self._set_state(state)

  # -- compile ------------------------------------------------------------------------------
  def _compiled_fn(self, name, fn, *args, with_model: bool = True, **static) -> tuple[Any, float]:
    """AOT-compiles fn for these argument shapes (and static keyword values) once; returns
    (executable, seconds spent). ``with_model``: fn takes (graphdef, state, ...) and ``args[0]`` is
    the state. Each compile counts in :data:`COMPILE_COUNTS` under ``name``."""
    shapes = args[1:] if with_model else args
    key = (name, self.graphdef, self._state_key, _aval_key(shapes), tuple(sorted(static.items())))
    exe = self._compiled.get(key)
    if exe is not None:
      return exe, 0.0
    with self._lock:
      exe = self._compiled.get(key)
      if exe is not None:
        return exe, 0.0
      t0 = time.perf_counter()
      lowered = fn.lower(self.graphdef, *args, **static) if with_model else fn.lower(*args, **static)
      exe = lowered.compile(dict(self.choices.compiler_options) or None)
      COMPILE_COUNTS[name] += 1
      self._compiled[key] = exe
      return exe, time.perf_counter() - t0

  def executables(self, name: str) -> list:
    """The compiled executables of program ``name`` ("prefill", "insert", "decode", ...) built so far:
    their ``as_text()`` / ``memory_analysis()`` / ``cost_analysis()`` are what the compiler made."""
    return [exe for key, exe in self._compiled.items() if key[0] == name]

  def newline_ids(self) -> np.ndarray:
    """Ids of tokens whose text is only newlines (for the newline guard)."""
    if self._newline_ids is None:
      ids = []
      if self.tokenizer is not None:
        for i in range(self.tokenizer.vocab_size):
          text = self.tokenizer.decode([i])
          if text and set(text) <= {"\n"}:
            ids.append(i)
      self._newline_ids = np.asarray(ids or [-1], np.int32)
    return self._newline_ids

  def slots_for(self, n: int) -> int:
    """The slot count (batch bucket) for n rows."""
    return next((b for b in self.batch_buckets if b >= n), n)

  def cache_length_for(self, tokens: int) -> int:
    """The cache length (a length bucket, a multiple of ``prefill_chunk``) holding ``tokens``."""
    length = bucket_length(max(tokens, 1), self.buckets)
    return -(-length // self.prefill_chunk) * self.prefill_chunk

  def pool(self, slots: int, length: int, **kwargs) -> "Pool":
    """A :class:`Pool` of ``slots`` rows over a cache of ``length`` slots (see there)."""
    return Pool(self, slots, length, **kwargs)


# --------------------------------------------------------------------------------------------
# Pool: B slots, a queue, and the host loop that refills the slots between decode chunks
# --------------------------------------------------------------------------------------------
class Pool:
  """B slots decoding together over one cache of S slots per row, fed from a queue.

  ``stop_ids``: the ids that end a row (at most :data:`~smollm3_jax.generation.decode.MAX_STOP_IDS`);
  ``context_length``: positions a row may fill (default: the model's); ``refill``: start waiting
  rows as soon as slots free up (False: only once every slot is free, i.e. fixed batches that wait
  for their longest row; for measurements); ``chunk_steps``: decode steps between two looks at the
  pool; ``prefill_rows``: the row counts of prefill calls (default (1,): one prompt per call, so a
  prompt's numbers never depend on its neighbours; each count is one more program); ``logprobs``:
  record each token's log-probabilities, entropies and rank (:class:`~smollm3_jax.generation.decode.Record`), with the
  ``top_logprobs`` (0 to 20) most likely alternatives; each request's ``record`` then holds them.
  ``shrink``: once the queue is empty, narrow the pool to the smallest batch bucket holding the rows
  still running whenever that halves it or more (for a fixed workload: generate, sweeps; each width
  is one more set of decode programs).

  Not thread-safe: one thread drives a pool (:meth:`step`); :meth:`submit` and :meth:`cancel` may be
  called from others only while holding :attr:`lock`.
  """

  def __init__(
    self,
    engine: Engine,
    slots: int,
    length: int,
    *,
    stop_ids: Sequence[int] = (),
    context_length: int | None = None,
    newline_guard: bool = False,
    refill: bool = True,
    chunk_steps: int = CHUNK_STEPS,
    prefill_rows: Sequence[int] | None = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    shrink: bool = False,
  ):
    cfg = engine.config
    self.engine = engine
    self.slots = int(slots)
    self.length = int(length)
    if self.length % engine.prefill_chunk:
      raise ValueError(f"cache length {length} is not a multiple of the prefill chunk {engine.prefill_chunk}")
    stop_ids = [int(t) for t in stop_ids]
    if len(stop_ids) > MAX_STOP_IDS:
      raise ValueError(f"stop_ids: at most {MAX_STOP_IDS} stop ids, got {len(stop_ids)}")
    self.context = int(context_length or cfg.max_position_embeddings)
    if self.context > cfg.max_position_embeddings:
      raise ValueError(
        f"context_length {self.context} exceeds the model's max_position_embeddings {cfg.max_position_embeddings}"
      )
    self.refill = refill
    self.shrink = shrink
    self.chunk_steps = int(chunk_steps)
    if not 0 <= int(top_logprobs) <= MAX_TOP_LOGPROBS:
      raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs}")
    self.logprobs = bool(logprobs or top_logprobs)
    self.top_logprobs = int(top_logprobs)
    self.prefill_rows = tuple(sorted(set(prefill_rows or engine.choices.prefill_rows)))
    self.pad_id = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    self.lock = threading.Lock()
    self.queue: collections.deque[Request] = collections.deque()
    self.rows: list[Request | None] = [None] * self.slots  # the request in each slot
    self.stats = collections.Counter()  # seconds, steps and tokens of this pool's work
    stop_arr = np.full((MAX_STOP_IDS,), -1, np.int32)
    stop_arr[: len(stop_ids)] = stop_ids
    self.stop_ids = tuple(stop_ids)
    newline_ids = engine.newline_ids() if newline_guard else np.asarray([-1], np.int32)
    self.shared = SharedSettings(
      context_limit=jnp.asarray(min(self.context, self.length + 1), jnp.int32),
      stop_ids=jnp.asarray(stop_arr),
      newline_ids=jnp.asarray(newline_ids),
      pad_id=jnp.asarray(self.pad_id, jnp.int32),
      search_radix=engine.choices.search_radix,
    )
    self.state = self._empty_state()
    self._lengths = np.zeros((self.slots,), np.int64)  # host copy of the cache lengths of active rows
    self._stop = np.zeros((self.slots,), np.int32)  # reasons the next decode call stops slots with
    # (share key, prompt) -> the slots whose cache holds that prompt (a row there now, or until the slot
    # is reused): later rows repeating the prompt copy it instead of prefilling it again.
    self._holders: dict[Any, set[int]] = {}

  # -- state ----------------------------------------------------------------------------------
  def _empty_state(self) -> DecodeState:
    eng, cfg, b = self.engine, self.engine.config, self.slots
    init_cache = eng.sharding.init_cache if eng.sharding is not None else KVCache.init
    cache = init_cache(cfg, b, self.length, eng.cache_dtype)
    state = DecodeState(
      cache=None,
      rows=self._row_settings([None] * b),
      context=sampling.init_context(b, cfg.vocab_size, self.length),
      tokens=jnp.full((b, self.length), self.pad_id, jnp.int32),
      last=jnp.zeros((b,), jnp.int32),
      num_generated=jnp.zeros((b,), jnp.int32),
      done=jnp.ones((b,), bool),
      reason=jnp.zeros((b,), jnp.int32),
      newline_run=jnp.zeros((b,), jnp.int32),
      keys=sampling.row_keys(jnp.zeros((b,), jnp.uint32)),
      record=Record.init(b, self.length, self.top_logprobs) if self.logprobs else None,
    )
    if eng.sharding is not None:
      (state,), self.shared = eng.sharding.place_batch((state,), self.shared)
    return state.replace(cache=cache)

  def _row_settings(self, requests: Sequence[Request | None]) -> RowSettings:
    """RowSettings [len(requests)] (None = an idle row)."""
    live = [r for r in requests if r is not None]
    names = sorted({k for r in live for k in r.settings})
    n = len(requests)
    values = {
      k: [r.settings.get(k, sampling.SETTINGS[k].off) if r is not None else sampling.SETTINGS[k].off for r in requests]
      for k in names
    }
    col = lambda f, fill: np.asarray([f(r) if r is not None else fill for r in requests], np.int32)
    # (checked once, when the rows were submitted)
    return RowSettings(
      params=sampling.SamplingParams.make(n, vocab_size=self.engine.config.vocab_size, validate=False, **values),
      prompt_len=jnp.asarray(col(lambda r: len(r.prompt), 1)),
      max_new=jnp.asarray(col(lambda r: r.max_new, 1)),
      newline_limit=jnp.asarray(col(lambda r: r.newline_limit, 0)),
      record=jnp.asarray(col(lambda r: r.logprobs, 0).astype(bool)),
    )

  # -- queue ----------------------------------------------------------------------------------
  def check(self, request: Request) -> None:
    """ValueError when the request cannot run in this pool (before it waits in the queue)."""
    p = len(request.prompt)
    if p == 0:
      raise ValueError("prompt is empty: nothing to condition on")
    if p >= self.context:
      raise ValueError(
        f"the prompt has {p} tokens, which does not fit the context of {self.context} tokens "
        f"(it needs room for at least one new token)"
      )
    if request.max_new < 1:
      raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new}")
    if p + min(request.max_new, self.context - p) - 1 > self.length:
      raise ValueError(
        f"the prompt ({p} tokens) and max_new_tokens ({request.max_new}) need "
        f"{p + request.max_new - 1} cache slots; this pool has {self.length}"
      )

  def submit(self, requests: Sequence[Request], *, settings_checked: bool = False) -> None:
    """Queues rows (checked first, their settings too unless ``settings_checked`` by
    :func:`check_settings` before: nothing is queued when one is bad)."""
    for r in requests:
      self.check(r)
    if not settings_checked:
      check_settings(requests, self.engine.config.vocab_size)
    now = time.perf_counter()
    for r in requests:
      r.submitted = now
      r.prompt = np.asarray(r.prompt, np.int32)
      # Fresh outputs: the pool extends them in place, and a copied request (dataclasses.replace) would
      # otherwise share its original's lists.
      r.token_ids, r.record = [], None
    self.queue.extend(requests)

  def cancel(self, request: Request, reason: int = CANCELLED) -> None:
    """Stops a row at the next look at the pool (its slot is freed; its tokens so far stay); a row
    still waiting in the queue ends now."""
    request.cancelled = True
    request.reason = reason
    with self.lock:
      if request in self.queue:
        self.queue.remove(request)
        request.done, request.finished = True, time.perf_counter()

  @property
  def active(self) -> int:
    return sum(r is not None for r in self.rows)

  @property
  def idle(self) -> bool:
    return not self.queue and not self.active

  # -- programs -------------------------------------------------------------------------------
  @property
  def _row_shards(self) -> int:
    """The devices this pool's rows are split over (prefill's and insert's row access follows)."""
    return batch_shards(self.state.cache.k[0])

  def _window(self, needed: int) -> int:
    eng = self.engine
    if not eng.window_buckets:
      return self.length
    return window_length(needed, self.length, eng.window_buckets)

  def _prefill(self, rows: list[tuple[int, Request]]) -> None:
    """Writes the prompts (all but their last token) of ``rows`` [(slot, request)] into their slots,
    C tokens per row and call. Each round advances every unfinished prompt by one chunk, in calls
    whose row counts are the :attr:`prefill_rows` buckets (largest first, so little is padding)."""
    eng, c = self.engine, self.engine.prefill_chunk
    pending = [(slot, r.prompt[:-1], 0) for slot, r in rows if len(r.prompt) > 1]
    from tqdm.auto import tqdm

    rounds = max((-(-len(ids) // c) for _, ids, _ in pending), default=0)
    bar = tqdm(
      total=sum(len(ids) for _, ids, _ in pending),
      unit="tok",
      desc="prefill",
      leave=False,
      dynamic_ncols=True,
      disable=rounds < PREFILL_BAR_CALLS or not distributed.is_leader(),
    )
    while pending:
      i = 0
      while i < len(pending):
        left = len(pending) - i
        u = max((b for b in self.prefill_rows if b <= left), default=self.prefill_rows[0])
        group, i = pending[i : i + u], i + u
        tokens = np.full((u, c), self.pad_id, np.int32)
        slots = np.full((u,), self.slots, np.int32)
        starts = np.zeros((u,), np.int32)
        counts = np.zeros((u,), np.int32)
        for j, (slot, ids, start) in enumerate(group):
          piece = ids[start : start + c]
          tokens[j, : len(piece)], slots[j], starts[j], counts[j] = piece, slot, start, len(piece)
        window = self._window(int(starts.max()) + c)
        args = (self.state, *map(jnp.asarray, (tokens, slots, starts, counts)))
        exe, secs = eng._compiled_fn(
          "prefill",
          prefill_slots_jit,
          eng.state,
          *args,
          window=window,
          query_block=eng.choices.query_block_at(window),
          shards=self._row_shards,
        )
        self.stats["compile_seconds"] += secs
        t0 = time.perf_counter()
        self.state = exe(eng.state, *args)
        self._sync(self.state.cache.lengths)
        self.stats["prefill_seconds"] += time.perf_counter() - t0
        self.stats["prefill_calls"] += 1
        bar.update(int(counts.sum()))
      pending = [(slot, ids, start + c) for slot, ids, start in pending if len(ids) > start + c]
    bar.close()

  def _admit(self) -> None:
    """Starts waiting rows in the free slots: prefill (once per shared prompt), then one insert."""
    free = [i for i, r in enumerate(self.rows) if r is None]
    if not self.queue or not free or (not self.refill and len(free) < self.slots):
      return
    taken = []
    while self.queue and len(taken) < len(free):
      r = self.queue.popleft()
      if not r.cancelled:
        taken.append(r)
    if not taken:
      return
    now = time.perf_counter()
    placed, sources = [], []
    overwritten = set(free[: len(taken)])
    for holders in self._holders.values():
      holders -= overwritten
    copied = set()  # slots that copy their prompt in this round's insert: not a source before it ran
    for slot, r in zip(free, taken):
      r.admitted = now
      self.rows[slot] = r
      self._stop[slot] = 0
      key = (r.share, r.prompt.tobytes()) if r.share is not None else None
      holders = self._holders.setdefault(key, set()) if key is not None else set()
      # A source must hold the prompt (cache and token context) before the insert: a slot prefilled
      # now or one that held it already, never one that copies it in the same insert (its token
      # context would still be its previous occupant's).
      ready = holders - copied
      src = min(ready) if ready else slot
      if src != slot:
        copied.add(slot)
      holders.add(slot)
      placed.append((slot, r))
      sources.append(src)
    firsts = [(slot, r) for (slot, r), src in zip(placed, sources) if src == slot]
    self.stats["prefilled_prompts"] += len(firsts)
    self._prefill(firsts)
    b = self.slots
    slots = np.full((b,), b, np.int32)
    source = np.full((b,), b, np.int32)
    last = np.zeros((b,), np.int32)
    seeds = np.zeros((b,), np.uint32)
    requests: list[Request | None] = [None] * b
    for i, ((slot, r), src) in enumerate(zip(placed, sources)):
      slots[i], source[i], last[i], seeds[i], requests[i] = slot, src, r.prompt[-1], r.seed, r
      self._lengths[slot] = len(r.prompt) - 1
    rows = self._row_settings(requests)
    args = (self.state, *map(jnp.asarray, (slots, source, last)), rows, jnp.asarray(seeds), self.shared.pad_id)
    eng = self.engine
    exe, secs = eng._compiled_fn("insert", insert_jit, *args, with_model=False, shards=self._row_shards)
    self.stats["compile_seconds"] += secs
    t0 = time.perf_counter()
    self.state = exe(*args)
    self._sync(self.state.done)
    self.stats["insert_seconds"] += time.perf_counter() - t0

  def _sync(self, x) -> None:
    """Waits for ``x`` where the backend's choices time each phase apart (``sync_phases``); elsewhere
    the host goes on while the device runs the queued programs (the phase seconds count the dispatch)."""
    if self.engine.choices.sync_phases:
      jax.block_until_ready(x)

  def _decode(self) -> None:
    """One decode chunk over the pool; returns after at most ``chunk_steps`` steps (sooner when a
    slot frees up while rows wait)."""
    eng = self.engine
    active = [i for i, r in enumerate(self.rows) if r is not None]
    window = self._window(int(self._lengths[active].max()) + 1)
    done_now = self.slots - len(active)
    free_target = done_now + 1 if (self.queue and self.refill) else self.slots + 1
    args = (
      self.state,
      self.shared,
      jnp.asarray(self.chunk_steps, jnp.int32),
      jnp.asarray(free_target, jnp.int32),
      jnp.asarray(self._stop),
    )
    self._stop[:] = 0
    exe, secs = eng._compiled_fn("decode", decode_jit, eng.state, *args, window=window)
    self.stats["compile_seconds"] += secs
    t0 = time.perf_counter()
    self.state, steps = exe(eng.state, *args)
    steps = int(distributed.fetch(steps))
    self.stats["decode_seconds"] += time.perf_counter() - t0
    self.stats["decode_steps"] += steps
    self.stats["slot_steps"] += steps * self.slots
    if steps == 0:  # the window always holds the next slot; a guard against a host loop without end
      raise RuntimeError("decode made no progress (read window smaller than a row's next slot)")

  def _harvest(self) -> list[Request]:
    """Copies new tokens to the requests; frees the slots of finished (and cancelled) rows."""
    s = self.state
    # (whole on every process, however the slots are spread over the hosts' devices)
    counts, done, reason, lengths = distributed.fetch((s.num_generated, s.done, s.reason, s.cache.lengths))
    active = [i for i, r in enumerate(self.rows) if r is not None]
    if not active:
      return []
    new = self._fetch_new(active, counts)
    now = time.perf_counter()
    changed = []
    for i in active:
      r = self.rows[i]
      n = int(counts[i])
      if n > len(r.token_ids):
        if r.first_token is None:
          r.first_token = now
        self.stats["generated"] += n - len(r.token_ids)
        tokens, record = new[i]
        r.token_ids.extend(tokens)
        if record is not None:
          r.record = r.record or {name: [] for name in record}
          for name, values in record.items():
            r.record[name].extend(values)
        changed.append(r)
      self._lengths[i] = lengths[i]
      if done[i] or r.cancelled:
        r.done, r.finished = True, now
        r.reason = r.reason if r.cancelled else int(reason[i])
        if r.cancelled:
          self._stop[i] = r.reason or CANCELLED
        self.rows[i] = None
        if r not in changed:
          changed.append(r)
    return changed

  def _fetch_new(self, active: list[int], counts) -> dict[int, tuple[list, dict | None]]:
    """The tokens (and, for rows that record, the per-token records) each active slot produced since
    the host's last look: slices of :data:`TAIL` outputs per row (several when a chunk made more),
    so a chunk costs what it generated, not the length of the rows."""
    s = self.state
    n_out = s.tokens.shape[1]
    width = min(TAIL, n_out)
    have = {i: len(self.rows[i].token_ids) for i in active}
    want = {i: int(counts[i]) for i in active}
    records = s.record is not None and any(self.rows[i].logprobs for i in active)
    out = {i: ([], {} if records and self.rows[i].logprobs else None) for i in active}
    while any(have[i] < want[i] for i in active):
      starts = np.zeros((self.slots,), np.int32)
      for i in active:
        starts[i] = min(have[i], n_out - width)
      exe, secs = self.engine._compiled_fn(
        "tails", tails_jit, s.tokens, s.record if records else None, jnp.asarray(starts), with_model=False, width=width
      )
      self.stats["compile_seconds"] += secs
      tokens, record = distributed.fetch(exe(s.tokens, s.record if records else None, jnp.asarray(starts)))
      for i in active:
        lo = have[i] - starts[i]
        hi = min(want[i], starts[i] + width) - starts[i]
        if hi <= lo:
          continue
        out[i][0].extend(tokens[i, lo:hi].tolist())
        if out[i][1] is not None:
          for f in dataclasses.fields(record):
            out[i][1].setdefault(f.name, []).extend(getattr(record, f.name)[i, lo:hi])
        have[i] = starts[i] + hi
    return out

  def _free_cancelled(self) -> None:
    """Frees the slots of cancelled rows; the next decode call stops them on the device."""
    for i, r in enumerate(self.rows):
      if r is not None and r.cancelled:
        r.done, r.finished = True, time.perf_counter()
        self._stop[i] = r.reason or CANCELLED
        self.rows[i] = None

  def _narrow(self) -> None:
    """Moves the running rows into a pool of the smallest batch bucket that holds them, when the
    queue is empty and that bucket is at most half the pool."""
    active = [i for i, r in enumerate(self.rows) if r is not None]
    target = next(
      (b for b in self.engine.batch_buckets if b >= max(len(active), self.engine.choices.narrow_min)), self.slots
    )
    if self.queue or not active or target > self.slots // 2:
      return
    idle = [i for i, r in enumerate(self.rows) if r is None]
    index = np.asarray((active + idle)[:target], np.int32)
    exe, secs = self.engine._compiled_fn("compact", compact_jit, self.state, jnp.asarray(index), with_model=False)
    self.stats["compile_seconds"] += secs
    t0 = time.perf_counter()
    self.state = exe(self.state, jnp.asarray(index))
    self._sync(self.state.done)
    self.stats["insert_seconds"] += time.perf_counter() - t0
    self.rows = [self.rows[i] for i in index]
    self._lengths, self._stop = self._lengths[index], self._stop[index]
    self._holders = {}
    self.slots = target
    self.prefill_rows = tuple(b for b in self.prefill_rows if b <= target) or (1,)

  def step(self) -> list[Request]:
    """Admits waiting rows, runs one decode chunk and returns the requests that got new tokens or
    finished (``done``) since the last step."""
    with self.lock:
      self._free_cancelled()
      self._admit()
      if self.shrink:
        self._narrow()
    if not self.active:
      return []
    self._decode()
    return self._harvest()

  def run(self) -> None:
    """Steps until the queue is empty and every row finished."""
    while not self.idle:
      self.step()

  def utilization(self) -> float:
    """Generated tokens / (slots x decode steps) of this pool's work so far."""
    return self.stats["generated"] / self.stats["slot_steps"] if self.stats["slot_steps"] else 0.0

  def warmup(self) -> float:
    """Compiles every program this pool can need (each prefill rows bucket x read window, insert,
    each decode window, the copy of new outputs); returns the seconds spent compiling. Nothing runs."""
    eng, c = self.engine, self.engine.prefill_chunk
    windows = sorted({self._window(n) for n in range(c, self.length + 1, c)} | {self._window(1)})
    total = 0.0
    for u in self.prefill_rows:
      z = jnp.zeros((u,), jnp.int32)
      for w in windows:
        if w >= c:
          total += eng._compiled_fn(
            "prefill",
            prefill_slots_jit,
            eng.state,
            self.state,
            jnp.zeros((u, c), jnp.int32),
            z,
            z,
            z,
            window=w,
            query_block=eng.choices.query_block_at(w),
            shards=self._row_shards,
          )[1]
    b = self.slots
    z = jnp.zeros((b,), jnp.int32)
    total += eng._compiled_fn(
      "insert",
      insert_jit,
      self.state,
      z,
      z,
      z,
      self._row_settings([None] * b),
      jnp.zeros((b,), jnp.uint32),
      self.shared.pad_id,
      with_model=False,
      shards=self._row_shards,
    )[1]
    for w in windows:
      total += eng._compiled_fn(
        "decode",
        decode_jit,
        eng.state,
        self.state,
        self.shared,
        jnp.asarray(1, jnp.int32),
        jnp.asarray(1, jnp.int32),
        jnp.asarray(self._stop),
        window=w,
      )[1]
    width = min(TAIL, self.state.tokens.shape[1])
    for record in {id(None): None, id(self.state.record): self.state.record}.values():  # (with and without records)
      total += eng._compiled_fn("tails", tails_jit, self.state.tokens, record, z, with_model=False, width=width)[1]
    self.stats["compile_seconds"] += total
    return total


_ENGINES: collections.OrderedDict[tuple, Engine] = collections.OrderedDict()


def get_engine(model: SmolLM3, tokenizer=None, *, mesh=None, **kwargs) -> Engine:
  """The cached Engine of a model and engine arguments (compiled programs are reused across calls).

  ``mesh``: a ``jax.sharding.Mesh``, a ``sharding.MeshSharding`` or a spec like "data=2,model=4";
  by default the mesh the model's parameters already live on (none on a single device). ``kwargs``:
  :class:`Engine`'s (buckets, batch_buckets, ...). The package keeps the :data:`MAX_ENGINES` most
  recently used engines (each holds its model), so old models can be freed.
  """
  sharding = kwargs.pop("sharding") if "sharding" in kwargs else engine_sharding(model, mesh)
  if sharding is not None:
    kwargs = {**kwargs, **sharding.engine_kwargs(kwargs.get("batch_buckets"))}  # multiples of the data axis
  kwargs["sharding"] = sharding
  key = (id(model), tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in kwargs.items())))
  eng = _ENGINES.get(key)
  if eng is None or eng.model is not model:
    eng = Engine(model, tokenizer, **kwargs)
    _ENGINES[key] = eng
    while len(_ENGINES) > MAX_ENGINES:
      _ENGINES.popitem(last=False)
  _ENGINES.move_to_end(key)
  if tokenizer is not None and eng.tokenizer is None:
    eng.tokenizer = tokenizer
  return eng
