"""Deviceless compile check: compiles a model's programs for a TPU (or GPU) this machine does not have
and prints the compiler's memory and traffic figures per program (smollm3_jax/generation/aot.py).

  python experiments/aot.py --target=v5e:1x1 --preset=smollm3_3b --slots=8 --cache_length=4096 \\
      --windows=256,1024,4096 --output_json=/tmp/aot.json
  python experiments/aot.py --target=v6e:1x1 --preset=smollm3_3b --programs=pool,beam,score,train \\
      --largest_pool_contexts=4096,8192,32768
  python experiments/aot.py --target=v5e:1x1 --preset=tiny --num_layers=2 --slots=4 --cache_length=256

Weights are abstract (shapes only: nothing is downloaded or allocated at the model's size) and
nothing runs. Needs the libtpu wheel (the ``test`` / ``tpu`` extras) for the TPU targets; ``h100``
needs the CUDA plugin and $SMOLLM3_JAX_GPU_TARGET_CONFIG (see the module). Programs:

* ``pool``: every program a pool of --slots x --cache_length compiles (Pool.warmup: prefill and
  decode per read window, insert, the tails copy);
* ``beam``: beam search of one 64-token prompt, 4 beams, 64 new tokens;
* ``score``: the teacher-forced scoring program on --slots rows of --cache_length tokens;
* ``train``: one fine-tuning step (AdamW) on --train_batch rows of --train_length tokens.

--largest_pool_contexts asks, per cache length, for the most slots whose decode program fits one
chip's HBM (a few compiles each). Bad flag values are refused before anything compiles.
"""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402
from smollm3_jax.generation import aot  # noqa: E402
from smollm3_jax.nn import config as config_lib  # noqa: E402
from smollm3_jax.utils import backend  # noqa: E402

PROGRAMS = ("pool", "beam", "score", "train")


def prefill_chunk(target_name: str) -> int:
  """The engine's prefill chunk on ``target_name``'s backend (utils/backend.py): every cache length
  is a multiple of it."""
  return backend.choices("gpu" if target_name == "h100" else "tpu").prefill_chunk


FLAGS = flags.FLAGS
flags.DEFINE_enum("target", "v5e:1x1", list(aot.TARGETS), "The accelerator to compile for (compile-only devices).")
flags.DEFINE_enum("preset", "smollm3_3b", sorted(config_lib.PRESETS), "Model config (abstract weights).")
flags.DEFINE_integer("num_layers", 0, "Decoder layers (0 = the preset's); fewer compile faster.", lower_bound=0)
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Parameter, activation and cache dtype.")
cli.define_quantize_flag()
flags.DEFINE_integer("slots", 8, "Pool slots (rows decoded together); the scoring program's rows.", lower_bound=1)
flags.DEFINE_integer(
  "cache_length",
  4096,
  "Cache slots per row (a multiple of the target's prefill chunk); the scoring program's length.",
  lower_bound=1,
)
flags.DEFINE_list(
  "windows",
  [],
  "Read windows of the decode and prefill programs (empty: the engine's buckets, "
  "256 ... up to the cache length); the cache length itself is always one.",
)
flags.DEFINE_list("programs", ["pool"], f"Which programs to compile: any of {', '.join(PROGRAMS)}.")
flags.DEFINE_list(
  "largest_pool_contexts",
  [],
  "Cache lengths to find the largest pool that fits for (e.g. 4096,8192,32768; empty: skip).",
)
flags.DEFINE_integer("largest_pool_upper", 4096, "The largest pool a search tries.", lower_bound=1)
flags.DEFINE_integer("train_batch", 1, "Rows of the training step's batch.", lower_bound=1)
flags.DEFINE_integer("train_length", 1024, "Tokens per row of the training step's batch.", lower_bound=2)
flags.DEFINE_integer(
  "traffic", 6, "Print the operations moving the most HBM bytes, this many per program (0: none).", lower_bound=0
)
flags.DEFINE_string("output_json", None, "Write every row (and the largest pools) here.")


