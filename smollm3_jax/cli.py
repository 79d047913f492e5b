"""absl flags shared by the experiment scripts, and ``run``, their common entry point.

Library modules are imported inside the validators (flag parsing stays cheap); nothing imports this.
"""

from __future__ import annotations

import ast
import logging
import re
import sys

from absl import app, flags

from smollm3_jax.generation import sampling
from smollm3_jax.generation.settings import SETTINGS
from smollm3_jax.generation.stop import MAX_STOP_STRINGS
from smollm3_jax.nn import quantize, sharding
from smollm3_jax.text import chat_format
from smollm3_jax.utils import distributed, runtime

# Libraries whose INFO lines ("Unable to initialize backend 'tpu'", "Resetting cache") are noise on
# every script run; their warnings and errors still show.
QUIET_LOGGERS = ("jax", "jax._src.xla_bridge", "jax._src.compilation_cache", "absl", "orbax", "httpx")


def quiet_logs() -> None:
  """Raises the level of the noisy library loggers to WARNING."""
  for name in QUIET_LOGGERS:
    logging.getLogger(name).setLevel(logging.WARNING)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser (usage errors as absl prints them), with config-override errors (a misspelt
  ``--config.x``: ml_collections raises AttributeError / KeyError) printed as one message and exit
  status 1 instead of a traceback."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    message = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
    while message[:1] in "'\"" and message[:1]:  # ml_collections wraps a KeyError's repr
      try:
        message = str(ast.literal_eval(message))
      except (SyntaxError, ValueError):
        break
    print(f"FATAL Flags parsing error: {message}", file=sys.stderr)
    print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
    sys.exit(1)


def define_compilation_cache_flag() -> None:
  """--compilation_cache (default on): :func:`run` turns on the persistent compilation cache
  before ``main`` when it is set."""
  flags.DEFINE_bool(
    "compilation_cache",
    True,
    "Persistent compilation cache (the second start compiles in a "
    "fraction of the time; directory: $SMOLLM3_JAX_CACHE_DIR or ~/.cache/smollm3_jax/jax).",
  )


def _adopt_shared_flags(flag_values=flags.FLAGS) -> None:
  """Makes every flag defined here (the sampling, dtype, mesh, ... flags) a key flag of the main
  script: absl's ``--help`` lists a module's key flags only, and these are defined in this module."""
  main_module = sys.argv[0]
  for flag in flag_values.flags_by_module_dict().get(__name__, []):
    flag_values.register_key_flag_for_module(main_module, flag)


def run(main) -> None:
  """``absl.app.run(main)`` for the scripts: quiet library logs, clear one-line errors for bad
  config overrides, a multi-process run joined when the script defines its flags
  (:func:`define_distributed_flags`), and the compilation cache when ``--compilation_cache`` is
  defined and set. The shared flags this module defined for the script are its key flags, so
  ``--help`` lists them beside the script's own (absl shows only the main module's otherwise)."""
  quiet_logs()
  _adopt_shared_flags()

  def main_with_cache(argv):
    joined = "coordinator_address" in flags.FLAGS and _join_distributed()  # before anything uses JAX
    if "compilation_cache" in flags.FLAGS and flags.FLAGS.compilation_cache:
      runtime.enable_compilation_cache()
    if not joined:
      return main(argv)

    try:
      return main(argv)
    except app.UsageError:  # raised alike on every process: they exit together
      raise
    except (Exception, KeyboardInterrupt) as e:  # this process alone: stop now, not at the shutdown barrier
      distributed.fail(e)

  app.run(main_with_cache, flags_parser=_parse_flags)


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")  # checkpoint defaults apply
BEAM_FLAGS = ("num_beams", "length_penalty", "early_stopping")
_EARLY_STOPPING = {"false": False, "true": True, "never": "never"}


def parse_logit_bias(value):
  """--logit_bias text "id:bias,id:bias" -> {id: bias} (None / "" -> None); ValueError naming the flag."""
  if value is None or isinstance(value, dict):
    return value
  out = {}
  for item in filter(None, (part.strip() for part in str(value).split(","))):
    tok, sep, bias = item.partition(":")
    try:
      if not sep:
        raise ValueError
      out[int(tok)] = float(bias)
    except ValueError:
      raise ValueError(f"`logit_bias` items must be 'id:bias' (e.g. '50256:-100,13:2.5'), got {item!r}") from None
  return out or None


