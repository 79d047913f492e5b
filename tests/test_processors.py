"""The processors of issue 18 against transformers' logits processors (and vLLM's formula for the
OpenAI penalties), each on random logits with different settings per row, off rows included; the
whole chain against the LogitsProcessorList transformers' generate builds, in its order."""

from __future__ import annotations

import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
  EpsilonLogitsWarper,
  EtaLogitsWarper,
  LogitsProcessor,
  MinNewTokensLengthLogitsProcessor,
  NoRepeatNGramLogitsProcessor,
  RepetitionPenaltyLogitsProcessor,
  SequenceBiasLogitsProcessor,
  TypicalLogitsWarper,
)
from transformers.generation.utils import GenerationMixin

from smollm3_jax.generation import sampling as S
from smollm3_jax.generation.settings import MAX_LOGIT_BIAS, MAX_NO_REPEAT_NGRAM

B, V, L = 8, 400, 48
STOP_IDS = np.array([7, 11, -1, -1], np.int32)  # -1: padding of the fixed-size array


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  """transformers' generate on small models is per-step overhead: torch's thread pool makes it many
  times slower on a busy 2-core machine."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
  """Random logits [B, V] (scale 3: peaked and flat rows), each row's prompt and generated ids
  drawn from 6 ids (so n-grams repeat), and the row's TokenContext."""
  rng = np.random.default_rng(18)
  logits = (rng.standard_normal((B, V)) * rng.uniform(0.5, 4.0, (B, 1))).astype(np.float32)
  logits[:, 200:203] = -300.0  # probabilities that underflow to 0
  prompt_len = rng.integers(3, 20, B)
  gen_len = rng.integers(0, 20, B)
  gen_len[0] = 0
  ids = [rng.integers(0, 6, prompt_len[b] + gen_len[b]) for b in range(B)]
  ids[3][-1] = 201  # a token whose probability underflows to 0
  tokens = np.full((B, L), 0, np.int32)
  for b in range(B):
    tokens[b, : len(ids[b])] = ids[b]
  pos = np.broadcast_to(np.arange(L), (B, L))
  is_prompt = pos < prompt_len[:, None]
  is_gen = (pos >= prompt_len[:, None]) & (pos < (prompt_len + gen_len)[:, None])
  ctx = S.init_context(B, V, L)
  ctx = S.observe(ctx, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(is_prompt), generated=False)
  ctx = S.observe(ctx, jnp.asarray(tokens), jnp.asarray(pos), jnp.asarray(is_gen), generated=True)
  return types.SimpleNamespace(logits=logits, ids=ids, prompt_len=prompt_len, gen_len=gen_len, ctx=ctx)


def _rows(d, fn):
  """fn(b, input_ids [1, T], scores [1, V]) per row -> [B, V] numpy."""
  return np.concatenate(
    [fn(b, torch.tensor(d.ids[b][None, :]), torch.from_numpy(d.logits[b : b + 1].copy())).numpy() for b in range(B)]
  )


def _assert_same(ours, ref, rtol=1e-6):
  ours, ref = np.asarray(ours), np.asarray(ref)
  np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
  fin = np.isfinite(ref)
  np.testing.assert_allclose(ours[fin], ref[fin], rtol=rtol, atol=1e-5)


def _f32(x):
  return float(np.float32(x))


def _changed_rows(ours, logits):
  return [b for b in range(B) if not np.array_equal(np.asarray(ours)[b], logits[b])]


# ----------------------------------------------------------------------------
# Warpers (sampled rows): typical, epsilon, eta.
# ----------------------------------------------------------------------------

TYPICAL = [1.0, 0.2, 0.5, 0.9, 0.95, 1.0, 0.05, 0.7]
EPSILON = [0.0, 3e-4, 1e-3, 0.0, 0.01, 0.05, 0.2, 0.0009]
ETA = [0.0, 3e-4, 1e-3, 0.0, 0.01, 0.05, 0.2, 0.0009]


