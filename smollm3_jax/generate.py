"""Generation: batched prefill, a jitted ``lax.while_loop`` decode, per-row sampling and stops.

One compiled program serves every prompt and setting in a shape bucket:

* static (recompile): batch size, prompt bucket ``P``, cache bucket ``S``, the model's structure;
* traced (never recompile): tokens, per-row sampling parameters, seeds, token budgets, stop ids,
  newline guard, context limit, and the decode step limit (so streaming reuses the same program).

Prompts are left-aligned and right-padded to ``P``; row b's tokens sit at slots ``[0, len_b)`` of its
cache and slot = position, and each row writes its next token at its own length (see
:mod:`smollm3_jax.kv_cache`). The first token is sampled at the end of prefill; each decode step feeds
the last token, samples the next and records it.

Decode cost follows the text, not the budget: a decode program reads only a window ``[0, W)`` of the
cache, W a static bucket (:data:`WINDOW_BUCKETS`) that covers every active row's length. The loop
leaves when a row is about to outgrow the window, and the host continues with the next bucket, so a
generation compiles one decode program per window bucket it reaches (each once per process, and
kept in the persistent compilation cache). Measured on the demo, batch 8, the same prompt and 48
steps: with the whole 4096-slot cache read every step, 20 tokens/s; with the window, the same as a
256-slot cache (see the README's performance section). A blocked attention loop with a dynamic trip
count would avoid the extra compiles, but on CPU one product over the window is faster than a loop
of small ones, and buckets of 2x bound the wasted read to the window's half.

Imports the model, cache, sampling, sharding, thinking, validation and generation defaults; never
the loaders, the sweep or the serving modules.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Iterator, NamedTuple, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax import sampling, validation
from smollm3_jax.kv_cache import DEFAULT_BATCH_BUCKETS, DEFAULT_BUCKETS, KVCache, bucket_length, window_length
from smollm3_jax.model import SmolLM3
from smollm3_jax.thinking import VisibleText, prompt_opens_thinking, split_thinking

STOP_REASONS = ("", "eos", "max_tokens", "newlines", "context")
_EOS, _MAX_TOKENS, _NEWLINES, _CONTEXT = 1, 2, 3, 4
_MAX_STOP_IDS = 8  # stop ids travel as a fixed-size traced array, padded with -1

# How many times each jitted function was traced/compiled in this process (tests read it).
COMPILE_COUNTS: collections.Counter = collections.Counter()


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Completion:
  """One prompt's generation. ``token_ids`` include the stop token when one ended the row."""

  prompt: str
  prompt_token_ids: list[int]
  token_ids: list[int]
  text: str
  thinking: str
  answer: str
  stop_reason: str
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GenerationStats:
  """Timings of one call, in seconds; throughput in tokens per second."""

  prompt_tokens: int = 0
  generated_tokens: int = 0
  compile_seconds: float = 0.0
  prefill_seconds: float = 0.0
  time_to_first_token: float = 0.0
  decode_seconds: float = 0.0
  decode_tokens_per_second: float = 0.0
  batch_size: int = 0
  prompt_bucket: int = 0
  cache_length: int = 0

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class GenerationResult:
  completions: list[Completion]
  stats: GenerationStats

  def __iter__(self):
    return iter(self.completions)

  def __len__(self):
    return len(self.completions)

  def __getitem__(self, i):
    return self.completions[i]


# --------------------------------------------------------------------------------------------
# Decode state and the two jitted functions
# --------------------------------------------------------------------------------------------
@flax.struct.dataclass
class DecodeState:
  """Everything the decode loop carries. Shapes: B rows, N = output buffer length."""

  cache: KVCache
  tokens: jax.Array          # [B, N] int32 generated tokens (pad after a row stops)
  last: jax.Array            # [B] int32 last sampled token
  step: jax.Array            # [] int32 tokens sampled so far (rows share it)
  num_generated: jax.Array   # [B] int32
  done: jax.Array            # [B] bool
  reason: jax.Array          # [B] int32 index into STOP_REASONS
  newline_run: jax.Array     # [B] int32 consecutive newline tokens
  presence: jax.Array        # [B, V] bool tokens seen (prompt + generated), for repetition penalty
  keys: jax.Array            # [B] per-row PRNG keys
  params: sampling.SamplingParams
  prompt_len: jax.Array      # [B] int32 real prompt tokens
  max_new: jax.Array         # [B] int32 token budget
  newline_limit: jax.Array   # [B] int32, 0 = no guard
  context_limit: jax.Array   # [] int32 positions available
  stop_ids: jax.Array        # [_MAX_STOP_IDS] int32, -1 padded
  newline_ids: jax.Array     # [M] int32 tokens that are only newlines
  pad_id: jax.Array          # [] int32


