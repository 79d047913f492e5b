"""Tests for smollm3_jax.generation.sampling: exactness to transformers' logits processors,
sampling statistics, per-row independence, validation and no-retrace under jit."""

from __future__ import annotations

import functools
import math
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
  MinPLogitsWarper,
  RepetitionPenaltyLogitsProcessor,
  TemperatureLogitsWarper,
  TopKLogitsWarper,
  TopPLogitsWarper,
)
from transformers.generation.utils import GenerationMixin

from smollm3_jax.generation import sampling as S

B, V, T = 6, 1000, 40
_SAMPLE = jax.jit(S.sample_tokens)  # one wrapper: shapes seen before reuse their compile
_PROCESS = jax.jit(S.process_logits)
_PROCESS_WIDE = {r: jax.jit(functools.partial(S.process_logits, radix=r)) for r in (4, 16, 32)}


def _empty(n, v):
  """A context with nothing observed and no history (n-gram bans compiled out)."""
  return S.init_context(n, v, 0)


def _filtered(logits, radix=2, **setting):
  """The chain at temperature 1 with one filter set per row: what that filter alone leaves (the
  cut-off searches of ``radix``: sampling._bisect)."""
  n, v = logits.shape
  params = S.SamplingParams.make(n, temperature=1.0, **setting)
  if radix == 2:
    return _PROCESS(jnp.asarray(logits), _empty(n, v), params)
  return _PROCESS_WIDE[radix](jnp.asarray(logits), _empty(n, v), params)


@pytest.fixture(scope="module")
def data():
  """Random f32 logits [B, V], prompt ids [B, T] with left padding, and the valid mask."""
  rng = np.random.default_rng(0)
  logits = (rng.standard_normal((B, V)) * 3.0).astype(np.float32)
  logits[:, :3] = -200.0  # probabilities that underflow to 0: "off" filters must keep them
  ids = rng.integers(0, V, size=(B, T))
  n_pad = np.array([0, 5, 0, 12, 3, 0])
  valid = np.arange(T)[None, :] >= n_pad[:, None]
  pad_id = 999
  ids[~valid] = pad_id  # the pad id never appears at valid positions below
  ids[valid & (ids == pad_id)] = 0
  # Make sure prompt tokens include both positive and negative logits.
  ids[:, -1] = np.argmax(logits, axis=-1)
  ids[:, -2] = np.argmin(logits, axis=-1)
  return logits, ids, valid


def _row_ids(ids, valid, b):
  return torch.from_numpy(ids[b][valid[b]][None, :].copy())


def _assert_same(ours, ref):
  """Same -inf entries exactly; finite entries within 1e-6 (relative for large values)."""
  ours = np.asarray(ours)
  ref = np.asarray(ref)
  assert ours.shape == ref.shape
  np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
  fin = np.isfinite(ref)
  np.testing.assert_allclose(ours[fin], ref[fin], rtol=1e-6, atol=1e-6)


def _torch_rows(logits, fn):
  """Apply fn(b, scores[1, V]) row by row -> [B, V] numpy."""
  return np.concatenate([fn(b, torch.from_numpy(logits[b : b + 1].copy())).numpy() for b in range(logits.shape[0])])


def _context(ids, valid):
  """The TokenContext of a prompt: the ids at valid positions observed into an empty context."""
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  return S.observe(
    S.init_context(ids.shape[0], V, ids.shape[1]), jnp.asarray(ids), pos, jnp.asarray(valid), generated=False
  )


def _presence(ids, valid):
  """[B, V] bool: the ids at valid positions."""
  return _context(ids, valid).presence


# ----------------------------------------------------------------------------
# Exactness of each processor against transformers, per-row parameters.
# ----------------------------------------------------------------------------