@pytest.mark.parametrize("radix", [2, 16])  # the cut-off search's width (sampling._bisect)
def test_typical_p_matches_transformers(data, radix):
  fn = jax.jit(lambda x, m: S.apply_typical_p(x, m, radix))
  ours = fn(jnp.asarray(data.logits), jnp.asarray(TYPICAL, jnp.float32))
  ref = _rows(data, lambda b, i, s: s if TYPICAL[b] == 1.0 else TypicalLogitsWarper(_f32(TYPICAL[b]))(i, s))
  _assert_same(ours, ref)
  kept = np.isfinite(ref).sum(-1)
  assert kept[0] == V and all(1 <= kept[b] < V - 3 for b in range(B) if TYPICAL[b] < 1)
  assert len(set(kept)) > 4  # the cut-offs differ per row


def test_typical_p_after_other_filters(data):
  """On logits another filter already cut (-inf entries), as in the chain."""
  x = data.logits.copy()
  x[:, ::3] = -np.inf
  ours = S.apply_typical_p(jnp.asarray(x), jnp.asarray(TYPICAL, jnp.float32))
  ref = np.concatenate(
    [
      (
        torch.from_numpy(x[b : b + 1].copy())
        if TYPICAL[b] == 1.0
        else TypicalLogitsWarper(_f32(TYPICAL[b]))(None, torch.from_numpy(x[b : b + 1].copy()))
      ).numpy()
      for b in range(B)
    ]
  )
  _assert_same(ours, ref)


def test_epsilon_cutoff_matches_transformers(data):
  ours = jax.jit(S.apply_epsilon_cutoff)(jnp.asarray(data.logits), jnp.asarray(EPSILON, jnp.float32))
  ref = _rows(data, lambda b, i, s: s if EPSILON[b] == 0 else EpsilonLogitsWarper(_f32(EPSILON[b]))(i, s))
  _assert_same(ours, ref)
  assert _changed_rows(ours, data.logits) == [b for b in range(B) if EPSILON[b] > 0]


def test_eta_cutoff_matches_transformers(data):
  ours = jax.jit(S.apply_eta_cutoff)(jnp.asarray(data.logits), jnp.asarray(ETA, jnp.float32))
  ref = _rows(data, lambda b, i, s: s if ETA[b] == 0 else EtaLogitsWarper(_f32(ETA[b]))(i, s))
  _assert_same(ours, ref)
  assert _changed_rows(ours, data.logits) == [b for b in range(B) if ETA[b] > 0]
  # eta's cut-off is below epsilon's where the entropy is high: the two differ somewhere.
  eps = np.asarray(S.apply_epsilon_cutoff(jnp.asarray(data.logits), jnp.asarray(ETA, jnp.float32)))
  assert not np.array_equal(np.isfinite(eps), np.isfinite(np.asarray(ours)))


# ----------------------------------------------------------------------------
# Processors (greedy and sampled rows).
# ----------------------------------------------------------------------------

NGRAM = [0, 1, 2, 3, 2, 4, 0, 3]


def test_no_repeat_ngram_matches_transformers(data):
  ours = jax.jit(S.apply_no_repeat_ngram)(jnp.asarray(data.logits), data.ctx, jnp.asarray(NGRAM, jnp.int32))
  ref = _rows(data, lambda b, i, s: s if NGRAM[b] == 0 else NoRepeatNGramLogitsProcessor(NGRAM[b])(i, s))
  _assert_same(ours, ref)
  banned = np.isneginf(ref).sum(-1)
  assert banned[1] > 1 and sum(banned[b] > 0 for b in range(B) if NGRAM[b] > 1) >= 2  # n-grams repeat
  assert banned[0] == 0 and banned[6] == 0, banned


