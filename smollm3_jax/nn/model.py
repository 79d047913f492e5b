"""SmolLM3 in Flax NNX.

Reads top to bottom like the architecture: RoPE tables, RMSNorm, grouped-query attention
(RoPE only on layers with ``no_rope_layers[i] == 1``), SwiGLU MLP, the decoder layer, the model.

Numerics follow ``transformers``' SmolLM3: RoPE tables in f32 (then cast to the activation
dtype), attention softmax in f32, RMSNorm variance in f32.

The KV cache is a plain pytree (:class:`smollm3_jax.nn.kv_cache.KVCache`) passed in and returned:
``logits, cache = model(tokens, positions, cache)``. With ``cache=None`` the call is a plain causal
forward and returns ``(logits, None)``.

Parameter names mirror the Hugging Face tensor names (``layers[i].self_attn.q_proj.kernel`` is
``model.layers.i.self_attn.q_proj.weight`` transposed), so checkpoint mapping is mechanical.

Imports only the config and the cache (never the engine, the loaders or sharding).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.nn.config import SmolLM3Config
from smollm3_jax.nn.kv_cache import KVCache

Array = jax.Array


# --------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------
def rope_inv_freq(config: SmolLM3Config) -> tuple[np.ndarray, float]:
  """Inverse frequencies [head_dim // 2] (f32) and the cos/sin scaling factor (YaRN's attention factor)."""
  dim = config.head_dim
  base = np.float32(config.rope_theta)
  exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
  pos_freqs = base**exponents
  inv_freq = (1.0 / pos_freqs).astype(np.float32)
  rs = config.rope_scaling
  if rs is None:
    return inv_freq, 1.0
  if rs.rope_type == "linear":
    return (inv_freq / np.float32(rs.factor)).astype(np.float32), 1.0
  # YaRN: blend interpolated (divided by factor) and extrapolated frequencies with a linear ramp
  # over the dimensions whose wavelengths fall between beta_fast and beta_slow rotations.
  factor = rs.factor
  orig_max = rs.original_max_position_embeddings or config.max_position_embeddings

  def get_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

  if rs.attention_factor is not None:
    attention_factor = rs.attention_factor
  elif rs.mscale and rs.mscale_all_dim:
    attention_factor = get_mscale(factor, rs.mscale) / get_mscale(factor, rs.mscale_all_dim)
  else:
    attention_factor = get_mscale(factor)

  def correction_dim(num_rotations):
    return dim * math.log(orig_max / (num_rotations * 2 * math.pi)) / (2 * math.log(config.rope_theta))

  low, high = correction_dim(rs.beta_fast), correction_dim(rs.beta_slow)
  if rs.truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoid a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
  extrapolation_weight = 1 - ramp
  inv_freq_interp = 1.0 / (np.float32(factor) * pos_freqs)
  blended = inv_freq_interp * (1 - extrapolation_weight) + inv_freq * extrapolation_weight
  return blended.astype(np.float32), float(attention_factor)


def rope_tables(positions: Array, config: SmolLM3Config, dtype) -> tuple[Array, Array]:
  """cos, sin of shape [B, T, head_dim] for integer positions [B, T]; computed in f32, cast to dtype."""
  inv_freq, scaling = rope_inv_freq(config)
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return (jnp.cos(emb) * scaling).astype(dtype), (jnp.sin(emb) * scaling).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Rotate-half RoPE. x: [B, T, heads, D]; cos/sin: [B, T, D]."""
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
class RMSNorm(nnx.Module):
  """x / rms(x) * scale, with the variance in f32 and the result cast back before the scale."""

  def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    normed = (x32 * jax.lax.rsqrt(var + self.eps)).astype(x.dtype)
    return (self.scale[...].astype(self.dtype) * normed).astype(self.dtype)


def _linear(d_in, d_out, bias, *, dtype, param_dtype, rngs):
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


def attend(q: Array, k: Array, v: Array, mask: Array, query_block: int = 0) -> Array:
  """Grouped-query attention.

  q: [B, T, H, D]; k, v: [B, KVH, S, D] (head-major, as the cache stores them, so that the two
  products read the cache without a transpose); mask: [B, T, S] bool (True = may attend).
  Query head h reads kv head h // (H // KVH). Returns [B, T, H * D]. ``query_block`` (static; 0:
  off): the queries in blocks of that many tokens, each block's scores [B, KVH, block * G, S] made
  and used apart (each query's numbers are its own either way), so that a wide chunk's scores
  against a long window need not go through device memory at once (``utils.backend``).
  """
  if query_block and q.shape[1] > query_block:
    t = q.shape[1]
    blocks = [attend(q[:, i : i + query_block], k, v, mask[:, i : i + query_block]) for i in range(0, t, query_block)]
    return jnp.concatenate(blocks, axis=1)
  b, t, h, d = q.shape
  kvh, s = k.shape[1], k.shape[2]
  g = h // kvh
  # One [t*g, d] x [d, s] product per (row, kv head): on CPU this plain batched form runs 2-2.5x
  # faster than an einsum that keeps t and g apart (which XLA lowers with extra transposes).
  q = q.reshape(b, t, kvh, g, d).transpose(0, 2, 1, 3, 4).reshape(b, kvh, t * g, d)
  scores = jnp.einsum("bkqd,bksd->bkqs", q, k) * jnp.asarray(d**-0.5, q.dtype)
  scores = scores.astype(jnp.float32).reshape(b, kvh, t, g, s)
  scores = jnp.where(mask[:, None, :, None, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kvh, t * g, s)
  out = jnp.einsum("bkqs,bksd->bkqd", probs, v)
  return out.reshape(b, kvh, t, g, d).transpose(0, 2, 1, 3, 4).reshape(b, t, h * d)


def project_heads(proj, x: Array, heads: int, head_dim: int) -> Array:
  """x [B, T, hidden] through ``proj`` (kernel [hidden, heads * head_dim]) -> [B, T, heads, head_dim].

  A float kernel is read as [hidden, heads, head_dim] and contracted in one product: the same
  as ``proj(x)`` reshaped, but XLA:TPU then keeps the stored layout of the weight, where a reshape of
  the product's result makes it re-lay out every q/k/v kernel (a copy of each) at every decode call
  (``experiments/aot.py``). Other layers (int8) are called as they are."""
  if not isinstance(proj, nnx.Linear):
    return proj(x).reshape(*x.shape[:-1], heads, head_dim)
  bias = proj.bias[...] if proj.bias is not None else None
  x, kernel, bias = proj.promote_dtype((x, proj.kernel[...], bias), dtype=proj.dtype)  # as nnx.Linear does
  kernel = kernel.reshape(kernel.shape[0], heads, head_dim)
  out = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())), precision=proj.precision)
  return out if bias is None else out + bias.reshape(heads, head_dim)


class Attention(nnx.Module):
  """Grouped-query self-attention; RoPE on this layer iff ``use_rope``."""

  def __init__(self, config: SmolLM3Config, use_rope: bool, *, dtype, param_dtype, rngs):
    c = config
    self.config = config
    self.use_rope = use_rope
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = _linear(c.hidden_size, c.num_attention_heads * c.head_dim, c.attention_bias, **kw)
    self.k_proj = _linear(c.hidden_size, c.num_key_value_heads * c.head_dim, c.attention_bias, **kw)
    self.v_proj = _linear(c.hidden_size, c.num_key_value_heads * c.head_dim, c.attention_bias, **kw)
    self.o_proj = _linear(c.num_attention_heads * c.head_dim, c.hidden_size, c.attention_bias, **kw)

  def __call__(
    self,
    x: Array,
    cos: Array,
    sin: Array,
    mask: Array,
    k_cache: Array | None = None,
    v_cache: Array | None = None,
    cache: KVCache | None = None,
  ) -> tuple[Array, Array | None, Array | None]:
    """x: [B, T, hidden]; cos, sin: [B, T, D] RoPE tables; mask: [B, T, W] bool. With a cache
    (this layer's k/v [B, KVH, S, D] and ``cache`` for the rows' lengths), the new keys/values are
    written at each row's slots [lengths[b], lengths[b] + T) and attention reads the first W slots
    (W = the mask's width). Returns (out [B, T, hidden], k_cache, v_cache)."""
    c = self.config
    b, t, _ = x.shape
    q = project_heads(self.q_proj, x, c.num_attention_heads, c.head_dim)
    k = project_heads(self.k_proj, x, c.num_key_value_heads, c.head_dim)
    v = project_heads(self.v_proj, x, c.num_key_value_heads, c.head_dim)
    if self.use_rope:
      q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    else:
      # Without RoPE between them, XLA:TPU fuses the query's move to head-major order (in `attend`)
      # into its projection and pays for it by re-laying out the weight on every call.
      q = jax.lax.optimization_barrier(q)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KVH, T, D]
    if k_cache is not None:
      k_cache, v_cache = cache.write(k_cache, k), cache.write(v_cache, v)
      w = mask.shape[-1]  # the read window: only slots that can hold this batch's tokens
      k, v = cache.read(k_cache, w).astype(q.dtype), cache.read(v_cache, w).astype(q.dtype)
    return self.o_proj(attend(q, k, v, mask, cache.query_block if cache is not None else 0)), k_cache, v_cache


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: SmolLM3Config, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = _linear(config.hidden_size, config.intermediate_size, config.mlp_bias, **kw)
    self.up_proj = _linear(config.hidden_size, config.intermediate_size, config.mlp_bias, **kw)
    self.down_proj = _linear(config.intermediate_size, config.hidden_size, config.mlp_bias, **kw)

  def __call__(self, x: Array) -> Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: SmolLM3Config, layer: int, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.self_attn = Attention(config, config.uses_rope(layer), rngs=rngs, **kw)
    self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    self.mlp = MLP(config, rngs=rngs, **kw)

  def __call__(
    self,
    x: Array,
    cos: Array,
    sin: Array,
    mask: Array,
    k_cache: Array | None = None,
    v_cache: Array | None = None,
    cache: KVCache | None = None,
  ) -> tuple[Array, Array | None, Array | None]:
    """x: [B, T, hidden] -> (x [B, T, hidden], k_cache, v_cache), as :meth:`Attention.__call__`."""
    h, k_cache, v_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, k_cache, v_cache, cache)
    x = x + h
    x = x + self.mlp(self.post_attention_layernorm(x))
    return x, k_cache, v_cache


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------
class SmolLM3(nnx.Module):
  """SmolLM3 causal language model.

  ``dtype`` is the activation dtype, ``param_dtype`` the storage dtype of the weights (defaults to
  ``dtype``).
  """

  def __init__(self, config: SmolLM3Config, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs | None = None):
    param_dtype = param_dtype or dtype
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    self.config = config
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    self.embed_tokens = nnx.Embed(config.vocab_size, config.hidden_size, rngs=rngs, **kw)
    self.layers = nnx.List([DecoderLayer(config, i, rngs=rngs, **kw) for i in range(config.num_hidden_layers)])
    self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, **kw)
    if not config.tie_word_embeddings:
      self.lm_head = _linear(config.hidden_size, config.vocab_size, False, rngs=rngs, **kw)

  def hidden_states(
    self, tokens: Array, positions: Array | None = None, cache: KVCache | None = None, window: int | None = None
  ) -> tuple[Array, KVCache | None]:
    """Final-normed hidden states [B, T, hidden] and the updated cache.

    tokens, positions: int32 [B, T]. Positions default to 0..T-1, or with a cache to each row's
    ``lengths[b] .. lengths[b] + T - 1`` (its slots). With a cache, row b's tokens are written at
    slots ``lengths[b] ..`` and query t sees slots ``0 .. lengths[b] + t``; ``window`` (static, default
    the whole cache) bounds the slots attention reads: it must cover every row's new slots.
    """
    b, t = tokens.shape
    if positions is None:
      offset = cache.lengths[:, None] if cache is not None else 0
      positions = offset + jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    x = self.embed_tokens(tokens).astype(self.dtype)
    cos, sin = rope_tables(positions, self.config, self.dtype)

    if cache is None:
      causal = jnp.tril(jnp.ones((t, t), bool))
      mask = jnp.broadcast_to(causal, (b, t, t))
      for layer in self.layers:
        x, _, _ = layer(x, cos, sin, mask)
      return self.norm(x), None

    mask = cache.attention_mask(t, window)
    new_k, new_v = [], []
    for layer, k_c, v_c in zip(self.layers, cache.k, cache.v):
      x, k_c, v_c = layer(x, cos, sin, mask, k_c, v_c, cache)
      new_k.append(k_c)
      new_v.append(v_c)
    return self.norm(x), cache.replace(k=tuple(new_k), v=tuple(new_v), lengths=cache.lengths + t)

  def logits(self, hidden: Array) -> Array:
    """LM head: [..., hidden] -> [..., vocab] logits (tied to the embedding unless configured)."""
    if self.config.tie_word_embeddings:
      return self.embed_tokens.attend(hidden)
    return self.lm_head(hidden)

  def __call__(
    self, tokens: Array, positions: Array | None = None, cache: KVCache | None = None, window: int | None = None
  ) -> tuple[Array, KVCache | None]:
    """logits [B, T, vocab] and the updated cache (None without a cache)."""
    hidden, cache = self.hidden_states(tokens, positions, cache, window)
    return self.logits(hidden), cache


class _FixedKey:
  """Stands in for ``nnx.Rngs`` in :func:`abstract_model`: every initializer gets the same key.

  The loaders overwrite every parameter, so the random stream does not matter there, and skipping
  ``nnx.Rngs``' counter updates (each one traced) makes the abstract model ~5x cheaper to build.
  Linear and Embed layers only call ``rngs.params()``.
  """

  def params(self) -> jax.Array:
    return jax.random.key(0)


def abstract_model(config: SmolLM3Config, *, dtype=jnp.float32, param_dtype=None) -> SmolLM3:
  """The model with ShapeDtypeStruct leaves: allocates nothing (used by the loaders)."""
  return nnx.eval_shape(lambda: SmolLM3(config, dtype=dtype, param_dtype=param_dtype, rngs=_FixedKey()))