def _record(s: DecodeState, logits: jax.Array) -> DecodeState:
  """Samples one token per active row from logits [B, V] and applies the stop rules."""
  keys = sampling.step_keys(s.keys, s.step)
  tok = sampling.sample_tokens(logits.astype(jnp.float32), s.presence, s.params, keys)
  active = ~s.done
  tok = jnp.where(active, tok, s.pad_id).astype(jnp.int32)
  tokens = jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (jnp.zeros((), jnp.int32), s.step))
  n = s.num_generated + active.astype(jnp.int32)
  is_stop = jnp.any(tok[:, None] == s.stop_ids[None, :], axis=-1)
  is_newline = jnp.any(tok[:, None] == s.newline_ids[None, :], axis=-1)
  newline_run = jnp.where(is_newline, s.newline_run + 1, 0)
  reason = s.reason
  undecided = active & (reason == 0)
  reason = jnp.where(undecided & is_stop, _EOS, reason)
  reason = jnp.where(active & (reason == 0) & (n >= s.max_new), _MAX_TOKENS, reason)
  reason = jnp.where(active & (reason == 0) & (s.newline_limit > 0) & (newline_run >= s.newline_limit),
                     _NEWLINES, reason)
  reason = jnp.where(active & (reason == 0) & (s.prompt_len + n >= s.context_limit), _CONTEXT, reason)
  return s.replace(
      tokens=tokens, last=tok, step=s.step + 1, num_generated=n, done=reason != 0, reason=reason,
      newline_run=newline_run, presence=sampling.update_presence(s.presence, tok, active))


def _prefill_chunk(graphdef, state, tokens, cache):
  """Writes one chunk of the prompts, [B, C] tokens, at every row's ``cache.lengths`` (the same
  offset for all rows: a long prompt's first chunks; no logits, nothing sampled). Returns the cache."""
  COMPILE_COUNTS["prefill_chunk"] += 1
  model = nnx.merge(graphdef, state)
  _, cache = model.hidden_states(tokens, None, cache)
  return cache


def _prefill(graphdef, state, tokens, lengths, cache, rest: DecodeState, row_index=None, tail=None):
  """Runs the right-padded prompts [B, P] (``lengths`` [B] real tokens) through the model, fills the
  cache, samples token 0.

  With ``tail`` (static), row b runs only its last ``tail`` tokens here (from slot
  ``max(len_b - tail, 0)``): :func:`_prefill_chunk` has written the slots before. Either way all P
  tokens count for the repetition penalty.

  With ``row_index`` [B], ``tokens``/``lengths`` hold only the distinct prompts [U, P]: each is run
  once and row b takes the keys, values and logits of prompt ``row_index[b]`` (a sweep repeats
  every prompt once per setting, so this divides its prefill work by the number of settings).
  """
  COMPILE_COUNTS["prefill"] += 1
  model = nnx.merge(graphdef, state)
  b, p = tokens.shape
  t = p if tail is None else tail
  first = jnp.clip(lengths - t, 0, p - t)  # [B] the slot each row's pass starts at
  window = jnp.take_along_axis(tokens, first[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :], axis=1)
  last = (lengths - 1 - first)[:, None, None]  # each row's last real token within its pass
  if row_index is None:
    hidden, cache = model.hidden_states(window, None, cache.replace(lengths=first))
    logits = model.logits(jnp.take_along_axis(hidden, last, axis=1)[:, 0, :])
  else:
    distinct = KVCache.init(model.config, b, cache.length, cache.k[0].dtype)
    hidden, distinct = model.hidden_states(window, None, distinct)
    take = lambda x: jnp.take(x, row_index, axis=0)
    cache = cache.replace(k=tuple(map(take, distinct.k)), v=tuple(map(take, distinct.v)))
    logits = take(model.logits(jnp.take_along_axis(hidden, last, axis=1)[:, 0, :]))
    tokens, lengths = take(tokens), take(lengths)
  cache = cache.replace(lengths=lengths)
  valid = jnp.arange(p, dtype=jnp.int32)[None, :] < lengths[:, None]
  presence = sampling.presence_from_tokens(tokens, valid, model.config.vocab_size)
  s = rest.replace(cache=cache, presence=presence)
  return _record(s, logits)


