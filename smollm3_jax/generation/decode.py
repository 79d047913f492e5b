"""What runs under jit: the slot pool's state, the per-pool constants, and the three programs of
continuous batching (prefill a chunk of prompts into slots, insert rows into slots, decode).

A pool has B *slots*; each holds one row (a prompt and its generation) or nothing. Rows come and
go between programs, never inside one:

* :func:`prefill_slots` writes a fixed-size chunk ``[U, C]`` of U prompts into their slots' cache
  (a prompt of any length is written chunk after chunk; nothing is sampled);
* :func:`insert` starts rows in slots: it copies a prefilled prompt's cache and token context to the
  other slots that repeat it (shared prefill), and sets each row's settings, seed and counters;
* :func:`decode` runs the decode loop over all B slots until K steps ran, a slot frees up while
  rows wait, every row stopped, or a row outgrows the read window.

The last prompt token is not prefilled: the first decode step feeds it and samples token 0, so a
row's every token comes from the same step function whatever slot, batch or moment it runs in. A
row's random key for its i-th token is ``fold_in(key(seed), i)``: never the slot or a global step.

* :class:`DecodeState` is the carry (changes every step, donated to every program); its
  :class:`RowSettings` change only at insert. :class:`SharedSettings` are the pool's constants.
  All are traced: changing a value never recompiles.
* static (recompile): B, the cache length S, the prefill chunk ``[U, C]``, the read window, and the
  model's structure.

Slot = position: row b's tokens sit at cache slots ``[0, lengths[b])`` (see
:mod:`smollm3_jax.nn.kv_cache`). Imports the model, the cache and sampling only; the host side (queue,
slots, buckets, compiled programs, placement) is :mod:`smollm3_jax.generation.engine`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from smollm3_jax.generation import sampling
from smollm3_jax.nn.kv_cache import KVCache, merge_rows, put_row, put_split_row, split_rows, take_row, take_split_row

STOP_REASONS = ("", "eos", "max_tokens", "newlines", "context", "stop", "cancelled")
EOS, MAX_TOKENS, NEWLINES, CONTEXT, STOP, CANCELLED = 1, 2, 3, 4, 5, 6  # indices into STOP_REASONS
COPY_BLOCK = 512  # cache slots :func:`insert` copies at a time
MAX_STOP_IDS = 8  # stop ids travel as a fixed-size traced array, padded with -1


@flax.struct.dataclass
class RowSettings:
  """Each slot's row constants, ``[B]`` (set by :func:`insert`)."""

  params: sampling.SamplingParams
  prompt_len: jax.Array  # [B] int32 real prompt tokens
  max_new: jax.Array  # [B] int32 token budget
  newline_limit: jax.Array  # [B] int32, 0 = no guard
  record: jax.Array  # [B] bool: record this row's log-probabilities (pools that record)


@flax.struct.dataclass
class Record:
  """Per generated token (opt-in; a pool without it records nothing and pays nothing), token i of a
  row at index i, as its tokens. N output slots, K alternatives (static: 0 to 20)."""

  logprob: jax.Array  # [B, N] f32 log-softmax of the raw logits at the chosen token
  processed_logprob: jax.Array  # [B, N] f32 the same under the distribution sampled from
  entropy: jax.Array  # [B, N] f32 entropy (nats) of the raw distribution
  processed_entropy: jax.Array  # [B, N] f32 entropy of the distribution sampled from
  rank: jax.Array  # [B, N] int32 1 + tokens with a higher raw logit
  top_ids: jax.Array  # [B, N, K] int32 the K most likely raw tokens
  top_logprobs: jax.Array  # [B, N, K] f32 their raw log-probabilities

  @classmethod
  def init(cls, batch: int, length: int, top: int) -> "Record":
    f = lambda *shape: jnp.zeros(shape, jnp.float32)
    return cls(
      logprob=f(batch, length),
      processed_logprob=f(batch, length),
      entropy=f(batch, length),
      processed_entropy=f(batch, length),
      rank=jnp.zeros((batch, length), jnp.int32),
      top_ids=jnp.zeros((batch, length, top), jnp.int32),
      top_logprobs=f(batch, length, top),
    )


def _entropy(logp: jax.Array) -> jax.Array:
  """[B, V] log-probabilities -> [B] entropy in nats (tokens of probability 0 add nothing)."""
  return -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)