def _positive_ints(name: str, values, multiple: int = 1) -> list[int]:
  out = []
  for v in values or []:
    try:
      n = int(v)
    except ValueError:
      raise flags.ValidationError(f"--{name}: {v!r} is not an integer") from None
    if n < 1:
      raise flags.ValidationError(f"--{name}: {n} must be >= 1")
    if n % multiple:
      raise flags.ValidationError(f"--{name}: {n} must be a multiple of the prefill chunk ({multiple})")
    out.append(n)
  return out


def _validator(check):
  def run(value) -> bool:
    check(value)
    return True

  return run


def _check_cache_length(values) -> bool:
  chunk = prefill_chunk(values["target"])
  if values["cache_length"] % chunk:
    raise flags.ValidationError(
      f"--cache_length: {values['cache_length']} must be a multiple of {values['target']}'s prefill chunk ({chunk})"
    )
  _positive_ints("largest_pool_contexts", values["largest_pool_contexts"], chunk)
  return True


def _check_windows(values) -> bool:
  windows = _positive_ints("windows", values["windows"])
  if any(w > values["cache_length"] for w in windows):
    raise flags.ValidationError(f"--windows: {max(windows)} exceeds --cache_length={values['cache_length']}")
  return True


def _check_programs(programs) -> None:
  unknown = [p for p in programs if p not in PROGRAMS]
  if unknown or not programs:
    raise flags.ValidationError(f"--programs: {unknown or 'none given'}; choose from {', '.join(PROGRAMS)}")


def _check_output(path) -> None:
  if path:
    from smollm3_jax.utils.files import check_writable_file

    try:
      check_writable_file(path, "--output_json")
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None


def _check_target(name) -> None:
  problem = _gpu_problem() if name == "h100" else None
  if problem:
    raise flags.ValidationError(problem)


def _check_slots(values) -> bool:
  chips = _chips(values["target"])
  if values["slots"] % chips:
    raise flags.ValidationError(
      f"--slots={values['slots']} must be a multiple of {values['target']}'s {chips} "
      "chips (the pool's slots are split over the data axis)"
    )
  return True


def _chips(name: str) -> int:
  if ":" not in name:
    return 1
  x, y = name.split(":")[1].split("x")
  return int(x) * int(y)


def _gpu_problem() -> str | None:
  if importlib.util.find_spec("jax_plugins") is None or importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
    return "--target=h100 needs the CUDA plugin: pip install 'jax[cuda12]' (no GPU is needed)"
  spec = os.environ.get("SMOLLM3_JAX_GPU_TARGET_CONFIG")
  if not spec or not os.path.isfile(spec):
    return "--target=h100: set $SMOLLM3_JAX_GPU_TARGET_CONFIG to a GpuTargetConfig text proto (XLA's h100_sxm.txtpb)"
  return None


flags.register_multi_flags_validator(["cache_length", "target", "largest_pool_contexts"], _check_cache_length)
flags.register_validator("programs", _validator(_check_programs))
flags.register_validator("output_json", _validator(_check_output))
flags.register_validator("target", _validator(_check_target))
flags.register_multi_flags_validator(["windows", "cache_length"], _check_windows)
flags.register_multi_flags_validator(["slots", "target"], _check_slots)


