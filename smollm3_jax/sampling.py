"""Per-row logits processing and token sampling, equal to ``transformers`` generate.

Every sampling setting is a traced ``[B]`` array, so a grid of settings runs as
one batch inside a jitted decode loop and changing a value never recompiles.

The chain follows ``GenerationMixin._get_logits_processor``: repetition penalty
(applied for greedy and sampled rows), then, for sampled rows only
(``do_sample=True``), temperature -> top-k -> top-p -> min-p, all with
``filter_value=-inf`` and ``min_tokens_to_keep=1``. Rows with temperature 0 are
greedy: argmax of the repetition-penalised logits, as ``do_sample=False``.

Each filter keeps the tokens at or above a per-row cut-off value. Top-k and top-p find
their cut-offs without sorting the vocabulary: 32 rounds of bisection over order-preserving
integer keys of the values, each a compare-and-count (top-k) or compare-and-sum (top-p) over
the row, as TPU serving stacks do; min-p is elementwise. Ties with the cut-off value are kept
(transformers' top-k does the same; for top-p a tie across the cut-off is resolved by torch's
sort order, which is unspecified anyway). See ``_top_p_keep`` for the rounding at the cut-off.

Imports nothing from the package: pure functions over arrays, used by the decode loop.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

# "Off" value of each parameter, in the order of SamplingParams' fields.
_OFF = {
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
}
_DTYPES = {
    "temperature": np.float32,
    "top_k": np.int32,
    "top_p": np.float32,
    "min_p": np.float32,
    "repetition_penalty": np.float32,
}


def _as_host_array(name: str, value: Any, batch: int | None) -> np.ndarray:
  """Scalar or sequence -> 1-D float64 numpy array (length-checked)."""
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"`{name}` must be a number or a sequence of numbers, got {value!r}") from e
  if arr.ndim > 1:
    raise ValueError(f"`{name}` must be a scalar or 1-D, got shape {arr.shape}")
  if arr.ndim == 1 and batch is not None and arr.shape[0] != batch:
    raise ValueError(f"`{name}` has length {arr.shape[0]}, expected batch size {batch}")
  if arr.ndim == 0 and batch is not None:
    arr = np.full((batch,), float(arr))
  return np.atleast_1d(arr)


def validate_sampling_args(*, batch: int | None = None, **kwargs: Any) -> None:
  """Host-side check of sampling settings; raises ValueError naming the parameter.

  Each keyword (temperature, top_k, top_p, min_p, repetition_penalty) is a
  scalar or a length-``batch`` sequence. Runs in numpy: call it before jit.
  """
  if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer))
                            or batch < 1):
    raise ValueError(f"`batch` must be a positive int, got {batch!r}")
  for name, value in kwargs.items():
    if name not in _OFF:
      raise ValueError(f"unknown sampling parameter `{name}`; expected one of {sorted(_OFF)}")
    arr = _as_host_array(name, value, batch)
    if not np.all(np.isfinite(arr)):
      raise ValueError(f"`{name}` must be finite, got {value!r}")
    if np.any(np.abs(arr) > np.finfo(np.float32).max):  # becomes inf in the f32 program
      raise ValueError(f"`{name}` is too large for float32, got {value!r}")
    if name == "temperature" and np.any(arr < 0):
      raise ValueError(f"`temperature` must be >= 0 (0 = greedy), got {value!r}")
    elif name == "top_k":
      if np.any(arr < 0):
        raise ValueError(f"`top_k` must be >= 0 (0 = off), got {value!r}")
      if np.any(arr != np.round(arr)):
        raise ValueError(f"`top_k` must be an integer, got {value!r}")
      if np.any(arr > np.iinfo(np.int32).max):
        raise ValueError(f"`top_k` is too large, got {value!r}")
    elif name == "top_p" and np.any((arr <= 0) | (arr > 1)):
      raise ValueError(f"`top_p` must be in (0, 1] (1 = off), got {value!r}")
    elif name == "min_p" and np.any((arr < 0) | (arr > 1)):
      raise ValueError(f"`min_p` must be in [0, 1] (0 = off), got {value!r}")
    elif name == "repetition_penalty" and np.any(arr <= 0):
      raise ValueError(f"`repetition_penalty` must be > 0 (1 = off), got {value!r}")


@flax.struct.dataclass
class SamplingParams:
  """Per-row sampling settings; every field has shape [B]."""

  temperature: jax.Array  # f32, 0.0 = greedy
  top_k: jax.Array  # int32, 0 = off
  top_p: jax.Array  # f32 in (0, 1], 1.0 = off
  min_p: jax.Array  # f32 in [0, 1], 0.0 = off
  repetition_penalty: jax.Array  # f32 > 0, 1.0 = off

  @classmethod
  def make(cls, batch: int, *, temperature: Any = 0.0, top_k: Any = 0, top_p: Any = 1.0,
           min_p: Any = 0.0, repetition_penalty: Any = 1.0) -> "SamplingParams":
    """Validated params; each arg is a scalar or a length-``batch`` sequence."""
    values = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                  repetition_penalty=repetition_penalty)
    validate_sampling_args(batch=batch, **values)
    return cls(**{
        name: jnp.asarray(_as_host_array(name, v, batch).astype(_DTYPES[name]))
        for name, v in values.items()
    })

  @property
  def batch_size(self) -> int:
    return self.temperature.shape[0]

  def take(self, idx: Any) -> "SamplingParams":
    """Rows ``idx`` (int array / slice) of every field."""
    return jax.tree_util.tree_map(lambda a: a[idx], self)

  def pad_to(self, batch: int) -> "SamplingParams":
    """Append "off" rows (greedy, no filters) up to ``batch`` rows."""
    n = self.batch_size
    if batch < n:
      raise ValueError(f"`batch` ({batch}) is smaller than the current batch size ({n})")
    return SamplingParams(**{
        name: jnp.concatenate([getattr(self, name),
                               jnp.full((batch - n,), off, getattr(self, name).dtype)])
        for name, off in _OFF.items()
    })


# ----------------------------------------------------------------------------
# Individual processors. logits: [B, V] f32; per-row parameters: [B].
# ----------------------------------------------------------------------------


def apply_repetition_penalty(logits: jax.Array, presence: jax.Array,
                             penalty: jax.Array) -> jax.Array:
  """Penalise present tokens: logit<0 -> logit*p, else logit/p. presence: [B, V] bool."""
  p = penalty.astype(logits.dtype)[:, None]
  penalised = jnp.where(logits < 0, logits * p, logits / p)
  return jnp.where(presence, penalised, logits)


def apply_temperature(logits: jax.Array, temperature: jax.Array) -> jax.Array:
  """logits / T per row; rows with T == 0 (greedy) are left unchanged."""
  t = temperature.astype(logits.dtype)
  return logits / jnp.where(t == 0, 1.0, t)[:, None]


def _order_keys(x: jax.Array) -> jax.Array:
  """f32 [B, V] -> uint32 keys with the same order as the values (-inf lowest, +inf highest).

  The cut-offs below are searched over these keys, which makes them exact: 32 rounds of bisection
  pin one value out of 2**32, with no rounding of the search itself.
  """
  x = x + 0.0  # -0.0 -> +0.0: equal values get equal keys (a tie at a cut-off stays a tie)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _bisect(lo: jax.Array, hi: jax.Array, keep_up: Callable[[jax.Array], jax.Array]) -> jax.Array:
  """Per row, the largest key ``t`` in [lo, hi] with ``keep_up(t)`` true ([B] uint32), for a
  predicate true at ``lo`` and monotone (true up to some key, false above). 32 rounds of
  compare-and-reduce over the vocabulary; no sort."""

  def round_(_, bounds):
    lo, hi = bounds
    gap = hi - lo
    mid = lo + (gap >> 1) + (gap & 1)  # the upper middle: no overflow, and it always moves
    ok = keep_up(mid)
    return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid - 1)

  lo, hi = jax.lax.fori_loop(0, 32, round_, (lo, jnp.maximum(lo, hi)))
  return lo


def _top_k_keep(keys: jax.Array, top_k: jax.Array) -> jax.Array:
  """[B, V] bool: TopKLogitsWarper's kept set: values >= the k-th largest (ties kept, as
  transformers' ``scores < topk(...)[..., -1]``); every entry where top_k == 0."""
  v = keys.shape[-1]
  k = jnp.clip(top_k, 1, v)[:, None]  # min_tokens_to_keep=1, and transformers clamps k to V
  count_at_least = lambda t: jnp.sum(keys >= t[:, None], axis=-1, dtype=jnp.int32)[:, None] >= k
  kth = _bisect(jnp.min(keys, -1), jnp.max(keys, -1), lambda t: count_at_least(t)[:, 0])
  return (keys >= kth[:, None]) | (top_k <= 0)[:, None]