def record_token(record: Record, logits, processed, tok, at) -> Record:
  """``record`` with row b's entry ``at[b]`` (N or more: nothing) set for the chosen ``tok`` [B]."""
  b = tok.shape[0]
  rows = jnp.arange(b)
  raw = jax.nn.log_softmax(logits, axis=-1)
  proc = jax.nn.log_softmax(processed, axis=-1)
  chosen = raw[rows, tok]
  values = dict(
    logprob=chosen,
    processed_logprob=proc[rows, tok],
    entropy=_entropy(raw),
    processed_entropy=_entropy(proc),
    rank=1 + jnp.sum(logits > logits[rows, tok][:, None], axis=-1, dtype=jnp.int32),
  )
  k = record.top_ids.shape[-1]
  if k:
    top_lp, top_ids = jax.lax.top_k(raw, k)
    values.update(top_ids=top_ids.astype(jnp.int32), top_logprobs=top_lp)
  return record.replace(**{name: getattr(record, name).at[rows, at].set(v, mode="drop") for name, v in values.items()})


@flax.struct.dataclass
class DecodeState:
  """The pool's carry. B slots, S cache slots, N = S output slots per row, V = vocabulary."""

  cache: KVCache  # [B, KVH, S, D] per layer; lengths [B]
  rows: RowSettings
  context: sampling.TokenContext  # what the processors know of each row's text
  tokens: jax.Array  # [B, N] int32 generated tokens, token i of a row at index i
  last: jax.Array  # [B] int32 the token the next step feeds
  num_generated: jax.Array  # [B] int32
  done: jax.Array  # [B] bool (an empty slot is done)
  reason: jax.Array  # [B] int32 index into STOP_REASONS
  newline_run: jax.Array  # [B] int32 consecutive newline tokens
  keys: jax.Array  # [B] per-row PRNG keys (from the row's seed)
  record: Record | None = None  # per-token log-probabilities, when asked for


@flax.struct.dataclass
class SharedSettings:
  """Constants of a pool, shared by every slot."""

  context_limit: jax.Array  # [] int32 positions a row may fill (prompt + generated)
  stop_ids: jax.Array  # [MAX_STOP_IDS] int32, -1 padded
  newline_ids: jax.Array  # [M] int32 tokens that are only newlines
  pad_id: jax.Array  # [] int32
  # (static) the filters' search width (sampling.RADICES; the backend's choice: utils.backend)
  search_radix: int = flax.struct.field(pytree_node=False, default=2)


def sample_and_stop(s: DecodeState, shared: SharedSettings, logits: jax.Array) -> DecodeState:
  """Samples one token per active slot from logits [B, V] and applies the stop rules (in this
  order: a stop id, the token budget, the newline guard, the context limit)."""
  rows = s.rows
  keys = sampling.step_keys(s.keys, s.num_generated)
  logits = logits.astype(jnp.float32)
  chain = dict(num_generated=s.num_generated, stop_ids=shared.stop_ids, radix=shared.search_radix)
  if s.record is None:  # static
    tok = sampling.sample_tokens(logits, s.context, rows.params, keys, **chain)
  else:  # the processed logits serve the draw and the record (one pass of the chain, not two)
    processed = sampling.process_logits(logits, s.context, rows.params, **chain)
    tok = sampling.choose_tokens(processed, rows.params, keys)
  active = ~s.done
  tok = jnp.where(active, tok, shared.pad_id).astype(jnp.int32)
  b, capacity = s.tokens.shape
  at = jnp.where(active, s.num_generated, capacity)  # finished rows write nothing
  tokens = s.tokens.at[jnp.arange(b), at].set(tok, mode="drop")
  record = s.record
  if record is not None:  # static: only pools that record hold the buffers; a step pays only when asked

    def write(record):
      return record_token(record, logits, processed, tok, at)

    record = jax.lax.cond(jnp.any(rows.record & active), write, lambda r: r, record)
  n = s.num_generated + active.astype(jnp.int32)
  position = rows.prompt_len + n - 1  # where the new token sits in its row's text
  context = sampling.observe(s.context, tok[:, None], position[:, None], active[:, None], generated=True)
  is_stop = jnp.any(tok[:, None] == shared.stop_ids[None, :], axis=-1)
  is_newline = jnp.any(tok[:, None] == shared.newline_ids[None, :], axis=-1)
  newline_run = jnp.where(is_newline, s.newline_run + 1, 0)
  reason = s.reason
  reason = jnp.where(active & (reason == 0) & is_stop, EOS, reason)
  reason = jnp.where(active & (reason == 0) & (n >= rows.max_new), MAX_TOKENS, reason)
  reason = jnp.where(
    active & (reason == 0) & (rows.newline_limit > 0) & (newline_run >= rows.newline_limit), NEWLINES, reason
  )
  reason = jnp.where(active & (reason == 0) & (rows.prompt_len + n >= shared.context_limit), CONTEXT, reason)
  return s.replace(
    tokens=tokens,
    last=tok,
    num_generated=n,
    done=reason != 0,
    reason=reason,
    newline_run=newline_run,
    context=context,
    record=record,
  )


