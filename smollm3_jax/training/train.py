"""Fine-tuning under jit: the masked next-token loss, Welleck et al.'s token-level unlikelihood term,
the optax optimiser and the training step over the model split into (graphdef, parameters).

* Parameters travel as a flat dict ``{"layers.0.self_attn.q_proj.kernel": array, ...}`` (the keys of
  the Orbax checkpoints in :mod:`smollm3_jax.checkpoints.orbax`); :class:`Trainer` merges them back
  into the NNX model inside the jitted programs, as :mod:`smollm3_jax.generation.decode` does.
* A batch is ``tokens [B, T]`` (right-padded) and ``loss_mask [B, T]`` (True where the token is a
  training target: the assistant tokens of a chat, see :mod:`smollm3_jax.training.data`). Position t
  predicts token t + 1; the loss is averaged over the target tokens of the batch.
* The optimiser keeps float32 state whatever the parameter dtype: the step differentiates with
  respect to a float32 copy of the parameters, updates it in float32 and rounds the result back to
  the stored dtype (bfloat16 storage therefore drops updates below bfloat16's resolution; there is
  no float32 master copy).
* On a mesh, parameters and every parameter-shaped leaf of the optimiser state (moments, gradient
  accumulators) take the parameter's sharding from :mod:`smollm3_jax.nn.sharding`'s logical-axis rules;
  the batch is split on the data axis; everything else is replicated.

Imports the model and sharding only (the data, the loop and the checkpoints are
:mod:`smollm3_jax.training.data` and :mod:`smollm3_jax.training.finetune`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from smollm3_jax.nn import sharding as sharding_lib

# 1 - p(c) is clamped here before the log, as in the authors' code (fairseq's candidate_penalty_ce_loss).
UNLIKELIHOOD_CLAMP = 1e-5

Params = dict  # flat parameter key -> array


@flax.struct.dataclass
class Batch:
  """tokens: int32 [B, T], right-padded; loss_mask: bool [B, T], True where the token is a target."""

  tokens: jax.Array
  loss_mask: jax.Array


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------
def shift_targets(tokens: jax.Array, loss_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Position t's target is token t + 1: (targets int32 [B, T], weights f32 [B, T]); the last
  position has no target (weight 0)."""
  targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
  weights = jnp.concatenate([loss_mask[:, 1:], jnp.zeros_like(loss_mask[:, :1])], axis=1)
  return targets.astype(jnp.int32), weights.astype(jnp.float32)


def cross_entropy(logp: jax.Array, targets: jax.Array) -> jax.Array:
  """-log p(target): logp f32 [B, T, V] (log-softmax), targets [B, T] -> [B, T]."""
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def unlikelihood(logp: jax.Array, tokens: jax.Array, targets: jax.Array) -> jax.Array:
  """Token-level unlikelihood (Welleck et al. 2019, eq. 4) at every position, [B, T].

  Position i predicts ``targets[i]`` (= ``tokens[i + 1]``) from the context ``tokens[0..i]``; its
  negative candidates are C_i = {tokens[0], ..., tokens[i]} minus {targets[i]}, a set (a token
  that occurs twice counts once), and the term is ``-sum_{c in C_i} log(1 - p_i(c))`` with
  ``1 - p`` clamped at :data:`UNLIKELIHOOD_CLAMP`. Costs a [B, T, T] gather (not [B, T, V]).
  """
  b, t = tokens.shape
  ctx_logp = jnp.take_along_axis(logp, jnp.broadcast_to(tokens[:, None, :], (b, t, t)), axis=-1)  # [B, i, j]
  earlier = jnp.tril(jnp.ones((t, t), bool), -1)  # [j, k]: k < j
  repeat = jnp.any((tokens[:, :, None] == tokens[:, None, :]) & earlier[None], axis=-1)  # [B, j]
  in_context = jnp.tril(jnp.ones((t, t), bool))  # [i, j]: j <= i
  candidate = in_context[None] & ~repeat[:, None, :] & (tokens[:, None, :] != targets[:, :, None])
  one_minus = jnp.maximum(-jnp.expm1(ctx_logp), UNLIKELIHOOD_CLAMP)  # 1 - p, accurate near p = 1
  return -jnp.sum(jnp.where(candidate, jnp.log(one_minus), 0.0), axis=-1)