def _top_p_keep(x: jax.Array, keys: jax.Array, top_p: jax.Array) -> jax.Array:
  """[B, V] bool: TopPLogitsWarper's kept set on logits ``x`` (-inf = already removed).

  transformers sorts ascending and removes the entries whose cumulative probability is <= 1 - top_p,
  always keeping the largest. Equivalently it keeps the values >= c, where c is the smallest value
  whose mass at or below it exceeds 1 - top_p; c is found by bisection over the order keys, summing
  the probabilities below each candidate. Ties at c are all kept (transformers keeps or drops them by
  its sort order, which is unspecified). The masses are summed in another order than a sorted
  cumulative sum, so a token whose cumulative mass lies within float rounding (~1e-7) of
  1 - top_p may fall on the other side than in transformers. top_p == 1: every entry.
  """
  probs = jax.nn.softmax(x, axis=-1)
  limit = (1.0 - top_p)[:, None]
  top = jnp.max(keys, -1)
  # A key t is removed iff the mass at or below it is <= 1 - top_p; find the largest removed key.
  removed = lambda t: (jnp.sum(jnp.where(keys <= t[:, None], probs, 0.0), -1)[:, None] <= limit)[:, 0]
  low = jnp.min(jnp.where(probs > 0, keys, top[:, None]), -1)  # lowest key with mass
  below = low - 1
  last_removed = _bisect(below, top - 1, lambda t: (t == below) | removed(t))
  keep = keys > last_removed[:, None]
  return keep | (top_p >= 1.0)[:, None]


