"""The functional KV cache: a pytree passed into the model and returned updated.

Each row has its own length: row b's tokens sit at slots ``[0, lengths[b])`` and slot s holds
position s (prompts are left-aligned; a batch's shorter prompts are padded on the right, and those
pad slots are overwritten as the row generates). New tokens of row b are written at
``lengths[b]``, so rows advance independently (what continuous batching needs). Attention may read
only a window ``[0, W)`` of the slots, a static bucket covering every row's length: the cost of a
decode step then follows the text written, not the allocated cache. The cache length is fixed at
compile time and chosen from a small set of buckets, so prompts of different lengths share one
compiled program.

Imports only the config. The default batch buckets live here too, beside the length buckets, so
that both the engine and :mod:`smollm3_jax.nn.sharding` can use them without importing each other.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp

from smollm3_jax.nn.config import SmolLM3Config

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


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer.

  k, v: tuples (one per layer) of [B, KVH, S, D] arrays (head-major: attention reads them without
  a transpose); lengths: [B] int32, the slots filled in each row (= the next slot it writes);
  dtype (static): the dtype of the values. 16-bit float values are stored as their uint16 bit
  patterns and read back through :meth:`read`: XLA:CPU widens bfloat16 buffers to float32 around
  updates and slices, which copies the whole cache at every decode step (measured at 4096 slots,
  batch 8: the bfloat16 step cost grew with the allocated cache, the uint16 one does not); on
  GPU/TPU the bitcasts cost nothing either.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  lengths: jax.Array
  dtype: str = flax.struct.field(pytree_node=False, default="float32")

  @staticmethod
  def storage_dtype(dtype) -> jnp.dtype:
    """The dtype the arrays hold for values of ``dtype`` (uint16 for 16-bit floats)."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.uint16) if dtype.itemsize == 2 else dtype

  @staticmethod
  def layer_shape(config: SmolLM3Config, batch: int, length: int) -> tuple[int, int, int, int]:
    """Shape of one layer's keys (or values): [B, KVH, S, D]."""
    return (batch, config.num_key_value_heads, length, config.head_dim)

  @classmethod
  def init(cls, config: SmolLM3Config, batch: int, length: int, dtype=jnp.float32,
           lengths: jax.Array | None = None) -> "KVCache":
    shape = cls.layer_shape(config, batch, length)
    zeros = lambda: tuple(jnp.zeros(shape, cls.storage_dtype(dtype)) for _ in range(config.num_hidden_layers))
    lengths = jnp.zeros((batch,), jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    return cls(k=zeros(), v=zeros(), lengths=lengths, dtype=jnp.dtype(dtype).name)

  @property
  def batch(self) -> int:
    return self.k[0].shape[0]

  @property
  def length(self) -> int:
    """Capacity in tokens (static)."""
    return self.k[0].shape[2]

  def attention_mask(self, num_new: int, window: int | None = None) -> jax.Array:
    """[B, num_new, W] bool: new token t of row b (written at slot lengths[b] + t) sees slots
    0 .. lengths[b] + t of the first W (default: all) slots."""
    slots = jnp.arange(window or self.length, dtype=jnp.int32)
    query_slots = self.lengths[:, None] + jnp.arange(num_new, dtype=jnp.int32)[None, :]
    return slots[None, None, :] <= query_slots[:, :, None]

  def write(self, cache: jax.Array, new: jax.Array) -> jax.Array:
    """One layer's stored cache [B, KVH, S, D] with the values ``new`` [B, KVH, T, D] written at
    each row's length."""
    new = new.astype(self.dtype)
    if new.dtype != cache.dtype:
      new = jax.lax.bitcast_convert_type(new, cache.dtype)
    put = lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (0, i, 0))
    return jax.vmap(put)(cache, new, self.lengths)

  def read(self, cache: jax.Array, window: int) -> jax.Array:
    """The values of one layer's first ``window`` slots, [B, KVH, window, D] in ``dtype``."""
    x = cache[:, :, :window]
    return x if x.dtype == jnp.dtype(self.dtype) else jax.lax.bitcast_convert_type(x, self.dtype)


def window_length(needed: int, length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
  """The read window for ``needed`` slots: the smallest length bucket >= needed, at most the cache."""
  return min(bucket_length(max(needed, 1), buckets), length)