def _gather(tree, index):
  """Rows ``index`` [U] (clipped into range) of every leaf of ``tree`` (batch-first leaves)."""
  return jax.tree.map(lambda x: jnp.take(x, index, axis=0, mode="clip"), tree)


def _scatter(tree, index, rows):
  """``tree`` with rows ``index`` [U] set to ``rows``; an index past the batch writes nothing."""
  return jax.tree.map(
    lambda x, r: x.at[index].set(r if r.dtype == x.dtype else r.astype(x.dtype), mode="drop"), tree, rows
  )


def prefill_slots(
  graphdef, state, s: DecodeState, tokens, slots, starts, counts, window: int, query_block: int = 0, shards: int = 1
) -> DecodeState:
  """Writes a chunk of prompt tokens ``tokens`` [U, C] into slots ``slots`` [U] (B = no row) at
  positions ``starts[u] ..`` (``counts[u]`` real tokens, the rest padding). Attention reads the
  slots' first ``window`` cache slots (static; it covers every ``starts + C``), taking the queries
  in blocks of ``query_block`` (static; 0: all at once; :func:`~smollm3_jax.nn.model.attend`).
  ``shards`` (static): the devices the pool's rows are split over (``KVCache.shards``). A row whose
  start is 0 begins with an empty token context. Nothing is sampled."""
  model = nnx.merge(graphdef, state)
  u, c = tokens.shape
  cache = s.cache
  # The model runs the U rows inside the pool's cache: it writes each row's new chunk in place (the
  # cache is donated) and reads the rows' windows from it, never a copy of the windows (a gathered
  # copy of the rows' windows, written back whole, moved ~3x the window's bytes at window 4096).
  part = KVCache(
    k=cache.k, v=cache.v, lengths=starts, dtype=cache.dtype, rows=slots, query_block=query_block, shards=shards
  )
  _, part = model.hidden_states(tokens, None, part, window)
  k, v = part.k, part.v
  cache = cache.replace(k=k, v=v, lengths=cache.lengths.at[slots].set(starts + counts, mode="drop"))
  context = _gather(s.context, slots)
  fresh = sampling.init_context(u, model.config.vocab_size, cache.length)
  context = jax.tree.map(
    lambda f, x: jnp.where((starts == 0).reshape((u,) + (1,) * (x.ndim - 1)), f, x), fresh, context
  )
  offsets = jnp.arange(c, dtype=jnp.int32)[None, :]
  context = sampling.observe(context, tokens, starts[:, None] + offsets, offsets < counts[:, None], generated=False)
  return s.replace(cache=cache, context=_scatter(s.context, slots, context))


