"""Deviceless compile checks: every program a pool runs, compiled ahead of time for a TPU (or GPU)
this machine does not have, with the compiler's memory and traffic figures.

With the ``libtpu`` wheel installed (the ``tpu`` / ``test`` extras), XLA compiles for compile-only
TPU devices (:func:`target`: ``v5e:1x1``, ``v6e:1x1``, ``v5e:2x4``, ``v6e:2x4``): the executable is
the real TPU one, so ``memory_analysis()`` (argument / temp / output bytes; a program too big for
HBM fails to compile, reported as ``fits=False``) and ``cost_analysis()`` (flops, bytes accessed)
are what the chip would run. ``h100`` needs the CUDA plugin (``jax[cuda12]``) and a GPU target
description (``$SMOLLM3_JAX_GPU_TARGET_CONFIG``).

The programs are the engine's own: :func:`pool_programs` builds an
:class:`~smollm3_jax.generation.engine.Engine` and a :class:`~smollm3_jax.generation.engine.Pool` over
abstract weights (:func:`abstract_model`) and an abstract pool state, and runs :meth:`Pool.warmup`,
whose every compile is lowered here onto the target's devices instead (same jitted functions, same
arguments, same static values). Nothing is allocated at the model's size; nothing runs.
:func:`beam_row` does the same for beam search; any other jitted function (scoring, a training
step: layers above this one) goes through :func:`compile_row`.

Each compiled program gives one :class:`Row`:

* the compiler's bytes and flops. XLA's ``bytes accessed`` counts every operand and result of every
  instruction wherever it lives: on TPU also the copies into on-chip memory (VMEM) and the reads from
  there, so it is not the HBM traffic (the 3B model's cacheless forward step: 10.3 GB for 6.15 GB
  of weights read once);
* ``hbm_traffic``: an estimate of the HBM bytes from the optimized HLO (:func:`traffic`: only buffers
  in device memory, slices and in-place updates by what they touch, loops inside the program's loop
  by their trip count, the costliest branch of each conditional: every sampling processor on); the
  same forward step: 6.20 GB. ``plain_traffic``: the same with each conditional's cheapest branch
  (for decode, a pool whose rows use no processor or filter: greedy or plain temperature sampling);
* ``ideal_bytes``, the traffic the program cannot avoid (decode: the weights, the keys and values of
  the read window and the per-row sampling state read, one token's keys and values written; prefill:
  the weights plus the rows' windows read and their new chunk written; insert: the per-row state
  rewritten plus one cached prompt copied; beam search: the weights twice (prompt, one step) and
  the beams' cache written and read once; the rest: each argument read and each output written once),
  with ``ratio`` = bytes accessed / ideal, ``hbm_ratio`` = hbm_traffic / ideal and ``plain_ratio``
  = plain_traffic / ideal;
* ``cache_copies``: HLO ``copy`` instructions whose result is a whole cache layer buffer in device
  memory.

A ``while`` loop's body (decode, beam search, scoring) is counted by XLA once: the figures are per
step, plus what runs once per call.

Imports the model, sharding, quantization and the engine (generation layer).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import time
import types
from typing import Any, Callable, Sequence
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import SingleDeviceSharding

from smollm3_jax.generation import beam
from smollm3_jax.generation import engine as engine_lib
from smollm3_jax.generation.decode import DecodeState, decode_jit, insert_jit, prefill_slots_jit
from smollm3_jax.nn import config as config_lib
from smollm3_jax.nn import model as model_lib
from smollm3_jax.nn import quantize
from smollm3_jax.nn.kv_cache import KVCache
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.nn.sharding import MeshSharding, batch_shards, make_mesh
from smollm3_jax.utils import backend, runtime

GIB = 2**30
# HBM per chip (bytes) as the compiler lets a program use it: v5e has 16 GiB and XLA allows 15.75 GiB
# ("exceeds available HBM (15.75G)"), v6e 32 GiB of which 31.25 GiB; H100 80 GB.
HBM_BYTES = {"v5e": int(15.75 * GIB), "v6e": int(31.25 * GIB), "h100": 80 * 10**9}
TARGETS = ("v5e:1x1", "v6e:1x1", "v5e:2x4", "v6e:2x4", "h100")
# Contexts (cache lengths) the largest-pool question is asked for by default.
CONTEXTS = (4096, 8192, 32768)
FIELDS = (
  "program",
  "target",
  "slots",
  "cache_length",
  "window",
  "rows",
  "argument_bytes",
  "temp_bytes",
  "output_bytes",
  "hbm_bytes",
  "fits",
  "flops",
  "bytes_accessed",
  "hbm_traffic",
  "ideal_bytes",
  "ratio",
  "hbm_ratio",
  "plain_traffic",
  "plain_ratio",
  "cache_copies",
  "compile_seconds",
  "error",
)


# --------------------------------------------------------------------------------------------
# Targets: compile-only devices
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
  """Compile-only devices of one accelerator: ``name`` (a :data:`TARGETS` entry), its devices and
  the HBM of one chip a program may use, in bytes."""

  name: str
  devices: tuple
  hbm_bytes: int

  @property
  def chips(self) -> int:
    return len(self.devices)

  def sharding(self, config: config_lib.SmolLM3Config) -> MeshSharding | None:
    """The engine's MeshSharding over all the chips (``make_mesh``'s default: every device on the data
    axis); None on one chip."""
    if self.chips == 1:
      return None
    return MeshSharding(make_mesh(devices=list(self.devices)), config)


_TARGETS: dict[str, Target] = {}


def check_target(name: str) -> str:
  """``name`` if it names a target ("v5e:1x1", "v6e:2x4", ... or "h100"); ValueError otherwise."""
  kind, _, shape = str(name).partition(":")
  if name != "h100" and (kind not in ("v5e", "v6e") or not re.fullmatch(r"[1-9]\d*x[1-9]\d*", shape)):
    raise ValueError(f"target {name!r}: expected one of {', '.join(TARGETS)} (or 'v5e:AxB' / 'v6e:AxB')")
  return name


def target(name: str) -> Target:
  """The compile-only devices of ``name``: a TPU topology "v5e:1x1", "v6e:2x4", ... (one host) or
  "h100" (needs the CUDA plugin). Built once per process."""
  if name in _TARGETS:
    return _TARGETS[name]
  check_target(name)
  if name == "h100":
    devices = _gpu_devices()
    hbm = HBM_BYTES["h100"]
  else:
    from jax.experimental import topologies

    kind, _, shape = name.partition(":")
    x, y = map(int, shape.split("x"))
    # Every JAX process on this machine loads libtpu and may hold its lock file (/tmp/libtpu_lockfile);
    # compile-only devices need no exclusive chip, so this process shares the library with them.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    topo = topologies.get_topology_desc(platform="tpu", topology_name=name, chips_per_host_bounds=(x, y, 1))
    devices = tuple(topo.devices)
    hbm = HBM_BYTES[kind]
  _TARGETS[name] = Target(name, devices, hbm)
  return _TARGETS[name]


def _gpu_devices() -> tuple:
  from jax.experimental import topologies

  try:
    import jax_plugins.xla_cuda12  # noqa: F401  (the jax[cuda12] wheels)
  except ImportError:
    raise RuntimeError("target h100 needs the CUDA plugin: pip install 'jax[cuda12]' (a GPU is not needed)") from None
  spec = os.environ.get("SMOLLM3_JAX_GPU_TARGET_CONFIG")
  if not spec or not os.path.isfile(spec):
    raise RuntimeError(
      "target h100: set $SMOLLM3_JAX_GPU_TARGET_CONFIG to a GpuTargetConfig text proto "
      "(XLA's xla/backends/gpu/target_config/specs/h100_sxm.txtpb)"
    )
  with open(spec) as f:
    topo = topologies.get_topology_desc(platform="cuda", target_config=f.read(), topology="1x1x1")
  return tuple(topo.devices)


# --------------------------------------------------------------------------------------------
# Abstract weights and placement
# --------------------------------------------------------------------------------------------
def abstract_model(
  config: config_lib.SmolLM3Config, dtype=jnp.bfloat16, quantize_mode: str = "none", platform: str = "tpu"
) -> SmolLM3:
  """The model with ShapeDtypeStruct parameters (nothing allocated). An int8 ``quantize_mode`` gives
  the int8 model's parameter shapes and scheme ("int8": ``platform``'s; :mod:`smollm3_jax.nn.quantize`
  needs concrete weights: its modules are built on one-row stand-ins and given the full shapes)."""
  model = model_lib.abstract_model(config, dtype=dtype)
  if quantize.check_mode(quantize_mode) != "none":
    _abstract_int8(model, quantize.activations_of(quantize_mode, platform))
  return model


def _sds(shape, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype)


def _int8_linear(out: int, inp: int, bias: bool, dtype, activations: bool) -> quantize.Int8Linear:
  lin = quantize.Int8Linear(
    kernel_out_in=np.zeros((1, 1), np.float32),
    bias=np.zeros((1,)) if bias else None,
    dtype=dtype,
    activations=activations,
  )
  lin.qkernel = nnx.Param(_sds((out, inp), jnp.int8))
  lin.qscale = nnx.Param(_sds((out,), jnp.float32))
  if bias:
    lin.bias = nnx.Param(_sds((out,), jnp.float32))
  lin.out_features, lin.in_features = out, inp
  return lin


def _abstract_int8(model: SmolLM3, activations: bool) -> None:
  """``quantize_int8``'s module layout on an abstract model, in place (shapes as it makes them)."""
  cfg, dtype = model.config, model.dtype
  a = dict(activations=activations)
  for layer in model.layers:
    attn = layer.self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
      kernel = getattr(attn, name).kernel.get_value()
      setattr(
        attn,
        name,
        _int8_linear(kernel.shape[1], kernel.shape[0], cfg.attention_bias and name != "o_proj", dtype, **a),
      )
    one = lambda: nnx.Linear(1, 1, use_bias=cfg.mlp_bias, dtype=dtype, rngs=nnx.Rngs(0))
    int8_mlp = quantize.Int8MLP(types.SimpleNamespace(gate_proj=one(), up_proj=one(), down_proj=one()), **a)
    int8_mlp.gate_up_proj = _int8_linear(2 * cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias, dtype, **a)
    int8_mlp.down_proj = _int8_linear(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias, dtype, **a)
    layer.mlp = int8_mlp
  embed = quantize.Int8Embed(nnx.Embed(1, 1, rngs=nnx.Rngs(0), dtype=dtype), **a)
  embed.qembedding = nnx.Param(_sds((cfg.vocab_size, cfg.hidden_size), jnp.int8))
  embed.qscale = nnx.Param(_sds((cfg.vocab_size,), jnp.float32))
  embed.num_embeddings, embed.features = cfg.vocab_size, cfg.hidden_size
  model.embed_tokens = embed
  if hasattr(model, "lm_head"):
    model.lm_head = _int8_linear(cfg.vocab_size, cfg.hidden_size, False, dtype, **a)