def test_repetition_penalty_matches_transformers(data):
  logits, ids, valid = data
  pen = [1.0, 0.5, 1.2, 2.0, 1.5, 0.9]
  ours = S.apply_repetition_penalty(jnp.asarray(logits), _presence(ids, valid), jnp.asarray(pen))

  def ref(b, s):
    if pen[b] == 1.0:
      return s
    return RepetitionPenaltyLogitsProcessor(float(np.float32(pen[b])))(_row_ids(ids, valid, b), s)

  _assert_same(ours, _torch_rows(logits, ref))
  # Pads never penalised: the pad id is absent from every row's valid tokens.
  np.testing.assert_array_equal(np.asarray(ours)[:, 999], logits[:, 999])


def test_temperature_matches_transformers(data):
  logits, _, _ = data
  temp = [0.0, 0.5, 1.0, 1.7, 0.1, 3.0]
  ours = S.apply_temperature(jnp.asarray(logits), jnp.asarray(temp, jnp.float32))

  def ref(b, s):  # temperature 0 (greedy) leaves the row as is
    return s if temp[b] == 0.0 else TemperatureLogitsWarper(float(np.float32(temp[b])))(None, s)

  _assert_same(ours, _torch_rows(logits, ref))


RADICES = [2, 4, 16, 32]  # the search widths: CPU's (2) and the accelerators' (16, utils.backend)


@pytest.mark.parametrize("radix", RADICES)
def test_top_k_matches_transformers(data, radix):
  logits, _, _ = data
  ks = [0, 1, 50, 990, 999, 2000]
  ours = _filtered(logits, radix, top_k=ks)

  def ref(b, s):
    return s if ks[b] == 0 else TopKLogitsWarper(ks[b])(None, s)

  _assert_same(ours, _torch_rows(logits, ref))
  # k=999 keeps all: the three tied -200 logits share the 999th value.
  assert np.isfinite(np.asarray(ours)).sum(-1).tolist() == [V, 1, 50, 990, V, V]


@pytest.mark.parametrize("radix", RADICES)
def test_top_p_matches_transformers(data, radix):
  logits, _, _ = data
  ps = [1.0, 0.05, 0.5, 0.9, 0.99, 0.3]
  ours = _filtered(logits, radix, top_p=ps)

  def ref(b, s):  # generate adds the warper only for top_p < 1
    return s if ps[b] == 1.0 else TopPLogitsWarper(float(np.float32(ps[b])))(None, s)

  r = _torch_rows(logits, ref)
  _assert_same(ours, r)
  n_kept = np.isfinite(r).sum(-1)
  assert n_kept[0] == V and len(set(n_kept.tolist())) == B  # every row filters differently


@pytest.mark.parametrize("radix", RADICES)
def test_cut_offs_are_exact_between_adjacent_floats(radix):
  # Logits one float apart (consecutive f32 values, shuffled) and one far below them (-80: its
  # probability is tiny but not 0), so the search starts from a wide interval: one that stopped short
  # of the exact key would keep a neighbour of the k-th value (top-k) or of the nucleus' edge (top-p).
  rng = np.random.default_rng(1)
  v = 2048
  chain = [np.float32(2.0)]
  for _ in range(v - 2):
    chain.append(np.nextafter(chain[-1], np.float32(-np.inf), dtype=np.float32))
  chain.append(np.float32(-80.0))
  logits = np.stack([rng.permutation(np.asarray(chain, np.float32)) for _ in range(4)])
  ks = [1, 7, 500, 2047]
  ours = _filtered(logits, radix, top_k=ks)
  _assert_same(ours, _torch_rows(logits, lambda b, s: TopKLogitsWarper(ks[b])(None, s)))
  assert np.isfinite(np.asarray(ours)).sum(-1).tolist() == ks
  ps = [0.001, 0.3, 0.7, 0.999]
  ours = _filtered(logits, radix, top_p=ps)
  _assert_same(ours, _torch_rows(logits, lambda b, s: TopPLogitsWarper(float(np.float32(ps[b])))(None, s)))