def test_no_repeat_ngram_edge_cases():
  """Fewer than n tokens: nothing banned; exactly n - 1 neither (no complete n-gram yet); the last
  window counts ("3 3", n = 2 bans 3; n = 1 bans the last token too)."""
  rows = [[1, 2, 1], [1, 2], [1, 2, 1, 2], [3, 3], [4, 5]]
  sizes = [2, 3, 3, 2, 1]
  ctx = S.init_context(len(rows), 10, 8)
  toks = jnp.asarray([r + [0] * (4 - len(r)) for r in rows])
  valid = jnp.asarray([[i < len(r) for i in range(4)] for r in rows])
  ctx = S.observe(ctx, toks, jnp.broadcast_to(jnp.arange(4), toks.shape), valid, generated=False)
  out = np.asarray(S.apply_no_repeat_ngram(jnp.zeros((len(rows), 10)), ctx, jnp.asarray(sizes)))
  for b, row in enumerate(rows):
    ref = NoRepeatNGramLogitsProcessor(sizes[b])(torch.tensor([row]), torch.zeros((1, 10))).numpy()[0]
    np.testing.assert_array_equal(out[b], ref)
  assert np.isneginf(out).sum(-1).tolist() == [1, 0, 1, 1, 2]


def test_no_repeat_ngram_beyond_the_text_costs_what_the_text_costs():
  """An n far longer than the history bans nothing, as transformers, and its loop stops at the text's
  length (an n of 2**31 - 1 used to loop ~2**31 times inside the step: a hung decode)."""
  rows = [[1, 2, 1, 2, 1], [3, 3, 3]]
  ctx = S.init_context(2, 10, 16)
  toks = jnp.asarray([r + [0] * (5 - len(r)) for r in rows])
  valid = jnp.asarray([[i < len(r) for i in range(5)] for r in rows])
  ctx = S.observe(ctx, toks, jnp.broadcast_to(jnp.arange(5), toks.shape), valid, generated=False)
  for sizes in ([2147483647, 2147483647], [2, 2147483647], [3, 2]):
    fn = jax.jit(S.apply_no_repeat_ngram)
    out = np.asarray(fn(jnp.zeros((2, 10)), ctx, jnp.asarray(sizes, jnp.int32)))  # returns at once
    for b, row in enumerate(rows):
      ref = NoRepeatNGramLogitsProcessor(min(sizes[b], 1000))(torch.tensor([row]), torch.zeros((1, 10))).numpy()[0]
      np.testing.assert_array_equal(out[b], ref)


FREQ = [0.0, 0.5, -0.5, 2.0, 0.0, 1.0, -2.0, 0.3]
PRES = [0.0, 0.0, 1.0, -1.0, 2.0, 0.7, 0.5, -2.0]


def _vllm_penalties(logits, ids, prompt_len, freq, pres):
  """vLLM's apply_penalties (frequency and presence parts) in numpy: counts over output tokens."""
  out = logits.astype(np.float32).copy()
  for b in range(len(out)):
    counts = np.bincount(ids[b][prompt_len[b] :], minlength=out.shape[1]).astype(np.float32)
    out[b] -= np.float32(freq[b]) * counts
    out[b] -= np.float32(pres[b]) * (counts > 0)
  return out


def test_frequency_and_presence_penalties_match_vllm_formula(data):
  ours = jax.jit(S.apply_openai_penalties)(
    jnp.asarray(data.logits), data.ctx.counts, jnp.asarray(FREQ, jnp.float32), jnp.asarray(PRES, jnp.float32)
  )
  ref = _vllm_penalties(data.logits, data.ids, data.prompt_len, FREQ, PRES)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6, atol=1e-5)
  # Prompt tokens are not penalised, generated ones are, repeats count.
  assert _changed_rows(ours, data.logits) == [b for b in range(B) if (FREQ[b] or PRES[b]) and data.gen_len[b]]
  assert int(np.asarray(data.ctx.counts).max()) > 1


MIN_NEW = [0, 5, 30, 0, 1, 100, 3, 19]


def test_min_new_tokens_matches_transformers(data):
  fn = jax.jit(S.apply_min_new_tokens)
  ours = fn(
    jnp.asarray(data.logits),
    jnp.asarray(data.gen_len, jnp.int32),
    jnp.asarray(MIN_NEW, jnp.int32),
    jnp.asarray(STOP_IDS),
  )
  eos = [int(t) for t in STOP_IDS if t >= 0]
  ref = _rows(
    data,
    lambda b, i, s: (
      s if MIN_NEW[b] == 0 else MinNewTokensLengthLogitsProcessor(int(data.prompt_len[b]), MIN_NEW[b], eos)(i, s)
    ),
  )
  _assert_same(ours, ref)
  masked = [b for b in range(B) if np.isneginf(np.asarray(ours)[b, 7])]
  assert masked == [b for b in range(B) if data.gen_len[b] < MIN_NEW[b]] and 0 < len(masked) < B - 2


