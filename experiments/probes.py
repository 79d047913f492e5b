"""Measurement probes used by the benchmark only: memory bandwidth, peak memory, bytes of a pytree.

import probes                               # from experiments/ (the benchmark's directory)
gbps = probes.measure_bandwidth()["gbps"]   # device memory bandwidth, GB/s (for rooflines)
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _time_best(fn, args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t0)
  return best


def measure_bandwidth(nbytes: int | None = None, *, repeats: int = 10, device=None) -> dict[str, Any]:
  """Measures readable memory bandwidth of ``device`` (default: the first device), in GB/s.

  Two read-dominated kernels over an f32 array of ``nbytes`` (default 256 MiB on CPU, 1 GiB on
  accelerators, far beyond any cache): a full reduction ``sum(x)`` and a matrix-vector product
  ``x.reshape(R, 4096) @ v`` (the access pattern of batch-1 decode). Each is timed best-of-``repeats``;
  ``gbps`` is the larger of the two (the conservative denominator for a roofline fraction).
  Returns ``dict(gbps, sum_gbps, gemv_gbps, nbytes, device)``.
  """
  device = device or jax.devices()[0]
  if nbytes is None:
    nbytes = (256 if device.platform == "cpu" else 1024) * 2**20
  cols = 4096
  rows = max(int(nbytes) // (4 * cols), 1)
  x = jax.device_put(jnp.ones((rows, cols), jnp.float32), device)
  v = jax.device_put(jnp.ones((cols,), jnp.float32), device)
  size = x.size * 4
  sum_s = _time_best(jax.jit(jnp.sum), (x,), repeats)
  gemv_s = _time_best(jax.jit(lambda a, b: a @ b), (x, v), repeats)
  out = dict(sum_gbps=size / sum_s / 1e9, gemv_gbps=size / gemv_s / 1e9, nbytes=int(size), device=str(device))
  out["gbps"] = max(out["sum_gbps"], out["gemv_gbps"])
  del x, v
  return out


def peak_memory_bytes(device=None) -> int | None:
  """Peak bytes in use on ``device`` as its backend reports it (None where it reports nothing)."""
  device = device or jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:
    return None
  if not stats:
    return None
  for key in ("peak_bytes_in_use", "bytes_in_use"):
    if key in stats:
      return int(stats[key])
  return None


def host_peak_rss_bytes() -> int | None:
  """Peak resident memory of this process (the CPU backend's memory), where the OS reports it."""
  try:
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  except Exception:  # pragma: no cover - non-POSIX
    return None
  import sys

  return int(rss if sys.platform == "darwin" else rss * 1024)


def tree_nbytes(tree) -> int:
  """Total bytes of the array leaves of a pytree."""
  return int(
    sum(
      np.prod(x.shape) * np.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
      if hasattr(x, "shape") and hasattr(x, "dtype")
    )
  )
