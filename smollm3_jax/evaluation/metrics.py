"""Text metrics for sampling sweeps: lengths, diversity, repetition, answer extraction, accuracy.

Plain functions over strings / token lists (no JAX). "Words" are lower-cased runs of letters,
digits and apostrophes (``words``), so the diversity metrics do not depend on a tokenizer.

Imports nothing from the package (no JAX).
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any, Hashable, Iterable, Sequence

from smollm3_jax.utils.extras import needs

_WORD = re.compile(r"[\w']+", re.UNICODE)
# A number as people write it: optional sign, digits with optional thousands commas, optional
# decimals, or a simple fraction a/b. Group 1 is the whole number.
_NUMBER = re.compile(r"(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?)(?![\w])")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


# --------------------------------------------------------------------------------------------
# n-gram statistics
# --------------------------------------------------------------------------------------------
def words(text: str) -> list[str]:
  """Lower-cased word tokens of ``text``."""
  return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[Hashable], n: int) -> list[tuple]:
  """All contiguous n-grams of ``tokens`` (empty when there are fewer than n tokens)."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(tokens: Sequence[Hashable], n: int) -> float:
  """Unique n-grams / total n-grams of one sequence (0.0 when it has no n-gram)."""
  grams = ngrams(tokens, n)
  return len(set(grams)) / len(grams) if grams else 0.0


def corpus_distinct_n(sequences: Iterable[Sequence[Hashable]], n: int) -> float:
  """Unique n-grams / total n-grams pooled over many sequences (diversity across samples)."""
  total, unique = 0, set()
  for seq in sequences:
    grams = ngrams(seq, n)
    total += len(grams)
    unique.update(grams)
  return len(unique) / total if total else 0.0


def repeated_ngram_share(tokens: Sequence[Hashable], n: int = 4) -> float:
  """Share of n-grams that repeat an earlier n-gram of the same sequence (0.0 with no n-gram).

  "a b c d a b c d" with n=4: 5 four-grams, 1 repeats an earlier one ("a b c d") -> 0.2.
  """
  grams = ngrams(tokens, n)
  if not grams:
    return 0.0
  return (len(grams) - len(set(grams))) / len(grams)


# --------------------------------------------------------------------------------------------
# Answers and accuracy
# --------------------------------------------------------------------------------------------
def normalize_text(text: str) -> str:
  """Lower-case, strip accents, punctuation and articles, collapse whitespace (SQuAD-style)."""
  text = unicodedata.normalize("NFKD", text)
  text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
  text = re.sub(r"[^\w\s]", " ", text)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def parse_number(text: str) -> float | None:
  """The value of one number string ("1,234", "-3.5", "3/4"), or None."""
  s = text.replace(",", "").replace(" ", "")
  try:
    if "/" in s:
      num, den = s.split("/")
      return float(num) / float(den) if float(den) != 0 else None
    return float(s)
  except ValueError:
    return None


_FINAL_MARKERS = re.compile(
  r"(?:\\boxed\{|answer\s*(?:is|:)|=\s*|equals\s+|result\s*(?:is|:)|total\s*(?:is|:))", re.IGNORECASE
)


def extract_number(text: str) -> float | None:
  """The numeric answer of a completion, or None when it states no number.

  Preference: the number inside the last ``\\boxed{...}``; else the first number after the last
  marker like "answer is", "answer:", "=" or "equals"; else the last number in the text.
  """
  boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
  if boxed:
    found = _NUMBER.findall(boxed[-1])
    if found:
      return parse_number(found[-1])
  markers = list(_FINAL_MARKERS.finditer(text))
  if markers:
    found = _NUMBER.findall(text[markers[-1].end() :])
    if found:
      return parse_number(found[0])
  found = _NUMBER.findall(text)
  return parse_number(found[-1]) if found else None


