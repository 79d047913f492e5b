"""Optional int8 mode: int8 weights (one f32 scale per output channel), in one of two schemes.

    model = smollm3_jax.from_pretrained("demo", quantize="int8")   # or quantize_int8(model), in place

Decode at small batch is bound by reading the weights; int8 storage reads 4x fewer bytes than f32
(2x fewer than bfloat16). ``quantize`` modes (:data:`MODES`):

* ``"int8_w8a8"``: each product also quantizes its input per row, i.e. per token (symmetric, scale
  ``max|x| / 127``, computed at run time: "dynamic" W8A8), multiplies int8 x int8 with exact int32
  accumulation and rescales to the activation dtype. XLA:CPU hands int8 x int8 -> int32 products to
  its YNNPACK kernels; an int8 x float product would instead materialise a float copy of the
  weights on every call.
* ``"int8_weights"``: weight-only, ``x @ (q * scale)``: the int8 weights are widened to the
  activation dtype inside the product (on a TPU or GPU the widening fuses into the matmul, so HBM
  still holds and moves int8) and accumulated in f32. The activations are not rounded, which is
  most of W8A8's error (docs/performance.md: KL 0.006 against 0.035 on the demo).
* ``"int8"``: the backend's scheme (:mod:`smollm3_jax.utils.backend`, ``int8_w8a8``): W8A8
  on CPU, weight-only on TPU and GPU.

Rows stay independent in both: a token's result never depends on the other rows of its batch.

Quantized: the attention projections, the MLP (gate and up fused into one product) and the
embedding, whose per-row scales serve the tied LM head too. Norms, RoPE, attention, softmax and
the KV cache stay in the activation dtype. Accuracy on the demo model is measured in docs/performance.md.

Imports :mod:`smollm3_jax.nn.sharding` and :mod:`smollm3_jax.utils.backend` (and the model it is
given); never the loaders or the engine.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.nn import sharding
from smollm3_jax.utils import backend

Array = jax.Array
_QMAX = 127.0
MODES = ("none", "int8", "int8_w8a8", "int8_weights")


def check_mode(mode: str | None) -> str:
  """Normalises a quantization mode (None -> "none"); ValueError naming the choices otherwise."""
  mode = "none" if mode is None else mode
  if mode not in MODES:
    raise ValueError(f"quantize={mode!r} is not one of {MODES}")
  return mode


def activations_of(mode: str, platform: str | None = None) -> bool:
  """Whether int8 ``mode`` quantizes the activations too (W8A8): "int8" follows the backend of
  ``platform`` (default: JAX's default backend)."""
  mode = check_mode(mode)
  if mode == "int8":
    return backend.choices(platform).int8_w8a8
  return mode == "int8_w8a8"


def apply(model: nnx.Module, mode: str | None) -> nnx.Module:
  """``model`` quantized in place as ``mode`` says ("none": unchanged). Returns the model."""
  mode = check_mode(mode)
  if mode != "none":
    quantize_int8(model, activations=activations_of(mode, backend.platform_of(nnx.state(model))))
  return model


def quantize_rows(w: np.ndarray | Array, axis: int) -> tuple[np.ndarray, np.ndarray]:
  """Symmetric int8 quantization of ``w`` with one f32 scale per slice along ``axis`` reduced.

  Returns ``(q int8, scale f32)`` with ``w ~= q * scale`` (scale keeps ``w``'s rank, size 1 on
  ``axis``). All-zero slices get scale 1.
  """
  w = np.asarray(w, np.float32)
  amax = np.max(np.abs(w), axis=axis, keepdims=True)
  scale = np.where(amax > 0, amax / _QMAX, 1.0).astype(np.float32)
  q = np.clip(np.rint(w / scale), -_QMAX, _QMAX).astype(np.int8)
  return q, scale


def _quantize_activations(x: Array) -> tuple[Array, Array]:
  """Per-row int8 quantization of x [..., K]: (q int8 [..., K], scale f32 [..., 1])."""
  x32 = x.astype(jnp.float32)
  amax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
  scale = jnp.where(amax > 0, amax / _QMAX, 1.0)
  q = jnp.clip(jnp.round(x32 / scale), -_QMAX, _QMAX).astype(jnp.int8)
  return q, scale


def int8_matmul(x: Array, q: Array, scale: Array, activations: bool = True) -> Array:
  """x [..., K] (float) times int8 weights q [N, K] with f32 scales [N]; returns [..., N] in x's
  dtype: ``quantize(x) @ q.T`` accumulated in int32, times the row and output scales; with
  ``activations=False`` (weight-only) ``x @ q.T`` (q widened to x's dtype) in f32, times the scales."""
  if not activations:
    acc = jax.lax.dot_general(
      x, q.astype(x.dtype), (((x.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
    )
    return (acc * scale.astype(jnp.float32)).astype(x.dtype)
  lead = x.shape[:-1]
  x2 = x.reshape(-1, x.shape[-1])
  rows = x2.shape[0]
  if rows == 1:
    # XLA:CPU lowers a one-row product as a matrix-vector loop of its own that converts int8 to
    # int32 first; two rows keep it a matrix product for YNNPACK's int8 kernels (same bytes read).
    x2 = jnp.concatenate([x2, jnp.zeros_like(x2)], axis=0)
  xq, xs = _quantize_activations(x2)
  acc = jax.lax.dot_general(xq, q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.int32)
  y = acc.astype(jnp.float32) * xs * scale.astype(jnp.float32)
  return y[:rows].astype(x.dtype).reshape(*lead, -1)


def _bias_param(module) -> nnx.Param | None:
  bias = getattr(module, "bias", None)
  value = None if bias is None else bias.get_value()
  return None if value is None else nnx.Param(jnp.asarray(value))


class Int8Linear(nnx.Module):
  """Drop-in for ``nnx.Linear``: int8 kernel stored [out, in], one f32 scale per output;
  ``activations`` (static): W8A8, else weight-only (:func:`int8_matmul`)."""

  def __init__(
    self,
    linear: nnx.Linear | None = None,
    *,
    kernel_out_in: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    dtype=jnp.float32,
    activations: bool = True,
  ):
    if linear is not None:
      kernel_out_in = np.asarray(linear.kernel.get_value(), np.float32).T
      bias_param = _bias_param(linear)
      dtype = linear.dtype or jnp.float32
    else:
      bias_param = None if bias is None else nnx.Param(jnp.asarray(bias))
    q, scale = quantize_rows(kernel_out_in, axis=1)
    self.qkernel = nnx.Param(jnp.asarray(q))
    self.qscale = nnx.Param(jnp.asarray(scale[:, 0]))
    self.bias = bias_param
    self.dtype = dtype
    self.activations = bool(activations)
    self.out_features, self.in_features = kernel_out_in.shape

  def __call__(self, x: Array) -> Array:
    y = int8_matmul(x.astype(self.dtype), self.qkernel[...], self.qscale[...], self.activations)
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class Int8MLP(nnx.Module):
  """SwiGLU with gate and up fused into one int8 product (one weight read, one kernel call).

  The fused kernel interleaves the two: output row 2i is gate row i, 2i+1 is up row i, so that a
  contiguous slice of rows (one device's shard of the "mlp" axis) holds matching gate/up pairs.
  """

  def __init__(self, mlp: nnx.Module, activations: bool = True):
    gate, up = (np.asarray(p.kernel.get_value(), np.float32).T for p in (mlp.gate_proj, mlp.up_proj))
    biases = [_bias_param(p) for p in (mlp.gate_proj, mlp.up_proj)]
    bias = None
    if biases[0] is not None or biases[1] is not None:
      gb, ub = (np.zeros(gate.shape[0], np.float32) if b is None else np.asarray(b.get_value()) for b in biases)
      bias = np.stack([gb, ub], axis=1).reshape(-1)
    dtype = mlp.gate_proj.dtype or jnp.float32
    self.gate_up_proj = Int8Linear(
      kernel_out_in=np.stack([gate, up], axis=1).reshape(-1, gate.shape[1]),
      bias=bias,
      dtype=dtype,
      activations=activations,
    )
    self.down_proj = Int8Linear(mlp.down_proj, activations=activations)

  def __call__(self, x: Array) -> Array:
    y = self.gate_up_proj(x)
    y = y.reshape(*y.shape[:-1], -1, 2)
    return self.down_proj(jax.nn.silu(y[..., 0]) * y[..., 1])


class Int8Embed(nnx.Module):
  """Drop-in for ``nnx.Embed`` (lookup and the tied ``attend``) with int8 rows, one scale per row."""

  def __init__(self, embed: nnx.Embed, activations: bool = True):
    table = np.asarray(embed.embedding.get_value(), np.float32)  # [vocab, hidden]
    q, scale = quantize_rows(table, axis=1)
    self.qembedding = nnx.Param(jnp.asarray(q))
    self.qscale = nnx.Param(jnp.asarray(scale[:, 0]))
    self.dtype = embed.dtype or jnp.float32
    self.activations = bool(activations)
    self.num_embeddings, self.features = table.shape

  def __call__(self, tokens: Array) -> Array:
    rows = jnp.take(self.qembedding[...], tokens, axis=0).astype(jnp.float32)
    return (rows * jnp.take(self.qscale[...], tokens, axis=0)[..., None]).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    return int8_matmul(x.astype(self.dtype), self.qembedding[...], self.qscale[...], self.activations)


def compare_logits(reference: np.ndarray, logits: np.ndarray, targets: np.ndarray | None = None) -> dict:
  """How far ``logits`` (e.g. the int8 model's) are from ``reference`` (the unquantized model's),
  both [T, vocab] for the same T positions of a teacher-forced text.

  Returns top1_agreement (fraction of positions with the same argmax), mean_kl (KL(reference ||
  logits) in nats, averaged over positions) and, when ``targets`` [T] (the next tokens) are given,
  the perplexity of each.
  """

  def log_softmax(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  ref, got = log_softmax(reference), log_softmax(logits)
  out = dict(
    top1_agreement=float(np.mean(ref.argmax(-1) == got.argmax(-1))),
    mean_kl=float(np.mean((np.exp(ref) * (ref - got)).sum(-1))),
  )
  if targets is not None:
    rows = np.arange(len(targets))
    out["perplexity_reference"] = float(np.exp(-ref[rows, targets].mean()))
    out["perplexity"] = float(np.exp(-got[rows, targets].mean()))
  return out


def is_quantized(model: nnx.Module) -> bool:
  """True if :func:`quantize_int8` was applied to ``model``."""
  return isinstance(model.embed_tokens, Int8Embed)


def quantize_int8(model: nnx.Module, activations: bool | None = None) -> nnx.Module:
  """Replaces, in place, the attention projections with :class:`Int8Linear`, each MLP with
  :class:`Int8MLP` and the embedding (with the tied LM head) with :class:`Int8Embed`; an untied
  ``lm_head`` becomes an Int8Linear too. ``activations``: W8A8 (True) or weight-only (False);
  None: the scheme of the backend the weights live on (``"int8"``, module docstring).
  Returns ``model``. Weights must be concrete (a loaded model, not an abstract one); a model on a
  multi-device mesh keeps its mesh (the int8 weights get the same logical-axis shardings)."""
  if is_quantized(model):
    return model
  if activations is None:
    activations = backend.choices(backend.platform_of(nnx.state(model))).int8_w8a8
  a = dict(activations=activations)
  mesh = sharding.mesh_of(model)
  for layer in model.layers:
    attn = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
      setattr(attn, name, Int8Linear(getattr(attn, name), **a))
    layer.mlp = Int8MLP(layer.mlp, **a)
  model.embed_tokens = Int8Embed(model.embed_tokens, **a)
  if hasattr(model, "lm_head"):
    model.lm_head = Int8Linear(model.lm_head, **a)
  if mesh is not None:
    sharding.MeshSharding.of(mesh, model.config).shard_model(model)
  return model
