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
  return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


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
    r"(?:\\boxed\{|answer\s*(?:is|:)|=\s*|equals\s+|result\s*(?:is|:)|total\s*(?:is|:))", re.IGNORECASE)


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
    found = _NUMBER.findall(text[markers[-1].end():])
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


def mean(values: Iterable[float | None]) -> float:
  """Mean of the non-None values (NaN when there is none)."""
  vals = [float(v) for v in values if v is not None]
  return sum(vals) / len(vals) if vals else float("nan")