def _min_p_remove(logits: jax.Array, min_p: jax.Array) -> jax.Array:
  """[B, V] bool: MinPLogitsWarper's removal mask (prob < min_p * max prob)."""
  probs = jax.nn.softmax(logits, axis=-1)
  top = jnp.max(probs, axis=-1, keepdims=True)
  # The argmax has prob == top >= min_p * top (min_p <= 1): it is always kept.
  return probs < min_p[:, None] * top


def apply_top_k(logits: jax.Array, top_k: jax.Array) -> jax.Array:
  """-inf below each row's k-th largest logit (ties kept); k == 0: row unchanged."""
  return jnp.where(_top_k_keep(_order_keys(logits), top_k), logits, -jnp.inf)


def apply_top_p(logits: jax.Array, top_p: jax.Array) -> jax.Array:
  """Nucleus filter as TopPLogitsWarper; top_p == 1: row unchanged."""
  return jnp.where(_top_p_keep(logits, _order_keys(logits), top_p), logits, -jnp.inf)


def apply_min_p(logits: jax.Array, min_p: jax.Array) -> jax.Array:
  """-inf where prob < min_p * max prob (MinPLogitsWarper); min_p == 0: unchanged."""
  return jnp.where(_min_p_remove(logits, min_p), -jnp.inf, logits)