def _validator(name: str):
  def check(value) -> bool:
    if value is None:  # unset: the checkpoint's default (or off)
      return True
    try:
      if name == "logit_bias":
        value = parse_logit_bias(value)
      if value is not None:
        sampling.validate_sampling_args(**{name: value})
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True

  return check


_UNSET = "unset: the checkpoint's default (see smollm3_jax/generation/defaults.py)"


def define_sampling_flags(flag_values=flags.FLAGS, **defaults) -> None:
  """One flag per setting of ``smollm3_jax.generation.sampling.SETTINGS`` (transformers' / OpenAI's meanings,
  help from the registry), each checked by the sampling module's own rules when the command line is
  parsed, and the beam-search flags --num_beams, --length_penalty, --early_stopping. Unset flags
  (None, unless ``defaults`` names a value) take the checkpoint's generation defaults (the first five)
  or are off. Read them with :func:`sampling_flag_values` and :func:`beam_flag_values`."""
  unknown = set(defaults) - set(SETTINGS) - set(BEAM_FLAGS)
  if unknown:
    raise TypeError(f"define_sampling_flags: unknown flags {sorted(unknown)}")
  for name, setting in SETTINGS.items():
    unset = _UNSET if name in SAMPLING_FLAGS else "unset: off"
    text = f"{setting.help} ({unset}.)"
    if name == "logit_bias":
      flags.DEFINE_string(name, defaults.get(name), f"'id:bias,id:bias' pairs. {text}", flag_values=flag_values)
    elif setting.integer:
      flags.DEFINE_integer(name, defaults.get(name), text, flag_values=flag_values)
    else:
      flags.DEFINE_float(name, defaults.get(name), text, flag_values=flag_values)
    flags.register_validator(name, _validator(name), flag_values=flag_values)
  flags.DEFINE_integer(
    "num_beams",
    defaults.get("num_beams"),
    "Beam search with this many beams (transformers' do_sample=False beam search); unset or 1: no beam search.",
    lower_bound=1,
    flag_values=flag_values,
  )
  flags.DEFINE_float(
    "length_penalty",
    defaults.get("length_penalty", 1.0),
    "Beam search: a finished hypothesis scores sum log-prob / length ** length_penalty (> 0 favours longer ones).",
    flag_values=flag_values,
  )
  flags.DEFINE_enum(
    "early_stopping",
    defaults.get("early_stopping", "false"),
    list(_EARLY_STOPPING),
    "Beam search: 'true' stops when num_beams hypotheses are finished, 'false' uses "
    "transformers' heuristic, 'never' searches on while a better one is possible.",
    flag_values=flag_values,
  )


def sampling_flag_values(flag_values=flags.FLAGS) -> dict:
  """The sampling flags as keyword arguments for ``generate`` / ``SamplingParams.make``: the first
  five always (None: unset, the checkpoint's default), the other settings only when set."""
  out = {name: flag_values[name].value for name in SAMPLING_FLAGS}
  for name in SETTINGS:
    value = flag_values[name].value
    if name == "logit_bias":
      value = parse_logit_bias(value)
    if name not in SAMPLING_FLAGS and value is not None:
      out[name] = value
  return out


def beam_flag_values(flag_values=flags.FLAGS) -> dict:
  """{} unless --num_beams > 1, else the keyword arguments num_beams, length_penalty and
  early_stopping (False / True / "never") of beam search."""
  beams = flag_values["num_beams"].value
  if beams is None or beams <= 1:
    return {}
  return dict(
    num_beams=beams,
    length_penalty=flag_values["length_penalty"].value,
    early_stopping=_EARLY_STOPPING[flag_values["early_stopping"].value],
  )


_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|x[0-9a-fA-F]{2}|[ntr0\\])")


def unescape(value: str) -> str:
  """A flag value with printf-style escapes decoded: ``\\n``, ``\\t``, ``\\r``, ``\\0``,
  ``\\\\``, ``\\xHH``, ``\\uXXXX`` (any other backslash is kept as written)."""
  simple = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\"}
  return _ESCAPE.sub(lambda m: simple.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), value)


