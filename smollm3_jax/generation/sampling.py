"""Per-row logits processing and token sampling, equal to ``transformers`` generate.

Every sampling setting is a traced ``[B]`` array (``logit_bias``: ``[B, MAX_LOGIT_BIAS]`` pairs), so
a grid of settings runs as one batch inside a jitted decode loop and changing a value never
recompiles. The settings' registry and their host-side checks are
:mod:`smollm3_jax.generation.settings` (``SETTINGS`` is re-exported here).

The chain, in ``GenerationMixin._get_logits_processor``'s order (each step skipped when no row uses
it; all filters with ``filter_value=-inf`` and ``min_tokens_to_keep=1``):

  Logits processors (greedy and sampled rows):
    1. ``logit_bias``           SequenceBiasLogitsProcessor with one-token sequences (OpenAI's logit_bias)
    2. ``repetition_penalty``   RepetitionPenaltyLogitsProcessor (prompt + generated tokens)
    3. ``frequency_penalty``,   vLLM's OpenAI penalties: logit - f * count - p * [count > 0], counts over
       ``presence_penalty``     generated tokens (transformers has none; vLLM applies them right after
                                the repetition penalty, and so do we)
    4. ``no_repeat_ngram_size`` NoRepeatNGramLogitsProcessor (prompt + generated tokens)
    5. ``min_new_tokens``       MinNewTokensLengthLogitsProcessor (the stop ids masked until then)
  Warpers (sampled rows only, ``do_sample=True``):
    6. ``temperature`` -> 7. ``top_k`` -> 8. ``top_p`` -> 9. ``min_p`` -> 10. ``typical_p``
       -> 11. ``epsilon_cutoff`` -> 12. ``eta_cutoff``

Rows with temperature 0 are greedy: argmax of the processed logits (1-5), as ``do_sample=False``.

Each filter keeps the tokens at or above a per-row cut-off value. Top-k and top-p find
their cut-offs without sorting the vocabulary: 32 rounds of bisection over order-preserving
integer keys of the values, each a compare-and-count (top-k) or compare-and-sum (top-p) over
the row, as TPU serving stacks do; typical-p is top-p over another order (the distance of each
token's surprisal from the entropy) and bisects the same way; min-p, epsilon and eta are
elementwise. Ties with the cut-off value are kept (transformers' top-k does the same; for top-p
and typical-p a tie across the cut-off is resolved by torch's sort order, which is unspecified
anyway). See ``_top_p_keep`` for the rounding at the cut-off.

What the processors know of each row's text is a :class:`TokenContext` (presence, generated-token
counts, token history by position), kept up to date with :func:`observe`.

Imports only the settings registry: pure functions over arrays, used by the decode loop.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp

from smollm3_jax.generation.settings import SETTINGS, as_host_array, bias_pairs, validate_sampling_args


@flax.struct.dataclass
class SamplingParams:
  """Per-row sampling settings: every field has the batch [B] as its first axis. See
  :data:`SETTINGS` for the meanings and off values."""

  temperature: jax.Array  # [B] f32, 0.0 = greedy
  top_k: jax.Array  # [B] int32, 0 = off
  top_p: jax.Array  # [B] f32 in (0, 1], 1.0 = off
  min_p: jax.Array  # [B] f32 in [0, 1], 0.0 = off
  repetition_penalty: jax.Array  # [B] f32 > 0, 1.0 = off
  typical_p: jax.Array  # [B] f32 in (0, 1], 1.0 = off
  epsilon_cutoff: jax.Array  # [B] f32 in [0, 1), 0.0 = off
  eta_cutoff: jax.Array  # [B] f32 in [0, 1), 0.0 = off
  no_repeat_ngram_size: jax.Array  # [B] int32 >= 0, 0 = off
  frequency_penalty: jax.Array  # [B] f32 in [-2, 2], 0.0 = off
  presence_penalty: jax.Array  # [B] f32 in [-2, 2], 0.0 = off
  min_new_tokens: jax.Array  # [B] int32 >= 0, 0 = off
  logit_bias_ids: jax.Array  # [B, MAX_LOGIT_BIAS] int32, -1 = no pair
  logit_bias_values: jax.Array  # [B, MAX_LOGIT_BIAS] f32

  @classmethod
  def make(
    cls, batch: int, *, vocab_size: int | None = None, validate: bool = True, **settings: Any
  ) -> "SamplingParams":
    """Params [batch]. Each keyword is a name of :data:`SETTINGS` (unknown names raise a ValueError
    naming them), a scalar or a length-``batch`` sequence; ``logit_bias`` is a mapping {token id:
    bias} or a sequence of ``batch`` mappings. Unset settings are off. ``validate=False`` skips the
    range checks for values checked before (the pool's rows, checked when submitted)."""
    if validate:
      validate_sampling_args(batch=batch, vocab_size=vocab_size, **settings)
    fields = {}
    for name, setting in SETTINGS.items():
      value = settings.get(name, setting.off)
      if name == "logit_bias":
        ids, bias = bias_pairs(value, batch, vocab_size)
        fields.update(logit_bias_ids=jnp.asarray(ids), logit_bias_values=jnp.asarray(bias))
      else:
        fields[name] = jnp.asarray(as_host_array(name, value, batch).astype(setting.dtype))
    return cls(**fields)

  @property
  def batch_size(self) -> int:
    return self.temperature.shape[0]

  def take(self, idx: Any) -> "SamplingParams":
    """Rows ``idx`` (int array / slice) of every field."""
    return jax.tree_util.tree_map(lambda a: a[idx], self)


# ----------------------------------------------------------------------------
# Individual processors. logits: [B, V] f32; per-row parameters: [B].
# ----------------------------------------------------------------------------


def apply_repetition_penalty(logits: jax.Array, presence: jax.Array, penalty: jax.Array) -> jax.Array:
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
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  # -0.0 -> +0.0: equal values get equal keys (a tie at a cut-off stays a tie). On the bits: XLA's
  # simplifier folds ``x + 0.0`` to ``x`` under jit, which keeps the sign of a zero.
  bits = jnp.where(bits == jnp.uint32(0x80000000), jnp.uint32(0), bits)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


RADICES = (2, 4, 8, 16, 32)  # the ways a search round may split its interval (powers of two)


def check_radix(radix: int) -> int:
  """``radix`` if it is one of :data:`RADICES`; ValueError naming them otherwise."""
  if radix not in RADICES:
    raise ValueError(f"search radix {radix!r} is not one of {RADICES}")
  return radix


def _bisect(lo: jax.Array, hi: jax.Array, keep_up: Callable[[jax.Array], jax.Array], radix: int = 2) -> jax.Array:
  """Per row, the largest key ``t`` in [lo, hi] with ``keep_up(t)`` true ([B] uint32), for a
  predicate true at ``lo`` and monotone (true up to some key, false above); no sort.

  ``keep_up`` maps candidate keys [B, R] to [B, R] bool. Each round tests ``radix - 1`` keys that
  split the interval into ``radix`` parts, in one pass over the vocabulary, and keeps the part
  holding the answer: 32 / log2(radix) rounds (static ``radix`` in :data:`RADICES`; 2: bisection,
  32 rounds). Every radix finds the same key; a wider one reads the vocabulary fewer times, which is
  what a memory-bound accelerator pays for, and compares more per read, which a CPU pays for."""
  check_radix(radix)
  shift = radix.bit_length() - 1
  rounds = -(-32 // shift)
  j = jnp.arange(1, radix, dtype=jnp.uint32)

  def round_(_, bounds):
    lo, hi = bounds
    gap = hi - lo
    step = (gap >> shift) + 1  # (radix - 1) * step < 2**32: no overflow
    cand = lo[:, None] + jnp.minimum(j[None, :] * step[:, None], gap[:, None])  # [B, R-1], ascending
    ok = keep_up(cand)
    count = jnp.sum(ok, axis=-1)  # monotone: the first ``count`` candidates hold
    new_lo = jnp.where(count > 0, jnp.take_along_axis(cand, jnp.maximum(count - 1, 0)[:, None], -1)[:, 0], lo)
    above = jnp.take_along_axis(cand, jnp.minimum(count, radix - 2)[:, None], -1)[:, 0]
    new_hi = jnp.where(count < radix - 1, above - 1, hi)
    return new_lo, new_hi

  lo, hi = jax.lax.fori_loop(0, rounds, round_, (lo, jnp.maximum(lo, hi)))
  return lo


def _top_k_keep(keys: jax.Array, top_k: jax.Array, radix: int = 2) -> jax.Array:
  """[B, V] bool: TopKLogitsWarper's kept set: values >= the k-th largest (ties kept, as
  transformers' ``scores < topk(...)[..., -1]``); every entry where top_k == 0."""
  v = keys.shape[-1]
  k = jnp.clip(top_k, 1, v)[:, None]  # min_tokens_to_keep=1, and transformers clamps k to V
  count_at_least = lambda t: jnp.sum(keys[:, None, :] >= t[:, :, None], axis=-1, dtype=jnp.int32) >= k
  kth = _bisect(jnp.min(keys, -1), jnp.max(keys, -1), count_at_least, radix)
  return (keys >= kth[:, None]) | (top_k <= 0)[:, None]


def _top_p_keep(x: jax.Array, keys: jax.Array, top_p: jax.Array, radix: int = 2) -> jax.Array:
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
  removed = lambda t: jnp.sum(jnp.where(keys[:, None, :] <= t[:, :, None], probs[:, None, :], 0.0), -1) <= limit
  low = jnp.min(jnp.where(probs > 0, keys, top[:, None]), -1)  # lowest key with mass
  below = low - 1
  last_removed = _bisect(below, top - 1, lambda t: (t == below[:, None]) | removed(t), radix)
  keep = keys > last_removed[:, None]
  return keep | (top_p >= 1.0)[:, None]


def _min_p_remove(logits: jax.Array, min_p: jax.Array) -> jax.Array:
  """[B, V] bool: MinPLogitsWarper's removal mask (prob < min_p * max prob)."""
  probs = jax.nn.softmax(logits, axis=-1)
  top = jnp.max(probs, axis=-1, keepdims=True)
  # The argmax has prob == top >= min_p * top (min_p <= 1): it is always kept.
  return probs < min_p[:, None] * top


def _typical_keep(x: jax.Array, mass: jax.Array, radix: int = 2) -> jax.Array:
  """[B, V] bool: TypicalLogitsWarper's kept set on logits ``x`` (-inf = already removed).

  transformers sorts the tokens by d = |-log p - H| (H the entropy) and keeps those with d at or
  below the d where the cumulative mass first reaches ``mass``. That cut-off is the smallest d whose
  mass at or below it is >= ``mass``: found by bisection over the order keys of d (the masses are
  summed in another order than torch's cumulative sum: the rounding note of ``_top_p_keep``
  applies). A sort of the vocabulary per row and step is what this avoids. mass == 1: every entry.
  """
  logp = jax.nn.log_softmax(x, axis=-1)
  p = jnp.exp(logp)
  entropy = -jnp.sum(jnp.where(p > 0, logp * p, 0.0), -1, keepdims=True)  # torch: nansum
  keys = _order_keys(jnp.abs(-logp - entropy))  # +inf (highest) where p == 0
  # The largest key whose mass at or below it is still < mass; the cut-off is the next key above.
  below = jnp.min(keys, -1) - 1  # keys of d >= 0 are >= 2**31: no wrap-around
  short = lambda t: jnp.sum(jnp.where(keys[:, None, :] <= t[:, :, None], p[:, None, :], 0.0), -1) < mass[:, None]
  last_short = _bisect(below, jnp.max(keys, -1), lambda t: (t == below[:, None]) | short(t), radix)
  cut = jnp.min(jnp.where(keys > last_short[:, None], keys, jnp.uint32(0xFFFFFFFF)), -1)
  return (keys <= cut[:, None]) | (mass >= 1.0)[:, None]


def _epsilon_remove(x: jax.Array, epsilon: jax.Array) -> jax.Array:
  """[B, V] bool: EpsilonLogitsWarper's removal mask (prob < epsilon, the top logit kept)."""
  probs = jax.nn.softmax(x, axis=-1)
  return (probs < epsilon[:, None]) & (x < jnp.max(x, -1, keepdims=True))


def _eta_remove(x: jax.Array, eta: jax.Array) -> jax.Array:
  """[B, V] bool: EtaLogitsWarper's removal mask: prob < min(eta, sqrt(eta) exp(-H)), H the
  entropy as torch's ``Categorical(logits=x).entropy()`` (log-probs clamped to the f32 minimum), the
  top logit kept. eta == 0: nothing removed."""
  logp = jax.nn.log_softmax(x, axis=-1)
  probs = jnp.exp(logp)
  entropy = -jnp.sum(jnp.maximum(logp, jnp.finfo(jnp.float32).min) * probs, -1)
  cut = jnp.minimum(eta, jnp.sqrt(eta) * jnp.exp(-entropy))[:, None]
  return (probs < cut) & (x < jnp.max(x, -1, keepdims=True))


def apply_typical_p(logits: jax.Array, typical_p: jax.Array, radix: int = 2) -> jax.Array:
  """Locally typical filter as TypicalLogitsWarper; typical_p == 1: row unchanged."""
  return jnp.where(_typical_keep(logits, typical_p, radix), logits, -jnp.inf)


def apply_epsilon_cutoff(logits: jax.Array, epsilon: jax.Array) -> jax.Array:
  """-inf where prob < epsilon, the top token kept (EpsilonLogitsWarper); 0: row unchanged."""
  return jnp.where(_epsilon_remove(logits, epsilon), -jnp.inf, logits)


def apply_eta_cutoff(logits: jax.Array, eta: jax.Array) -> jax.Array:
  """EtaLogitsWarper; eta == 0: row unchanged."""
  return jnp.where(_eta_remove(logits, eta), -jnp.inf, logits)


def _filter_chain(x: jax.Array, params: SamplingParams, radix: int = 2) -> jax.Array:
  """top-k -> top-p -> min-p -> typical -> epsilon -> eta on temperature-scaled logits, by a
  search over order keys (:func:`_bisect`, ``radix``) or elementwise (no sort of the vocabulary:
  sorting 49k-128k values per row per step is slow on TPUs and GPUs). Each filter is skipped when
  no row uses it."""
  keys = _order_keys(x)
  x = jax.lax.cond(
    jnp.any(params.top_k > 0), lambda: jnp.where(_top_k_keep(keys, params.top_k, radix), x, -jnp.inf), lambda: x
  )
  x = jax.lax.cond(
    jnp.any(params.top_p < 1.0), lambda: jnp.where(_top_p_keep(x, keys, params.top_p, radix), x, -jnp.inf), lambda: x
  )
  # min-p needs only an elementwise softmax of the top-k/top-p output.
  x = jnp.where(_min_p_remove(x, params.min_p), -jnp.inf, x)
  typical = lambda y, m: apply_typical_p(y, m, radix)
  x = jax.lax.cond(jnp.any(params.typical_p < 1.0), typical, lambda y, _: y, x, params.typical_p)
  x = jax.lax.cond(jnp.any(params.epsilon_cutoff > 0), apply_epsilon_cutoff, lambda y, _: y, x, params.epsilon_cutoff)
  return jax.lax.cond(jnp.any(params.eta_cutoff > 0), apply_eta_cutoff, lambda y, _: y, x, params.eta_cutoff)


def _needs_filter(params: SamplingParams) -> jax.Array:
  sampled = params.temperature > 0
  return jnp.any(
    sampled
    & (
      (params.top_k > 0)
      | (params.top_p < 1.0)
      | (params.min_p > 0)
      | (params.typical_p < 1.0)
      | (params.epsilon_cutoff > 0)
      | (params.eta_cutoff > 0)
    )
  )


def _warp(x: jax.Array, params: SamplingParams, radix: int = 2) -> jax.Array:
  """Temperature then (only if some sampled row uses one) the filters."""
  x = apply_temperature(x, params.temperature)
  # Skip the filters when no row uses one (e.g. plain temperature sampling).
  chain = lambda y, p: _filter_chain(y, p, radix)
  return jax.lax.cond(_needs_filter(params), chain, lambda y, _: y, x, params)


def apply_logit_bias(logits: jax.Array, ids: jax.Array, values: jax.Array) -> jax.Array:
  """logits[b, ids[b, j]] += values[b, j] (SequenceBiasLogitsProcessor with one-token sequences,
  OpenAI's logit_bias); ids [B, M] int32, -1 (or outside the vocabulary) = no pair."""
  b, v = logits.shape
  idx = jnp.where((ids >= 0) & (ids < v), ids, v)  # past the vocabulary: dropped
  return logits.at[jnp.arange(b)[:, None], idx].add(values.astype(logits.dtype), mode="drop")


def apply_openai_penalties(
  logits: jax.Array, counts: jax.Array, frequency_penalty: jax.Array, presence_penalty: jax.Array
) -> jax.Array:
  """vLLM's frequency and presence penalties: logit - f * count - p * [count > 0]; counts [B, V]
  int32 of the generated tokens (not the prompt), penalties [B]."""
  counts = counts.astype(logits.dtype)
  logits = logits - frequency_penalty.astype(logits.dtype)[:, None] * counts
  return logits - presence_penalty.astype(logits.dtype)[:, None] * (counts > 0)


def _ngram_banned(history: jax.Array, length: jax.Array, n: jax.Array, vocab_size: int) -> jax.Array:
  """[B, V] bool: NoRepeatNGramLogitsProcessor's banned tokens. history [B, L] token ids by position,
  length [B] tokens so far, n [B] n-gram sizes (0 = off).

  The window starting at position j (j + n <= length) bans its last token history[j + n - 1] when
  its first n - 1 tokens equal the row's last n - 1 tokens (n = 1: every token seen). One
  compare over the history per n-gram position: O(L x min(max n, length)) per step, no host loop."""
  b, l = history.shape
  cur = jnp.minimum(length, l)
  j = jnp.arange(l, dtype=jnp.int32)[None, :]
  padded = jnp.concatenate([history, jnp.full((b, l), -2, history.dtype)], axis=1)

  def compare(k, match):
    window = jax.lax.dynamic_slice_in_dim(padded, k, l, axis=1)  # history[:, j + k]
    target = jnp.take_along_axis(history, jnp.clip(cur - n + 1 + k, 0, l - 1)[:, None], axis=1)
    return match & ((k >= n - 1)[:, None] | (window == target))

  # Positions k >= n - 1 match trivially, and a row with n > its length bans nothing: the loop stops at
  # the shorter of the two, so an n far beyond the text costs what the text costs.
  rounds = jnp.minimum(jnp.max(n), jnp.max(cur) + 1) - 1
  match = jax.lax.fori_loop(0, rounds, compare, jnp.ones((b, l), bool))
  ok = match & (n > 0)[:, None] & (j <= (cur - n)[:, None])
  last = jnp.take_along_axis(history, jnp.clip(j + n[:, None] - 1, 0, l - 1), axis=1)
  idx = jnp.where(ok & (last >= 0) & (last < vocab_size), last, vocab_size)
  return jnp.zeros((b, vocab_size), bool).at[jnp.arange(b)[:, None], idx].set(True, mode="drop")


def apply_no_repeat_ngram(logits: jax.Array, ctx: "TokenContext", n: jax.Array) -> jax.Array:
  """-inf on the tokens that would repeat an n-gram of the row's history; n == 0: unchanged."""
  return jnp.where(_ngram_banned(ctx.history, ctx.length, n, logits.shape[1]), -jnp.inf, logits)


def apply_min_new_tokens(
  logits: jax.Array, num_generated: jax.Array, min_new_tokens: jax.Array, stop_ids: jax.Array
) -> jax.Array:
  """-inf on the stop ids [K] (-1 padded) of rows that generated fewer than min_new_tokens tokens
  (MinNewTokensLengthLogitsProcessor)."""
  v = logits.shape[1]
  stop = jnp.zeros((v + 1,), bool).at[jnp.where((stop_ids >= 0) & (stop_ids < v), stop_ids, v)].set(True)
  return jnp.where((num_generated < min_new_tokens)[:, None] & stop[None, :v], -jnp.inf, logits)


def process_logits(
  logits: jax.Array,
  ctx: "TokenContext",
  params: SamplingParams,
  *,
  num_generated: jax.Array | None = None,
  stop_ids: jax.Array | None = None,
  radix: int = 2,
) -> jax.Array:
  """Full chain in generate's order -> [B, V] f32: the distribution each row is sampled from.

  Greedy rows (temperature 0) get only the logits processors (no temperature or filters), as
  ``do_sample=False``; sampled rows get the processors, then the warpers (module docstring).
  ``ctx``: the rows' :class:`TokenContext`;
  ``num_generated`` [B] int32 tokens each row generated before this one; ``stop_ids`` [K] int32
  (-1 padded). Without them ``min_new_tokens`` masks nothing. ``radix`` (static): the filters'
  search width (:func:`_bisect`; the same result for every radix).
  """
  x = _process(logits, ctx, params, num_generated, stop_ids)
  greedy = params.temperature == 0
  warped = lambda x: jnp.where(greedy[:, None], x, _warp(x, params, radix))
  return jax.lax.cond(jnp.all(greedy), lambda x: x, warped, x)  # every row greedy: no warping work


def _process(
  logits: jax.Array,
  ctx: "TokenContext",
  params: SamplingParams,
  num_generated: jax.Array | None,
  stop_ids: jax.Array | None,
) -> jax.Array:
  """The logits processors 1-5 (greedy and sampled rows alike) -> [B, V] f32. When no row uses
  1, 3, 4 or 5 one conditional skips them all (the common case costs what the repetition penalty
  alone costs); otherwise each is skipped when no row uses it."""
  x = logits.astype(jnp.float32)
  bias_on = jnp.any(params.logit_bias_ids >= 0)
  penalties_on = jnp.any((params.frequency_penalty != 0) | (params.presence_penalty != 0))
  ngram_on = jnp.any(params.no_repeat_ngram_size > 0) if ctx.history.shape[1] else jnp.bool_(False)
  with_min_new = num_generated is not None and stop_ids is not None  # static
  min_new_on = jnp.any(params.min_new_tokens > 0) if with_min_new else jnp.bool_(False)
  skip = lambda y, *_: y

  def every_step(x):
    x = jax.lax.cond(bias_on, apply_logit_bias, skip, x, params.logit_bias_ids, params.logit_bias_values)
    x = apply_repetition_penalty(x, ctx.presence, params.repetition_penalty)
    x = jax.lax.cond(
      penalties_on, apply_openai_penalties, skip, x, ctx.counts, params.frequency_penalty, params.presence_penalty
    )
    if ctx.history.shape[1]:  # static: a context without history (a bare presence mask) has no n-grams
      x = jax.lax.cond(ngram_on, apply_no_repeat_ngram, skip, x, ctx, params.no_repeat_ngram_size)
    if with_min_new:
      x = jax.lax.cond(
        min_new_on,
        apply_min_new_tokens,
        skip,
        x,
        num_generated,
        params.min_new_tokens,
        jnp.asarray(stop_ids, jnp.int32),
      )
    return x

  return jax.lax.cond(
    bias_on | penalties_on | ngram_on | min_new_on,
    every_step,
    lambda x: apply_repetition_penalty(x, ctx.presence, params.repetition_penalty),
    x,
  )


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
  k = _first_true((before[:, None] + jnp.cumsum(inner, -1) > u[:, None]) & inner_alive, _last_true(inner_alive))
  return j * _BLOCK + k


def sample_tokens(
  logits: jax.Array,
  ctx: "TokenContext",
  params: SamplingParams,
  keys: jax.Array,
  *,
  num_generated: jax.Array | None = None,
  stop_ids: jax.Array | None = None,
  radix: int = 2,
) -> jax.Array:
  """Next token per row -> [B] int32.

  logits [B, V]; ctx: the rows' :class:`TokenContext`;
  keys: [B] typed PRNG keys or [B, 2] uint32 raw keys (one per row, for this step, see
  :func:`step_keys`); num_generated [B] int32 tokens this row generated before this one;
  stop_ids [K] int32 padded with -1 (the ids ``min_new_tokens`` masks); ``radix`` (static): as
  :func:`process_logits`. Greedy rows take the argmax of the processed logits; the others draw from
  the warped logits. When every row is greedy no warping work is done. The same tokens as
  :func:`choose_tokens` of :func:`process_logits`, with fewer passes over the rows (the warped
  logits are drawn from where they are made, not first merged with the greedy rows').
  """
  x = _process(logits, ctx, params, num_generated, stop_ids)
  greedy_tok = argmax_rows(x)

  def sampled(x):
    tok = _categorical_rows(keys, _warp(x, params, radix)).astype(jnp.int32)
    return jnp.where(params.temperature == 0, greedy_tok, tok)

  return jax.lax.cond(jnp.all(params.temperature == 0), lambda _: greedy_tok, sampled, x)


def choose_tokens(processed: jax.Array, params: SamplingParams, keys: jax.Array) -> jax.Array:
  """Next token per row -> [B] int32 from :func:`process_logits`' output [B, V]: the argmax for
  greedy rows, a draw (one key per row) for the others: the tokens :func:`sample_tokens` gives. A
  decode step that records log-probabilities processes the logits once, for both."""
  greedy_tok = argmax_rows(processed)

  def sampled(x):
    tok = _categorical_rows(keys, x).astype(jnp.int32)
    return jnp.where(params.temperature == 0, greedy_tok, tok)

  return jax.lax.cond(jnp.all(params.temperature == 0), lambda _: greedy_tok, sampled, processed)


# ----------------------------------------------------------------------------
# Keys.
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
  counts: jax.Array  # [B, V] int32, generated tokens only (frequency / presence penalties)
  history: jax.Array  # [B, L] int32 token id at each position (slot = position, as the KV cache), -1 = none
  length: jax.Array  # [B] int32 1 + the last position observed (tokens of the row so far)


def init_context(batch: int, vocab_size: int, length: int) -> TokenContext:
  """Empty rows: ``batch`` rows, vocabulary ``vocab_size``, ``length`` positions."""
  return TokenContext(
    presence=jnp.zeros((batch, vocab_size), bool),
    counts=jnp.zeros((batch, vocab_size), jnp.int32),
    history=jnp.full((batch, length), -1, jnp.int32),
    length=jnp.zeros((batch,), jnp.int32),
  )


def observe(
  ctx: TokenContext, tokens: jax.Array, positions: jax.Array, valid: jax.Array, *, generated: bool
) -> TokenContext:
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
  return TokenContext(presence=presence, counts=counts, history=history, length=jnp.maximum(ctx.length, end))


def prefix_context(ctx: TokenContext, length: jax.Array) -> TokenContext:
  """The context of each row's first ``length[b]`` positions only (a prompt, without what was generated
  after it): presence rebuilt from the history, generated counts zero."""
  b, v = ctx.presence.shape
  keep = jnp.arange(ctx.history.shape[1], dtype=jnp.int32)[None, :] < length[:, None]
  history = jnp.where(keep, ctx.history, -1)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], history.shape)
  presence = jnp.zeros((b, v), bool).at[rows, jnp.where(history >= 0, history, v)].set(True, mode="drop")
  return TokenContext(
    presence=presence, counts=jnp.zeros_like(ctx.counts), history=history, length=jnp.minimum(ctx.length, length)
  )