def batch_loss(model, batch: Batch, unlikelihood_alpha: float = 0.0) -> tuple[jax.Array, dict]:
  """(loss, metrics) of one batch: (sum of target cross-entropies + alpha * sum of unlikelihood
  terms) / number of targets. ``unlikelihood_alpha`` is static (0: the term is not computed).
  Metrics: ``ce`` and ``ul`` (per target token), ``tokens`` (targets)."""
  logits, _ = model(batch.tokens)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets, weights = shift_targets(batch.tokens, batch.loss_mask)
  count = jnp.sum(weights)
  denom = jnp.maximum(count, 1.0)
  ce = jnp.sum(cross_entropy(logp, targets) * weights) / denom
  if unlikelihood_alpha:
    ul = jnp.sum(unlikelihood(logp, batch.tokens, targets) * weights) / denom
    loss = ce + unlikelihood_alpha * ul
  else:
    ul = jnp.zeros((), jnp.float32)
    loss = ce
  return loss, dict(ce=ce, ul=ul, tokens=count)


# --------------------------------------------------------------------------------------------
# The optimiser
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warm-up then cosine decay, global-norm clipping, gradient accumulation.

  Steps count optimiser updates (each of ``accumulation`` micro-batches)."""

  learning_rate: float = 1e-4
  warmup_steps: int = 10
  total_steps: int = 100
  end_learning_rate_ratio: float = 0.1  # the cosine ends at learning_rate * this
  weight_decay: float = 0.0  # on kernels and embeddings only (not norms or biases)
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float = 1.0  # 0 = no clipping
  accumulation: int = 1  # micro-batches per update (optax.MultiSteps when > 1)

  def __post_init__(self):
    for name in ("warmup_steps", "total_steps", "accumulation"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (1 if name != "warmup_steps" else 0):
        raise ValueError(f"optim.{name} must be an integer >= {1 if name != 'warmup_steps' else 0}, got {v!r}")
    if self.warmup_steps > self.total_steps:
      raise ValueError(f"optim.warmup_steps ({self.warmup_steps}) exceeds optim.total_steps ({self.total_steps})")
    for name, low in (
      ("learning_rate", 0.0),
      ("weight_decay", 0.0),
      ("clip_norm", 0.0),
      ("end_learning_rate_ratio", 0.0),
      ("eps", 0.0),
    ):
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < low:
        raise ValueError(f"optim.{name} must be a finite number >= {low}, got {v!r}")
    if self.learning_rate <= 0:
      raise ValueError(f"optim.learning_rate must be > 0, got {self.learning_rate!r}")
    for name in ("b1", "b2"):
      v = getattr(self, name)
      if not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise ValueError(f"optim.{name} must lie in [0, 1), got {v!r}")

  @classmethod
  def from_mapping(cls, d: Mapping[str, Any]) -> "OptimConfig":
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"optim: unknown fields {sorted(unknown)}")
    return cls(**dict(d))


def schedule(cfg: OptimConfig) -> optax.Schedule:
  """Learning rate by optimiser step: 0 -> peak over the warm-up, cosine to the end value."""
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=cfg.learning_rate,
    warmup_steps=cfg.warmup_steps,
    decay_steps=max(cfg.total_steps, cfg.warmup_steps + 1),
    end_value=cfg.learning_rate * cfg.end_learning_rate_ratio,
  )


def _decays(params: Params) -> Params:
  """Weight decay on matrices (kernels, embeddings), not on norm scales or biases."""
  return {k: k.endswith(("kernel", "embedding")) for k in params}


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  chain = []
  if cfg.clip_norm:
    chain.append(optax.clip_by_global_norm(cfg.clip_norm))
  chain.append(
    optax.adamw(schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decays)
  )
  tx = optax.chain(*chain)
  return optax.MultiSteps(tx, every_k_schedule=cfg.accumulation) if cfg.accumulation > 1 else tx


# --------------------------------------------------------------------------------------------
# Parameters <-> model
# --------------------------------------------------------------------------------------------
def param_key(path) -> str:
  return ".".join(str(p) for p in path)


class ModelDef:
  """A model's graphdef and its parameters' paths: splits a model into a flat parameter dict and
  merges one back (inside jit too). Refuses models with non-parameter state (e.g. int8 mode)."""

  def __init__(self, model: nnx.Module):
    self.graphdef, state = nnx.split(model)
    flat = nnx.to_flat_state(state)
    bad = [
      param_key(p)
      for p, v in flat
      if not isinstance(v, nnx.Param) or not jnp.issubdtype(v.get_value().dtype, jnp.floating)
    ]
    if bad:
      raise ValueError(
        f"cannot train this model: {bad[:3]} are not float parameters (an int8-quantized "
        "model? train the float model and quantize after)"
      )
    self.config = model.config
    self.keys = [param_key(p) for p, _ in flat]
    # What the compiled programs depend on: the graph and every parameter's shape and dtype.
    self.signature = (
      self.graphdef,
      tuple((param_key(p), tuple(v.get_value().shape), str(v.get_value().dtype)) for p, v in flat),
    )
    # Shape-only templates: merging replaces their values (no reference to the loaded arrays).
    self._templates = [(p, v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype))) for p, v in flat]

  def params(self, model: nnx.Module) -> Params:
    return {param_key(p): v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}

  def merge(self, params: Mapping[str, jax.Array]) -> nnx.Module:
    state = nnx.from_flat_state([(p, v.replace(params[param_key(p)])) for p, v in self._templates])
    return nnx.merge(self.graphdef, state)

  def abstract(self) -> dict[str, jax.ShapeDtypeStruct]:
    return {param_key(p): v.get_value() for p, v in self._templates}


def _f32(tree):
  """Float32 copies of arrays (or ShapeDtypeStructs)."""

  def cast(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, jnp.float32)
    return x.astype(jnp.float32)

  return jax.tree.map(cast, tree)


# --------------------------------------------------------------------------------------------
# The trainer: jitted programs and placement
# --------------------------------------------------------------------------------------------
class Trainer:
  """Holds the split model, the optimiser and the jitted ``step`` / ``eval_sums`` / ``init``.

  ``mesh``: a mesh spec / Mesh / MeshSharding, or None for the mesh the model lives on (one device:
  nothing is sharded). ``unlikelihood_alpha`` > 0 adds the unlikelihood term with that weight.
  """

  def __init__(self, model: nnx.Module, optim: OptimConfig, *, unlikelihood_alpha: float = 0.0, mesh=None):
    alpha = float(unlikelihood_alpha)
    if not np.isfinite(alpha) or alpha < 0:
      raise ValueError(f"unlikelihood_alpha must be a finite number >= 0, got {unlikelihood_alpha!r}")
    self.sharding = sharding_lib.engine_sharding(model, mesh)  # moves the weights onto the mesh
    self.defn = ModelDef(model)
    self.optim = optim
    self.alpha = alpha
    self.lr_schedule = schedule(optim)
    key = (self.defn.signature, optim, alpha, self.sharding)
    cached = _PROGRAMS.get(key)
    if cached is not None:  # a Trainer of the same model, settings and mesh: reuse its compiled programs
      _PROGRAMS.move_to_end(key)
      self.__dict__.update(cached)
      return
    self.tx = make_optimizer(optim)
    abstract = self._abstract = self.defn.abstract()
    self.abstract_opt_state = jax.eval_shape(self.tx.init, _f32(abstract))
    if self.sharding is None:
      dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      self.param_shardings = {k: dev for k in abstract}
      self.opt_shardings = jax.tree.map(lambda _: dev, self.abstract_opt_state)
      self.replicated = dev
    else:
      s = self.sharding
      self.param_shardings = {k: s.param_sharding(k.split("."), v.shape) for k, v in abstract.items()}
      self.replicated = s.replicated()
      self.opt_shardings = jax.tree_util.tree_map_with_path(self._opt_leaf_sharding, self.abstract_opt_state)
    batch_s = self._batch_sharding()
    self._init = jax.jit(lambda p: self.tx.init(_f32(p)), out_shardings=self.opt_shardings)
    self._step = jax.jit(
      functools.partial(_train_step, self.defn, self.tx, alpha),
      in_shardings=(self.param_shardings, self.opt_shardings, batch_s),
      out_shardings=(self.param_shardings, self.opt_shardings, self.replicated),
      donate_argnums=(0, 1),
    )
    self._eval = jax.jit(
      functools.partial(_eval_sums, self.defn),
      in_shardings=(self.param_shardings, batch_s),
      out_shardings=self.replicated,
    )
    _PROGRAMS[key] = {k: v for k, v in self.__dict__.items() if k not in ("defn", "sharding")}
    while len(_PROGRAMS) > _MAX_PROGRAMS:
      _PROGRAMS.popitem(last=False)

  def _opt_leaf_sharding(self, path, leaf):
    """A parameter-shaped leaf (under the parameter's key) shares its sharding; the rest (counts,
    scalars) is replicated."""
    for entry in reversed(path):
      key = getattr(entry, "key", None)
      if isinstance(key, str) and key in self.param_shardings:
        if tuple(leaf.shape) == tuple(self._abstract[key].shape):
          return self.param_shardings[key]
        break
    return self.replicated

  def _batch_sharding(self):
    if self.sharding is None:
      return self.replicated
    return self.sharding.batch_sharding(2)

  # -- state ------------------------------------------------------------------------------------
  def params(self, model: nnx.Module) -> Params:
    """The model's parameters as the flat dict the step takes (placed on the mesh). They are the
    model's own arrays, and :meth:`step` donates its inputs: after the first step the model's
    arrays are gone (use :meth:`model` on the new parameters)."""
    return self.defn.params(model)

  def init_opt_state(self, params: Params):
    return self._init(params)

  def abstract_state(self) -> dict:
    """{"params", "opt_state"} as ShapeDtypeStructs with their target shardings (Orbax restore)."""
    abstract = self.defn.abstract()
    params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=self.param_shardings[k]) for k, v in abstract.items()}
    opt = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), self.abstract_opt_state, self.opt_shardings
    )
    return {"params": params, "opt_state": opt}

  def model(self, params: Params) -> nnx.Module:
    """An NNX model holding ``params`` (for export, generation, evaluation)."""
    return self.defn.merge(params)

  def learning_rate(self, update: int) -> float:
    return float(self.lr_schedule(update))

  # -- programs ---------------------------------------------------------------------------------
  def place_batch(self, tokens: np.ndarray, loss_mask: np.ndarray) -> Batch:
    tokens, loss_mask = np.asarray(tokens, np.int32), np.asarray(loss_mask, bool)
    if tokens.ndim != 2 or tokens.shape != loss_mask.shape:
      raise ValueError(f"batch: tokens {tokens.shape} and loss_mask {loss_mask.shape} must be equal [B, T]")
    if tokens.min(initial=0) < 0 or tokens.max(initial=0) >= self.defn.config.vocab_size:
      raise ValueError(f"batch: token ids must lie in [0, {self.defn.config.vocab_size})")
    if self.sharding is not None:
      self.sharding.check_batch(tokens.shape[0])
    s = self._batch_sharding()
    return Batch(tokens=jax.device_put(tokens, s), loss_mask=jax.device_put(loss_mask, s))

  def step(self, params: Params, opt_state, batch: Batch):
    """One micro-step: (params, opt_state, metrics). The inputs are donated (do not reuse them).
    Metrics (device scalars): loss, ce, ul, tokens, grad_norm (before clipping)."""
    return self._step(params, opt_state, batch)

  def eval_sums(self, params: Params, batch: Batch) -> dict:
    """Sums over the batch's targets: ``ce`` (cross-entropy) and ``tokens`` (how many)."""
    return self._eval(params, batch)


# Trainers' programs by (model signature, optimiser config, alpha, mesh): a second run in the same
# process (a resumed run, a notebook cell run again) compiles nothing new. Bounded: oldest dropped.
_PROGRAMS: "collections.OrderedDict[tuple, dict]" = collections.OrderedDict()
_MAX_PROGRAMS = 4


def _train_step(defn: ModelDef, tx, alpha: float, params: Params, opt_state, batch: Batch):
  def loss_fn(p32):
    model = defn.merge({k: p32[k].astype(params[k].dtype) for k in p32})
    return batch_loss(model, batch, alpha)

  p32 = _f32(params)
  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(p32)
  updates, opt_state = tx.update(grads, opt_state, p32)
  new = optax.apply_updates(p32, updates)
  params = {k: new[k].astype(params[k].dtype) for k in params}
  return params, opt_state, dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))


def _eval_sums(defn: ModelDef, params: Params, batch: Batch) -> dict:
  model = defn.merge(params)
  logits, _ = model(batch.tokens)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets, weights = shift_targets(batch.tokens, batch.loss_mask)
  return dict(ce=jnp.sum(cross_entropy(logp, targets) * weights), tokens=jnp.sum(weights))