def test_min_p_matches_transformers(data):
  logits, _, _ = data
  mps = [0.0, 0.01, 0.1, 0.5, 1.0, 0.05]
  ours = _filtered(logits, min_p=mps)

  def ref(b, s):
    return s if mps[b] == 0.0 else MinPLogitsWarper(float(np.float32(mps[b])))(None, s)

  r = _torch_rows(logits, ref)
  _assert_same(ours, r)
  assert np.isfinite(r[0]).all() and np.isfinite(r[4]).sum() == 1


def _generate_processors(temperature, top_k, top_p, min_p, repetition_penalty, prompt_len):
  """The processor list transformers' generate builds for one row's settings."""
  holder = object.__new__(type("_Holder", (GenerationMixin,), {}))
  holder.config = types.SimpleNamespace(is_encoder_decoder=False)
  if temperature == 0.0:
    gc = GenerationConfig(
      do_sample=False, repetition_penalty=repetition_penalty, temperature=None, top_k=None, top_p=None
    )
  else:
    gc = GenerationConfig(
      do_sample=True,
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      min_p=None if min_p == 0.0 else min_p,
      repetition_penalty=repetition_penalty,
    )
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return GenerationMixin._get_logits_processor(
      holder, generation_config=gc, input_ids_seq_length=prompt_len, device="cpu"
    )


# (temperature, top_k, top_p, min_p, repetition_penalty) per row, incl. "off" values
CHAIN_ROWS = [
  (1.0, 0, 1.0, 0.0, 1.0),  # everything off
  (0.7, 10, 1.0, 0.0, 1.3),
  (1.3, 0, 0.9, 0.0, 0.8),
  (0.5, 50, 0.8, 0.05, 1.1),
  (2.0, 0, 1.0, 0.1, 1.0),
  (0.0, 5, 0.5, 0.2, 1.5),  # greedy: only the repetition penalty applies
]


def _params(rows):
  cols = list(zip(*rows))
  return S.SamplingParams.make(
    len(rows), temperature=cols[0], top_k=cols[1], top_p=cols[2], min_p=cols[3], repetition_penalty=cols[4]
  )


def test_full_chain_matches_generate_processors(data):
  logits, ids, valid = data
  params = _params(CHAIN_ROWS)
  ours = jax.jit(S.process_logits)(jnp.asarray(logits), _context(ids, valid), params)
  f32 = lambda v: float(np.float32(v))

  def ref(b, s):
    t, k, p, mp, rp = CHAIN_ROWS[b]
    row_ids = _row_ids(ids, valid, b)
    procs = _generate_processors(f32(t), k, f32(p), f32(mp), f32(rp), row_ids.shape[1])
    n_expected = 1 + (t not in (0.0, 1.0)) + (t > 0) * ((k > 0) + (p < 1) + (mp > 0))
    assert len(procs) == n_expected - (rp == 1.0)  # generate's list is what we think it is
    return procs(row_ids, s)

  r = _torch_rows(logits, ref)
  _assert_same(ours, r)
  assert np.isfinite(r).sum(-1).min() > 1  # the filters are active but not degenerate

  # Greedy rows in sample_tokens: argmax of the penalised logits (do_sample=False).
  keys = S.row_keys(jnp.arange(B))
  tok = np.asarray(_SAMPLE(jnp.asarray(logits), _context(ids, valid), params, keys))
  assert tok[5] == int(np.argmax(r[5]))
  assert all(np.isfinite(r[b, tok[b]]) for b in range(B))