def place(tree, sharding_of: Callable[[Any], Any]):
  """Every array leaf of ``tree`` (arrays or ShapeDtypeStructs) as a ShapeDtypeStruct with
  ``sharding_of(leaf)``."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x)), tree)


def place_model_state(state, tgt: Target, config: config_lib.SmolLM3Config):
  """A model's (abstract) parameter state on ``tgt``: on its one chip, or as the engine's MeshSharding
  places parameters on all of them."""
  s = tgt.sharding(config)
  if s is None:
    dev = SingleDeviceSharding(tgt.devices[0])
    return place(state, lambda x: dev)
  return jax.tree.map(
    lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state, s.param_shardings(state)
  )


def replicated(tgt: Target):
  """The sharding of a value every chip of ``tgt`` holds whole."""
  if tgt.chips == 1:
    return SingleDeviceSharding(tgt.devices[0])
  return jax.sharding.NamedSharding(make_mesh(devices=list(tgt.devices)), jax.sharding.PartitionSpec())


def _abstract_args(tree):
  """Arguments for ``lower``: ShapeDtypeStructs stay; a concrete (uncommitted) array becomes one
  without a sharding, so the compiler places it as it would the engine's uncommitted host values."""

  def leaf(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    x = jnp.asarray(x) if not hasattr(x, "dtype") else x
    return jax.ShapeDtypeStruct(x.shape, x.dtype)

  return jax.tree.map(leaf, tree)


def _shard_bytes(x) -> int:
  """Bytes of one device's shard of ``x`` (a ShapeDtypeStruct, with or without a sharding)."""
  shape = tuple(x.shape)
  s = getattr(x, "sharding", None)
  if s is not None:
    shape = s.shard_shape(shape)
  return int(np.prod(shape, dtype=np.int64)) * _itemsize(x.dtype)


def _itemsize(dtype) -> int:
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return 8  # a threefry key: two uint32
  return jnp.dtype(dtype).itemsize


def tree_bytes(tree) -> int:
  """Per-device bytes of every array leaf of ``tree``."""
  return sum(_shard_bytes(x) for x in jax.tree.leaves(tree))


# --------------------------------------------------------------------------------------------
# One compiled program -> one row
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
  """The compiler's figures for one program on one target (bytes per device; :data:`FIELDS`)."""

  program: str
  target: str
  slots: int = 0
  cache_length: int = 0
  window: int = 0
  rows: int = 0  # prefill: prompts per call (U); beam: prompts; score / train: batch rows
  argument_bytes: int = 0
  temp_bytes: int = 0
  output_bytes: int = 0
  hbm_bytes: int = 0  # arguments + outputs - aliased + temp + code (an OOM: what the compiler asked)
  fits: bool = False
  flops: float = 0.0
  bytes_accessed: float = 0.0  # XLA's cost analysis (every memory space)
  hbm_traffic: int = 0  # estimated from the HLO: device-memory (HBM) bytes (:func:`traffic`)
  ideal_bytes: int = 0
  ratio: float = 0.0  # bytes_accessed / ideal_bytes
  hbm_ratio: float = 0.0  # hbm_traffic / ideal_bytes
  plain_traffic: int = 0  # the same with each conditional's cheapest branch (no sampling processor on)
  plain_ratio: float = 0.0  # plain_traffic / ideal_bytes
  cache_copies: int = 0
  compile_seconds: float = 0.0
  error: str = ""
  hlo: str | None = dataclasses.field(default=None, repr=False)  # the optimized HLO (keep_hlo)

  def as_dict(self) -> dict:
    return {f: getattr(self, f) for f in FIELDS}


def is_oom(error: BaseException | str) -> bool:
  """Whether a compile failed because the program does not fit the device memory."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower() or "Ran out of memory" in text


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _oom_bytes(text: str) -> int:
  """The memory an out-of-memory compile asked for, from XLA's message ("... (131.26G) exceeds
  available HBM ..."); 0 when it says none."""
  m = re.search(r"\(([\d.]+)([KMGT]?)\)\s+exceeds", text)
  return int(float(m.group(1)) * _UNITS[m.group(2)]) if m else 0


_SHAPE = re.compile(r"\b(pred|s4|u4|s8|u8|s16|u16|s32|u32|s64|u64|f16|bf16|f32|f64|f8\w*|c64|c128)\[([\d,]*)\]")
_HLO_DTYPE = {
  "uint16": "u16",
  "bfloat16": "bf16",
  "float32": "f32",
  "float16": "f16",
  "int8": "s8",
  "int32": "s32",
  "uint8": "u8",
  "float64": "f64",
}


def count_copies(hlo_text: str, shapes: Sequence[tuple[str, tuple[int, ...]]]) -> int:
  """HLO ``copy`` / ``copy-start`` instructions (in any computation, fused ones included) whose result
  has one of ``shapes`` ((numpy dtype name, dims) pairs, e.g. a cache layer's per-device shard) in
  device memory. A move into or out of another memory space (a TPU layout annotated ``S(n)`` on the
  result or the source: the compiler staging a buffer through on-chip memory) is not counted."""
  wanted = {(_HLO_DTYPE.get(d, d), ",".join(map(str, dims))) for d, dims in shapes}
  lines = hlo_text.splitlines()
  # The layout each instruction's result has (a plain copy's operand: where it copies from).
  layout_of = {}
  for line in lines:
    d = re.match(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*\S+?\[[^\]]*\]\{([^}]*)\}", line)
    if d:
      layout_of[d.group(1)] = d.group(2)
  n = 0
  for line in lines:
    m = re.search(r"=\s*(.*?)\s(copy|copy-start)\(%?([\w.\-]+)", line)
    if m is None:
      continue
    result = _SHAPE.search(m.group(1))
    if result is None or (result.group(1), result.group(2)) not in wanted:
      continue
    # copy-start's result is (destination, source, context): both layouts tell the memory spaces; a
    # copy's source is its operand.
    layouts = re.findall(r"\]\{([^}]*)\}", m.group(1))[: 2 if m.group(2) == "copy-start" else 1]
    if m.group(2) == "copy":
      layouts.append(layout_of.get(m.group(3), ""))
    if not any("S(" in layout for layout in layouts):
      n += 1
  return n


