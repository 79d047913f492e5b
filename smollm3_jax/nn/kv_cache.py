"""The functional KV cache: a pytree passed into the model and returned updated.

Each row has its own length: row b's tokens sit at slots ``[0, lengths[b])`` and slot s holds
position s (prompts are left-aligned; a batch's shorter prompts are padded on the right, and those
pad slots are overwritten as the row generates). New tokens of row b are written at
``lengths[b]``, so rows advance independently (what continuous batching needs). Attention may read
only a window ``[0, W)`` of the slots, a static bucket covering every row's length: the cost of a
decode step then follows the text written, not the allocated cache. The cache length is fixed at
compile time and chosen from a small set of buckets, so prompts of different lengths share one
compiled program (the bucket policy: :mod:`smollm3_jax.utils.buckets`).

Imports only the config.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from smollm3_jax.nn.config import SmolLM3Config


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

  rows (optional, [U] int32): the cache holds the whole pool's B rows but the model runs U of them,
  row u being pool row ``rows[u]`` (B or more: no row; its writes repeat a real row's, its reads are
  discarded) with ``lengths`` [U]: a prefill writes only its new chunk into the (donated) pool cache
  and reads each row's window in place, never a copy of the rows' windows.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  lengths: jax.Array
  dtype: str = flax.struct.field(pytree_node=False, default="float32")
  rows: jax.Array | None = None
  # (static) attention over this cache takes the new tokens' queries in blocks of this many tokens
  # (0: all at once); see model.attend
  query_block: int = flax.struct.field(pytree_node=False, default=0)
  # (static) the devices the batch axis is split over (a mesh's data axis): ``rows`` reads and writes
  # go through take_row / put_row, each device touching its own rows only
  shards: int = flax.struct.field(pytree_node=False, default=1)

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
  def init(
    cls, config: SmolLM3Config, batch: int, length: int, dtype=jnp.float32, lengths: jax.Array | None = None
  ) -> "KVCache":
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
    if self.rows is None:
      put = lambda c, x, i: jax.lax.dynamic_update_slice(c, x, (0, i, 0))
      return jax.vmap(put)(cache, new, self.lengths)
    # Row u's chunk at (rows[u], lengths[u]), one update each, in place. A row past the pool repeats
    # the first real row's write (the same values twice change nothing); with no real row at all each
    # update writes back what it overwrites.
    valid = self.rows < cache.shape[0]
    real = jnp.where(valid, jnp.arange(valid.shape[0]), jnp.argmax(valid))
    for u in range(new.shape[0]):
      i = real[u]
      row, start = self.rows[i], self.lengths[i]
      chunk = jax.lax.dynamic_index_in_dim(new, i, 0)
      chunk = jnp.where(jnp.any(valid), chunk, take_row(cache, row, start, chunk.shape[2], self.shards))
      cache = put_row(cache, chunk, row, start, self.shards)
    # The windows :meth:`read` slices next must read this result: newer XLA (jaxlib 0.12) otherwise
    # fuses slice and update into one read of the old cache, which then lives on beside the in-place
    # update, i.e. a copy of the whole layer cache on every prefill call.
    return jax.lax.optimization_barrier(cache)

  def read(self, cache: jax.Array, window: int) -> jax.Array:
    """The values of one layer's first ``window`` slots, [B, KVH, window, D] in ``dtype``."""
    if self.rows is None:
      x = cache[:, :, :window]
    else:  # row u's window, sliced from the pool row it runs in (a row past the pool: discarded)
      rows = [take_row(cache, self.rows[u], 0, window, self.shards) for u in range(self.rows.shape[0])]
      x = rows[0] if len(rows) == 1 else jnp.concatenate(rows, axis=0)
    return x if x.dtype == jnp.dtype(self.dtype) else jax.lax.bitcast_convert_type(x, self.dtype)


def split_rows(x: jax.Array, shards: int) -> jax.Array:
  """[B, ...] as [shards, B / shards, ...]: the outer axis one device's rows each (a free reshape)."""
  return x.reshape((shards, x.shape[0] // shards) + x.shape[1:])


def merge_rows(xs: jax.Array) -> jax.Array:
  """The inverse of :func:`split_rows`."""
  return xs.reshape((xs.shape[0] * xs.shape[1],) + xs.shape[2:])


def take_split_row(xs: jax.Array, row, start, size: int) -> jax.Array:
  """:func:`take_row` of a cache in :func:`split_rows` form [shards, B / shards, KVH, S, D]."""
  shards, per = xs.shape[:2]
  part = jax.lax.dynamic_slice(xs, (0, row % per, 0, start, 0), (shards, 1, xs.shape[2], size, xs.shape[4]))
  owner = (jnp.arange(shards) == row // per).reshape((shards,) + (1,) * 4)
  bits = part if jnp.issubdtype(part.dtype, jnp.integer) else jax.lax.bitcast_convert_type(part, _uint(part.dtype))
  bits = jnp.sum(jnp.where(owner, bits, jnp.zeros_like(bits)), axis=0, dtype=bits.dtype)
  return bits if bits.dtype == part.dtype else jax.lax.bitcast_convert_type(bits, part.dtype)


def put_split_row(xs: jax.Array, part: jax.Array, row, start) -> jax.Array:
  """:func:`put_row` into a cache in :func:`split_rows` form."""
  shards, per = xs.shape[:2]
  at = (0, row % per, 0, start, 0)
  held = jax.lax.dynamic_slice(xs, at, (shards,) + part.shape)
  owner = (jnp.arange(shards) == row // per).reshape((shards,) + (1,) * 4)
  return jax.lax.dynamic_update_slice(xs, jnp.where(owner, part[None], held), at)


def take_row(x: jax.Array, row, start, size: int, shards: int = 1) -> jax.Array:
  """Slots ``start .. start + size`` of row ``row`` of one layer's cache ``x`` [B, KVH, S, D]:
  [1, KVH, size, D]. ``shards`` > 1 (the batch axis split over that many devices): each device
  slices its own rows at the row's local index and the owner's slice is kept (a sum with zeros,
  over the bits: exact; one slice crosses devices). A dynamic index into the split axis itself made
  XLA gather the whole cache onto every device. A row past the pool (``row`` >= B): zeros."""
  if shards == 1:
    return jax.lax.dynamic_slice(x, (row, 0, start, 0), (1, x.shape[1], size, x.shape[3]))
  return take_split_row(split_rows(x, shards), row, start, size)


def put_row(x: jax.Array, part: jax.Array, row, start, shards: int = 1) -> jax.Array:
  """``x`` [B, KVH, S, D] with ``part`` [1, KVH, T, D] written at row ``row``'s slots ``start ..``, in
  place. ``shards`` > 1: every device writes the row's local index in its own rows, the owner
  ``part`` and the others what they hold (no cross-device traffic; ``row`` >= B changes nothing)."""
  if shards == 1:
    return jax.lax.dynamic_update_slice(x, part, (row, 0, start, 0))
  return merge_rows(put_split_row(split_rows(x, shards), part, row, start))


def _uint(dtype) -> jnp.dtype:
  return jnp.dtype(f"uint{jnp.dtype(dtype).itemsize * 8}")