def test_top_p_sees_the_top_k_output():
  """top-p renormalises over what top-k kept: on flat logits top-k 10 then top-p 0.5 keeps about
  half of the 10 (top-p over the whole vocabulary would keep hundreds, and top-k would win)."""
  logits = (np.random.default_rng(4).standard_normal((2, V)) * 0.5).astype(np.float32)
  rows = [(1.0, 10, 0.5, 0.0, 1.0), (0.8, 20, 0.7, 0.0, 1.0)]
  ours = np.asarray(jax.jit(S.process_logits)(jnp.asarray(logits), S.init_context(2, V, 1), _params(rows)))
  f32 = lambda v: float(np.float32(v))

  def ref(b, s):
    t, k, p, mp, rp = rows[b]
    return _generate_processors(f32(t), k, f32(p), f32(mp), f32(rp), 1)(torch.zeros((1, 1), dtype=torch.long), s)

  r = _torch_rows(logits, ref)
  _assert_same(ours, r)
  assert all(1 < n < k for n, (_, k, *_) in zip(np.isfinite(r).sum(-1), rows))


# ----------------------------------------------------------------------------
# Sampling.
# ----------------------------------------------------------------------------


def _chi2_threshold(df: int, p_value: float) -> float:
  """x with P(chi2_df > x) <= p_value."""
  try:
    from scipy.stats import chi2

    return float(chi2.isf(p_value, df))
  except ImportError:
    # Chernoff bound, valid for x > df: P(X > x) <= (x/df * exp(1 - x/df))^(df/2).
    # It over-estimates the tail, so the x solving bound == p_value is conservative.
    lo, hi = float(df), 1000.0 * df
    for _ in range(200):
      mid = 0.5 * (lo + hi)
      r = mid / df
      if (df / 2) * (math.log(r) + 1 - r) > math.log(p_value):
        lo = mid
      else:
        hi = mid
    return hi


def test_temperature_one_matches_softmax_frequencies():
  n, small_v = 40000, 6
  row = np.array([1.0, 0.5, 0.0, -0.5, -1.5, 2.0], np.float32)
  logits = jnp.broadcast_to(jnp.asarray(row), (n, small_v))
  presence = S.init_context(n, small_v, 1)  # an empty context
  params = S.SamplingParams.make(n, temperature=1.0)
  keys = S.step_keys(S.row_keys(jnp.arange(n) + 1234), 0)
  tok = np.asarray(_SAMPLE(logits, presence, params, keys))
  counts = np.bincount(tok, minlength=small_v)
  expected = n * np.exp(row - row.max()) / np.exp(row - row.max()).sum()
  stat = float(((counts - expected) ** 2 / expected).sum())
  assert stat < _chi2_threshold(small_v - 1, 1e-6), (stat, counts, expected)
  # The test has power: a visibly wrong distribution (uniform) is rejected.
  uniform = np.full(small_v, n / small_v)
  assert float(((counts - uniform) ** 2 / uniform).sum()) > _chi2_threshold(small_v - 1, 1e-6)


def _chi2_bins(tokens, probs, bins):
  """Chi-square statistic of draws ``tokens`` against ``probs`` [V], over ``bins`` (a list of id
  arrays that partition the vocabulary)."""
  counts = np.bincount(tokens, minlength=probs.shape[0])
  observed = np.asarray([counts[b].sum() for b in bins], np.float64)
  expected = np.asarray([probs[b].sum() for b in bins], np.float64) * len(tokens)
  assert expected.min() >= 5  # the chi-square approximation holds
  return float(((observed - expected) ** 2 / expected).sum())


