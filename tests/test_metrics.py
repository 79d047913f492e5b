"""Metric functions on hand-made inputs with known values."""

from __future__ import annotations

import math

import pytest

from smollm3_jax.evaluation import metrics as M


def test_words_and_ngrams():
  assert M.words("The cat's hat, THE cat!") == ["the", "cat's", "hat", "the", "cat"]
  assert M.ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
  assert M.ngrams([1, 2], 3) == []
  with pytest.raises(ValueError, match="n must be"):
    M.ngrams([1], 0)


def test_distinct_n():
  toks = "a b a b c".split()
  assert M.distinct_n(toks, 1) == pytest.approx(3 / 5)
  # bigrams: ab ba ab bc -> 3 unique of 4
  assert M.distinct_n(toks, 2) == pytest.approx(3 / 4)
  assert M.distinct_n([], 1) == 0.0
  assert M.distinct_n(["x"], 2) == 0.0
  assert M.corpus_distinct_n([["a", "b"], ["a", "c"]], 1) == pytest.approx(3 / 4)
  assert M.corpus_distinct_n([[], []], 1) == 0.0


def test_repeated_ngram_share():
  toks = "a b c d a b c d".split()
  # 5 four-grams: abcd bcda cdab dabc abcd -> one repeats
  assert M.repeated_ngram_share(toks, 4) == pytest.approx(1 / 5)
  assert M.repeated_ngram_share(["x"] * 10, 4) == pytest.approx(6 / 7)
  assert M.repeated_ngram_share("a b c".split(), 4) == 0.0
  assert M.repeated_ngram_share(list(range(10)), 4) == 0.0


@pytest.mark.parametrize(
  "text,value",
  [
    ("17 + 25 = 42", 42.0),
    ("The answer is 42.", 42.0),
    ("Answer: -3.5 degrees", -3.5),
    ("First 12, then 7, so 19", 19.0),
    ("It costs 1,234 dollars", 1234.0),
    ("so \\boxed{156} is it, not 12", 156.0),
    ("3/4 of them", 0.75),
    ("x = 2 + 3 = 5, check: 5", 5.0),
    ("no number here", None),
    ("H2O is water", None),
  ],
)
def test_extract_number(text, value):
  got = M.extract_number(text)
  assert got == value if value is None else got == pytest.approx(value)


def test_normalize_and_text_match():
  assert M.normalize_text("The  Pacífic Ocean!") == "pacific ocean"
  assert M.text_matches("It is the Pacific Ocean.", ["Pacific"])
  assert M.text_matches("Leonardo da Vinci painted it", ["da Vinci", "Leonardo"])
  assert not M.text_matches("Parisian cafés", "Paris")  # whole words only
  assert not M.text_matches("", "Paris")
  assert not M.text_matches("anything", "")


def test_is_correct():
  assert M.is_correct("The capital is Paris.", ["Paris"], "text") is True
  assert M.is_correct("The capital is Lyon.", ["Paris"], "text") is False
  assert M.is_correct("12 * 13 = 156", 156, "numeric") is True
  assert M.is_correct("about 150", 156, "numeric") is False
  assert M.is_correct("2.5 hours is 150 minutes", 150, "numeric") is True
  assert M.is_correct("anything", None, "text") is None
  with pytest.raises(ValueError, match="kind"):
    M.is_correct("x", "y", "fuzzy")


def test_mean():
  assert M.mean([1, None, 3]) == 2.0
  assert math.isnan(M.mean([None]))
  assert math.isnan(M.mean([]))


# --------------------------------------------------------------------------------------------
# Statistics over samples
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_equals_the_closed_form(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      want = 1.0 - math.comb(n - c, k) / math.comb(n, k)  # Chen et al. 2021, eq. 1 (C(a, k) = 0 for a < k)
      assert M.pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12), (n, c, k)
  assert M.pass_at_k(n, 0, 1) == 0.0 and M.pass_at_k(n, n, 1) == 1.0


def test_pass_at_k_refuses_impossible_counts():
  for bad in [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5), (4.0, 2, 1), (True, 1, 1)]:
    with pytest.raises(ValueError, match="pass_at_k"):
      M.pass_at_k(*bad)


