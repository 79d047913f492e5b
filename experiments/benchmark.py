"""Throughput benchmark of smollm3-jax, optionally side by side with transformers: the one entry point of
the benchmarks in experiments/benchmarks/ (one module per kind of row, each with its own flags).

  python experiments/benchmark.py --checkpoint=demo --compare=transformers --output_json=/tmp/bench.json
  python experiments/benchmark.py --checkpoint=random --preset=smollm3_3b --dtype=bfloat16   # GPU, no download
  python experiments/benchmark.py --checkpoint=demo --startup          # fresh-process start-up, cold vs warm cache
  python experiments/benchmark.py --checkpoint=demo --continuous_only  # slot refill on/off, the server's clients
  python experiments/benchmark.py --host_loop   # host seconds per decode chunk at 1k vs 32k generated tokens
  python experiments/benchmark.py --baseline=/tmp/before               # decode vs another checkout
  python experiments/benchmark.py --checkpoint=random --preset=smollm3_3b --dtype=bfloat16 --accelerator_check

Default rows (benchmarks/throughput.py): prefill, decode, a settings sweep, cache budgets, sampled vs
greedy. Timings are best-of --repeats, ours and theirs interleaved so both see the same machine load.
Decode bandwidth = (weight bytes + KV bytes of the filled prefix) per step / step time, as a
fraction of --bandwidth_gbps (measured on the same device when 0).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_T_START = time.time()  # (start-up children count their import time from here)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import probes  # noqa: E402  (experiments/probes.py, beside this script)
from benchmarks import accelerator, baseline, common, continuous, host, startup, throughput  # noqa: E402
from benchmarks.common import FLAGS  # noqa: E402

from smollm3_jax import cli  # noqa: E402

flags.DEFINE_enum(
  "quantize",
  "none",
  ["none", "int8", "int8_w8a8", "int8_weights"],
  "Ours only: an int8 scheme quantizes our weights after "
  "loading (smollm3_jax.nn.quantize); transformers keeps --dtype weights.",
)
flags.DEFINE_string(
  "quality_text",
  os.path.join(common.ROOT, "data", "eval", "quality.txt"),
  "With --quantize: a text scored teacher-forced by the model before and after quantizing "
  "(top-1 agreement, KL, perplexities).",
)
flags.DEFINE_enum("compare", "none", ["none", "transformers"], "Also run transformers generate on the same weights.")
flags.DEFINE_float("bandwidth_gbps", 0.0, "Device memory bandwidth for the roofline; 0 = measure it.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads for transformers (0 = torch's default).")
flags.DEFINE_string("output_json", None, "Write all figures here.")

BENCHMARKS = (throughput, accelerator, continuous, baseline, host)  # the modules whose rows a run can hold
for _module in (common, startup) + BENCHMARKS:
  flags.adopt_module_key_flags(_module)  # --help lists every benchmark's flags
ROW_NAMES = {kind: name for m in BENCHMARKS for kind, name in m.ROW_NAMES.items()}


def targets_text(rows, quantize: str = "none", dtype: str = "float32") -> str:
  """The issues' CPU targets for the demo checkpoint, met or not (those whose rows ran)."""
  out = [line for m in BENCHMARKS for line in m.targets(rows)]
  mode = dtype if quantize == "none" else f"ours {quantize} weights, transformers {dtype}"
  return f"targets (demo checkpoint, 2-core CPU, {mode}):\n" + "\n".join(out) if out else ""