def _filter_chain(x: jax.Array, params: SamplingParams) -> jax.Array:
  """top-k -> top-p -> min-p on temperature-scaled logits, by bisection over order keys (no sort
  of the vocabulary: sorting 49k-128k values per row per step is slow on TPUs and GPUs). Each
  filter is skipped when no row uses it."""
  keys = _order_keys(x)
  x = jax.lax.cond(jnp.any(params.top_k > 0),
                   lambda: jnp.where(_top_k_keep(keys, params.top_k), x, -jnp.inf), lambda: x)
  x = jax.lax.cond(jnp.any(params.top_p < 1.0),
                   lambda: jnp.where(_top_p_keep(x, keys, params.top_p), x, -jnp.inf), lambda: x)
  # min-p needs only an elementwise softmax of the top-k/top-p output.
  return jnp.where(_min_p_remove(x, params.min_p), -jnp.inf, x)


def _needs_filter(params: SamplingParams) -> jax.Array:
  sampled = params.temperature > 0
  return jnp.any(sampled & ((params.top_k > 0) | (params.top_p < 1.0) | (params.min_p > 0)))


def _warp(x: jax.Array, params: SamplingParams) -> jax.Array:
  """Temperature then (only if some sampled row uses one) the filters."""
  x = apply_temperature(x, params.temperature)
  # Skip the sort when no row filters (e.g. plain temperature sampling).
  return jax.lax.cond(_needs_filter(params), _filter_chain, lambda y, _: y, x, params)


def process_logits(logits: jax.Array, ctx: "TokenContext | jax.Array", params: SamplingParams, *,
                   num_generated: jax.Array | None = None, stop_ids: jax.Array | None = None) -> jax.Array:
  """Full chain in generate's order -> [B, V] f32: the distribution each row is sampled from.

  Greedy rows (temperature 0) get only the logits processors (no temperature or filters), as
  ``do_sample=False``; sampled rows get the processors, then temperature, top-k, top-p, min-p.
  ``ctx``: the rows' :class:`TokenContext` (a bare [B, V] presence mask is accepted too);
  ``num_generated`` [B] int32 tokens each row generated before this one; ``stop_ids`` [K] int32
  (-1 padded).
  """
  x = _process(logits, _context(ctx), params, num_generated, stop_ids)
  greedy = (params.temperature == 0)[:, None]
  return jnp.where(greedy, x, _warp(x, params))


def _process(logits: jax.Array, ctx: "TokenContext", params: SamplingParams,
             num_generated: jax.Array | None, stop_ids: jax.Array | None) -> jax.Array:
  """The logits processors (greedy and sampled rows alike) -> [B, V] f32."""
  del num_generated, stop_ids  # used by the processors of issue 18
  return apply_repetition_penalty(logits.astype(jnp.float32), ctx.presence, params.repetition_penalty)


_BLOCK = 256  # vocabulary block for the two-level argmax / inverse-CDF below


def _blocks(x: jax.Array, fill) -> jax.Array:
  """[B, V] -> [B, V / _BLOCK, _BLOCK], padding the vocabulary with ``fill``."""
  b, v = x.shape
  pad = -v % _BLOCK
  if pad:
    x = jnp.pad(x, ((0, 0), (0, pad)), constant_values=fill)
  return x.reshape(b, -1, _BLOCK)


def _first_true(mask: jax.Array, fallback: jax.Array) -> jax.Array:
  """Index of the first True along the last axis, or ``fallback`` where there is none."""
  return jnp.where(jnp.any(mask, -1), jnp.argmax(mask, -1), fallback).astype(jnp.int32)


def _last_true(mask: jax.Array) -> jax.Array:
  n = mask.shape[-1]
  return (n - 1 - jnp.argmax(mask[..., ::-1], -1)).astype(jnp.int32)


def argmax_rows(x: jax.Array) -> jax.Array:
  """[B, V] -> [B] int32, the first maximal index per row (as jnp.argmax).

  Two levels (block maxima, then the winning block): on CPU a flat argmax over a large
  vocabulary is ~10x slower than this.
  """
  xb = _blocks(x, -jnp.inf)
  j = jnp.argmax(jnp.max(xb, -1), -1)
  inner = jnp.take_along_axis(xb, j[:, None, None], 1)[:, 0]
  return (j * _BLOCK + jnp.argmax(inner, -1)).astype(jnp.int32)


