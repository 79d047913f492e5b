"""absl flags shared by the experiment scripts."""

from __future__ import annotations

from absl import flags

SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _validator(name: str):
  def check(value) -> bool:
    from smollm3_jax import sampling
    try:
      sampling.validate_sampling_args(**{name: value})
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True
  return check


def define_sampling_flags(*, temperature: float = 0.0, top_p: float = 1.0) -> None:
  """--temperature, --top_k, --top_p, --min_p, --repetition_penalty (transformers' meanings), each
  checked by the sampling module's own rules when the command line is parsed."""
  flags.DEFINE_float("temperature", temperature, "0 = greedy.")
  flags.DEFINE_integer("top_k", 0, "0 = off.")
  flags.DEFINE_float("top_p", top_p, "1 = off.")
  flags.DEFINE_float("min_p", 0.0, "0 = off.")
  flags.DEFINE_float("repetition_penalty", 1.0, "1 = off.")
  for name in SAMPLING_FLAGS:
    flags.register_validator(name, _validator(name))


def define_quantize_flag() -> None:
  """--quantize: "none" or "int8" (int8 weights x int8 activations, see smollm3_jax.quantize)."""
  from smollm3_jax import quantize
  flags.DEFINE_enum("quantize", "none", list(quantize.MODES),
                    "Weight quantization after loading: 'int8' reads 4x fewer weight bytes per "
                    "decode step than float32 (activations quantized per token; see README).")


def sampling_flag_values() -> dict:
  """The sampling flags as keyword arguments."""
  return {name: flags.FLAGS[name].value for name in SAMPLING_FLAGS}