def test_draws_over_a_real_vocabulary_match_softmax_frequencies():
  """V = 1000: four 256-token blocks of the two-level inverse-CDF draw, the last one partial, with
  80 % of the mass beyond the first block. 4000 rows sample at temperature 1 and 4000 at 0.7 with
  top-p 0.9 (one jitted call); each half's token frequencies match transformers' distribution."""
  v, n = 1000, 4000
  rng = np.random.default_rng(7)
  row = (rng.standard_normal(v) - 3.0).astype(np.float32)
  hot = np.concatenate(
    [rng.choice(256, 3, replace=False), [255, 256, 511, 512, 767, 768, 999], 256 + rng.choice(743, 14, replace=False)]
  )
  hot = np.unique(hot)
  row[hot] = rng.uniform(1.0, 3.0, hot.size).astype(np.float32)
  logits = jnp.broadcast_to(jnp.asarray(row), (2 * n, v))
  params = S.SamplingParams.make(2 * n, temperature=[1.0] * n + [0.7] * n, top_p=[1.0] * n + [0.9] * n)
  keys = S.step_keys(S.row_keys(jnp.arange(2 * n) + 99), 0)
  tok = np.asarray(_SAMPLE(logits, _empty(2 * n, v), params, keys))
  cold = set(range(v)) - set(hot.tolist())
  bins = [np.asarray([t]) for t in hot] + [np.asarray(sorted(t for t in cold if t // 256 == k)) for k in range(4)]

  def probs(t, top_p):  # transformers' warpers, in generate's order
    s = torch.from_numpy(row[None].copy())
    s = TemperatureLogitsWarper(float(np.float32(t)))(None, s) if t != 1.0 else s
    s = TopPLogitsWarper(float(np.float32(top_p)))(None, s) if top_p < 1.0 else s
    return torch.softmax(s, -1).numpy()[0].astype(np.float64)

  for half, (t, top_p) in enumerate([(1.0, 1.0), (0.7, 0.9)]):
    p = probs(t, top_p)
    assert p[256:].sum() > 0.8
    if top_p < 1.0:  # the nucleus: the cold tokens are out, a hot one too
      kept = p > 0
      assert set(tok[half * n : (half + 1) * n].tolist()) <= set(np.flatnonzero(kept).tolist())
      assert kept.sum() < hot.size
      bins_h = [b for b in bins if p[b].sum() > 0]
    else:
      bins_h = bins
    stat = _chi2_bins(tok[half * n : (half + 1) * n], p, bins_h)
    print(f"T={t} top_p={top_p}: chi2 {stat:.1f} on {len(bins_h) - 1} df")
    assert stat < _chi2_threshold(len(bins_h) - 1, 1e-6), (t, top_p, stat)


def test_same_seed_same_tokens_and_steps_differ(data):
  logits, ids, valid = data
  params = _params([(1.0, 0, 1.0, 0.0, 1.0)] * B)
  presence = _context(ids, valid)
  fn = _SAMPLE
  keys = S.row_keys(jnp.asarray([3, 4, 5, 6, 7, 8]))
  a = fn(jnp.asarray(logits), presence, params, S.step_keys(keys, 7))
  b = fn(jnp.asarray(logits), presence, params, S.step_keys(S.row_keys(jnp.asarray([3, 4, 5, 6, 7, 8])), 7))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == jnp.int32 and a.shape == (B,)
  draws = np.stack([np.asarray(fn(jnp.asarray(logits), presence, params, S.step_keys(keys, s))) for s in range(8)])
  assert len({tuple(d) for d in draws}) > 1
  # Raw uint32 [B, 2] keys are accepted too.
  raw = jax.random.key_data(S.step_keys(keys, 7))
  np.testing.assert_array_equal(fn(jnp.asarray(logits), presence, params, raw), a)


def test_row_draw_independent_of_other_rows():
  rng = np.random.default_rng(1)
  n, v = 64, 200
  target = (rng.standard_normal(v) * 2).astype(np.float32)
  others = (rng.standard_normal((n, v)) * 2).astype(np.float32)
  keys = S.step_keys(S.row_keys(jnp.arange(n)), 3)
  fn = _SAMPLE

  # Target rows alone: top-p sampling, each with its own key.
  alone = fn(
    jnp.broadcast_to(jnp.asarray(target), (n, v)),
    _empty(n, v),
    S.SamplingParams.make(n, temperature=0.8, top_p=0.9),
    keys,
  )
  # Interleaved with other rows that use other settings (greedy, top-k, min-p) and keys.
  mixed_logits = np.empty((2 * n, v), np.float32)
  mixed_logits[0::2], mixed_logits[1::2] = target, others
  temp = np.empty(2 * n)
  temp[0::2], temp[1::2] = 0.8, np.tile([0.0, 1.5], n // 2)
  top_p = np.empty(2 * n)
  top_p[0::2], top_p[1::2] = 0.9, 1.0
  top_k = np.zeros(2 * n, int)
  top_k[1::2] = 7
  min_p = np.zeros(2 * n)
  min_p[1::2] = 0.1
  other_keys = S.step_keys(S.row_keys(jnp.arange(n) + 10_000), 3)
  mixed_keys = jnp.stack([keys, other_keys], axis=1).reshape(2 * n)
  mixed = fn(
    jnp.asarray(mixed_logits),
    _empty(2 * n, v),
    S.SamplingParams.make(2 * n, temperature=temp, top_p=top_p, top_k=top_k, min_p=min_p),
    mixed_keys,
  )
  np.testing.assert_array_equal(np.asarray(mixed)[0::2], np.asarray(alone))
  assert len(set(np.asarray(alone).tolist())) > 1  # really sampled

  # A greedy row gives the same token on the all-greedy fast path and in a mixed batch.
  greedy_alone = fn(jnp.asarray(others[:1]), _empty(1, v), S.SamplingParams.make(1), keys[:1])
  assert int(greedy_alone[0]) == int(np.argmax(others[0])) == int(mixed[1])


@pytest.mark.parametrize(
  "setting", [dict(top_k=3), dict(top_p=0.6), dict(min_p=0.3), dict(top_k=8, top_p=0.7, min_p=0.2)]
)
def test_filtered_tokens_never_sampled(setting):
  n, v = 4000, 50
  row = (np.random.default_rng(2).standard_normal(v) * 1.5).astype(np.float32)
  params = S.SamplingParams.make(n, temperature=1.0, **setting)
  # transformers' kept set for this setting, in generate's order.
  s = torch.from_numpy(row[None].copy())
  if "top_k" in setting:
    s = TopKLogitsWarper(setting["top_k"])(None, s)
  if "top_p" in setting:
    s = TopPLogitsWarper(float(np.float32(setting["top_p"])))(None, s)
  if "min_p" in setting:
    s = MinPLogitsWarper(float(np.float32(setting["min_p"])))(None, s)
  kept = set(np.flatnonzero(np.isfinite(s.numpy()[0])).tolist())
  assert 1 < len(kept) < v
  tok = _SAMPLE(jnp.broadcast_to(jnp.asarray(row), (n, v)), _empty(n, v), params, S.row_keys(jnp.arange(n)))
  assert set(np.asarray(tok).tolist()) == kept  # only kept tokens, and all of them


# ----------------------------------------------------------------------------
# Validation, helpers, jit.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,value",
  [
    ("temperature", -0.1),
    ("temperature", float("nan")),
    ("top_k", -1),
    ("top_k", 2.5),
    ("top_p", 0.0),
    ("top_p", 1.01),
    ("top_p", float("inf")),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("temperature", [0.5, 1.0]),  # wrong length
    ("top_k", [[1, 2, 3]]),  # wrong rank
  ],
)
def test_validation_names_the_parameter(name, value):
  with pytest.raises(ValueError, match=name):
    S.SamplingParams.make(3, **{name: value})
  with pytest.raises(ValueError, match=name):
    S.validate_sampling_args(batch=3, **{name: value})


def test_validation_accepts_good_and_rejects_unknown():
  S.validate_sampling_args(temperature=[0.0, 0.7], top_k=[0, 40], top_p=1.0, min_p=[0.0, 1.0], repetition_penalty=0.5)
  with pytest.raises(ValueError, match="top_q"):
    S.validate_sampling_args(top_q=0.5)


def test_make_take():
  p = S.SamplingParams.make(3, temperature=[0.0, 0.5, 1.0], top_k=4, top_p=[1.0, 0.9, 0.5], repetition_penalty=1.2)
  assert p.temperature.dtype == jnp.float32 and p.top_k.dtype == jnp.int32
  assert p.top_k.tolist() == [4, 4, 4] and p.min_p.tolist() == [0.0] * 3
  q = p.take(jnp.asarray([2, 0]))
  np.testing.assert_allclose(q.top_p, [0.5, 1.0])
  assert q.batch_size == 2 and q.top_k.tolist() == [4, 4]


def test_token_context_observe():
  """observe: prompt chunks set presence and history; sampled tokens are also counted; invalid
  entries, ids outside the vocabulary and positions outside the history are dropped."""
  ctx = S.init_context(2, 8, 6)
  ctx = S.observe(
    ctx,
    jnp.asarray([[1, 2, 2], [0, 5, -1]]),
    jnp.asarray([[0, 1, 2], [0, 1, 2]]),
    jnp.asarray([[True, True, True], [False, True, True]]),
    generated=False,
  )
  ctx = S.observe(
    ctx,
    jnp.asarray([[2, 9, 4], [6, 6, 6]]),
    jnp.asarray([[3, 4, 9], [2, 3, 4]]),
    jnp.asarray([[True, True, True], [True, True, False]]),
    generated=False,
  )
  ctx = S.observe(ctx, jnp.asarray([[7], [6]]), jnp.asarray([[5], [4]]), jnp.asarray([[True], [True]]), generated=True)
  ctx = S.observe(ctx, jnp.asarray([[7], [3]]), jnp.asarray([[6], [5]]), jnp.asarray([[True], [False]]), generated=True)
  presence = np.zeros((2, 8), bool)
  presence[0, [1, 2, 4, 7]] = True
  presence[1, [5, 6]] = True
  np.testing.assert_array_equal(ctx.presence, presence)
  counts = np.zeros((2, 8), np.int32)
  counts[0, 7] = 2  # position 6 is outside the history, the token still counts
  counts[1, 6] = 1
  np.testing.assert_array_equal(ctx.counts, counts)
  np.testing.assert_array_equal(ctx.history, [[1, 2, 2, 2, -1, 7], [-1, 5, 6, 6, 6, -1]])
  np.testing.assert_array_equal(ctx.length, [10, 5])  # position 9 was observed (outside the history)


def test_step_keys_per_row_steps():
  keys = S.row_keys(jnp.arange(3))
  mixed = jax.random.key_data(S.step_keys(keys, jnp.asarray([4, 0, 9])))
  for b, step in enumerate([4, 0, 9]):
    np.testing.assert_array_equal(mixed[b], jax.random.key_data(S.step_keys(keys, step))[b])


def test_changing_values_does_not_retrace(data):
  logits, ids, valid = data
  traces = {"sample": 0, "process": 0}

  @jax.jit
  def sample(logits, presence, params, keys, step):
    traces["sample"] += 1
    return S.sample_tokens(logits, presence, params, S.step_keys(keys, step))

  @jax.jit
  def process(logits, presence, params):
    traces["process"] += 1
    return S.process_logits(logits, presence, params)

  presence = _context(ids, valid)
  keys = S.row_keys(jnp.arange(B))
  settings = [
    _params(CHAIN_ROWS),
    S.SamplingParams.make(B),  # all greedy
    S.SamplingParams.make(B, temperature=0.9, top_k=[1, 2, 3, 4, 5, 6], min_p=0.1),
    S.SamplingParams.make(B, temperature=1.0, top_p=0.5, repetition_penalty=2.0),
  ]
  for step, p in enumerate(settings):
    sample(jnp.asarray(logits), presence, p, keys, step).block_until_ready()
    process(jnp.asarray(logits), presence, p).block_until_ready()
  assert traces == {"sample": 1, "process": 1}
