"""Metric functions on hand-made inputs with known values."""

from __future__ import annotations

import math

import pytest

from smollm3_jax import metrics as M


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


@pytest.mark.parametrize("text,value", [
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
])
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