BIAS = [{}, {5: 3.5, 11: -100.0}, {0: 1e3}, {}, {399: -2.5, 1: 0.25, 2: -0.5}, {7: 5.0}, {}, {3: -1.0}]


def test_logit_bias_matches_sequence_bias(data):
  p = S.SamplingParams.make(B, logit_bias=BIAS)
  ours = jax.jit(S.apply_logit_bias)(jnp.asarray(data.logits), p.logit_bias_ids, p.logit_bias_values)
  ref = _rows(
    data,
    lambda b, i, s: (
      s if not BIAS[b] else SequenceBiasLogitsProcessor([[[tok], bias] for tok, bias in BIAS[b].items()])(i, s)
    ),
  )
  _assert_same(ours, ref)
  assert _changed_rows(ours, data.logits) == [b for b in range(B) if BIAS[b]]


# ----------------------------------------------------------------------------
# The whole chain, everything on, in transformers' order.
# ----------------------------------------------------------------------------


class _VLLMPenalties(LogitsProcessor):
  """Frequency and presence penalties as vLLM applies them (torch), for the chain test."""

  def __init__(self, freq, pres, prompt_len):
    self.freq, self.pres, self.prompt_len = freq, pres, prompt_len

  def __call__(self, input_ids, scores):
    counts = torch.bincount(input_ids[0, self.prompt_len :], minlength=scores.shape[-1]).to(scores.dtype)
    return scores - _f32(self.freq) * counts - _f32(self.pres) * (counts > 0).to(scores.dtype)


# Per row: temperature, top_k, top_p, min_p, repetition_penalty, typical_p, epsilon, eta, ngram,
# frequency, presence, min_new_tokens, logit_bias. Row 0: everything off; row 7: greedy.
CHAIN = [
  (1.0, 0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0, 0.0, 0.0, 0, {}),
  (0.8, 40, 0.95, 0.02, 1.2, 0.9, 3e-4, 0.0, 2, 0.5, 0.3, 30, {5: 2.0, 11: -1.0}),
  (1.3, 0, 1.0, 0.0, 1.1, 0.6, 0.0, 1e-3, 3, -0.5, 1.0, 2, {}),
  (0.6, 100, 0.9, 0.0, 0.9, 0.95, 1e-3, 2e-3, 1, 1.0, 0.0, 0, {3: 4.0}),
  (1.0, 0, 0.8, 0.05, 1.0, 0.8, 0.0, 0.0, 0, 0.0, -1.0, 50, {}),
  (2.0, 200, 1.0, 0.0, 1.3, 0.5, 2e-4, 5e-4, 2, 0.2, 0.2, 5, {0: -3.0}),
  (0.9, 0, 1.0, 0.0, 1.0, 1.0, 0.0, 3e-4, 4, 0.0, 0.0, 0, {9: 1.5}),
  (0.0, 10, 0.5, 0.2, 1.5, 0.3, 0.01, 0.01, 2, 0.7, 0.4, 40, {4: 6.0}),
]
NAMES = (
  "temperature",
  "top_k",
  "top_p",
  "min_p",
  "repetition_penalty",
  "typical_p",
  "epsilon_cutoff",
  "eta_cutoff",
  "no_repeat_ngram_size",
  "frequency_penalty",
  "presence_penalty",
  "min_new_tokens",
  "logit_bias",
)


def _chain_params(rows):
  return S.SamplingParams.make(len(rows), **{n: list(col) for n, col in zip(NAMES, zip(*rows))})


