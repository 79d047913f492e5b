"""Converting any checkpoint the loader reads (Hugging Face dir / hub id, GGUF, "demo") to an Orbax directory.

  from smollm3_jax.checkpoints.convert import convert
  convert("HuggingFaceTB/SmolLM3-3B", "/data/smollm3-3b-orbax", dtype="bfloat16",
          tokenizer=smollm3_jax.Tokenizer.from_pretrained("HuggingFaceTB/SmolLM3-3B"))

The output holds the parameters (Orbax, in ``dtype``), config.json and, when a tokenizer is given, its
files; ``smollm3_jax.from_pretrained(output, mesh=...)`` restores it straight into the target shardings.
``experiments/convert.py`` is the command-line form. Conversion runs on the host CPU, one tensor at a
time on the read side.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from flax import nnx

from smollm3_jax.checkpoints import from_pretrained
from smollm3_jax.checkpoints import orbax as orbax_ckpt

__all__ = ["convert"]


def convert(
  checkpoint: str, output: str, *, dtype: str = "bfloat16", overwrite: bool = False, tokenizer=None, verify: bool = True
) -> dict:
  """Converts ``checkpoint`` to an Orbax directory; returns timings (seconds) and sizes.

  tokenizer: saved next to the weights (anything with ``save_pretrained``, e.g. ``Tokenizer.from_pretrained
  (checkpoint)``; passed in, since the tokenizer sits above this layer); None: weights and config only.
  verify: restore the result and check every parameter equals the converted one.
  """
  output = os.path.abspath(output)
  if os.path.exists(output) and os.listdir(output) and not overwrite:
    raise FileExistsError(f"output {output!r} exists and is not empty (pass overwrite=True)")
  cpu = jax.devices("cpu")[0]
  t0 = time.perf_counter()
  # Keep the weights on the host CPU: conversion must not need accelerator memory.
  model = from_pretrained(checkpoint, dtype=dtype, place=lambda path, host: jax.device_put(host, cpu))
  t1 = time.perf_counter()
  orbax_ckpt.save(output, model, tokenizer=tokenizer, source=str(checkpoint), overwrite=overwrite)
  t2 = time.perf_counter()
  stats = dict(
    load_seconds=t1 - t0,
    save_seconds=t2 - t1,
    output=output,
    bytes=sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(output) for f in fs),
  )
  if verify:
    restored = orbax_ckpt.restore(output, dtype=dtype)
    stats["restore_seconds"] = time.perf_counter() - t2
    a = nnx.to_flat_state(nnx.state(model, nnx.Param))
    b = dict(nnx.to_flat_state(nnx.state(restored, nnx.Param)))
    for path, var in a:
      if not np.array_equal(np.asarray(var.get_value()), np.asarray(b[path].get_value())):
        raise RuntimeError(f"verification failed: parameter {path} differs after restore")
  return stats
