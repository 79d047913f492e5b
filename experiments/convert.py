"""Convert any checkpoint the loader reads (Hugging Face dir / hub id, GGUF, "demo") to Orbax.

  python experiments/convert.py --checkpoint=HuggingFaceTB/SmolLM3-3B --output=/data/smollm3-3b-orbax \
      --dtype=bfloat16

The output directory holds the parameters (Orbax, in --dtype), config.json and the tokenizer files;
``smollm3_jax.from_pretrained(output, mesh-aware place=...)`` restores it directly into the target
shardings. Conversion runs on the host CPU, one tensor at a time on the read side.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file or a hub id.")
flags.DEFINE_string("output", None, "Output directory (must not exist or be empty, unless --overwrite).")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "Stored parameter dtype.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
flags.DEFINE_bool("tokenizer", True, "Also save the tokenizer files.")
flags.DEFINE_bool("verify", True, "Restore the result and check it equals the converted parameters.")


def convert(checkpoint: str, output: str, *, dtype: str = "bfloat16", overwrite: bool = False,
            tokenizer: bool = True, verify: bool = True) -> dict:
  """Converts ``checkpoint`` to an Orbax directory; returns timings (seconds) and sizes."""
  import jax
  import numpy as np
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.checkpoints import orbax as orbax_ckpt

  output = os.path.abspath(output)
  if os.path.exists(output) and os.listdir(output) and not overwrite:
    raise FileExistsError(f"--output {output!r} exists and is not empty (pass --overwrite)")
  cpu = jax.devices("cpu")[0]
  t0 = time.perf_counter()
  tok = smollm3_jax.Tokenizer.from_pretrained(checkpoint) if tokenizer else None
  # Keep the weights on the host CPU: conversion must not need accelerator memory.
  model = smollm3_jax.from_pretrained(checkpoint, dtype=dtype,
                                      place=lambda path, host: jax.device_put(host, cpu))
  t1 = time.perf_counter()
  orbax_ckpt.save(output, model, tokenizer=tok, source=str(checkpoint), overwrite=overwrite)
  t2 = time.perf_counter()
  stats = dict(load_seconds=t1 - t0, save_seconds=t2 - t1, output=output,
               bytes=sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(output) for f in fs))
  if verify:
    restored = orbax_ckpt.restore(output, dtype=dtype)
    stats["restore_seconds"] = time.perf_counter() - t2
    a = nnx.to_flat_state(nnx.state(model, nnx.Param))
    b = dict(nnx.to_flat_state(nnx.state(restored, nnx.Param)))
    for path, var in a:
      if not np.array_equal(np.asarray(var.get_value()), np.asarray(b[path].get_value())):
        raise RuntimeError(f"verification failed: parameter {path} differs after restore")
  return stats


def main(argv):
  del argv
  if not FLAGS.output:
    raise app.UsageError("--output is required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  stats = convert(FLAGS.checkpoint, FLAGS.output, dtype=FLAGS.dtype, overwrite=FLAGS.overwrite,
                  tokenizer=FLAGS.tokenizer, verify=FLAGS.verify)
  print(f"wrote {stats['output']} ({stats['bytes'] / 2**20:.1f} MiB): read {stats['load_seconds']:.1f}s, "
        f"save {stats['save_seconds']:.1f}s" +
        (f", verified restore {stats['restore_seconds']:.1f}s" if "restore_seconds" in stats else ""))


if __name__ == "__main__":
  app.run(main)