def _generate_list(row, prompt_len):
  """The LogitsProcessorList transformers' generate builds for one row, with vLLM's penalties
  inserted right after the repetition penalty (transformers has none)."""
  t, k, p, mp, rp, typ, eps, eta, ngram, freq, pres, min_new, bias = row
  holder = object.__new__(type("_Holder", (GenerationMixin,), {}))
  holder.config = types.SimpleNamespace(is_encoder_decoder=False)
  common = dict(
    repetition_penalty=_f32(rp),
    no_repeat_ngram_size=ngram,
    min_new_tokens=min_new,
    sequence_bias=[[[tok], b] for tok, b in bias.items()] or None,
  )
  if t == 0:
    gc = GenerationConfig(do_sample=False, temperature=None, top_k=None, top_p=None, **common)
  else:
    gc = GenerationConfig(
      do_sample=True,
      temperature=_f32(t),
      top_k=k,
      top_p=_f32(p),
      min_p=_f32(mp) if mp else None,
      typical_p=_f32(typ),
      epsilon_cutoff=_f32(eps),
      eta_cutoff=_f32(eta),
      **common,
    )
  gc._eos_token_tensor = torch.tensor([int(i) for i in STOP_IDS if i >= 0])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    procs = GenerationMixin._get_logits_processor(
      holder, generation_config=gc, input_ids_seq_length=prompt_len, device="cpu"
    )
  at = max(
    [
      i + 1
      for i, q in enumerate(procs)
      if isinstance(q, (SequenceBiasLogitsProcessor, RepetitionPenaltyLogitsProcessor))
    ],
    default=0,
  )
  procs.insert(at, _VLLMPenalties(freq, pres, prompt_len))
  return procs


@pytest.mark.parametrize("radix", [2, 16])  # the filters' search width: CPU's and the accelerators' (utils.backend)
def test_full_chain_matches_transformers_order(data, radix):
  params = _chain_params(CHAIN)
  stop = jnp.asarray(STOP_IDS)
  fn = jax.jit(lambda x, c, p, n: S.process_logits(x, c, p, num_generated=n, stop_ids=stop, radix=radix))
  ours = np.asarray(fn(jnp.asarray(data.logits), data.ctx, params, jnp.asarray(data.gen_len, jnp.int32)))
  lists = [_generate_list(CHAIN[b], int(data.prompt_len[b])) for b in range(B)]
  kinds = [type(q).__name__ for q in lists[1]]
  assert kinds == [
    "SequenceBiasLogitsProcessor",
    "RepetitionPenaltyLogitsProcessor",
    "_VLLMPenalties",
    "NoRepeatNGramLogitsProcessor",
    "MinNewTokensLengthLogitsProcessor",
    "TemperatureLogitsWarper",
    "TopKLogitsWarper",
    "TopPLogitsWarper",
    "MinPLogitsWarper",
    "TypicalLogitsWarper",
    "EpsilonLogitsWarper",
  ], kinds
  ref = _rows(data, lambda b, i, s: lists[b](i, s))
  _assert_same(ours, ref, rtol=2e-6)
  assert all(np.isfinite(ref[b]).sum() > 1 for b in range(B))  # active, not degenerate
  # Greedy row: sample_tokens takes the argmax of the processed logits.
  tok = jax.jit(lambda x, c, p, k, n: S.sample_tokens(x, c, p, k, num_generated=n, stop_ids=stop, radix=radix))(
    jnp.asarray(data.logits),
    data.ctx,
    params,
    S.step_keys(S.row_keys(jnp.arange(B)), 0),
    jnp.asarray(data.gen_len, jnp.int32),
  )
  tok = np.asarray(tok)
  assert tok[7] == int(np.argmax(ref[7]))
  assert all(np.isfinite(ref[b, tok[b]]) for b in range(B))