def insert(s: DecodeState, slots, source, last, rows: RowSettings, seeds, pad_id, shards: int = 1) -> DecodeState:
  """Starts rows in slots ``slots`` [U] (B = no row): each copies the prefilled prompt of slot
  ``source[u]`` (itself, or a slot holding the same prompt, prefilled now or for a row still there:
  shared prefill), feeds
  ``last[u]`` (its prompt's last token) at the next step, and takes ``rows`` [U] and a key from
  ``seeds[u]`` (uint32). A one-token prompt starts from an empty cache row and context. ``shards``
  (static): the devices the pool's rows are split over (``KVCache.shards``)."""
  cache = s.cache
  # Copy the prefilled prompt rows (slot source[u] -> slots[u], where they differ) one by one: the
  # work follows the copies made, never the whole pool.
  copies = (source != slots) & (slots < cache.batch)
  order = jnp.argsort(~copies)  # the copies first
  src, dst = source[order], slots[order]

  def copy_row(i, kv):
    def put(x):
      # Block by block along the slots: each block passes through a temporary small enough for the
      # TPU to keep on chip (a whole row's slice went through HBM: read and written twice).
      length = x.shape[-2]
      block = min(length, COPY_BLOCK)
      for start in range(0, length, block):
        size = min(block, length - start)
        if shards == 1:
          x = put_row(x, take_row(x, src[i], start, size), dst[i], start)
        else:
          x = put_split_row(x, take_split_row(x, src[i], start, size), dst[i], start)
      return x

    return jax.tree.map(put, kv)

  # Rows split over devices: the loop carries each device's rows as [shards, B / shards, ...] (a
  # reshape inside the loop made XLA copy every layer's cache in and out of it).
  kv = (cache.k, cache.v) if shards == 1 else jax.tree.map(lambda x: split_rows(x, shards), (cache.k, cache.v))
  k, v = jax.lax.fori_loop(0, jnp.sum(copies), copy_row, kv)
  if shards > 1:
    k, v = jax.tree.map(merge_rows, (k, v))
  cache = cache.replace(k=k, v=v)
  u = slots.shape[0]
  # The source's prompt only: it may be a running row (the prompt's first slots never change while a
  # row generates), whose context also holds what it generated.
  # (a one-token prompt keeps nothing: an empty context, whatever the slot held before)
  context = sampling.prefix_context(_gather(s.context, source), rows.prompt_len - 1)
  context = sampling.observe(
    context, last[:, None], (rows.prompt_len - 1)[:, None], jnp.ones((u, 1), bool), generated=False
  )
  zeros = jnp.zeros((u,), jnp.int32)
  started = dict(
    rows=rows,
    context=context,
    last=last.astype(jnp.int32),
    num_generated=zeros,
    done=jnp.zeros((u,), bool),
    reason=zeros,
    newline_run=zeros,
    keys=sampling.row_keys(seeds),
    tokens=jnp.full((u, s.tokens.shape[1]), pad_id, jnp.int32),
  )
  s = s.replace(cache=cache.replace(lengths=cache.lengths.at[slots].set(rows.prompt_len - 1, mode="drop")))
  return s.replace(**{name: _scatter(getattr(s, name), slots, value) for name, value in started.items()})


def decode(
  graphdef, state, s: DecodeState, shared: SharedSettings, step_limit, free_target, stop_rows, window: int
) -> tuple[DecodeState, jax.Array]:
  """Decodes every slot until ``step_limit`` steps ran, ``free_target`` slots are done (the host
  has rows waiting for them), every row stopped, or an active row's next slot falls outside the
  read ``window`` (static: attention reads only the cache's first ``window`` slots). First, the
  rows with ``stop_rows`` [B] > 0 stop with that reason (the host's stops: a stop string, a
  cancelled request). Returns the state and the number of steps run."""
  model = nnx.merge(graphdef, state)
  stopped = (stop_rows > 0) & ~s.done
  s = s.replace(done=s.done | stopped, reason=jnp.where(stopped, stop_rows, s.reason))

  def cond(carry):
    s, i = carry
    fits = jnp.all(s.done | (s.cache.lengths < window))
    waiting = jnp.sum(s.done) >= free_target
    return (i < step_limit) & ~jnp.all(s.done) & fits & ~waiting

  def body(carry):
    s, i = carry
    hidden, cache = model.hidden_states(s.last[:, None], None, s.cache, window)
    # A finished row keeps its length (its writes land on the slot after its text, unread).
    cache = cache.replace(lengths=jnp.where(s.done, s.cache.lengths, cache.lengths))
    logits = model.logits(hidden[:, 0, :])
    return sample_and_stop(s.replace(cache=cache), shared, logits), i + 1

  return jax.lax.while_loop(cond, body, (s, jnp.zeros((), jnp.int32)))


def compact(s: DecodeState, index) -> DecodeState:
  """The pool narrowed to the slots ``index`` [B'] (in that order): what the host runs once the queue
  is empty and most slots idle, so the remaining rows stop paying for the empty ones."""
  return _gather(s, index)


def tails(tokens, record, starts, width: int):
  """Each row's outputs from index ``starts[b]`` on, ``width`` of them: tokens [B, N] -> [B, width]
  (and every record field the same way; record may be None). What the host copies after a decode
  chunk: the tokens new since its last look, not the whole [B, N] buffer. ``starts`` [B] int32 must
  be <= N - width (the host clamps them)."""
  take = lambda x: jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, width, axis=0))(x, starts)
  return take(tokens), (jax.tree.map(take, record) if record is not None else None)


# Jitted with the model's graphdef static and the pool's state donated (updated in place).
prefill_slots_jit = jax.jit(
  prefill_slots, static_argnums=(0,), static_argnames=("window", "query_block", "shards"), donate_argnums=(2,)
)
insert_jit = jax.jit(insert, static_argnames=("shards",), donate_argnums=(0,))
compact_jit = jax.jit(compact)  # (a narrower output: nothing to donate into)
decode_jit = jax.jit(decode, static_argnums=(0,), static_argnames=("window",), donate_argnums=(2,))
tails_jit = jax.jit(tails, static_argnames=("width",))
