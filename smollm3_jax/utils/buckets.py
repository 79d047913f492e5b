"""Shape buckets: the lengths and batch sizes that prompts, caches, read windows and pools round up
to, so that calls of different sizes share a few compiled programs. Plain integers (no JAX).
"""

from __future__ import annotations

from typing import Sequence

# Lengths (tokens) that prompts and caches are rounded up to; beyond the last, multiples of it.
DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
# Batch sizes a request is padded up to: powers of two up to 16, then steps of 8 to 32, 16 to 256
# and 32 to 512 (each bucket compiles only when used). Large batches are compute-bound on CPU, so
# idle rows cost their full share: a 144-row grid ran 12-21 % faster as 144 rows than padded to 160.
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, *range(48, 257, 16), *range(288, 513, 32))


def bucket_length(n: int, buckets: Sequence[int] = DEFAULT_BUCKETS, limit: int | None = None) -> int:
  """The smallest bucket >= n (capped at ``limit`` when given and n <= limit)."""
  if n < 1:
    raise ValueError(f"length must be >= 1, got {n}")
  chosen = next((b for b in sorted(buckets) if b >= n), None)
  if chosen is None:
    step = max(buckets)
    chosen = -(-n // step) * step
  if limit is not None and n <= limit:
    chosen = min(chosen, limit)
  return chosen


def window_length(needed: int, length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The read window for ``needed`` slots: the smallest length bucket >= needed, at most the cache."""
  return min(bucket_length(max(needed, 1), buckets), length)