def test_sampled_row_independent_of_its_neighbours(data):
  """A row's draw depends on its logits, context, settings and key only: the same row among the
  CHAIN neighbours and among all-off neighbours draws the same tokens, over 20 keys."""
  fn = jax.jit(lambda x, c, p, k, n: S.sample_tokens(x, c, p, k, num_generated=n, stop_ids=jnp.asarray(STOP_IDS)))
  params = _chain_params(CHAIN)
  alone = _chain_params([CHAIN[0]] * B)
  n = jnp.asarray(data.gen_len, jnp.int32)
  differ = 0
  for step in range(20):
    keys = S.step_keys(S.row_keys(jnp.arange(B)), step)
    mixed = np.asarray(fn(jnp.asarray(data.logits), data.ctx, params, keys, n))
    off = np.asarray(fn(jnp.asarray(data.logits), data.ctx, alone, keys, n))
    for b in (1, 2, 5):
      solo = alone.take(jnp.arange(B)).replace(
        **{f: getattr(alone, f).at[b].set(getattr(params, f)[b]) for f in S.SamplingParams.__dataclass_fields__}
      )
      one = np.asarray(fn(jnp.asarray(data.logits), data.ctx, solo, keys, n))
      assert one[b] == mixed[b], (step, b)
      differ += int(one[b] != off[b])
  assert differ > 5  # the settings change the draws: the test could see a neighbour's influence


def test_changing_any_setting_does_not_retrace(data):
  """Every setting is traced: a grid over (typical_p x temperature), the penalties, n-gram sizes,
  min_new_tokens and biases runs through one trace of the sampling step."""
  traces = []

  @jax.jit
  def step(x, c, p, k, n):
    traces.append(1)
    return S.sample_tokens(x, c, p, k, num_generated=n, stop_ids=jnp.asarray(STOP_IDS))

  keys = S.step_keys(S.row_keys(jnp.arange(B)), 0)
  n = jnp.asarray(data.gen_len, jnp.int32)
  grids = [_chain_params(CHAIN), _chain_params([CHAIN[0]] * B)]
  grids += [S.SamplingParams.make(B, typical_p=tp, temperature=t) for tp in (0.2, 0.9, 1.0) for t in (0.0, 0.7)]
  grids += [
    S.SamplingParams.make(
      B,
      frequency_penalty=-1.0,
      no_repeat_ngram_size=5,
      min_new_tokens=3,
      logit_bias=[{b: float(b)} for b in range(B)],
      eta_cutoff=0.3,
      temperature=1.0,
    )
  ]
  for p in grids:
    jax.block_until_ready(step(jnp.asarray(data.logits), data.ctx, p, keys, n))
  assert len(traces) == 1


def test_off_settings_leave_the_chain_unchanged(data):
  """Every new setting at its off value: the chain equals the one of the old five settings."""
  old = _chain_params([r[:5] + (1.0, 0.0, 0.0, 0, 0.0, 0.0, 0, {}) for r in CHAIN])
  ours = S.process_logits(
    jnp.asarray(data.logits), data.ctx, old, num_generated=jnp.asarray(data.gen_len), stop_ids=jnp.asarray(STOP_IDS)
  )
  prompt_only = S.TokenContext(
    presence=data.ctx.presence,
    counts=jnp.zeros_like(data.ctx.counts),
    history=jnp.full_like(data.ctx.history, -1),
    length=jnp.zeros_like(data.ctx.length),
  )
  base = S.process_logits(jnp.asarray(data.logits), prompt_only, old)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(base))


# ----------------------------------------------------------------------------
# The registry: make and validation.
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,value,match",
  [
    ("typical_p", 0.0, "typical_p"),
    ("typical_p", 1.5, "typical_p"),
    ("epsilon_cutoff", 1.0, "epsilon_cutoff"),
    ("epsilon_cutoff", -0.1, "epsilon_cutoff"),
    ("eta_cutoff", [0.1, 1.0], "eta_cutoff"),
    ("no_repeat_ngram_size", -1, "no_repeat_ngram_size"),
    ("no_repeat_ngram_size", 2.5, "integer"),
    ("no_repeat_ngram_size", MAX_NO_REPEAT_NGRAM + 1, "at most|\\[0, 64\\]"),
    ("no_repeat_ngram_size", 2147483647, "no_repeat_ngram_size"),
    ("frequency_penalty", 2.5, "frequency_penalty"),
    ("presence_penalty", -2.01, "presence_penalty"),
    ("presence_penalty", float("nan"), "finite"),
    ("min_new_tokens", -3, "min_new_tokens"),
    ("min_new_tokens", 1.5, "min_new_tokens"),
    ("logit_bias", {"x": 1.0}, "logit_bias"),
    ("logit_bias", {-1: 1.0}, "logit_bias"),
    ("logit_bias", {3: float("inf")}, "logit_bias"),
    ("logit_bias", {1.5: 1.0}, "logit_bias"),
    ("logit_bias", {i: 1.0 for i in range(MAX_LOGIT_BIAS + 1)}, "at most"),
    ("logit_bias", [{1: 1.0}], "length"),
    ("logit_bias", 3.0, "logit_bias"),
    ("top_q", 0.5, "top_q"),
  ],
)
def test_validation_names_the_setting(name, value, match):
  with pytest.raises(ValueError, match=match):
    S.SamplingParams.make(2, **{name: value})