def compile_row(
  name: str,
  fn,
  args: Sequence,
  static: dict | None = None,
  *,
  tgt: Target,
  ideal_bytes: int = 0,
  cache_shapes: Sequence = (),
  keep_hlo: bool = False,
  compiler_options: dict | None = None,
  **fields,
) -> tuple[Row, Any]:
  """Lowers ``fn(*args, **static)`` (``fn`` jitted; ``args``: ShapeDtypeStructs placed on ``tgt``'s
  devices, or concrete values) and compiles it for ``tgt``; returns (its :class:`Row`, the executable
  or None). An out-of-memory compile gives ``fits=False``, the memory asked for (``hbm_bytes``) and
  the error; other errors propagate. ``ideal_bytes`` 0: arguments + outputs (each read or written
  once); ``compiler_options``: XLA's, for this compile (the engine's: ``Choices.compiler_options``).
  The persistent compilation cache is off during the compile (compile-only executables are not worth
  keeping)."""
  row = Row(program=name, target=tgt.name, **fields)
  t0 = time.perf_counter()
  try:
    with runtime.compilation_cache_paused():
      exe = fn.lower(*_abstract_args(tuple(args)), **(static or {})).compile(compiler_options or None)
  except Exception as e:  # (XLA raises JaxRuntimeError; the message says what ran out)
    if not is_oom(e):
      raise
    row.compile_seconds = time.perf_counter() - t0
    text = str(e).strip()
    row.error = text.splitlines()[0][:300]
    row.hbm_bytes = _oom_bytes(text)
    return row, None
  row.compile_seconds = time.perf_counter() - t0
  mem = exe.memory_analysis()
  if mem is not None:
    row.argument_bytes = int(mem.argument_size_in_bytes)
    row.output_bytes = int(mem.output_size_in_bytes)
    row.temp_bytes = int(mem.temp_size_in_bytes)
    row.hbm_bytes = (
      row.argument_bytes
      + row.output_bytes
      - int(mem.alias_size_in_bytes)
      + row.temp_bytes
      + int(mem.generated_code_size_in_bytes)
    )
  row.fits = row.hbm_bytes <= tgt.hbm_bytes
  cost = exe.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
    cost = cost[0] if cost else {}
  row.flops = float(cost.get("flops", 0.0))
  row.bytes_accessed = float(cost.get("bytes accessed", 0.0))
  text = exe.as_text()
  row.hbm_traffic = hbm_traffic(text)
  row.plain_traffic = hbm_traffic(text, branches="min")
  row.ideal_bytes = int(ideal_bytes or (row.argument_bytes + row.output_bytes))
  if row.ideal_bytes:
    row.ratio = row.bytes_accessed / row.ideal_bytes
    row.hbm_ratio = row.hbm_traffic / row.ideal_bytes
    row.plain_ratio = row.plain_traffic / row.ideal_bytes
  row.cache_copies = count_copies(text, cache_shapes) if cache_shapes else 0
  row.hlo = text if keep_hlo else None
  return row, exe