def define_stop_flag() -> None:
  """--stop, repeatable: one stop string per flag, escapes decoded (:func:`unescape`), commas kept."""

  def check(values) -> bool:
    parsed = [unescape(v) for v in values or []]
    if len(parsed) > MAX_STOP_STRINGS:
      raise flags.ValidationError(f"--stop: at most {MAX_STOP_STRINGS} stop strings, got {len(parsed)}")
    if any(not v for v in parsed):
      raise flags.ValidationError("--stop: a stop string must not be empty")
    return True

  flags.DEFINE_multi_string(
    "stop",
    [],
    f"A stop string (repeat the flag for more, up to {MAX_STOP_STRINGS}): "
    "a row ends when its text contains one; it is cut from the text. Escapes "
    "\\n \\t \\r \\\\ \\uXXXX are decoded; commas are part of the string.",
  )
  flags.register_validator("stop", check)


def stop_flag_values(flag_values=flags.FLAGS) -> list[str]:
  """The parsed --stop strings (escapes decoded), in the order given."""
  return [unescape(v) for v in flag_values["stop"].value or []]


def define_date_flag() -> None:
  """--date: the day the chat template sees ("YYYY-MM-DD"; unset: $SMOLLM3_JAX_CHAT_DATE, else today)."""

  def check(value) -> bool:
    if value:
      try:
        chat_format.resolve_date(value)
      except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True

  flags.DEFINE_string(
    "date",
    None,
    "The date the chat template writes into the prompt (SmolLM3 does), "
    "'YYYY-MM-DD'; unset: $SMOLLM3_JAX_CHAT_DATE when set, else today. Pin it to "
    "render the same prompt on any day.",
  )
  flags.register_validator("date", check)


def define_mesh_flag() -> None:
  """--mesh: a device mesh spec, checked when the command line is parsed."""

  def check(value) -> bool:
    try:
      sharding.parse_mesh(value)
    except ValueError as e:
      raise flags.ValidationError(str(e)) from None
    return True

  flags.DEFINE_string("mesh", "", "Device mesh, e.g. 'data=2,model=4' ('' = all devices on the data axis).")
  flags.register_validator("mesh", check)


def define_dtype_flag() -> None:
  """--dtype: "auto" (float32 on CPU, bfloat16 on GPU/TPU), "float32" or "bfloat16"."""
  flags.DEFINE_enum(
    "dtype",
    "auto",
    ["auto", "float32", "bfloat16"],
    "Parameter and activation dtype (auto: float32 on CPU, bfloat16 on GPU/TPU).",
  )


def define_quantize_flag() -> None:
  """--quantize: "none" or an int8 scheme (see smollm3_jax.nn.quantize)."""
  flags.DEFINE_enum(
    "quantize",
    "none",
    list(quantize.MODES),
    "Weight quantization after loading: int8 weights read 4x fewer bytes per decode step than "
    "float32. 'int8_w8a8' also quantizes the activations per token, 'int8_weights' does not; 'int8' "
    "is the backend's scheme (W8A8 on CPU, weight-only on TPU/GPU; docs/performance.md measures both).",
  )


def define_distributed_flags() -> None:
  """--coordinator_address, --num_processes, --process_id, --distributed, --heartbeat_seconds: a run
  over several processes (JAX's multi-controller runtime; see smollm3_jax.utils.distributed). :func:`run`
  joins it before ``main``."""
  flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0, for a run over several processes "
    "(one per host); every process gets the same flags but its own --process_id.",
  )
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.", lower_bound=1)
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).", lower_bound=0)
  flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run whose settings JAX detects from the "
    "environment (Cloud TPU pod slices, SLURM), without the three flags above.",
  )
  flags.DEFINE_integer(
    "heartbeat_seconds",
    20,
    "A process silent this long is declared dead and the others stop with an error.",
    lower_bound=1,
  )

  def check(values) -> bool:
    n, i = values["num_processes"], values["process_id"]
    if n is not None and i is not None and i >= n:
      raise flags.ValidationError(f"--process_id={i} must be < --num_processes={n}")
    return True

  flags.register_multi_flags_validator(["num_processes", "process_id"], check)


def _join_distributed() -> bool:

  f = flags.FLAGS
  return distributed.initialize(
    f.coordinator_address, f.num_processes, f.process_id, auto=f.distributed, heartbeat_seconds=f.heartbeat_seconds
  )


def in_multiprocess_run() -> bool:
  """Whether the command line asks for a multi-process run (for checks that only process 0 should do)."""
  f = flags.FLAGS
  return "coordinator_address" in f and (
    f.coordinator_address is not None or f.distributed or (f.num_processes or 1) > 1
  )