def test_logit_bias_ids_checked_against_the_vocabulary():
  with pytest.raises(ValueError, match="vocabulary"):
    S.SamplingParams.make(1, vocab_size=100, logit_bias={100: 1.0})
  p = S.SamplingParams.make(1, vocab_size=100, logit_bias={"99": -1.0})  # JSON keys are strings
  assert p.logit_bias_ids[0, 0] == 99


def test_make_and_pad_with_every_setting():
  p = S.SamplingParams.make(
    2,
    typical_p=[0.9, 1.0],
    no_repeat_ngram_size=3,
    frequency_penalty=[0.5, -0.5],
    min_new_tokens=[4, 0],
    logit_bias=[{3: 1.5}, None],
  )
  assert p.no_repeat_ngram_size.dtype == jnp.int32 and p.no_repeat_ngram_size.tolist() == [3, 3]
  assert p.logit_bias_ids.shape == (2, MAX_LOGIT_BIAS) and p.logit_bias_ids[0, :2].tolist() == [3, -1]
  assert p.logit_bias_ids[1].tolist() == [-1] * MAX_LOGIT_BIAS
  # One registry: every setting is a field (logit_bias as ids + values) and has an off value.
  assert set(S.SETTINGS) - {"logit_bias"} | {"logit_bias_ids", "logit_bias_values"} == set(
    S.SamplingParams.__dataclass_fields__
  )


# ----------------------------------------------------------------------------
# The CLI flags come from the registry.
# ----------------------------------------------------------------------------


def _parsed(*argv):
  from absl import flags

  from smollm3_jax import cli

  fv = flags.FlagValues()
  cli.define_sampling_flags(flag_values=fv)
  fv(["prog", *argv])
  return cli.sampling_flag_values(fv), cli.beam_flag_values(fv)


def test_cli_flags_from_the_registry():
  from absl import flags

  values, beams = _parsed()
  assert values == dict.fromkeys(("temperature", "top_k", "top_p", "min_p", "repetition_penalty"))
  assert beams == {}
  values, beams = _parsed(
    "--typical_p=0.9",
    "--no_repeat_ngram_size=3",
    "--logit_bias=5:-100, 7:2.5",
    "--min_new_tokens=4",
    "--temperature=0.7",
    "--num_beams=4",
    "--early_stopping=never",
    "--length_penalty=0.5",
  )
  assert values["typical_p"] == 0.9 and values["no_repeat_ngram_size"] == 3 and values["min_new_tokens"] == 4
  assert values["logit_bias"] == {5: -100.0, 7: 2.5} and values["temperature"] == 0.7
  assert "eta_cutoff" not in values  # unset new settings stay out (off)
  assert beams == dict(num_beams=4, length_penalty=0.5, early_stopping="never")
  S.SamplingParams.make(2, **{k: v for k, v in values.items() if v is not None})  # None: the checkpoint default
  for bad, match in [
    ("--typical_p=0", "typical_p"),
    ("--frequency_penalty=3", "frequency_penalty"),
    ("--logit_bias=5", "logit_bias"),
    ("--no_repeat_ngram_size=-1", "no_repeat_ngram_size"),
    ("--num_beams=0", "num_beams"),
    ("--early_stopping=maybe", "early_stopping"),
  ]:
    with pytest.raises(flags.Error, match=match):
      _parsed(bad)


# ----------------------------------------------------------------------------
# generate: greedy rows with each new setting, mixed in one batch, equal transformers' generate.
# ----------------------------------------------------------------------------

