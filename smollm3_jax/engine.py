"""The host side of generation: shape buckets, padding, the compiled-program cache, placement on a
mesh, and the loop that runs prefill and the decode programs (:class:`Engine`), plus one bounded
cache of engines for the package (:func:`get_engine`).

Decode cost follows the text, not the budget: a decode program reads only a window ``[0, W)`` of the
cache, W a static bucket (:data:`WINDOW_BUCKETS`) that covers every active row's length. The loop
leaves when a row is about to outgrow the window, and the host continues with the next bucket, so a
generation compiles one decode program per window bucket it reaches (each once per engine, and kept
in the persistent compilation cache). Measured on the demo (batch 8, the same prompt, 48 steps, f32):
with the whole 4096-slot cache read every step, 92 tokens/s; with the window, 273, as with a 256-slot
cache (287); bf16 alike (the README's performance section). Why windows and not the other design the
issue names, an attention loop over fixed-size KV blocks with a dynamic trip count (one program, no
extra compiles): the window keeps attention one plain product per (row, kv head), the form measured
fastest on CPU in session 1 (54 -> 44 ms per step at batch 8), and with buckets of 2x at most half the
window is unread. The blocked loop was not built here, so the two were not measured side by side.

Imports the programs of :mod:`smollm3_jax.decode`, the cache, sampling and sharding; never the user
API (:mod:`smollm3_jax.api`), the loaders, the sweep or serving.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax import sampling
from smollm3_jax.decode import (MAX_STOP_IDS, DecodeState, RowSettings, SharedSettings, decode_jit,
                                prefill_chunk_jit, prefill_jit)
from smollm3_jax.kv_cache import DEFAULT_BATCH_BUCKETS, DEFAULT_BUCKETS, KVCache, bucket_length, window_length
from smollm3_jax.model import SmolLM3
from smollm3_jax.sharding import engine_sharding

# How many programs the engines compiled in this process, by name ("prefill", "prefill_chunk",
# "decode"; each read window is a decode program). Tests read it.
COMPILE_COUNTS: collections.Counter = collections.Counter()
# Prompts longer than this many slots are prefilled in chunks of it, with a progress bar: the
# user sees the work advance.
PREFILL_CHUNK = 512
# Read windows of the decode programs (slots); the last one used is the cache length itself.
WINDOW_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
MAX_ENGINES = 4  # engines hold their model and compiled programs: keep the latest few


class Batch(NamedTuple):
  """What ``Engine.prepare`` hands to ``Engine.run``: right-padded prompts [B or U, P], their
  lengths, the empty cache, the initial carry (without its cache), the per-row and shared settings,
  and (shared prefill) each row's distinct prompt."""

  tokens: jax.Array
  lengths: jax.Array
  cache: KVCache
  carry: DecodeState
  rows: RowSettings
  shared: SharedSettings
  row_index: jax.Array | None = None


def _distinct_prompts(tokens: np.ndarray, lengths: np.ndarray, n: int, batch_buckets):
  """The distinct prompts among the first n rows of tokens [B, P] (with their lengths), padded to a
  batch bucket, and each row's index into them ([B]; idle rows point at row 0). Returns the inputs
  and None when every prompt is distinct (nothing to share)."""
  first: dict[bytes, int] = {}
  index = np.zeros((tokens.shape[0],), np.int32)
  for i in range(n):
    index[i] = first.setdefault(tokens[i, :lengths[i]].tobytes(), len(first))
  u = len(first)
  rows = next((b for b in batch_buckets if b >= u), u)
  if rows >= tokens.shape[0]:
    return tokens, lengths, None
  seen_at = np.zeros((u,), np.int64)  # a row holding each distinct prompt
  seen_at[index[:n]] = np.arange(n)
  out_tokens = np.repeat(tokens[:1], rows, axis=0)
  out_lengths = np.repeat(lengths[:1], rows, axis=0)
  out_tokens[:u], out_lengths[:u] = tokens[seen_at], lengths[seen_at]
  return out_tokens, out_lengths, jnp.asarray(index)


