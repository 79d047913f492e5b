"""What runs under jit: the decode loop's carry, the per-call constants, prefill, the decode loop,
and the sample-and-stop step they share.

* :class:`DecodeState` is the loop carry (changes every step, donated to each program);
* :class:`RowSettings` are per-row constants (``[B]``: sampling parameters, prompt lengths, token
  budgets, newline guard) and :class:`SharedSettings` the constants of the whole batch (context
  limit, stop ids, newline ids, pad id). All are traced: changing a value never recompiles.
* static (recompile): batch size, prompt bucket ``P``, cache length ``S``, the read window, the
  tokens per row of prefill's last pass, and the model's structure.

Prompts are left-aligned and right-padded to ``P``; row b's tokens sit at slots ``[0, len_b)`` of its
cache and slot = position, and each row writes its next token at its own length (see
:mod:`smollm3_jax.kv_cache`). The first token is sampled at the end of prefill; each decode step feeds
the last token, samples the next and records it.

Imports the model, the cache and sampling only; the host side (buckets, padding, compiled-program
cache, placement) is :mod:`smollm3_jax.engine`.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from smollm3_jax import sampling
from smollm3_jax.kv_cache import KVCache

STOP_REASONS = ("", "eos", "max_tokens", "newlines", "context")
EOS, MAX_TOKENS, NEWLINES, CONTEXT = 1, 2, 3, 4  # indices into STOP_REASONS
MAX_STOP_IDS = 8  # stop ids travel as a fixed-size traced array, padded with -1


@flax.struct.dataclass
class DecodeState:
  """The loop carry. B rows, N = output buffer length, V = vocabulary."""

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


@flax.struct.dataclass
class RowSettings:
  """Per-row constants of one call, each ``[B]``."""

  params: sampling.SamplingParams
  prompt_len: jax.Array      # [B] int32 real prompt tokens
  max_new: jax.Array         # [B] int32 token budget
  newline_limit: jax.Array   # [B] int32, 0 = no guard


@flax.struct.dataclass
class SharedSettings:
  """Constants of one call shared by every row."""

  context_limit: jax.Array   # [] int32 positions available
  stop_ids: jax.Array        # [MAX_STOP_IDS] int32, -1 padded
  newline_ids: jax.Array     # [M] int32 tokens that are only newlines
  pad_id: jax.Array          # [] int32


def sample_and_stop(s: DecodeState, rows: RowSettings, shared: SharedSettings, logits: jax.Array) -> DecodeState:
  """Samples one token per active row from logits [B, V] and applies the stop rules (in this
  order: a stop id, the token budget, the newline guard, the context limit)."""
  keys = sampling.step_keys(s.keys, s.step)
  tok = sampling.sample_tokens(logits.astype(jnp.float32), s.presence, rows.params, keys)
  active = ~s.done
  tok = jnp.where(active, tok, shared.pad_id).astype(jnp.int32)
  tokens = jax.lax.dynamic_update_slice(s.tokens, tok[:, None], (jnp.zeros((), jnp.int32), s.step))
  n = s.num_generated + active.astype(jnp.int32)
  is_stop = jnp.any(tok[:, None] == shared.stop_ids[None, :], axis=-1)
  is_newline = jnp.any(tok[:, None] == shared.newline_ids[None, :], axis=-1)
  newline_run = jnp.where(is_newline, s.newline_run + 1, 0)
  reason = s.reason
  undecided = active & (reason == 0)
  reason = jnp.where(undecided & is_stop, EOS, reason)
  reason = jnp.where(active & (reason == 0) & (n >= rows.max_new), MAX_TOKENS, reason)
  reason = jnp.where(active & (reason == 0) & (rows.newline_limit > 0) & (newline_run >= rows.newline_limit),
                     NEWLINES, reason)
  reason = jnp.where(active & (reason == 0) & (rows.prompt_len + n >= shared.context_limit), CONTEXT, reason)
  return s.replace(
      tokens=tokens, last=tok, step=s.step + 1, num_generated=n, done=reason != 0, reason=reason,
      newline_run=newline_run, presence=sampling.update_presence(s.presence, tok, active))


def prefill_chunk(graphdef, state, tokens, cache):
  """Writes one chunk of the prompts, [B, C] tokens, at every row's ``cache.lengths`` (the same
  offset for all rows: a long prompt's first chunks; no logits, nothing sampled). Returns the cache."""
  model = nnx.merge(graphdef, state)
  _, cache = model.hidden_states(tokens, None, cache)
  return cache


def prefill(graphdef, state, tokens, lengths, cache, s: DecodeState, rows: RowSettings,
            shared: SharedSettings, row_index=None, tail=None) -> DecodeState:
  """Runs the right-padded prompts [B, P] (``lengths`` [B] real tokens) through the model, fills the
  cache, samples token 0. ``s`` is the initial carry (its cache is ignored).

  With ``tail`` (static), row b runs only its last ``tail`` tokens here (from slot
  ``max(len_b - tail, 0)``): :func:`prefill_chunk` has written the slots before. Either way all P
  tokens count for the repetition penalty.

  With ``row_index`` [B], ``tokens``/``lengths`` hold only the distinct prompts [U, P]: each is run
  once and row b takes the keys, values and logits of prompt ``row_index[b]`` (a sweep repeats
  every prompt once per setting, so this divides its prefill work by the number of settings).
  """
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
    distinct = KVCache.init(model.config, b, cache.length, cache.dtype)
    hidden, distinct = model.hidden_states(window, None, distinct)
    take = lambda x: jnp.take(x, row_index, axis=0)
    cache = cache.replace(k=tuple(map(take, distinct.k)), v=tuple(map(take, distinct.v)))
    logits = take(model.logits(jnp.take_along_axis(hidden, last, axis=1)[:, 0, :]))
    tokens, lengths = take(tokens), take(lengths)
  cache = cache.replace(lengths=lengths)
  valid = jnp.arange(p, dtype=jnp.int32)[None, :] < lengths[:, None]
  presence = sampling.presence_from_tokens(tokens, valid, model.config.vocab_size)
  return sample_and_stop(s.replace(cache=cache, presence=presence), rows, shared, logits)


def decode(graphdef, state, s: DecodeState, rows: RowSettings, shared: SharedSettings, step_limit,
           window: int) -> DecodeState:
  """Decodes until every row stopped, ``step_limit`` tokens were sampled, the buffer is full, or
  an active row's next slot falls outside the read ``window`` (static): attention reads only the
  cache's first ``window`` slots."""
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
    return sample_and_stop(s.replace(cache=cache), rows, shared, logits)

  return jax.lax.while_loop(cond, body, s)


# Jitted with the model's graphdef static and the carry donated (updated in place).
prefill_jit = jax.jit(prefill, static_argnums=(0,), static_argnames=("tail",), donate_argnums=(4, 5))
prefill_chunk_jit = jax.jit(prefill_chunk, static_argnums=(0,), donate_argnums=(3,))
decode_jit = jax.jit(decode, static_argnums=(0,), static_argnames=("window",), donate_argnums=(2,))