def _categorical_rows(keys: jax.Array, logits: jax.Array) -> jax.Array:
  """One draw per row from softmax(logits) [B, V] (-inf = never) by inverse-CDF sampling.

  One uniform per row (from the row's own key, so a row's draw never depends on other rows)
  instead of V Gumbel variates: on CPU that is ~40x cheaper at batch 160 x 49k vocabulary. The CDF
  is walked in two levels (block sums, then one block) and the pick is restricted to tokens with
  positive probability, so rounding can never select a filtered token.
  """
  p = _blocks(jnp.exp(logits - jnp.max(logits, -1, keepdims=True)), 0.0)  # [B, NB, BLOCK]
  block_mass = jnp.sum(p, -1)
  block_cdf = jnp.cumsum(block_mass, -1)
  u = jax.vmap(jax.random.uniform)(keys) * block_cdf[:, -1]
  alive = block_mass > 0
  j = _first_true((block_cdf > u[:, None]) & alive, _last_true(alive))
  before = jnp.where(j > 0, jnp.take_along_axis(block_cdf, jnp.maximum(j - 1, 0)[:, None], -1)[:, 0], 0.0)
  inner = jnp.take_along_axis(p, j[:, None, None], 1)[:, 0]  # [B, BLOCK]
  inner_alive = inner > 0
  k = _first_true((before[:, None] + jnp.cumsum(inner, -1) > u[:, None]) & inner_alive,
                  _last_true(inner_alive))
  return j * _BLOCK + k


def sample_tokens(logits: jax.Array, ctx: "TokenContext | jax.Array", params: SamplingParams,
                  keys: jax.Array, *, num_generated: jax.Array | None = None,
                  stop_ids: jax.Array | None = None) -> jax.Array:
  """Next token per row -> [B] int32.

  logits [B, V]; ctx: the rows' :class:`TokenContext` (or a bare [B, V] presence mask);
  keys: [B] typed PRNG keys or [B, 2] uint32 raw keys (one per row, for this step, see
  :func:`step_keys`); num_generated [B] int32 tokens this row generated before this one;
  stop_ids [K] int32 padded with -1 (the ids ``min_new_tokens`` masks).
  Greedy rows take the argmax of the processed logits; the others draw from the warped
  logits. When every row is greedy no warping work is done.
  """
  x = _process(logits, _context(ctx), params, num_generated, stop_ids)
  greedy_tok = argmax_rows(x)

  def sampled(x):
    tok = _categorical_rows(keys, _warp(x, params)).astype(jnp.int32)
    return jnp.where(params.temperature == 0, greedy_tok, tok)

  return jax.lax.cond(jnp.all(params.temperature == 0), lambda _: greedy_tok, sampled, x)


# ----------------------------------------------------------------------------
# Keys and presence masks.
# ----------------------------------------------------------------------------


def row_keys(seeds: jax.Array | Sequence[int]) -> jax.Array:
  """seeds [B] int -> [B] typed PRNG keys, one per row."""
  seeds = jnp.asarray(seeds)
  if seeds.ndim != 1:
    raise ValueError(f"`seeds` must be 1-D [B], got shape {seeds.shape}")
  return jax.vmap(jax.random.key)(seeds)


def step_keys(keys: jax.Array, steps: jax.Array | int) -> jax.Array:
  """Per-step keys: fold_in(row_key, step) per row. keys [B]; steps [B] int32, each row's OWN
  count of tokens sampled (a scalar is broadcast to every row)."""
  steps = jnp.broadcast_to(jnp.asarray(steps, jnp.int32), keys.shape[:1])
  return jax.vmap(jax.random.fold_in)(keys, steps)