def _load(report: dict):
  """(model, tokenizer, ours, theirs or None): the flags' model, its transformers twin (--compare) and
  its int8 weights (--quantize, after transformers copied the unquantized ones)."""
  t0 = time.time()
  model, tokenizer, desc = common.load_from_flags()
  report.update(model=desc, load_seconds=time.time() - t0, config=model.config.to_hf_dict())
  theirs = None
  if FLAGS.compare == "transformers":
    import torch

    if FLAGS.torch_threads:
      torch.set_num_threads(FLAGS.torch_threads)
    theirs = common.Theirs(common.hf_model_from(model, FLAGS.dtype), model.config.pad_token_id or 0)
    report["torch_threads"] = torch.get_num_threads()
  if FLAGS.quantize != "none":
    from smollm3_jax.nn import quantize

    score = common.quality_scorer(model, tokenizer, FLAGS.quality_text)
    t0 = time.time()
    quantize.apply(model, FLAGS.quantize)
    report["quantize_seconds"] = time.time() - t0
    desc += f", {FLAGS.quantize} weights"
    if score is not None:
      report["quality"] = score()
      print(
        "quality vs unquantized (teacher-forced on --quality_text): "
        + ", ".join(f"{k} {v:.4g}" for k, v in report["quality"].items()),
        flush=True,
      )
  print(f"model: {desc}, {FLAGS.dtype}; device {report['device']}", flush=True)
  return model, tokenizer, common.Ours(model, tokenizer), theirs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  throughput.checked_flags()
  if FLAGS.repeats < 1:
    raise app.UsageError("--repeats must be >= 1")
  if FLAGS.startup_child:
    return startup.child(_T_START)

  import jax

  from smollm3_jax.utils import runtime

  report = dict(
    checkpoint=FLAGS.checkpoint,
    dtype=FLAGS.dtype,
    quantize=FLAGS.quantize,
    device=str(jax.devices()[0]),
    backend=jax.default_backend(),
    argv=sys.argv[1:],
  )
  if FLAGS.startup:
    report["startup"] = startup.run()
    _write(report)
    return
  if FLAGS.compilation_cache:
    report["compilation_cache"] = runtime.enable_compilation_cache(FLAGS.cache_dir)
  if FLAGS.host_loop:  # (its own tiny model: the flags' checkpoint is not loaded)
    try:
      report["rows"] = rows = host.flag_rows()
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    print("\n".join(host.targets(rows)))
    _write(report)
    return

  bw = FLAGS.bandwidth_gbps
  if not bw:
    probe = probes.measure_bandwidth()
    report["bandwidth_probe"] = probe
    bw = probe["gbps"]
    print(
      f"bandwidth probe: sum {probe['sum_gbps']:.1f} GB/s, gemv {probe['gemv_gbps']:.1f} GB/s "
      f"-> roofline {bw:.1f} GB/s",
      flush=True,
    )
  report["bandwidth_gbps"] = bw

  model, tokenizer, ours, theirs = _load(report)
  if FLAGS.baseline:
    rows = baseline.bench_baseline(FLAGS.baseline)
  elif FLAGS.continuous_only:
    rows = continuous.flag_rows(model, tokenizer)
  elif FLAGS.accelerator_check:
    rows = accelerator.flag_rows(model, tokenizer, bw)
  else:
    rows = throughput.flag_rows(ours, theirs, model, tokenizer, bw)
    if FLAGS.continuous:
      rows += continuous.flag_rows(model, tokenizer)
  report.update(
    rows=rows, peak_device_memory_bytes=probes.peak_memory_bytes(), host_peak_rss_bytes=probes.host_peak_rss_bytes()
  )
  print()
  print(common.format_table(rows, bw, ROW_NAMES))
  mem = report["peak_device_memory_bytes"]
  print(
    f"peak device memory: {mem / 2**20:.0f} MiB"
    if mem
    else f"peak device memory: not reported by the backend (process peak RSS "
    f"{(report['host_peak_rss_bytes'] or 0) / 2**20:.0f} MiB)"
  )
  if FLAGS.checkpoint == "demo":
    text = targets_text(rows, FLAGS.quantize, FLAGS.dtype)
    if text:
      print(text)
  _write(report)


def _write(report):
  if FLAGS.output_json:
    from smollm3_jax.utils.files import atomic_write

    atomic_write(FLAGS.output_json, json.dumps(report, indent=2, default=str))
    print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
  cli.run(main)