def test_majority_vote():
  # numeric: votes on the extracted number ("4" and "4.0" are one vote); ties go to the key seen first
  assert M.majority_vote(["5", "it is 4", "4.0", "5"], "numeric") == 0
  assert M.majority_vote(["x = 3", "the answer is 7", "7", "3"], "numeric") == 0
  assert M.majority_vote(["no idea", "answer: 12", "12", "13"], "numeric") == 1
  assert M.majority_vote(["no idea", "none"], "numeric") is None
  # text: votes on the normalized answer
  assert M.majority_vote(["Lyon", "The Paris!", "paris", "Lyon."], "text") == 0
  assert M.majority_vote(["Rome", "paris", "The Paris."], "text") == 1
  with pytest.raises(ValueError, match="kind"):
    M.majority_vote(["a"], "fuzzy")


def test_self_bleu_equals_sacrebleu_called_directly():
  import sacrebleu

  texts = [
    "the cat sat on the mat",
    "the cat sat on a mat today",
    "a dog ran far away from the mat",
    "the cat sat on the mat",
  ]
  want = sum(sacrebleu.sentence_bleu(texts[i], [t for j, t in enumerate(texts) if j != i]).score for i in range(4)) / 4
  assert M.self_bleu(texts) == pytest.approx(want, rel=1e-12)
  assert 0 < want < 100
  assert M.self_bleu(["same words here", "same words here"]) == pytest.approx(100.0)
  assert math.isnan(M.self_bleu(["alone"])) and math.isnan(M.self_bleu([]))


def _direct_bootstrap(groups, resamples, level, seed, block=None):
  """The documented draws, one resample and one value at a time."""
  import numpy as np

  groups = [[float(v) for v in g if v is not None] for g in groups]
  groups = [g for g in groups if g]
  n_groups, width = len(groups), max(len(g) for g in groups)
  block = block or resamples
  rng = np.random.default_rng(seed)
  stats = []
  for start in range(0, resamples, block):
    b = min(block, resamples - start)
    pick = rng.integers(0, n_groups, (b, n_groups))
    u = rng.random((b, n_groups, width))
    for i in range(b):
      drawn = []
      for j in range(n_groups):
        g = groups[pick[i, j]]
        drawn += [g[int(u[i, j, s] * len(g))] for s in range(len(g))]
      stats.append(sum(drawn) / len(drawn))
  lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)


GROUPS = [[1, 0, 1, 1], [0, 0], [1, None, 1], [0.5], [], [None], [1, 1, 0, 0, 1, 0]]


def test_bootstrap_interval_equals_a_direct_computation(monkeypatch):
  got = M.bootstrap_interval(GROUPS, resamples=300, level=0.9, seed=7)
  assert got == pytest.approx(_direct_bootstrap(GROUPS, 300, 0.9, 7), abs=1e-12)
  # Reproducible with the seed, another seed draws others.
  assert M.bootstrap_interval(GROUPS, resamples=300, level=0.9, seed=7) == got
  assert M.bootstrap_interval(GROUPS, resamples=300, level=0.9, seed=8) != got
  # Large data are drawn in blocks of resamples, as documented: 5 groups x 6 columns x 7 resamples.
  monkeypatch.setattr(M, "BOOTSTRAP_BLOCK", 5 * 6 * 7)
  blocked = M.bootstrap_interval(GROUPS, resamples=50, seed=3)
  assert blocked == pytest.approx(_direct_bootstrap(GROUPS, 50, 0.95, 3, block=7), abs=1e-12)


def test_bootstrap_interval_matches_the_normal_approximation():
  """One value per prompt, many prompts: the percentile interval of a mean is close to
  mean +- z * sd / sqrt(n) (a check that does not share the implementation's draws)."""
  import numpy as np

  values = [float(v) for v in (np.arange(400) % 7) / 6.0]
  mean, sd = np.mean(values), np.std(values) / np.sqrt(len(values))
  lo, hi = M.bootstrap_interval([[v] for v in values], resamples=4000, seed=0)
  assert lo == pytest.approx(mean - 1.959964 * sd, abs=0.08 * sd)
  assert hi == pytest.approx(mean + 1.959964 * sd, abs=0.08 * sd)


def test_bootstrap_interval_edge_cases():
  assert M.bootstrap_interval([[2.5, 2.5], [2.5]]) == (2.5, 2.5)
  assert all(math.isnan(v) for v in M.bootstrap_interval([[None], []]))
  assert all(math.isnan(v) for v in M.bootstrap_interval([]))
  with pytest.raises(ValueError, match="level"):
    M.bootstrap_interval([[1.0]], level=1.0)
  with pytest.raises(ValueError, match="resamples"):
    M.bootstrap_interval([[1.0]], resamples=0)