def _aval_key(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return (treedef, tuple((tuple(x.shape), str(x.dtype), str(getattr(x, "sharding", None)))
                         for x in leaves))


# --------------------------------------------------------------------------------------------
# Engine: compiled programs per shape bucket for one model
# --------------------------------------------------------------------------------------------
class Engine:
  """Holds a model split into (graphdef, state) and its compiled prefill/decode programs.

  ``buckets`` are the lengths prompts and caches round up to. ``batch_buckets`` the batch sizes
  (requests are padded with idle rows up to the next one).
  """

  def __init__(self, model: SmolLM3, tokenizer=None, *, buckets: Sequence[int] = DEFAULT_BUCKETS,
               batch_buckets: Sequence[int] | None = None,
               cache_dtype=None, sharding=None, prefill_chunk: int = PREFILL_CHUNK,
               window_buckets: Sequence[int] = WINDOW_BUCKETS):
    self.model = model
    self.tokenizer = tokenizer
    self.config = model.config
    self.graphdef, state = nnx.split(model)
    self._source_leaves = jax.tree.leaves(state)
    self.buckets = tuple(buckets)
    self.batch_buckets = tuple(sorted(batch_buckets or DEFAULT_BATCH_BUCKETS))
    self.cache_dtype = cache_dtype or model.dtype
    self.prefill_chunk = prefill_chunk  # prompts of more slots prefill in chunks of it (0 = never)
    self.window_buckets = tuple(window_buckets)  # () = every decode step reads the whole cache
    if sharding is None:  # a model loaded onto a mesh brings its mesh (None on one device)
      sharding = engine_sharding(model)
    self.sharding = sharding  # optional smollm3_jax.sharding.MeshSharding (places params, cache, batch)
    self._set_state(state)
    self._compiled: dict[tuple, Any] = {}
    self._newline_ids: np.ndarray | None = None

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
  def _compiled_fn(self, name, fn, *args, **static) -> tuple[Any, float]:
    """AOT-compiles fn for these argument shapes (and static keyword values) once; returns
    (executable, seconds spent). Each compile counts in :data:`COMPILE_COUNTS` under ``name``."""
    key = (name, self.graphdef, self._state_key, _aval_key(args[1:]), tuple(sorted(static.items())))
    exe = self._compiled.get(key)
    if exe is not None:
      return exe, 0.0
    t0 = time.perf_counter()
    exe = fn.lower(self.graphdef, *args, **static).compile()
    COMPILE_COUNTS[name] += 1
    self._compiled[key] = exe
    return exe, time.perf_counter() - t0

  # -- host-side preparation ----------------------------------------------------------------
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

  def prepare(self, prompt_ids: Sequence[Sequence[int]], *, params: sampling.SamplingParams,
              seeds: np.ndarray, max_new_tokens: np.ndarray, newline_limit: np.ndarray,
              stop_ids: Sequence[int], context_length: int | None = None, share_prefill: bool = False):
    """Validates and pads a batch; returns the arguments of the prefill program (host side, cheap)."""
    cfg = self.config
    n = len(prompt_ids)
    if n == 0:
      raise ValueError("prompts: need at least one prompt")
    lengths = np.asarray([len(p) for p in prompt_ids], np.int32)
    for i, p in enumerate(prompt_ids):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty: nothing to condition on")
    context = int(context_length or cfg.max_position_embeddings)
    if context > cfg.max_position_embeddings:
      raise ValueError(f"context_length {context} exceeds the model's max_position_embeddings "
                       f"{cfg.max_position_embeddings}")
    too_long = [i for i in range(n) if lengths[i] >= context]
    if too_long:
      i = too_long[0]
      raise ValueError(f"prompt {i} has {lengths[i]} tokens, which does not fit the context of "
                       f"{context} tokens (it needs room for at least one new token)")
    stop_ids = [int(t) for t in stop_ids]
    if len(stop_ids) > MAX_STOP_IDS:
      raise ValueError(f"stop_ids: at most {MAX_STOP_IDS} stop ids, got {len(stop_ids)}")

    batch = next((b for b in self.batch_buckets if b >= n), n)
    p_len = bucket_length(int(lengths.max()), self.buckets)
    new_max = int(min(max_new_tokens.max(), context - lengths.min()))
    cache_len = bucket_length(p_len + new_max - 1, self.buckets) if new_max > 1 else p_len
    capacity = cache_len - p_len + 1

    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    tokens = np.full((batch, p_len), pad, np.int32)
    for i, p in enumerate(prompt_ids):
      tokens[i, :len(p)] = p  # left-aligned: slot = position
    full_lengths = np.ones((batch,), np.int32)  # idle rows: one pad token
    full_lengths[:n] = lengths

    def rows(x, fill):
      out = np.full((batch,) + np.shape(x)[1:], fill, np.asarray(x).dtype)
      out[:n] = x
      return out

    params = params.pad_to(batch)
    max_new = rows(max_new_tokens.astype(np.int32), 1)
    done = np.arange(batch) >= n  # padding rows never run
    stop_arr = np.full((MAX_STOP_IDS,), -1, np.int32)
    stop_arr[:len(stop_ids)] = stop_ids
    init_cache = self.sharding.init_cache if self.sharding is not None else KVCache.init
    cache = init_cache(cfg, batch, cache_len, self.cache_dtype)
    carry = DecodeState(
        cache=cache,
        tokens=jnp.full((batch, capacity), pad, jnp.int32),
        last=jnp.zeros((batch,), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        num_generated=jnp.zeros((batch,), jnp.int32),
        done=jnp.asarray(done),
        reason=jnp.zeros((batch,), jnp.int32),
        newline_run=jnp.zeros((batch,), jnp.int32),
        presence=jnp.zeros((batch, cfg.vocab_size), bool),
        keys=sampling.row_keys(jnp.asarray(rows(seeds.astype(np.uint32), 0))),
    )
    row_settings = RowSettings(
        params=params,
        prompt_len=jnp.asarray(full_lengths),
        max_new=jnp.asarray(max_new),
        newline_limit=jnp.asarray(rows(newline_limit.astype(np.int32), 0)),
    )
    shared = SharedSettings(
        context_limit=jnp.asarray(context, jnp.int32),
        stop_ids=jnp.asarray(stop_arr),
        newline_ids=jnp.asarray(self.newline_ids() if newline_limit.any() else np.asarray([-1], np.int32)),
        pad_id=jnp.asarray(pad, jnp.int32),
    )
    row_index = None
    prompt_lengths = full_lengths
    if share_prefill and self.sharding is None:
      tokens, prompt_lengths, row_index = _distinct_prompts(tokens, full_lengths, n, self.batch_buckets)
    tokens, prompt_lengths = jnp.asarray(tokens), jnp.asarray(prompt_lengths)
    carry = carry.replace(cache=None)  # the cache travels apart, into prefill
    if self.sharding is not None:
      cache = self.sharding.place_cache(cache)
      (tokens, prompt_lengths, carry, row_settings), shared = self.sharding.place_batch(
          (tokens, prompt_lengths, carry, row_settings), shared)
    return n, Batch(tokens, prompt_lengths, cache, carry, row_settings, shared, row_index)

  # -- run ------------------------------------------------------------------------------------
  def _prefill_chunks(self, tokens, lengths, cache, row_index):
    """Writes long prompts into the cache chunk by chunk, with a progress bar, up to each row's
    last ``prefill_chunk`` tokens (which the prefill program runs). Returns (cache, the tokens per
    row the prefill program runs, or None for the whole prompt, compile seconds, run seconds)."""
    chunk = self.prefill_chunk
    p = tokens.shape[1]
    if row_index is not None or not chunk or p <= chunk or p % chunk:
      return cache, None, 0.0, 0.0
    from tqdm.auto import tqdm

    longest = int(np.max(np.asarray(lengths)))
    steps = max(-(-(longest - chunk) // chunk), 0)  # chunks before the longest row's last one
    with tqdm(total=steps * chunk + chunk, unit="tok", desc="prefill", leave=False, dynamic_ncols=True,
              disable=steps == 0) as bar:
      bar.set_postfix_str("compiling", refresh=True)
      compile_s = 0.0
      exe = None
      if steps:
        exe, compile_s = self._compiled_fn("prefill_chunk", prefill_chunk_jit, self.state, tokens[:, :chunk],
                                           cache)
      bar.set_postfix_str("", refresh=False)
      t0 = time.perf_counter()
      for i in range(steps):
        cache = exe(self.state, tokens[:, i * chunk:(i + 1) * chunk], cache)
        jax.block_until_ready(cache.lengths)
        bar.update(chunk)
      bar.update(chunk)  # the last chunk runs in the prefill program, with the first token
    return cache, chunk, compile_s, time.perf_counter() - t0

  def _window(self, s: DecodeState, n: int) -> int:
    """The smallest read window (a :data:`WINDOW_BUCKETS` value, or the cache length) that holds the
    next slot of every active row."""
    lengths = np.asarray(s.cache.lengths)[:n]
    active = ~np.asarray(s.done)[:n]
    needed = int(lengths[active].max()) + 1 if active.any() else 1
    if not self.window_buckets:
      return s.cache.length
    return window_length(needed, s.cache.length, self.window_buckets)

  def run(self, n: int, args, *, chunk_steps: int | None = None) -> Iterator[tuple[DecodeState, dict]]:
    """Runs prefill then decode, yielding (host-fetched state, timings) after prefill and after
    every ``chunk_steps`` decode steps (one chunk = whole generation when None)."""
    t_call = time.perf_counter()
    tokens, lengths, cache, carry, rows, shared, row_index = Batch(*args)
    cache, tail, c0, t_chunks = self._prefill_chunks(tokens, lengths, cache, row_index)
    prefill, c1 = self._compiled_fn("prefill", prefill_jit, self.state, tokens, lengths, cache, carry, rows,
                                    shared, row_index, tail=tail)
    t0 = time.perf_counter()
    s = prefill(self.state, tokens, lengths, cache, carry, rows, shared, row_index)
    jax.block_until_ready(s.tokens)
    t1 = time.perf_counter()
    timings = dict(compile_seconds=c0 + c1, prefill_seconds=t_chunks + t1 - t0, time_to_first_token=t1 - t_call,
                   decode_seconds=0.0)
    yield s, timings
    capacity = s.tokens.shape[1]
    step = int(s.step)
    while step < capacity and not bool(np.all(np.asarray(s.done)[:n])):
      limit = np.int32(capacity if chunk_steps is None else min(capacity, step + chunk_steps))
      decode, c2 = self._compiled_fn("decode", decode_jit, self.state, s, rows, shared, limit,
                                     window=self._window(s, n))
      timings["compile_seconds"] += c2
      t0 = time.perf_counter()
      s = decode(self.state, s, rows, shared, limit)
      jax.block_until_ready(s.tokens)
      timings["decode_seconds"] += time.perf_counter() - t0
      before, step = step, int(s.step)
      if step == before:  # the window always holds the next slot; a guard against a host loop without end
        raise RuntimeError("decode made no progress (read window smaller than a row's next slot)")
      yield s, timings


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
