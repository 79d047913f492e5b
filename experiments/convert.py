"""Convert any checkpoint the loader reads (Hugging Face dir / hub id, GGUF, "demo") to Orbax.

  python experiments/convert.py --checkpoint=HuggingFaceTB/SmolLM3-3B --output=/data/smollm3-3b-orbax \
      --dtype=bfloat16

The output directory holds the parameters (Orbax, in --dtype), config.json and the tokenizer files;
``smollm3_jax.from_pretrained(output, mesh=...)`` restores it directly into the target shardings.
The conversion itself is :func:`smollm3_jax.checkpoints.convert.convert` (an installed package has it).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file or a hub id.")
flags.DEFINE_string("output", None, "Output directory (must not exist or be empty, unless --overwrite).")
flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16", "float16"], "Stored parameter dtype.")
flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")
flags.DEFINE_bool("tokenizer", True, "Also save the tokenizer files.")
flags.DEFINE_bool("verify", True, "Restore the result and check it equals the converted parameters.")


def convert(
  checkpoint: str,
  output: str,
  *,
  dtype: str = "bfloat16",
  overwrite: bool = False,
  tokenizer: bool = True,
  verify: bool = True,
) -> dict:
  """The package's conversion, with the checkpoint's own tokenizer saved when ``tokenizer``."""
  import smollm3_jax
  from smollm3_jax.checkpoints.convert import convert as convert_checkpoint

  tok = smollm3_jax.Tokenizer.from_pretrained(checkpoint) if tokenizer else None
  return convert_checkpoint(checkpoint, output, dtype=dtype, overwrite=overwrite, tokenizer=tok, verify=verify)


def main(argv):
  del argv
  if not FLAGS.output:
    raise app.UsageError("--output is required")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step at INFO
  stats = convert(
    FLAGS.checkpoint,
    FLAGS.output,
    dtype=FLAGS.dtype,
    overwrite=FLAGS.overwrite,
    tokenizer=FLAGS.tokenizer,
    verify=FLAGS.verify,
  )
  print(
    f"wrote {stats['output']} ({stats['bytes'] / 2**20:.1f} MiB): read {stats['load_seconds']:.1f}s, "
    f"save {stats['save_seconds']:.1f}s"
    + (f", verified restore {stats['restore_seconds']:.1f}s" if "restore_seconds" in stats else "")
  )


if __name__ == "__main__":
  app.run(main)