def _decode(graphdef, state, s: DecodeState, step_limit, window: int):
  """Decodes until every row stopped, ``step_limit`` tokens were sampled, the buffer is full, or
  an active row's next slot falls outside the read ``window`` (static): attention reads only the
  cache's first ``window`` slots."""
  COMPILE_COUNTS["decode"] += 1
  model = nnx.merge(graphdef, state)
  capacity = s.tokens.shape[1]

  def cond(s):
    fits = jnp.all(s.done | (s.cache.lengths < window))
    return (s.step < jnp.minimum(step_limit, capacity)) & ~jnp.all(s.done) & fits

  def body(s):
    hidden, cache = model.hidden_states(s.last[:, None], None, s.cache, window)
    # A finished row keeps its length (its writes land on the slot after its text, unread).
    cache = cache.replace(lengths=jnp.where(s.done, s.cache.lengths, cache.lengths))
    logits = model.logits(hidden[:, 0, :])
    return _record(s.replace(cache=cache), logits)

  return jax.lax.while_loop(cond, body, s)


_prefill_jit = jax.jit(_prefill, static_argnums=(0,), static_argnames=("tail",), donate_argnums=(4,))
_prefill_chunk_jit = jax.jit(_prefill_chunk, static_argnums=(0,), donate_argnums=(3,))
# Prompts longer than this many slots are prefilled in chunks of it, with a progress bar: the
# user sees the work advance.
PREFILL_CHUNK = 512
_decode_jit = jax.jit(_decode, static_argnums=(0,), static_argnames=("window",), donate_argnums=(2,))
# Read windows of the decode programs (slots); the last one used is the cache length itself.
WINDOW_BUCKETS = (256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class Batch(NamedTuple):
  """What ``Engine.prepare`` hands to ``Engine.run``: right-padded prompts [B or U, P], their
  lengths, the empty cache, the rest of the decode state and (shared prefill) each row's distinct
  prompt."""

  tokens: jax.Array
  lengths: jax.Array
  cache: KVCache
  rest: DecodeState
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
      from smollm3_jax.sharding import engine_sharding
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
    (executable, seconds spent)."""
    key = (name, self.graphdef, self._state_key, _aval_key(args[1:]), tuple(sorted(static.items())))
    exe = self._compiled.get(key)
    if exe is not None:
      return exe, 0.0
    t0 = time.perf_counter()
    exe = fn.lower(self.graphdef, *args, **static).compile()
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
    if len(stop_ids) > _MAX_STOP_IDS:
      raise ValueError(f"stop_ids: at most {_MAX_STOP_IDS} stop ids, got {len(stop_ids)}")

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
    stop_arr = np.full((_MAX_STOP_IDS,), -1, np.int32)
    stop_arr[:len(stop_ids)] = stop_ids
    init_cache = self.sharding.init_cache if self.sharding is not None else KVCache.init
    cache = init_cache(cfg, batch, cache_len, self.cache_dtype)
    rest = DecodeState(
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
        params=params,
        prompt_len=jnp.asarray(full_lengths),
        max_new=jnp.asarray(max_new),
        newline_limit=jnp.asarray(rows(newline_limit.astype(np.int32), 0)),
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
    if self.sharding is not None:
      tokens, prompt_lengths, cache, rest = self.sharding.place_batch(tokens, prompt_lengths, cache, rest)
    rest = rest.replace(cache=None)
    return n, Batch(tokens, prompt_lengths, cache, rest, row_index)

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
        exe, compile_s = self._compiled_fn("prefill_chunk", _prefill_chunk_jit, self.state, tokens[:, :chunk],
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
    tokens, lengths, cache, rest, row_index = Batch(*args)
    cache, tail, c0, t_chunks = self._prefill_chunks(tokens, lengths, cache, row_index)
    prefill, c1 = self._compiled_fn("prefill", _prefill_jit, self.state, tokens, lengths, cache, rest, row_index,
                                    tail=tail)
    t0 = time.perf_counter()
    s = prefill(self.state, tokens, lengths, cache, rest, row_index)
    jax.block_until_ready(s.tokens)
    t1 = time.perf_counter()
    timings = dict(compile_seconds=c0 + c1, prefill_seconds=t_chunks + t1 - t0, time_to_first_token=t1 - t_call,
                   decode_seconds=0.0)
    yield s, timings
    capacity = s.tokens.shape[1]
    while not bool(np.all(np.asarray(s.done)[:n])) and int(s.step) < capacity:
      limit = np.int32(capacity if chunk_steps is None else int(s.step) + chunk_steps)
      decode, c2 = self._compiled_fn("decode", _decode_jit, self.state, s, limit, window=self._window(s, n))
      timings["compile_seconds"] += c2
      t0 = time.perf_counter()
      before = int(s.step)
      s = decode(self.state, s, limit)
      jax.block_until_ready(s.tokens)
      if int(s.step) == before:  # cannot happen: the window always holds the next slot
        raise RuntimeError("decode made no progress (read window smaller than a row's next slot)")
      timings["decode_seconds"] += time.perf_counter() - t0
      yield s, timings


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
_ENGINES: dict[int, Engine] = {}


def get_engine(model: SmolLM3, tokenizer=None, *, mesh=None, **kwargs) -> Engine:
  """The cached Engine of a model (compiled programs are reused across calls).

  ``mesh``: a ``jax.sharding.Mesh``, a ``sharding.MeshSharding`` or a spec like "data=2,model=4";
  by default the mesh the model's parameters already live on (none on a single device).
  """
  from smollm3_jax.sharding import engine_sharding

  eng = _ENGINES.get(id(model))
  if eng is None or eng.model is not model or kwargs or mesh is not None:
    sharding = kwargs.pop("sharding") if "sharding" in kwargs else engine_sharding(model, mesh)
    if eng is None or eng.model is not model or kwargs or eng.sharding != sharding:
      kwargs = {**(sharding.engine_kwargs() if sharding is not None else {}), **kwargs}
      eng = Engine(model, tokenizer, **{"sharding": sharding, **kwargs})
    _ENGINES[id(model)] = eng
  if tokenizer is not None and eng.tokenizer is None:
    eng.tokenizer = tokenizer
  return eng


def row_seeds(seed, n: int) -> np.ndarray:
  """Per-row seeds [n] uint32: given per row, or derived from a base seed and the row's index.
  Seeds are integers in [0, 2**32 - 1] (ValueError otherwise: never truncated or wrapped)."""
  if isinstance(seed, (list, tuple, np.ndarray)) and np.ndim(seed) == 1:
    return validation.as_seeds("seed", seed, n).astype(np.uint32)
  base = np.uint64(validation.as_count("seed", seed, low=0, high=validation.UINT32_MAX))
  idx = np.arange(n, dtype=np.uint64)
  mixed = (base * np.uint64(0x9E3779B1) + idx * np.uint64(0x85EBCA77) + np.uint64(0x165667B1))
  return (mixed & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def render_prompts(tokenizer, prompts, *, chat: bool = True, thinking=True, date=None,
                   vocab_size: int | None = None) -> tuple[list[str], list[list[int]]]:
  """Prompt texts and ids. A prompt is a string (one user message when ``chat``), a message list,
  or a sequence of token ids (used as is, each checked to lie in ``[0, vocab_size)``; default the
  tokenizer's vocabulary). ``date``: the day the chat template sees (see
  ``Tokenizer.apply_chat_template``)."""
  if isinstance(prompts, str) or _is_messages(prompts) or _is_ids(prompts):
    prompts = [prompts]
  if not isinstance(prompts, (list, tuple)):
    raise ValueError(f"prompts must be a string, a message list, token ids or a list of those, "
                     f"got {type(prompts).__name__}")
  prompts = list(prompts)
  if not prompts:
    raise ValueError("prompts: need at least one prompt, got an empty list")
  thinking = validation.as_bools("thinking", thinking, len(prompts))
  texts, ids = [], []
  for i, p in enumerate(prompts):
    if _is_ids(p) or (isinstance(p, (list, tuple, np.ndarray)) and len(p) == 0):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty")
      limit = vocab_size or (tokenizer.vocab_size if tokenizer is not None else 2**31 - 1)
      ids.append(validation.check_token_ids(f"prompt {i}", p, limit))
      texts.append(tokenizer.decode(ids[-1]) if tokenizer is not None else "")
      continue
    if tokenizer is None:
      raise ValueError("a tokenizer is needed for text prompts (or pass token ids)")
    if isinstance(p, str) and not p.strip():
      raise ValueError(f"prompt {i} is empty (or only whitespace)")
    if chat:
      if isinstance(p, str):
        messages = [{"role": "user", "content": p}]
      else:
        try:
          messages = validation.check_messages(p)
        except ValueError as e:
          raise ValueError(f"prompt {i}: {e}") from None
      text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           enable_thinking=bool(thinking[i]), tokenize=False, date=date)
    else:
      if not isinstance(p, str):
        raise ValueError(f"prompt {i}: raw (chat=False) prompts must be strings or token ids")
      text = p
    texts.append(text)
    ids.append(tokenizer.encode(text))
  return texts, ids


def _plain_number(v):
  """A Python int / float for a setting as the caller gave it (numpy scalars unwrapped)."""
  return v.item() if hasattr(v, "item") else v


def _is_messages(p) -> bool:
  return isinstance(p, (list, tuple)) and len(p) > 0 and isinstance(p[0], dict)


def _is_ids(p) -> bool:
  return (isinstance(p, np.ndarray) and p.ndim == 1) or (
      isinstance(p, (list, tuple)) and len(p) > 0 and isinstance(p[0], (int, np.integer)))


def _finish(tokenizer, engine_state: DecodeState, n, texts, prompt_ids, stop_ids, settings) -> list[Completion]:
  toks = np.asarray(engine_state.tokens)
  counts = np.asarray(engine_state.num_generated)
  reasons = np.asarray(engine_state.reason)
  out = []
  for i in range(n):
    ids = toks[i, :counts[i]].tolist()
    body = ids[:-1] if ids and reasons[i] == _EOS and ids[-1] in stop_ids else ids
    text = tokenizer.decode(body) if tokenizer is not None else ""
    thinking, answer = (split_thinking(text, inside=prompt_opens_thinking(texts[i])) if tokenizer is not None
                        else ("", ""))
    out.append(Completion(prompt=texts[i], prompt_token_ids=list(prompt_ids[i]), token_ids=ids, text=text,
                          thinking=thinking, answer=answer, stop_reason=STOP_REASONS[reasons[i]],
                          settings={k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in settings.items()}))
  return out


def _setup(model, tokenizer, prompts, *, chat, thinking, temperature, top_k, top_p, min_p,
           repetition_penalty, max_new_tokens, seed, newline_limit, stop_ids, context_length, engine,
           share_prefill=False, mesh=None, date=None):
  """Checks every argument (before any compile), renders the prompts and prepares the batch."""
  vocab = model.config.vocab_size
  texts, prompt_ids = render_prompts(tokenizer, prompts, chat=chat, thinking=thinking, date=date,
                                     vocab_size=vocab)
  n = len(prompt_ids)
  for i, ids in enumerate(prompt_ids):  # a tokenizer's added tokens may lie beyond the model's
    prompt_ids[i] = validation.check_token_ids(f"prompt {i}", ids, vocab)
  max_new = validation.as_counts("max_new_tokens", max_new_tokens, n, low=1)
  nl = validation.as_counts("newline_limit", 0 if newline_limit is None else newline_limit, n)
  if context_length is not None:
    context_length = validation.as_count("context_length", context_length, low=2,
                                         high=model.config.max_position_embeddings)
  params = sampling.SamplingParams.make(n, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                        repetition_penalty=repetition_penalty)
  seeds = row_seeds(seed, n)
  if stop_ids is None:
    stop_ids = tuple(tokenizer.stop_token_ids) if tokenizer is not None else tuple(model.config.eos_token_id)
  if isinstance(stop_ids, (int, np.integer)):
    stop_ids = (stop_ids,)
  stop_ids = tuple(validation.check_token_ids("stop_ids", list(stop_ids), vocab))
  engine = engine or get_engine(model, tokenizer, mesh=mesh)
  engine.sync()
  n, args = engine.prepare(prompt_ids, params=params, seeds=seeds, max_new_tokens=max_new,
                           newline_limit=nl, stop_ids=stop_ids, context_length=context_length,
                           share_prefill=share_prefill)
  # Settings echoed as given (0.7, not its float32 value 0.699999988079071).
  given = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
               repetition_penalty=repetition_penalty)
  settings = {name: [_plain_number(v) for v in validation.per_row(name, value, n)]
              for name, value in given.items()}
  settings.update(seed=seeds, thinking=validation.as_bools("thinking", thinking, n))
  return engine, n, args, texts, prompt_ids, tuple(stop_ids), settings


def _stats(state: DecodeState, n, prompt_ids, timings) -> GenerationStats:
  gen = int(np.asarray(state.num_generated)[:n].sum())
  decode_tokens = max(gen - n, 0)  # the first token of each row comes from prefill
  dt = timings["decode_seconds"]
  return GenerationStats(
      prompt_tokens=int(sum(len(p) for p in prompt_ids)), generated_tokens=gen,
      compile_seconds=timings["compile_seconds"], prefill_seconds=timings["prefill_seconds"],
      time_to_first_token=timings["time_to_first_token"], decode_seconds=dt,
      decode_tokens_per_second=decode_tokens / dt if dt > 0 else 0.0,
      batch_size=int(state.tokens.shape[0]), prompt_bucket=int(state.cache.length - state.tokens.shape[1] + 1),
      cache_length=int(state.cache.length))


def generate(model: SmolLM3, tokenizer, prompts, *, chat: bool = True, thinking=None,
             temperature=None, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
             max_new_tokens=None, seed=0, newline_limit=None, stop_ids=None,
             context_length: int | None = None, engine: Engine | None = None, mesh=None,
             share_prefill: bool = False, date=None) -> GenerationResult:
  """Generates one completion per prompt.

  ``prompts``: a string, a list of strings, or message lists (``chat=True`` renders them with the
  chat template; ``thinking`` maps to its ``enable_thinking``). Every sampling argument, the seed,
  ``thinking``, ``max_new_tokens`` and ``newline_limit`` may be a scalar or one value per prompt.
  Sampling arguments, ``max_new_tokens`` and ``thinking`` left as None take the checkpoint's
  defaults (:func:`smollm3_jax.generation_defaults.for_tokenizer`: its generation_config.json, else
  the documented table; without a tokenizer, greedy; thinking on). ``temperature=0`` is greedy. ``newline_limit=N`` stops a row after N consecutive newline tokens.
  ``mesh`` (a Mesh or "data=D,model=M") shards the run; by default the model's own mesh, if any.
  ``share_prefill=True`` runs each distinct prompt through prefill once and shares its cache among
  the rows that repeat it (a grid of settings over a few prompts); the number of distinct prompts
  then sets the prefill program's batch bucket, so it may compile once per such bucket.
  ``date`` is the day the chat template sees (SmolLM3 writes it into the prompt): a date,
  "YYYY-MM-DD", or None for ``$SMOLLM3_JAX_CHAT_DATE`` when set, else today.
  Every argument is checked before anything compiles (ValueError naming it).
  """
  from smollm3_jax import generation_defaults

  filled = generation_defaults.for_tokenizer(tokenizer).fill(
      thinking=thinking, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
      repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
  engine, n, args, texts, prompt_ids, stop_ids, settings = _setup(
      model, tokenizer, prompts, chat=chat, **filled, seed=seed, newline_limit=newline_limit,
      stop_ids=stop_ids, context_length=context_length, engine=engine, mesh=mesh,
      share_prefill=share_prefill, date=date)
  state = timings = None
  for state, timings in engine.run(n, args):
    pass
  return GenerationResult(_finish(tokenizer, state, n, texts, prompt_ids, stop_ids, settings),
                          _stats(state, n, prompt_ids, timings))


class Stream:
  """Iterates over text pieces of one prompt's completion as it decodes; ``.result`` afterwards.

  Runs the same compiled decode program in chunks of ``chunk_steps`` tokens.
  """

  def __init__(self, model, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4, **kwargs):
    from smollm3_jax import generation_defaults
    from smollm3_jax.tokenizer import IncrementalDecoder

    unknown = sorted(set(kwargs) - set(_DEFAULTS))
    if unknown:
      raise TypeError(f"stream() got unexpected keyword argument(s): {', '.join(unknown)}")
    validation.as_count("chunk_steps", chunk_steps, low=1)
    if not (isinstance(prompt, str) or _is_messages(prompt) or _is_ids(prompt)):
      raise ValueError("stream() takes one prompt: a string, a message list or token ids")
    args = {**_DEFAULTS, **kwargs}
    args.update(generation_defaults.for_tokenizer(tokenizer).fill(
        **{name: args[name] for name in (*generation_defaults.FIELDS, "thinking")}))
    self._setup = _setup(model, tokenizer, [prompt], **args)
    self._tokenizer = tokenizer
    self._decoder = IncrementalDecoder(tokenizer)
    self._hide = hide_thinking
    self._chunk = chunk_steps
    self.result: GenerationResult | None = None
    self.cancelled = False

  def cancel(self):
    """Stops decoding after the current chunk (the result then holds what was decoded)."""
    self.cancelled = True

  def __iter__(self) -> Iterator[str]:
    engine, n, args, texts, prompt_ids, stop_ids, settings = self._setup
    fed = 0
    shown = VisibleText(self._hide, inside=prompt_opens_thinking(texts[0]))
    state = timings = None
    for state, timings in engine.run(n, args, chunk_steps=self._chunk):
      count = int(np.asarray(state.num_generated)[0])
      ids = np.asarray(state.tokens)[0, fed:count].tolist()
      finished = bool(np.asarray(state.done)[0])
      if finished and int(np.asarray(state.reason)[0]) == _EOS and ids and ids[-1] in stop_ids:
        ids = ids[:-1]
      fed = count
      piece = "".join(self._decoder.push(t) for t in ids)
      out = shown.feed(piece)
      if out:
        yield out
      if self.cancelled:
        break
    tail = shown.feed(self._decoder.flush(), final=True)
    if tail:
      yield tail
    self.result = GenerationResult(_finish(self._tokenizer, state, n, texts, prompt_ids, stop_ids, settings),
                                   _stats(state, n, prompt_ids, timings))


# stream()'s keyword arguments and their defaults (None: the checkpoint's, as in generate()).
_DEFAULTS = dict(chat=True, thinking=None, temperature=None, top_k=None, top_p=None, min_p=None,
                 repetition_penalty=None, max_new_tokens=None, seed=0, newline_limit=None, stop_ids=None,
                 context_length=None, engine=None, mesh=None, share_prefill=False, date=None)


def stream(model: SmolLM3, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4,
           **kwargs) -> Stream:
  """Streams one prompt's completion as text pieces (same arguments as :func:`generate`).

      s = stream(model, tok, "Tell me a story.")
      for piece in s: print(piece, end="")
      s.result          # after the loop: the GenerationResult, as generate() returns it (stats included)
  """
  return Stream(model, tokenizer, prompt, hide_thinking=hide_thinking, chunk_steps=chunk_steps, **kwargs)