# --------------------------------------------------------------------------------------------
# Programs of the layers above generation (aot.py may not import them): scoring, a training step
# --------------------------------------------------------------------------------------------
def score_row(model, tgt, rows: int, length: int, keep_hlo: bool = False):
  """The scoring program (smollm3_jax.evaluation.scoring) on [rows, length] tokens."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from smollm3_jax.evaluation import scoring
  from smollm3_jax.nn.kv_cache import KVCache

  graphdef, state = nnx.split(model)
  state = aot.place_model_state(state, tgt, model.config)
  tokens = jax.ShapeDtypeStruct((rows, length), jnp.int32, sharding=aot.replicated(tgt))  # (as score() passes them)
  layer = KVCache.layer_shape(model.config, rows, length)
  storage = KVCache.storage_dtype(model.dtype)
  kv = 2 * model.config.num_hidden_layers * int(np.prod(layer)) * storage.itemsize
  chunk = min(length, scoring.CHUNK)
  # One pass of the scan (XLA counts the loop body once): the weights, the whole cache read, a chunk
  # of it written, the tokens in and the log-probabilities and argmaxes out.
  ideal = aot.tree_bytes(state) + kv + kv * chunk // length + 4 * rows * length * 4
  row, _ = aot.compile_row(
    "score",
    scoring._score_jit,
    (graphdef, state, tokens, tokens),
    tgt=tgt,
    ideal_bytes=ideal,
    cache_shapes=((storage.name, layer),),
    keep_hlo=keep_hlo,
    slots=rows,
    cache_length=length,
    rows=rows,
  )
  return row


def train_row(model, tgt, batch: int, length: int, keep_hlo: bool = False):
  """One training step (smollm3_jax.training.train: AdamW, float32 moments) on [batch, length] tokens;
  ideal bytes: its arguments read and outputs written once (activations left out)."""
  import jax
  import jax.numpy as jnp

  from smollm3_jax.training import train

  defn = train.ModelDef(model)
  tx = train.make_optimizer(train.OptimConfig())
  params = defn.abstract()
  s = tgt.sharding(model.config)
  rep = aot.replicated(tgt)
  shardings = {k: rep if s is None else s.param_sharding(k.split("."), v.shape) for k, v in params.items()}
  params = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k]) for k, v in params.items()}
  opt = jax.eval_shape(tx.init, train._f32(params))

  def opt_leaf(path, leaf):  # parameter-shaped leaves (moments) like their parameter, the rest replicated
    key = next((e.key for e in reversed(path) if isinstance(getattr(e, "key", None), str) and e.key in params), None)
    sh = shardings[key] if key is not None and tuple(leaf.shape) == tuple(params[key].shape) else rep
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh)

  opt = jax.tree_util.tree_map_with_path(opt_leaf, opt)
  data = rep if s is None else s.batch_sharding(2)
  b = train.Batch(
    tokens=jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=data),
    loss_mask=jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=data),
  )
  step = jax.jit(functools.partial(train._train_step, defn, tx, 0.0), donate_argnums=(0, 1))
  row, _ = aot.compile_row(
    "train", step, (params, opt, b), tgt=tgt, keep_hlo=keep_hlo, slots=batch, cache_length=length, rows=batch
  )
  return row


# --------------------------------------------------------------------------------------------
def _size(b: float) -> str:
  return f"{b / 1e9:.3f} GB" if b >= 1e8 else f"{b / 1e6:.3f} MB" if b >= 1e5 else f"{b / 1e3:.1f} kB"


def _print_traffic(row, top: int) -> dict:
  """The operations moving the most estimated HBM bytes in one row's program (printed; returned)."""
  if not row.hlo or not top:
    return {}
  ops = aot.traffic_by_op(row.hlo, top)
  heavy = aot.traffic(row.hlo, 2)
  label = f"{row.program} window={row.window}" if row.window else row.program
  print(f"  {label}: " + ", ".join(f"{_size(b)} {op}" for b, op in ops))
  for t in heavy:
    print(f"      {_size(t.bytes)} [{t.op}] {t.text[:150]}")
  return dict(by_op=[[b, op] for b, op in ops], heaviest=[[t.bytes, t.op, t.op_name, t.text] for t in heavy])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax.numpy as jnp

  programs = list(dict.fromkeys(FLAGS.programs))
  windows = _positive_ints("windows", FLAGS.windows)
  contexts = _positive_ints("largest_pool_contexts", FLAGS.largest_pool_contexts, prefill_chunk(FLAGS.target))
  cfg = config_lib.PRESETS[FLAGS.preset]()
  if FLAGS.num_layers:
    layers = FLAGS.num_layers
    cfg = cfg.replace(
      num_hidden_layers=layers,
      no_rope_layers=tuple(cfg.no_rope_layers[:layers]) + (1,) * max(0, layers - len(cfg.no_rope_layers)),
    )
  dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
  try:
    tgt = aot.target(FLAGS.target)
  except (RuntimeError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  model = aot.abstract_model(
    cfg, dtype=dtype, quantize_mode=FLAGS.quantize, platform="gpu" if FLAGS.target == "h100" else "tpu"
  )
  engine_kwargs = dict(window_buckets=tuple(sorted(set(windows)))) if windows else None
  keep = FLAGS.traffic > 0
  desc = (
    f"{FLAGS.preset} ({cfg.num_hidden_layers} layers, {FLAGS.dtype}, quantize={FLAGS.quantize}) on "
    f"{FLAGS.target} ({tgt.chips} chip{'s' if tgt.chips > 1 else ''}, {tgt.hbm_bytes / 2**30:.2f} GiB usable "
    f"HBM each)"
  )
  print(f"compiling for {desc}", flush=True)

  rows = []
  t0 = time.perf_counter()
  if "pool" in programs:
    rows += aot.pool_programs(model, tgt, FLAGS.slots, FLAGS.cache_length, keep_hlo=keep, engine_kwargs=engine_kwargs)
  if "beam" in programs:
    rows.append(aot.beam_row(model, tgt, keep_hlo=keep))
  if "score" in programs:
    rows.append(score_row(model, tgt, FLAGS.slots, FLAGS.cache_length, keep_hlo=keep))
  if "train" in programs:
    rows.append(train_row(model, tgt, FLAGS.train_batch, FLAGS.train_length, keep_hlo=keep))
  print()
  print(aot.format_table(rows))
  traffic = {}
  if keep:
    print("\nestimated HBM traffic by operation (aot.traffic_by_op) and the heaviest instructions:")
    for i, r in enumerate(rows):
      traffic[str(i)] = _print_traffic(r, FLAGS.traffic)
  for r in rows:
    if r.error:
      print(f"{r.program}: {r.error}")

  largest = []
  for context in contexts:
    n, tried = aot.largest_pool(model, tgt, context, upper=FLAGS.largest_pool_upper, engine_kwargs=engine_kwargs)
    largest.append(dict(context=context, slots=n, compiles=len(tried), rows=[r.as_dict() for r in tried]))
    fitting = [r for r in tried if r.fits and r.slots == n]
    hbm = f", {fitting[0].hbm_bytes / 2**30:.2f} GiB" if fitting else ""
    print(
      f"largest pool on {FLAGS.target} at context {context}: {n} slots{hbm} ({len(tried)} compiles: "
      + ", ".join(f"{r.slots} {'fits' if r.fits else 'no'}" for r in tried)
      + ")",
      flush=True,
    )
  print(f"compiled in {time.perf_counter() - t0:.0f} s")

  if FLAGS.output_json:
    from smollm3_jax.utils.files import atomic_write

    report = dict(
      target=FLAGS.target,
      preset=FLAGS.preset,
      num_layers=cfg.num_hidden_layers,
      dtype=FLAGS.dtype,
      quantize=FLAGS.quantize,
      slots=FLAGS.slots,
      cache_length=FLAGS.cache_length,
      windows=windows,
      programs=programs,
      hbm_bytes_per_chip=tgt.hbm_bytes,
      chips=tgt.chips,
      date=datetime.date.today().isoformat(),
      argv=sys.argv[1:],
      rows=[r.as_dict() for r in rows],
      traffic=traffic,
      largest_pool=largest,
    )
    atomic_write(FLAGS.output_json, json.dumps(report, indent=2))
    print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
  cli.run(main)
