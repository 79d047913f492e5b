"""Sharding over a JAX device mesh with a ``data`` axis and a ``model`` axis.

* :func:`make_mesh` / :func:`parse_mesh` build the mesh from sizes or a flag string such as
  ``"data=2,model=4"`` (default: every device on the data axis).
* Logical axes name what each array dimension *is* (``heads``, ``mlp``, ``vocab``, ``batch`` ...);
  :data:`LOGICAL_RULES` maps them to mesh axes. A dimension is split only when its unit count
  (heads, not heads x head_dim) divides the mesh axis; otherwise it is replicated, so uneven cases
  never reach XLA as a bad split.
* :class:`MeshSharding` applies the rules: ``param_sharding(path, shape)`` for parameters, ``place``
  (the checkpoint loader's hook: each device receives only its shard of the host tensor),
  ``shard_model`` for a model already in memory, and ``place_batch`` / ``init_cache`` for the
  generation engine (batch on ``data``, kv heads on ``model`` when divisible).

On a single device nothing is sharded and generation runs exactly as without a mesh.

Imports only the config and the cache: never the engine, the loaders or the model's users (the
loaders and ``quantize`` import this module, never the reverse).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from smollm3_jax.nn.config import SmolLM3Config
from smollm3_jax.nn.kv_cache import KVCache
from smollm3_jax.utils.buckets import DEFAULT_BATCH_BUCKETS

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)

# Logical axis -> mesh axis (None = replicated).
LOGICAL_RULES: dict[str, str | None] = {
  "batch": DATA,
  "heads": MODEL,  # query heads (q_proj out, o_proj in)
  "kv_heads": MODEL,  # key/value heads (k/v_proj out, KV cache)
  "mlp": MODEL,  # MLP hidden (gate/up out, down in)
  "vocab": MODEL,  # embedding rows / LM head columns
  "embed": None,  # the residual stream stays whole on every device
  "length": None,
  "head_dim": None,
}

# Param path suffix -> logical axes of its dimensions. Paths mirror HF names (see model.py).
# Kernels are stored [in, out]; a bias is split like its kernel's output axis.
_KERNEL_AXES = {
  "lm_head": ("embed", "vocab"),
  "q_proj": ("embed", "heads"),
  "k_proj": ("embed", "kv_heads"),
  "v_proj": ("embed", "kv_heads"),
  "o_proj": ("heads", "embed"),
  "gate_proj": ("embed", "mlp"),
  "up_proj": ("embed", "mlp"),
  "down_proj": ("mlp", "embed"),
}
PARAM_AXES: dict[tuple[str, str], tuple[str, ...]] = {("embed_tokens", "embedding"): ("vocab", "embed")}
PARAM_AXES.update({(name, "kernel"): axes for name, axes in _KERNEL_AXES.items()})
PARAM_AXES.update({(name, "bias"): axes[-1:] for name, axes in _KERNEL_AXES.items() if name != "lm_head"})
# int8 mode (quantize.py): kernels stored [out, in] with one scale per output; embedding rows scaled.
PARAM_AXES.update(
  {(name, "qkernel"): axes[::-1] for (name, kind), axes in list(PARAM_AXES.items()) if kind == "kernel"}
)
PARAM_AXES.update({(name, "qscale"): axes[-1:] for (name, kind), axes in list(PARAM_AXES.items()) if kind == "kernel"})
PARAM_AXES[("embed_tokens", "qembedding")] = ("vocab", "embed")
PARAM_AXES[("embed_tokens", "qscale")] = ("vocab",)
PARAM_AXES[("gate_up_proj", "qkernel")] = ("mlp", "embed")  # gate/up rows interleaved
PARAM_AXES[("gate_up_proj", "qscale")] = ("mlp",)
PARAM_AXES[("gate_up_proj", "bias")] = ("mlp",)
CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")  # KVCache.k[i] / .v[i]: [B, KVH, S, D]

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Meshes
# --------------------------------------------------------------------------------------------
def parse_mesh(spec: str | Sequence[int] | None) -> tuple[int | None, int | None]:
  """(data, model) sizes from a flag value; None means "infer".

  Accepts ``"data=2,model=4"``, ``"(data=2,model=4)"``, ``"model=8"``, ``"2,4"``, ``"(2, 4)"``,
  a pair of ints, or ``""`` / ``"auto"`` / None (all devices on the data axis).
  """
  if spec is None:
    return None, None
  if not isinstance(spec, str):
    sizes = tuple(spec)
    if len(sizes) != 2:
      raise ValueError(f"mesh: expected (data, model) sizes, got {spec!r}")
    return _check_size("data", sizes[0]), _check_size("model", sizes[1])
  text = spec.strip().strip("()[]").replace(" ", "")
  if text in ("", "auto", "none", "None"):
    return None, None
  sizes: dict[str, int | None] = {DATA: None, MODEL: None}
  parts = text.split(",")
  if all("=" in p for p in parts):
    for part in parts:
      name, value = part.split("=", 1)
      if name not in sizes:
        raise ValueError(f"mesh {spec!r}: unknown axis {name!r}; the axes are {MESH_AXES}")
      sizes[name] = _check_size(name, value)
  elif len(parts) == 2 and not any("=" in p for p in parts):
    sizes[DATA], sizes[MODEL] = _check_size("data", parts[0]), _check_size("model", parts[1])
  else:
    raise ValueError(f"mesh {spec!r}: expected 'data=D,model=M', 'D,M' or 'auto'")
  return sizes[DATA], sizes[MODEL]


def _check_size(name: str, value) -> int:
  try:
    n = int(value)
  except (TypeError, ValueError):
    raise ValueError(f"mesh: axis {name!r} size must be an integer, got {value!r}") from None
  if n < 1:
    raise ValueError(f"mesh: axis {name!r} size must be >= 1, got {n}")
  return n


def make_mesh(data: int | None = None, model: int | None = None, *, devices: Sequence[Any] | None = None) -> Mesh:
  """A ("data", "model") mesh. Unset sizes are inferred from the device count (data takes the
  rest); a mesh smaller than the device count uses the first ``data * model`` devices.

  Over several processes (hosts) the devices are taken host by host, so the model axis stays within
  a host (its collectives never leave it) and the data axis spans the hosts."""
  devices = list(devices if devices is not None else jax.devices())
  hosts = len({d.process_index for d in devices})
  if hosts > 1:
    devices.sort(key=lambda d: (d.process_index, d.id))
  n = len(devices)
  if data is None and model is None:
    data, model = n, 1
  elif data is None:
    if n % model:
      raise ValueError(f"mesh: model={model} does not divide the {n} available devices")
    data = n // model
  elif model is None:
    if n % data:
      raise ValueError(f"mesh: data={data} does not divide the {n} available devices")
    model = n // data
  if data * model > n:
    raise ValueError(
      f"mesh data={data} x model={model} needs {data * model} devices, only {n} available ({devices[0].platform})"
    )
  if hosts > 1:
    local = n // hosts
    if local % model:
      raise ValueError(
        f"mesh: model={model} must divide the {local} devices of each host (the model axis "
        f"stays within a host); use model=1, or a divisor of {local}"
      )
    if data * model != n:
      raise ValueError(f"mesh data={data} x model={model} must use all {n} devices of the {hosts} processes")
  devs = np.asarray(devices[: data * model], dtype=object).reshape(data, model)
  return Mesh(devs, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def mesh_from_flag(spec: str | Sequence[int] | Mesh | None) -> Mesh:
  """The mesh a ``--mesh`` flag (or config field) asks for. Use this in CLIs:
  ``mesh = sharding.mesh_from_flag(FLAGS.mesh)``."""
  if isinstance(spec, Mesh):
    return spec
  return make_mesh(*parse_mesh(spec))


def describe(mesh: Mesh) -> str:
  """E.g. ``"data=2,model=4 (8 x cpu)"``."""
  dev = mesh.devices.flat[0]
  return f"data={mesh.shape[DATA]},model={mesh.shape[MODEL]} ({mesh.size} x {dev.platform})"


def put(x, sharding: NamedSharding) -> jax.Array:
  """``x`` (host data, or an array on this process's devices) placed with ``sharding``. Over several
  processes each process feeds only its own devices' slices, from its copy of ``x`` (the same on every
  process), so this works whether or not the mesh spans other hosts."""
  if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already spread over the hosts: reshard
    return jax.jit(lambda a: a, out_shardings=sharding)(x)
  if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed keys: as data
    data = np.asarray(jax.random.key_data(x))
    spec = tuple(sharding.spec) + (None,) * (data.ndim - len(tuple(sharding.spec)))
    return jax.random.wrap_key_data(put(data, NamedSharding(sharding.mesh, P(*spec))), impl=jax.random.key_impl(x))
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


# --------------------------------------------------------------------------------------------
# The rules applied to one model config and mesh
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=True)
class MeshSharding:
  """Shardings of SmolLM3's parameters, KV cache and decode batch on ``mesh`` for ``config``.

  Callable as the loader's ``place(path, host_array)`` hook:
  ``from_pretrained(ckpt, place=MeshSharding(mesh, config))``.
  """

  mesh: Mesh
  config: SmolLM3Config

  @classmethod
  def of(cls, mesh: "Mesh | MeshSharding | str | Sequence[int] | None", config: SmolLM3Config) -> "MeshSharding":
    if isinstance(mesh, MeshSharding):
      if mesh.config != config:
        raise ValueError("mesh: this MeshSharding was built for another model config")
      return mesh
    return cls(mesh_from_flag(mesh), config)

  @property
  def data_size(self) -> int:
    return self.mesh.shape[DATA]

  # -- logical axes -> PartitionSpec ----------------------------------------------------------
  def _units(self, logical: str, dim: int) -> int:
    """How many indivisible units a dimension of this logical axis holds."""
    c = self.config
    return {"heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads}.get(logical, dim)

  def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int]) -> P:
    """PartitionSpec for an array of ``shape`` whose dims are ``logical_axes``; a dim whose units do
    not divide its mesh axis (or whose mesh axis has size 1) is replicated."""
    if len(logical_axes) != len(shape):
      raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    out, used = [], set()
    for name, dim in zip(logical_axes, shape):
      axis = LOGICAL_RULES.get(name) if name is not None else None
      size = self.mesh.shape[axis] if axis is not None else 1
      if axis is None or axis in used or size == 1 or self._units(name, dim) % size:
        out.append(None)
      else:
        out.append(axis)
        used.add(axis)
    return P(*out)

  def named(self, logical_axes: Sequence[str | None], shape: Sequence[int]) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(logical_axes, shape))

  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  # -- parameters -----------------------------------------------------------------------------
  def param_axes(self, path: Sequence[Any]) -> tuple[str | None, ...] | None:
    """Logical axes of a parameter by its path (e.g. ("layers", 3, "mlp", "up_proj", "kernel"))."""
    path = tuple(str(p) for p in path)
    if path and path[-1] == "scale":
      return ("embed",)
    return PARAM_AXES.get(path[-2:]) if len(path) >= 2 else None

  def param_sharding(self, path: Sequence[Any], shape: Sequence[int]) -> NamedSharding:
    axes = self.param_axes(path)
    if axes is None:
      _log.warning("no sharding rule for parameter %s; replicating it", path)
      axes = (None,) * len(shape)
    return self.named(axes, shape)

  def place(self, path: Sequence[Any], host: np.ndarray) -> jax.Array:
    """Puts one host tensor on the mesh: each device receives only its own slice."""
    host = np.asarray(host)
    sharding = self.param_sharding(path, host.shape)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  __call__ = place

  def param_shardings(self, state: nnx.State) -> nnx.State:
    """A state of NamedShardings matching ``state`` (arrays or ShapeDtypeStructs)."""
    flat = [(path, var.replace(self.param_sharding(path, var.shape))) for path, var in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)

  def shard_state(self, state: nnx.State) -> nnx.State:
    """``state`` with every parameter moved to its sharding (a no-op for arrays already there)."""
    flat = []
    for path, var in nnx.to_flat_state(state):
      x = var.get_value()
      target = self.param_sharding(path, x.shape)
      if not (isinstance(x, jax.Array) and x.sharding.is_equivalent_to(target, x.ndim)):
        x = put(x, target)
      flat.append((path, var.replace(x)))
    return nnx.from_flat_state(flat)

  def shard_model(self, model: nnx.Module) -> nnx.Module:
    """Moves an already loaded model's parameters onto the mesh, in place; returns the model."""
    nnx.update(model, self.shard_state(nnx.state(model)))
    return model

  def is_placed(self, model: nnx.Module) -> bool:
    """Whether every parameter already carries its intended sharding."""
    for path, var in nnx.to_flat_state(nnx.state(model)):
      x = var.get_value()
      if not (isinstance(x, jax.Array) and x.sharding.is_equivalent_to(self.param_sharding(path, x.shape), x.ndim)):
        return False
    return True

  # -- KV cache and decode batch -------------------------------------------------------------
  def cache_sharding(self, shape: Sequence[int]) -> NamedSharding:
    """[B, KVH, S, D]: batch on data, kv heads on model when they divide it, else replicated."""
    return self.named(CACHE_AXES, shape)

  def check_batch(self, batch: int):
    if batch % self.data_size:
      raise ValueError(
        f"batch of {batch} rows does not divide the mesh's data axis ({self.data_size}); use batch "
        f"buckets that are multiples of it (MeshSharding.engine_kwargs() gives them) or a smaller "
        f"data axis"
      )

  def init_cache(self, config: SmolLM3Config, batch: int, length: int, dtype=jnp.float32, lengths=None):
    """An empty KVCache created directly in its sharding (never whole on one device)."""

    self.check_batch(batch)
    lengths = np.zeros((batch,), np.int32) if lengths is None else np.asarray(lengths, np.int32)
    shape = KVCache.layer_shape(config, batch, length)
    kv = self.cache_sharding(shape)
    zeros = jax.jit(lambda: jnp.zeros(shape, KVCache.storage_dtype(dtype)), out_shardings=kv)
    layers = config.num_hidden_layers
    return KVCache(
      k=tuple(zeros() for _ in range(layers)),
      v=tuple(zeros() for _ in range(layers)),
      lengths=put(lengths, self.batch_sharding(1)),
      dtype=jnp.dtype(dtype).name,
    )

  def batch_sharding(self, ndim: int) -> NamedSharding:
    """Leading (batch) dimension on data, the rest replicated."""
    return NamedSharding(self.mesh, P(DATA, *([None] * (ndim - 1))) if self.data_size > 1 else P())

  def place_batch(self, per_row, shared):
    """The engine's hook: ``per_row`` (a pytree whose array leaves all lead with the batch
    dimension; scalars among them are replicated) goes on the data axis, ``shared`` (a pytree of
    batch-wide values) is replicated. Returns both placed."""

    def put_row(x):
      if np.ndim(x) == 0:
        return put(x, self.replicated())
      self.check_batch(x.shape[0])
      return put(x, self.batch_sharding(np.ndim(x)))

    return (jax.tree.map(put_row, per_row), jax.tree.map(lambda x: put(x, self.replicated()), shared))

  def engine_kwargs(self, batch_buckets: Sequence[int] | None = None) -> dict:
    """Engine arguments that keep every padded batch a multiple of the data axis."""
    batch_buckets = DEFAULT_BATCH_BUCKETS if batch_buckets is None else batch_buckets
    d = self.data_size
    buckets = sorted({-(-b // d) * d for b in batch_buckets})
    return dict(batch_buckets=tuple(buckets), sharding=self)


# --------------------------------------------------------------------------------------------
# Helpers for generate() / CLIs
# --------------------------------------------------------------------------------------------
def batch_shards(x) -> int:
  """How many pieces the leading (batch) axis of a placed array (or ShapeDtypeStruct) is split into
  across devices: 1 on one device or when that axis is replicated."""
  sharding = getattr(x, "sharding", None)
  if sharding is None or not x.shape:
    return 1
  return x.shape[0] // sharding.shard_shape(tuple(x.shape))[0]


def mesh_of(model: nnx.Module) -> Mesh | None:
  """The multi-device mesh the model's parameters live on (from its embedding), else None."""
  x = jax.tree.leaves(nnx.state(model.embed_tokens))[0]
  s = getattr(x, "sharding", None)
  if isinstance(s, NamedSharding) and s.mesh.size > 1:
    return s.mesh
  return None


def engine_sharding(model: nnx.Module, mesh=None) -> MeshSharding | None:
  """The MeshSharding generation should use for ``model``: built from ``mesh`` (a Mesh, a
  MeshSharding, or a flag string) or, when None, from the mesh the model already lives on.
  Returns None on a single device. Moves the parameters onto the mesh when they are not there."""
  if mesh is None:
    mesh = mesh_of(model)
    if mesh is None:
      return None
  sharding = MeshSharding.of(mesh, model.config)
  if sharding.mesh.size == 1:
    return None
  if not sharding.is_placed(model):
    sharding.shard_model(model)
  return sharding