# --------------------------------------------------------------------------------------------
# The engine's programs over abstract state
# --------------------------------------------------------------------------------------------
class _AbstractPool(engine_lib.Pool):
  """A Pool whose state is ShapeDtypeStructs placed on the target (its shapes as the engine builds them)."""

  def _empty_state(self) -> DecodeState:
    state = jax.eval_shape(super()._empty_state)
    place_state = getattr(self.engine, "place_state", None)  # (an AotEngine; a plain one: unplaced)
    return place_state(state) if place_state is not None else state


class AotEngine(engine_lib.Engine):
  """An Engine over an abstract model whose compiles go to ``tgt`` and are recorded as :class:`Row`\\ s
  (:attr:`rows`) instead of kept; the programs are lowered exactly as the engine lowers them."""

  def __init__(self, model: SmolLM3, tgt: Target, *, keep_hlo: bool = False, **kwargs):
    self.tgt = tgt
    self.target_sharding = tgt.sharding(model.config)
    if self.target_sharding is not None:  # batch buckets as get_engine makes them on a mesh
      kwargs = {
        **kwargs,
        "batch_buckets": self.target_sharding.engine_kwargs(kwargs.get("batch_buckets"))["batch_buckets"],
      }
    # (placed here, on the target's devices, with the target's choices)
    kwargs.setdefault("choices", backend.choices(tgt.devices[0].platform))
    super().__init__(model, sharding=None, **kwargs)
    self.keep_hlo = keep_hlo
    self.rows: list[Row] = []
    self.executables_by_row: list[Any] = []
    self.pool_slots = 0
    self._cache_shapes: tuple = ()
    self._cache_layer = None

  # -- placement ------------------------------------------------------------------------------
  def _set_state(self, state):
    self.state = place_model_state(state, self.tgt, self.config)
    self._state_key = engine_lib._aval_key(self.state)

  def place_state(self, state: DecodeState) -> DecodeState:
    """A pool's abstract DecodeState on the target: the cache as ``MeshSharding.init_cache`` places
    it, the other per-row leaves as ``place_batch`` does (one chip: all on it)."""
    s = self.target_sharding
    if s is None:
      dev = SingleDeviceSharding(self.tgt.devices[0])
      state = place(state, lambda x: dev)
    else:
      s.check_batch(state.done.shape[0])
      cache = state.cache
      kv = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s.cache_sharding(x.shape))
      placed_cache = cache.replace(
        k=tuple(map(kv, cache.k)),
        v=tuple(map(kv, cache.v)),
        lengths=place(cache.lengths, lambda x: s.batch_sharding(1)),
      )
      rest = place(state.replace(cache=None), lambda x: s.batch_sharding(len(x.shape)) if x.shape else s.replicated())
      state = rest.replace(cache=placed_cache)
    layer = state.cache.k[0]
    self._cache_layer = layer
    shard = layer.sharding.shard_shape(layer.shape)
    self._cache_shapes = ((jnp.dtype(layer.dtype).name, tuple(shard)),)
    return state

  def place_shared(self, shared):
    return place(shared, lambda x: replicated(self.tgt))

  # -- the compile hook -----------------------------------------------------------------------
  def _compiled_fn(self, name, fn, *args, with_model: bool = True, **static):
    key = (name, engine_lib._aval_key(_abstract_args(args)), tuple(sorted(static.items())))
    if key in self._compiled:
      return self._compiled[key], 0.0
    call_args = (self.graphdef, *args) if with_model else args
    pool_state = next((a for a in args if isinstance(a, DecodeState)), None)
    fields = dict(
      slots=self.pool_slots,
      cache_length=self._cache_layer.shape[2] if self._cache_layer else 0,
      window=int(static.get("window", 0)),
    )
    if name == "prefill":
      fields["rows"] = int(args[2].shape[0])
    row, exe = compile_row(
      name,
      fn,
      call_args,
      static,
      tgt=self.tgt,
      keep_hlo=self.keep_hlo,
      ideal_bytes=self._ideal(name, args, static, pool_state),
      cache_shapes=self._cache_shapes,
      compiler_options=dict(self.choices.compiler_options),
      **fields,
    )
    self._compiled[key] = exe
    self.rows.append(row)
    self.executables_by_row.append(exe)
    return exe, row.compile_seconds

  def _ideal(self, name: str, args, static: dict, s: DecodeState | None) -> int:
    """Per-device bytes the program must move (see the module docstring); 0 = arguments + outputs."""
    if s is None:
      return 0
    cache = s.cache
    kv = tree_bytes((cache.k, cache.v))  # the whole cache on one device
    b, length = cache.batch, cache.length
    # A row lives on one device of those the rows are split over: its bytes there are a whole row's.
    row = kv * batch_shards(cache.k[0]) // b
    weights = tree_bytes(self.state)
    if name == "decode":
      # The sampling state a step reads (token counts and presence per row, the row's settings, its
      # key ...): all of the per-row state but the cache, the output buffers and the token history,
      # of which a step writes one entry.
      small = tree_bytes(s.replace(cache=None, tokens=None, record=None, context=s.context.replace(history=None)))
      w = int(static["window"])
      return weights + kv * w // length + kv // length + small
    if name == "prefill":
      # No LM head (nothing is sampled): of the embedding, only the chunk's rows are read.
      w, (u, c) = int(static["window"]), tuple(args[2].shape)
      embed = tree_bytes(self.state["embed_tokens"])
      head = tree_bytes(self.state["lm_head"]) if "lm_head" in self.state else 0
      rows = embed * u * c // self.config.vocab_size
      return weights - embed - head + rows + row * u * (w + c) // length
    if name == "insert":
      rest = tree_bytes(s.replace(cache=cache.replace(k=(), v=())))
      return 2 * rest + 2 * row  # rewrite the per-row state, copy one prompt's cache row
    return 0