def numbers_match(value: float | None, reference: float, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
  return value is not None and math.isclose(value, float(reference), rel_tol=rel_tol, abs_tol=abs_tol)


def text_matches(answer: str, references: str | Sequence[str]) -> bool:
  """Whether any normalized reference occurs as a whole-word span of the normalized answer."""
  refs = [references] if isinstance(references, str) else list(references)
  norm = f" {normalize_text(answer)} "
  return any(normalize_text(r) and f" {normalize_text(r)} " in norm for r in refs)


def is_correct(answer: str, reference: Any, kind: str) -> bool | None:
  """Scores one answer; None when the prompt has no reference.

  ``kind``: "numeric" (``reference`` a number; the extracted number must match) or "text"
  (``reference`` a string or list of accepted strings; one must occur in the answer).
  """
  if reference is None or (isinstance(reference, (list, tuple)) and not reference):
    return None
  if kind == "numeric":
    return numbers_match(extract_number(answer), float(reference))
  if kind == "text":
    return text_matches(answer, reference)
  raise ValueError(f"kind must be 'numeric' or 'text', got {kind!r}")


def reference_error(reference: Any, kind: str | None) -> str | None:
  """Why :func:`is_correct` cannot score ``reference`` for an answer of ``kind`` ("expected ..., got
  ..."), or None when it can (no reference, or no kind: nothing is scored). For checking a prompt set
  before generating, not after. A numeric reference must be a number: a string ("1,234", "3/4") is
  refused rather than read one way or another."""
  if reference is None or kind is None:
    return None
  if kind == "numeric":
    ok = isinstance(reference, (int, float)) and not isinstance(reference, bool) and math.isfinite(reference)
    expected = "a finite number"
  elif kind == "text":
    ok = isinstance(reference, str) or (
      isinstance(reference, (list, tuple)) and all(isinstance(r, str) for r in reference)
    )
    expected = "a string or a list of strings"
  else:
    return f"expected an answer kind 'numeric' or 'text', got {kind!r}"
  return None if ok else f"expected {expected} for answer_type {kind!r}, got {reference!r} ({type(reference).__name__})"


def mean(values: Iterable[float | None]) -> float:
  """Mean of the non-None values (NaN when there is none)."""
  vals = [float(v) for v in values if v is not None]
  return sum(vals) / len(vals) if vals else float("nan")


# --------------------------------------------------------------------------------------------
# Statistics over samples: pass@k, self-consistency, self-BLEU, bootstrap intervals
# --------------------------------------------------------------------------------------------
def pass_at_k(n: int, c: int, k: int) -> float:
  """Unbiased pass@k (Chen et al. 2021, eq. 1): ``1 - C(n-c, k) / C(n, k)``, the chance that at least
  one of k samples drawn without replacement from n (c of them correct) is correct.

  Computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` (the paper's numerically stable form).
  """
  for name, v in (("n", n), ("c", c), ("k", k)):
    if isinstance(v, bool) or not isinstance(v, int):
      raise ValueError(f"pass_at_k: {name} must be an int, got {v!r}")
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k: needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  prod = 1.0
  for i in range(n - c + 1, n + 1):
    prod *= 1.0 - k / i
  return 1.0 - prod


def vote_key(answer: str, kind: str):
  """What self-consistency votes on: the extracted number ("numeric") or the normalized text
  ("text"); None when the answer states nothing to vote for."""
  if kind == "numeric":
    return extract_number(answer)
  if kind == "text":
    return normalize_text(answer) or None
  raise ValueError(f"kind must be 'numeric' or 'text', got {kind!r}")


def majority_vote(answers: Sequence[str], kind: str) -> int | None:
  """Index of the answer self-consistency picks: the first answer of the most common vote key
  (:func:`vote_key`; ties go to the key seen first), or None when no answer has a key."""
  counts: dict = {}
  first: dict = {}
  for i, a in enumerate(answers):
    key = vote_key(a, kind)
    if key is None:
      continue
    counts[key] = counts.get(key, 0) + 1
    first.setdefault(key, i)
  if not counts:
    return None
  best = max(counts.values())
  return min(first[k] for k, c in counts.items() if c == best)


def self_bleu(texts: Sequence[str]) -> float:
  """Self-BLEU of one prompt's samples (Zhu et al. 2018, Texygen): the mean over samples of
  sacrebleu's sentence BLEU (0-100) of the sample against the other samples as references. NaN with
  fewer than two samples. Higher = samples more alike. Needs ``sacrebleu`` (the ``eval`` extra)."""
  with needs("eval", "self_bleu"):
    import sacrebleu

  texts = list(texts)
  if len(texts) < 2:
    return float("nan")
  return sum(sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :]).score for i, t in enumerate(texts)) / len(texts)


BOOTSTRAP_BLOCK = 2_000_000  # draws per block of resamples (memory bound: ~50 MB of temporaries)


def bootstrap_interval(
  groups: Sequence[Sequence[float | None]], *, resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
  """Percentile bootstrap interval of the pooled mean of ``groups`` (one group per prompt, one value
  per sample), resampling prompts and then samples within each drawn prompt (a two-stage cluster
  bootstrap). None values are dropped; empty groups are dropped. (NaN, NaN) when nothing is left.

  Draws (``numpy.random.default_rng(seed)``), in blocks of ``b = max(1, BOOTSTRAP_BLOCK // (P * N))``
  resamples (P prompts, N = the largest group; one block unless the data are large): ``p =
  integers(0, P, (b, P))`` picks the prompts, then ``u = random((b, P, N))`` picks sample
  ``floor(u * n_p)`` of each drawn prompt p's n_p values (only the first n_p columns are used). Each
  resample's statistic is the mean of its drawn values; the interval is numpy's (linear) quantiles
  ``(1 - level) / 2`` and ``(1 + level) / 2`` of the ``resamples`` statistics.
  """
  import numpy as np

  if not 0 < level < 1:
    raise ValueError(f"level must be in (0, 1), got {level}")
  if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
    raise ValueError(f"resamples must be a positive int, got {resamples!r}")
  kept = [[float(v) for v in g if v is not None] for g in groups]
  kept = [g for g in kept if g]
  if not kept:
    return float("nan"), float("nan")
  sizes = np.array([len(g) for g in kept])
  width = int(sizes.max())
  vals = np.zeros((len(kept), width))
  for i, g in enumerate(kept):
    vals[i, : len(g)] = g
  rng = np.random.default_rng(seed)
  stats = np.empty(resamples)
  # Blocks of resamples bound the memory of the (block, P, N) draws.
  chunk = max(1, BOOTSTRAP_BLOCK // (len(kept) * width))
  for start in range(0, resamples, chunk):
    b = min(chunk, resamples - start)
    p = rng.integers(0, len(kept), (b, len(kept)))
    u = rng.random((b, len(kept), width))
    n = sizes[p]  # (b, P)
    j = np.minimum((u * n[..., None]).astype(np.int64), width - 1)
    used = np.arange(width)[None, None, :] < n[..., None]  # (b, P, N)
    drawn = np.take_along_axis(vals[p], j, axis=2)
    stats[start : start + b] = np.where(used, drawn, 0.0).sum(axis=(1, 2)) / n.sum(axis=1)
  lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
  return float(lo), float(hi)