GEN_ROWS = [  # per row: our keyword arguments (greedy); the first row is everything off
  {},
  dict(no_repeat_ngram_size=1),
  dict(no_repeat_ngram_size=2, min_new_tokens=22),
  dict(frequency_penalty=2.0, presence_penalty=1.5),
  dict(frequency_penalty=1.0, presence_penalty=2.0, no_repeat_ngram_size=3),
  dict(min_new_tokens=20),
  dict(logit_bias={}),  # filled in by the test: a bias that changes the greedy path
  dict(typical_p=0.5, epsilon_cutoff=0.1, eta_cutoff=0.1),  # warpers: greedy rows ignore them
]


def _hf_greedy_row(ref, prompt, row, new, stop):
  """transformers' greedy generate for one row's settings (the OpenAI penalties as a custom
  processor with vLLM's formula: transformers has none)."""
  from transformers import LogitsProcessorList

  extra = LogitsProcessorList()
  if row.get("frequency_penalty") or row.get("presence_penalty"):
    extra.append(_VLLMPenalties(row.get("frequency_penalty", 0.0), row.get("presence_penalty", 0.0), len(prompt)))
  bias = row.get("logit_bias") or {}
  with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out = ref.generate(
      torch.tensor([prompt]),
      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
      max_new_tokens=new,
      do_sample=False,
      eos_token_id=list(stop),
      pad_token_id=0,
      top_k=None,
      top_p=None,
      temperature=None,
      logits_processor=extra,
      no_repeat_ngram_size=row.get("no_repeat_ngram_size") or None,
      min_new_tokens=row.get("min_new_tokens") or None,
      sequence_bias=[[[t], b] for t, b in bias.items()] or None,
    )
  return out[0, len(prompt) :].tolist()


def _check_generate(model, ref, prompt, new=24, first_stop=10):
  """One batch of GEN_ROWS on one prompt against transformers row by row. The stop id is the first
  token of the off row's greedy text that is new at index >= first_stop (the off row stops there; the
  min_new_tokens rows go on); the bias lifts a token by 20."""
  import smollm3_jax

  off = _hf_greedy_row(ref, prompt, {}, new, [])
  at = next(i for i in range(first_stop, new) if off[i] not in off[:i])
  assert len(set(off[:at])) < at  # repeats for the penalties and n-gram blocking before the stop
  stop = [off[at]]
  rows = [dict(r) for r in GEN_ROWS]
  rows[6]["logit_bias"] = {(off[0] + 1) % ref.config.vocab_size: 20.0}
  names = sorted({k for r in rows for k in r})
  kwargs = {k: [r.get(k, S.SETTINGS[k].off) for r in rows] for k in names}
  res = smollm3_jax.generate(
    model, None, [prompt] * len(rows), max_new_tokens=new, stop_ids=stop, temperature=0.0, **kwargs
  )
  ours = [c.token_ids for c in res.completions]
  refs = [off[: at + 1]] + [_hf_greedy_row(ref, prompt, r, new, stop) for r in rows[1:]]
  for b in range(len(rows)):
    assert ours[b] == refs[b], (b, rows[b], ours[b], refs[b])
  changed = [b for b in range(1, len(rows)) if ours[b] != ours[0]]
  assert changed == [1, 2, 3, 4, 5, 6], changed  # every processor acted (the warpers did not: greedy)


def test_generate_greedy_with_each_setting_equals_transformers(make_hf_model, tmp_path):
  import smollm3_jax

  ref = make_hf_model(seed=5, tie_word_embeddings=False)
  with torch.no_grad():
    ref.lm_head.weight.mul_(4.0)
  ref.save_pretrained(tmp_path)
  _check_generate(smollm3_jax.from_pretrained(str(tmp_path)), ref, [40, 41, 40, 41, 40])


def test_demo_generate_greedy_with_each_setting_equals_transformers(demo_model, demo_tokenizer, demo_hf_model):
  _check_generate(
    demo_model,
    demo_hf_model,
    demo_tokenizer.encode("The list of colours: red, green, blue, red,"),
    new=16,
    first_stop=7,
  )