def _pool(
  model: SmolLM3,
  tgt: Target,
  slots: int,
  cache_length: int,
  keep_hlo: bool,
  engine_kwargs: dict | None,
  pool_kwargs: dict,
) -> tuple[AotEngine, _AbstractPool]:
  eng = AotEngine(model, tgt, keep_hlo=keep_hlo, **(engine_kwargs or {}))
  eng.pool_slots = slots
  pool = _AbstractPool(eng, slots, cache_length, **pool_kwargs)
  pool.shared = eng.place_shared(pool.shared)
  return eng, pool


def pool_programs(
  model: SmolLM3,
  tgt: Target,
  slots: int,
  cache_length: int,
  *,
  keep_hlo: bool = False,
  engine_kwargs: dict | None = None,
  **pool_kwargs,
) -> list[Row]:
  """Compiles for ``tgt`` every program a pool of ``slots`` x ``cache_length`` runs (what
  :meth:`Pool.warmup` compiles: prefill per rows bucket and read window, insert, decode per read window,
  the tails copy); ``model`` abstract (:func:`abstract_model`). ``engine_kwargs``: the Engine's
  (``window_buckets``, ``prefill_chunk``, ``cache_dtype`` ...); ``pool_kwargs``: the Pool's
  (``prefill_rows``, ``logprobs`` ...). Returns one :class:`Row` each, in compile order."""
  eng, pool = _pool(model, tgt, slots, cache_length, keep_hlo, engine_kwargs, pool_kwargs)
  pool.warmup()
  return eng.rows


def decode_row(
  model: SmolLM3,
  tgt: Target,
  slots: int,
  cache_length: int,
  window: int | None = None,
  *,
  keep_hlo: bool = False,
  engine_kwargs: dict | None = None,
  **pool_kwargs,
) -> tuple[Row, Any]:
  """The decode program alone, at read ``window`` (default: the whole cache); (row, executable or
  None when it does not fit)."""
  eng, pool = _pool(model, tgt, slots, cache_length, keep_hlo, engine_kwargs, pool_kwargs)
  one = jnp.asarray(1, jnp.int32)
  exe, _ = eng._compiled_fn(
    "decode",
    decode_jit,
    eng.state,
    pool.state,
    pool.shared,
    one,
    one,
    jnp.asarray(pool._stop),
    window=int(window or cache_length),
  )
  return eng.rows[-1], exe


def prefill_row(
  model: SmolLM3,
  tgt: Target,
  slots: int,
  cache_length: int,
  window: int | None = None,
  *,
  keep_hlo: bool = False,
  engine_kwargs: dict | None = None,
  **pool_kwargs,
) -> tuple[Row, Any]:
  """The prefill program alone (one prompt's chunk, with the engine's query blocks), at read
  ``window`` (default: the whole cache); (row, executable or None when it does not fit)."""
  eng, pool = _pool(model, tgt, slots, cache_length, keep_hlo, engine_kwargs, pool_kwargs)
  w = int(window or cache_length)
  z = jnp.zeros((1,), jnp.int32)
  tokens = jnp.zeros((1, eng.prefill_chunk), jnp.int32)
  exe, _ = eng._compiled_fn(
    "prefill",
    prefill_slots_jit,
    eng.state,
    pool.state,
    tokens,
    z,
    z,
    z,
    window=w,
    query_block=eng.choices.query_block_at(w),
    shards=pool._row_shards,
  )
  return eng.rows[-1], exe


def insert_row(
  model: SmolLM3, tgt: Target, slots: int, cache_length: int, *, engine_kwargs: dict | None = None, **pool_kwargs
) -> tuple[Row, Any]:
  """The insert program alone (rows started, shared prompts copied between slots); (row, executable
  or None when it does not fit)."""
  eng, pool = _pool(model, tgt, slots, cache_length, False, engine_kwargs, pool_kwargs)
  z = jnp.zeros((slots,), jnp.int32)
  exe, _ = eng._compiled_fn(
    "insert",
    insert_jit,
    pool.state,
    z,
    z,
    z,
    pool._row_settings([None] * slots),
    jnp.zeros((slots,), jnp.uint32),
    pool.shared.pad_id,
    with_model=False,
    shards=pool._row_shards,
  )
  return eng.rows[-1], exe


def slot_bytes(model: SmolLM3, cache_length: int, *, engine_kwargs: dict | None = None, **pool_kwargs) -> int:
  """Bytes one slot of a pool takes: its keys and values over all layers and its per-row state (token
  buffer, sampling context, settings), as the engine lays them out (nothing allocated)."""
  eng = engine_lib.Engine(model, **(engine_kwargs or {}))
  return tree_bytes(_AbstractPool(eng, 1, cache_length, **pool_kwargs).state)