# ----------------------------------------------------------------------------
# What the processors know of each row's text.
# ----------------------------------------------------------------------------


@flax.struct.dataclass
class TokenContext:
  """What the processors know of each row's text so far. Every leaf has the batch [B] as its
  first axis (the engine gathers/scatters rows of it by slot)."""

  presence: jax.Array  # [B, V] bool, prompt + generated tokens (repetition penalty)
  counts: jax.Array    # [B, V] int32, generated tokens only (frequency / presence penalties)
  history: jax.Array   # [B, L] int32 token id at each position (slot = position, as the KV cache), -1 = none
  length: jax.Array    # [B] int32 1 + the last position observed (tokens of the row so far)


def init_context(batch: int, vocab_size: int, length: int) -> TokenContext:
  """Empty rows: ``batch`` rows, vocabulary ``vocab_size``, ``length`` positions."""
  return TokenContext(presence=jnp.zeros((batch, vocab_size), bool),
                      counts=jnp.zeros((batch, vocab_size), jnp.int32),
                      history=jnp.full((batch, length), -1, jnp.int32),
                      length=jnp.zeros((batch,), jnp.int32))


def observe(ctx: TokenContext, tokens: jax.Array, positions: jax.Array, valid: jax.Array, *,
            generated: bool) -> TokenContext:
  """Records tokens [B, T] at positions [B, T] where valid [B, T]: prompt chunks
  (``generated=False``) or the sampled token (T = 1, ``generated=True``, also counted).
  Out-of-range ids and positions are dropped."""
  b, v = ctx.presence.shape
  tokens = jnp.asarray(tokens, jnp.int32)
  positions = jnp.asarray(positions, jnp.int32)
  ok = valid & (tokens >= 0) & (tokens < v)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], tokens.shape)
  idx = jnp.where(ok, tokens, v)  # past the vocabulary: dropped
  presence = ctx.presence.at[rows, idx].set(True, mode="drop")
  counts = ctx.counts.at[rows, idx].add(1, mode="drop") if generated else ctx.counts
  l = ctx.history.shape[1]
  at = jnp.where(ok & (positions >= 0) & (positions < l), positions, l)
  history = ctx.history.at[rows, at].set(tokens, mode="drop")
  end = jnp.max(jnp.where(ok, positions + 1, 0), axis=1)
  return TokenContext(presence=presence, counts=counts, history=history,
                      length=jnp.maximum(ctx.length, end))


def _context(ctx: "TokenContext | jax.Array") -> TokenContext:
  """A TokenContext; a bare [B, V] presence mask (the pre-TokenContext interface) gets empty
  counts and history."""
  if isinstance(ctx, TokenContext):
    return ctx
  b, _ = ctx.shape
  return TokenContext(presence=ctx, counts=jnp.zeros(ctx.shape, jnp.int32),
                      history=jnp.full((b, 0), -1, jnp.int32), length=jnp.zeros((b,), jnp.int32))


def update_presence(presence: jax.Array, tokens: jax.Array, valid: jax.Array) -> jax.Array:
  """Set presence[b, tokens[b]] where valid[b]. presence [B, V] bool, tokens/valid [B]."""
  b, v = presence.shape
  # Invalid rows (and out-of-range ids) point past the vocab and are dropped.
  ok = valid & (tokens >= 0) & (tokens < v)
  idx = jnp.where(ok, tokens, v)
  return presence.at[jnp.arange(b), idx].set(True, mode="drop")


def presence_from_tokens(tokens: jax.Array, valid_mask: jax.Array, vocab_size: int) -> jax.Array:
  """[B, T] ids + [B, T] bool -> [B, V] bool, True for ids seen at valid positions."""
  tokens = jnp.asarray(tokens)
  b = tokens.shape[0]
  ok = valid_mask & (tokens >= 0) & (tokens < vocab_size)
  idx = jnp.where(ok, tokens, vocab_size)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], tokens.shape)
  return jnp.zeros((b, vocab_size), bool).at[rows, idx].set(True, mode="drop")