def largest_pool(
  model: SmolLM3,
  tgt: Target,
  cache_length: int,
  *,
  upper: int | None = 4096,
  log: Callable[[Row], None] | None = None,
  engine_kwargs: dict | None = None,
  **pool_kwargs,
) -> tuple[int, list[Row]]:
  """The most slots whose decode program (read window = the whole cache) compiles and fits ``tgt``'s
  HBM, at most ``upper``; slots step by the mesh's data axis (every chip). A search over a few
  compiles: the first at the weights-plus-slots estimate (:func:`slot_bytes`), each next one where
  the last program's own HBM figure per slot says the memory ends (after a program that does not fit:
  halfway to the largest that did, or 15 % fewer slots while none did). Returns (slots, the rows compiled in order; slots 0 when not
  even one step of slots fits)."""
  step = tgt.chips  # make_mesh puts every device on the data axis: the slots are split over all chips
  weights = tree_bytes(place_model_state(nnx.state(model), tgt, model.config))
  per_slot = slot_bytes(model, cache_length, engine_kwargs=engine_kwargs, **pool_kwargs) / tgt.chips
  top = None if upper is None else max(step, upper // step * step)
  down = lambda b: max(step, int(b) // step * step)

  def predicted(per: float) -> int:
    b = down((tgt.hbm_bytes - weights) / max(per, 1.0))
    return b if top is None else min(b, top)

  rows: list[Row] = []
  lo, hi = 0, None  # the largest slot count known to fit, the smallest known not to
  b = predicted(per_slot)
  while True:
    row, _ = decode_row(model, tgt, b, cache_length, engine_kwargs=engine_kwargs, **pool_kwargs)
    rows.append(row)
    if log is not None:
      log(row)
    if row.fits:
      lo = b
      if b == top:
        return lo, rows
      # (the program's own bytes per slot: the cache, the per-row state and the step's temporaries)
      nxt = predicted((row.hbm_bytes - weights) / b) if row.hbm_bytes > weights else b + step
    else:
      if b == step:
        return 0, rows
      hi = b
      nxt = down((lo + hi) / 2) if lo else down(min(b - step, 0.85 * b))  # (the estimate misses only temporaries)
    if hi is not None and hi - lo <= step:
      return lo, rows
    if nxt <= lo:
      nxt = lo + step
    if hi is not None and nxt >= hi:
      nxt = down((lo + hi) / 2) if down((lo + hi) / 2) > lo else hi - step
    b = nxt


# --------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------
class _Compiled(Exception):
  """Raised by the compile hook once the program is compiled: nothing runs."""


def beam_row(
  model: SmolLM3,
  tgt: Target,
  *,
  prompts: int = 1,
  prompt_length: int = 64,
  num_beams: int = 4,
  max_new_tokens: int = 64,
  keep_hlo: bool = False,
) -> Row:
  """The beam-search program of ``prompts`` prompts of ``prompt_length`` tokens (built by
  :func:`~smollm3_jax.generation.beam.beam_search` itself, its compile sent to ``tgt``; one chip's
  worth: beam search runs replicated)."""
  out: list[Row] = []
  dev = replicated(tgt)

  def hook(graphdef, *args, **static):
    state = place_model_state(args[0], tgt, model.config)
    k = static["num_beams"] * prompts
    length = static["cache_length"]
    cache = KVCache.layer_shape(model.config, k, length)
    kv = 2 * model.config.num_hidden_layers * int(np.prod(cache)) * KVCache.storage_dtype(model.dtype).itemsize
    ideal = 2 * tree_bytes(state) + 2 * kv  # the prompts' forward and one step: weights, and the cache written, read
    rest = place(_abstract_args(args[1:]), lambda x: dev)
    row, _ = compile_row(
      "beam",
      beam._search_jit,
      (graphdef, state, *rest),
      static,
      tgt=tgt,
      keep_hlo=keep_hlo,
      cache_shapes=((KVCache.storage_dtype(model.dtype).name, cache),),
      slots=k,
      cache_length=length,
      rows=prompts,
      ideal_bytes=ideal,
    )
    out.append(row)
    raise _Compiled

  ids = [[1] * prompt_length for _ in range(prompts)]
  with mock.patch.object(beam, "_compiled_search", hook):
    try:
      beam.beam_search(
        model, None, ids, num_beams=num_beams, max_new_tokens=max_new_tokens, stop_ids=[model.config.eos_token_id[0]]
      )
    except _Compiled:
      pass
  return out[0]


# --------------------------------------------------------------------------------------------
# Reading the figures
# --------------------------------------------------------------------------------------------
def format_table(rows: Sequence[Row]) -> str:
  """A fixed-width table of rows (bytes in GB = 1e9)."""
  gb = lambda x: f"{x / 1e9:.3f}"
  head = (
    "program",
    "target",
    "slots",
    "cache",
    "window",
    "U",
    "args_GB",
    "temp_GB",
    "out_GB",
    "hbm_GB",
    "fits",
    "GFLOP",
    "accessed_GB",
    "hlo_GB",
    "ideal_GB",
    "ratio",
    "hlo_ratio",
    "plain_ratio",
    "copies",
    "compile_s",
  )
  lines = [head]
  for r in rows:
    lines.append(
      (
        r.program,
        r.target,
        str(r.slots),
        str(r.cache_length),
        str(r.window or ""),
        str(r.rows or ""),
        gb(r.argument_bytes),
        gb(r.temp_bytes),
        gb(r.output_bytes),
        gb(r.hbm_bytes),
        "yes" if r.fits else "NO",
        f"{r.flops / 1e9:.2f}",
        gb(r.bytes_accessed),
        gb(r.hbm_traffic),
        gb(r.ideal_bytes),
        f"{r.ratio:.2f}",
        f"{r.hbm_ratio:.2f}",
        f"{r.plain_ratio:.2f}",
        str(r.cache_copies),
        f"{r.compile_seconds:.1f}",
      )
    )
  widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in lines)


# --------------------------------------------------------------------------------------------
# Where the bytes go: an HBM traffic estimate from the optimized HLO
# --------------------------------------------------------------------------------------------
_DTYPE_BITS = {
  "pred": 8,
  "s2": 2,
  "u2": 2,
  "s4": 4,
  "u4": 4,
  "s8": 8,
  "u8": 8,
  "s16": 16,
  "u16": 16,
  "f16": 16,
  "bf16": 16,
  "s32": 32,
  "u32": 32,
  "f32": 32,
  "s64": 64,
  "u64": 64,
  "f64": 64,
  "c64": 64,
  "c128": 128,
}
# An array in an HLO shape: dtype, dims, and its layout (where the memory space shows as S(n)).
_ARRAY = re.compile(r"\b(pred|[su](?:2|4|8|16|32|64)|f16|bf16|f32|f64|f8\w*|c64|c128)\[([\d,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
# Ops that move nothing themselves (views, control flow whose bodies are counted on their own, markers).
_FREE_OPS = {
  "parameter",
  "constant",
  "get-tuple-element",
  "tuple",
  "bitcast",
  "while",
  "conditional",
  "call",
  "call-done",
  "after-all",
  "partition-id",
  "replica-id",
  "opt-barrier",
  "copy-done",
  "async-done",
  "add-dependency",
  "slice-done",
  "all-gather-done",
  "all-reduce-done",
  "collective-permute-done",
  "send-done",
  "recv-done",
}
_SLICES = {"slice", "dynamic-slice"}


@dataclasses.dataclass
class _Instr:
  name: str
  shape: str  # the result's shape text
  op: str
  operands: list  # operand names
  attrs: str  # the text after the operand list
  line: str


def _arrays(shape_text: str) -> list[tuple[int, bool]]:
  """(bytes, in device memory) of each array of a shape text (a tuple: each element). On TPU an array
  whose layout names a memory space ``S(n)``, n > 0, sits in on-chip memory (VMEM, SMEM), not HBM."""
  out = []
  for dtype, dims, layout in _ARRAY.findall(shape_text):
    n = int(np.prod([int(d) for d in dims.split(",")], dtype=np.int64)) if dims else 1
    bits = _DTYPE_BITS.get(dtype, 8)
    space = re.search(r"S\((\d+)\)", layout or "")
    out.append((n * bits // 8, space is None or space.group(1) == "0"))
  return out


def _hbm(shape_text: str) -> int:
  return sum(b for b, in_hbm in _arrays(shape_text) if in_hbm)


def _split_operands(rest: str) -> tuple[str, str]:
  """``rest`` = the text after ``op(``: (the operand list, the attributes after its closing paren)."""
  depth = 1
  for i, ch in enumerate(rest):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
      if depth == 0:
        return rest[:i], rest[i + 1 :]
  return rest, ""


def parse_hlo(hlo_text: str) -> tuple[dict[str, list[_Instr]], str | None]:
  """The computations of an HLO module's text: {name: instructions}, and the entry's name."""
  comps: dict[str, list[_Instr]] = {}
  name = entry = None
  for line in hlo_text.splitlines():
    if line[:1] not in (" ", "") and line.rstrip().endswith("{") and not line.startswith("HloModule"):
      m = re.match(r"(ENTRY\s+)?%?([\w.\-]+)", line)
      if m:
        name = m.group(2)
        comps[name] = []
        entry = name if m.group(1) else entry
      continue
    if name is None or line.startswith("}"):
      continue
    m = _INSTR.match(line)
    if m:
      operands, attrs = _split_operands(m.group(4))
      comps[name].append(
        _Instr(m.group(1), m.group(2), m.group(3), re.findall(r"%([\w.\-]+)", operands), attrs, line.strip())
      )
  return comps, entry


def _called(instr: _Instr, key: str) -> str | None:
  m = re.search(rf"\b{key}=%?([\w.\-]+)", instr.attrs)
  return m.group(1) if m else None


_CALLEE_KEYS = ("body", "condition", "to_apply", "calls")


def _branches(ins: _Instr) -> list[str]:
  """The branch computations of a ``conditional``."""
  m = re.search(r"branch_computations=\{([^}]*)\}", ins.attrs)
  if m:
    return [x.strip().lstrip("%") for x in m.group(1).split(",")]
  return [c for c in (_called(ins, "true_computation"), _called(ins, "false_computation")) if c]


class _Module:
  """An HLO module's instructions by name, for the traffic estimate."""

  def __init__(self, hlo_text: str):
    self.comps, self.entry = parse_hlo(hlo_text)
    self.by_name = {ins.name: ins for instrs in self.comps.values() for ins in instrs}
    self._users: dict[str, dict[str, list[_Instr]]] = {}

  def users(self, comp: str, name: str) -> list[_Instr]:
    if comp not in self._users:
      table: dict[str, list[_Instr]] = collections.defaultdict(list)
      for ins in self.comps.get(comp, []):
        for o in ins.operands:
          table[o].append(ins)
      self._users[comp] = table
    return self._users[comp].get(name, [])

  def param(self, comp: str, index: int) -> _Instr | None:
    return next(
      (
        ins
        for ins in self.comps.get(comp, [])
        if ins.op == "parameter" and re.match(rf"{index}\)", ins.line.split("parameter(", 1)[-1])
      ),
      None,
    )

  def read_bytes(self, comp: str, ins: _Instr, full: int, depth: int = 0) -> int | None:
    """Bytes a fused computation reads of its value ``ins`` (whole: ``full``): only the slices taken
    when every use is a slice (through bitcasts, converts and nested fusions), nothing when it is the
    buffer an in-place dynamic-update-slice writes into, else all of it. None: the value is the
    computation's result (what reads it is outside)."""
    users = self.users(comp, ins.name)
    if not users and ins.line.startswith("ROOT"):
      return None
    if depth > 8:
      return full
    total = 0
    for user in users:
      if user.op in _SLICES | {"gather"} and user.operands[:1] == [ins.name]:
        got = sum(b for b, _ in _arrays(user.shape))
      elif user.op == "dynamic-update-slice" and user.operands[:1] == [ins.name]:
        got = 0  # written in place: the rest of the buffer is neither read nor written
      elif user.op in ("bitcast", "bitcast-convert", "convert", "copy", "reshape"):
        got = self.read_bytes(comp, user, full, depth + 1)
      elif user.op == "fusion" and _called(user, "calls"):
        callee = _called(user, "calls")
        got = 0
        for i, o in enumerate(user.operands):
          p = self.param(callee, i) if o == ins.name else None
          if p is not None:
            inner = self.read_bytes(callee, p, full, depth + 1)
            got += (self.read_bytes(comp, user, full, depth + 1) or 0) if inner is None else inner
      else:
        return full
      if got is None:
        return None
      total += got
      if total >= full:
        return full
    return total

  def fusion_written(self, callee: str, result_shape: str) -> tuple[int, set[int]]:
    """(HBM bytes a fusion writes, indices of its operands updated in place): a root (or root tuple
    element) that is a dynamic-update-slice into a parameter writes only its update."""
    instrs = self.comps.get(callee, [])
    root = next((ins for ins in instrs if ins.line.startswith("ROOT")), None)
    results = _arrays(result_shape)
    if root is None:
      return sum(b for b, h in results if h), set()
    parts = [self.by_name.get(o) for o in root.operands] if root.op == "tuple" else [root]
    written, in_place = 0, set()
    for k, part in enumerate(parts):
      size, in_hbm = results[k] if k < len(results) else (0, False)
      while part is not None and part.op in ("bitcast", "copy") and part.operands:
        part = self.by_name.get(part.operands[0])
      if part is not None and part.op in ("dynamic-update-slice", "scatter"):
        # In place: a dynamic-update-slice writes its update (operand 1), a scatter its updates
        # (the last operand), into the parameter they update.
        base = self.by_name.get(part.operands[0])
        if base is not None and base.op == "parameter":
          in_place.add(int(re.match(r"(\d+)", base.line.split("parameter(", 1)[-1]).group(1)))
          which = 1 if part.op == "dynamic-update-slice" else len(part.operands) - 1
          update = self.by_name.get(part.operands[which]) if len(part.operands) > which else None
          size = sum(b for b, _ in _arrays(update.shape)) if update is not None else 0
      written += size if in_hbm else 0
    return written, in_place

  def cost(self, ins: _Instr) -> int:
    """Estimated HBM bytes one execution of a (non-fused) instruction moves."""
    op = ins.op
    if op in _FREE_OPS:
      return 0
    operand = lambda i: self.by_name.get(ins.operands[i]) if i < len(ins.operands) else None
    in_hbm = lambda x: x is not None and _hbm(x.shape) > 0
    if op == "call-start":  # an asynchronous call (e.g. a scatter offloaded to the SparseCore): its
      return 0  # computation is counted where it runs (``to_apply``)
    if op in ("copy-start", "slice-start"):  # (destination | (source), slice, context)
      arrays = _arrays(ins.shape)
      src = operand(0)
      moved = arrays[0][0] if op == "copy-start" else arrays[1][0]
      dst_hbm = arrays[0][1] if op == "copy-start" else arrays[1][1]
      return moved * (int(in_hbm(src)) + int(dst_hbm))
    if op == "gather":  # reads the rows it gathers (and its indices)
      size = sum(b for b, _ in _arrays(ins.shape))
      idx = operand(1)
      return size * int(in_hbm(operand(0))) + (_hbm(idx.shape) if idx is not None else 0) + _hbm(ins.shape)
    if op in _SLICES:
      size = sum(b for b, _ in _arrays(ins.shape))
      return size * int(in_hbm(operand(0))) + _hbm(ins.shape)
    if op == "dynamic-update-slice":
      update = operand(1)
      size = sum(b for b, _ in _arrays(update.shape)) if update is not None else 0
      return size * (int(in_hbm(update)) + int(_hbm(ins.shape) > 0))
    if op == "fusion":
      callee = _called(ins, "calls")
      written, in_place = self.fusion_written(callee, ins.shape) if callee else (_hbm(ins.shape), set())
      read = 0
      for i, name in enumerate(ins.operands):
        x = self.by_name.get(name)
        if x is None or i in in_place:
          continue
        full = _hbm(x.shape)
        if full:
          p = self.param(callee, i) if callee else None
          got = self.read_bytes(callee, p, full) if p is not None else full
          read += full if got is None else got
      return read + written
    return _hbm(ins.shape) + sum(_hbm(self.by_name[o].shape) for o in ins.operands if o in self.by_name)


@dataclasses.dataclass
class Traffic:
  """One instruction's estimated HBM traffic (bytes per execution of its computation)."""

  bytes: int
  op: str
  computation: str
  op_name: str  # the JAX operation it came from (its metadata), e.g. "jit(decode)/while/body/dot_general"
  text: str  # the instruction, cut to 200 characters


def _trip_count(mod: "_Module", loop: _Instr) -> int:
  """Iterations of a ``while`` whose condition is ``counter < N`` for a constant N (what
  ``fori_loop`` over constant bounds compiles to, counting from 0); 1 when it cannot tell."""
  cond = mod.comps.get(_called(loop, "condition") or "", [])
  root = next((ins for ins in cond if ins.line.startswith("ROOT")), None)
  if root is None or root.op != "compare" or "direction=LT" not in root.attrs or len(root.operands) != 2:
    return 1
  bound = mod.by_name.get(root.operands[1])
  m = re.search(r"constant\((\d+)\)", bound.line) if bound is not None and bound.op == "constant" else None
  return int(m.group(1)) if m else 1


def traffic(hlo_text: str, top: int | None = 15, branches: str = "max") -> list[Traffic]:
  """An estimate of a compiled program's device-memory (HBM) traffic, per instruction the device runs
  (the entry computation, loop bodies, called computations and one branch of each conditional: the
  costliest with ``branches="max"``, an upper bound; the cheapest with ``"min"``, which for the
  decode step is the path of rows that use no sampling processor; never inside a fusion), largest
  first (``top`` of them; None: all). Counts only buffers in device memory: on TPU a buffer in on-chip memory (a layout with a
  memory space ``S(n)``) moves nothing through HBM, where XLA's ``bytes accessed`` counts every
  operand and result wherever it lives. A slice counts what it takes, an in-place
  dynamic-update-slice its update, a fusion what it reads of each operand (only the slices it takes;
  not the buffer it updates in place) and writes. A loop body counts once (per step, as XLA's
  figures); a loop inside it counts its trip count of times when its bound is a constant. Buffers'
  tile padding is not counted."""
  mod = _Module(hlo_text)
  memo: dict[str, list[Traffic]] = {}

  def run(c: str, stack: tuple[str, ...]) -> list[Traffic]:
    if c in memo:
      return memo[c]
    if c in stack or c not in mod.comps:
      return []
    out = []
    for ins in mod.comps[c]:
      b = mod.cost(ins)
      if b:
        m = re.search(r'op_name="([^"]*)"', ins.attrs)
        out.append(Traffic(b, ins.op, c, m.group(1) if m else "", ins.line[:200]))
      if ins.op == "conditional":
        options = [run(x, stack + (c,)) for x in _branches(ins)]
        pick = max if branches == "max" else min
        out += pick(options, key=lambda t: sum(x.bytes for x in t), default=[])
      elif ins.op in ("while", "call", "async-start", "call-start"):
        # A loop inside the program's loop (e.g. the filters' bisection) runs its trip count per step;
        # the outermost loop (the decode steps) counts once: the figures are per step.
        times = _trip_count(mod, ins) if ins.op == "while" and stack else 1
        for key in _CALLEE_KEYS:
          callee = _called(ins, key)
          if callee:
            out += [dataclasses.replace(t, bytes=t.bytes * times) for t in run(callee, stack + (c,))]
    memo[c] = out
    return out

  out = sorted(run(mod.entry, ()) if mod.entry else [], key=lambda t: -t.bytes)
  return out if top is None else out[:top]


def hbm_traffic(hlo_text: str, branches: str = "max") -> int:
  """The total of :func:`traffic`: estimated HBM bytes one run (one loop step) of the program moves."""
  return sum(t.bytes for t in traffic(hlo_text, None, branches))


def traffic_by_op(hlo_text: str, top: int = 12) -> list[tuple[int, str]]:
  """:func:`traffic` summed by the JAX operation each instruction came from (the last two parts of
  its op_name, e.g. "bkqd,bksd->bkqs/dot_general"; "" for compiler-made copies and prefetches):
  (bytes, operation), largest first."""
  sums: collections.Counter = collections.Counter()
  for t in traffic(hlo_text, None):
    parts = [p for p in t.op_name.split("/") if p]
    key = "/".join(parts[-2:]) if parts else f"({t.op})"
    sums[key] += t.bytes
  return [(b, k) for k, b in sums.most_common(top)]


__all__ = [
  "CONTEXTS",
  "FIELDS",
  "HBM_BYTES",
  "TARGETS",
  "AotEngine",
  "Row",
  "Target",
  "Traffic",
  "abstract_model",
  "beam_row",
  "check_target",
  "compile_row",
  "count_copies",
  "decode_row",
  "format_table",
  "hbm_traffic",
  "insert_row",
  "is_oom",
  "largest_pool",
  "parse_hlo",
  "place",
  "place_model_state",
  "pool_programs",
  "prefill_row",
  "replicated",
  "slot_bytes",
  "target",
  "traffic",
  "traffic_by_op",
  "tree_bytes",
]
