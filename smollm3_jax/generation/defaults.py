"""Generation defaults: what an unset sampling argument means, for one checkpoint.

``generate``, ``stream``, the terminal chat, the server and the scripts fill every setting the caller
leaves unset (``None``) from :func:`for_tokenizer`, so they all agree:

* a checkpoint with a ``generation_config.json`` (SmolLM3-3B, any Hugging Face directory): its
  ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty`` and
  ``max_new_tokens``, read with ``transformers``' meaning: fields it leaves out take
  ``GenerationConfig``'s library defaults, ``do_sample`` false (the default) is greedy whatever the
  temperature says, and sampling without a ``top_k`` keeps ``transformers``' ``top_k=50``;
* a checkpoint without one (a ``.gguf`` such as the demo): the :data:`TABLE` below;
* no checkpoint (no tokenizer, token-id prompts on a bare model, or a tokenizer that names no
  checkpoint): ``transformers``' library defaults, i.e. greedy with no penalty, so such research runs
  stay plain argmax unless asked otherwise.

``max_new_tokens`` is the file's when it sets one, else :data:`MAX_NEW_TOKENS` (``transformers``'
own fallback, ``max_length=20`` for prompt and answer together, is no budget for a chat). Other fields
of the file (``max_length``, ``num_beams``, ...) are not read. Thinking mode defaults to
:data:`THINKING` everywhere: on, as SmolLM3's chat template itself defaults ``enable_thinking``.

Imports from the package only :mod:`smollm3_jax.utils.validation` and :mod:`smollm3_jax.generation.sampling`, inside
the functions that need them (no module-level dependency; generate, chat and server import this).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Mapping

from smollm3_jax.generation import sampling
from smollm3_jax.utils import validation

GENERATION_CONFIG_FILE = "generation_config.json"
FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens")
SAMPLING_FIELDS = FIELDS[:-1]
THINKING = True  # the chat template's default (SmolLM3: enable_thinking defaults to true)
MAX_NEW_TOKENS = 512  # token budget when the checkpoint names none

# transformers' GenerationConfig._get_default_generation_params() for the fields read here.
TRANSFORMERS_DEFAULTS = dict(do_sample=False, temperature=1.0, top_k=50, top_p=1.0, min_p=None, repetition_penalty=1.0)

# The neutral settings: plain argmax, no filter, no penalty (what a tokenizer-less call gets).
GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0)

# Defaults for checkpoints without a generation_config.json (the demo GGUF, SmolLM2-135M-Instruct):
# field -> (value, why). Measured on the demo, 12 answers of 256 tokens each (4 prompts x 3 seeds).
TABLE: dict[str, tuple[Any, str]] = {
  "temperature": (0.6, "SmolLM3-3B's model card recommends it (the demo is its small sibling)"),
  "top_p": (0.95, "the same model card's recommendation; cuts the long tail of the 49k vocabulary"),
  "top_k": (0, "off: top_p already bounds the candidates"),
  "min_p": (0.0, "off"),
  "repetition_penalty": (
    1.1,
    "the demo loops without it: at 0.6 / 0.95 and no penalty 4 of 12 answers "
    "repeated 26-64 % of their word 4-grams until the budget; at 1.1 none did (<= 1 %), "
    "and 7 of 12 ended by themselves (1.2: 4 of 12)",
  ),
  "max_new_tokens": (
    MAX_NEW_TOKENS,
    "enough for a chat answer; a loop that slips through stops within "
    "~40 s on 2 CPU cores (the chat decodes the demo at ~14 tokens/s)",
  ),
}


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
  """The settings an unset argument takes, and where they came from (``source``: the path of the
  generation_config.json, "table" or "transformers")."""

  temperature: float
  top_k: int
  top_p: float
  min_p: float
  repetition_penalty: float
  max_new_tokens: int
  thinking: bool = THINKING
  source: str = "table"

  def as_dict(self) -> dict[str, Any]:
    """The sampling settings and ``max_new_tokens`` (keyword arguments of ``generate``)."""
    return {name: getattr(self, name) for name in FIELDS}

  def fill(self, **given: Any) -> dict[str, Any]:
    """``given`` (any of :data:`FIELDS` and ``thinking``) with each None replaced by the default."""
    unknown = set(given) - set(FIELDS) - {"thinking"}
    if unknown:
      raise TypeError(f"unknown generation setting(s): {', '.join(sorted(unknown))}")
    return {name: getattr(self, name) if value is None else value for name, value in given.items()}


def table_defaults() -> GenerationDefaults:
  """The :data:`TABLE` (checkpoints without a generation_config.json)."""
  return GenerationDefaults(**{name: value for name, (value, _) in TABLE.items()}, source="table")


def transformers_defaults() -> GenerationDefaults:
  """``transformers``' library defaults: greedy, no penalty (a call without a tokenizer)."""
  return GenerationDefaults(**GREEDY, max_new_tokens=MAX_NEW_TOKENS, source="transformers")


def from_generation_config(config: Mapping[str, Any], source: str = "generation_config.json") -> GenerationDefaults:
  """Defaults from a generation_config.json's fields, with ``transformers``' meaning (module doc).
  ValueError names the file and field when a value could not be used."""
  if not isinstance(config, Mapping):
    raise ValueError(f"{source}: expected a JSON object, got {type(config).__name__}")

  def get(name):
    value = config.get(name)
    return TRANSFORMERS_DEFAULTS[name] if value is None else value

  def number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ValueError(f"{source}: {name} must be a number, got {value!r}")
    return value

  do_sample = get("do_sample")
  if not isinstance(do_sample, bool):
    raise ValueError(f"{source}: do_sample must be true or false, got {do_sample!r}")
  penalty = number("repetition_penalty", get("repetition_penalty"))
  if do_sample:
    temperature = number("temperature", get("temperature"))
    if temperature <= 0:  # transformers refuses to sample at temperature 0 as well
      raise ValueError(f"{source}: do_sample is true but temperature is {temperature}; it must be > 0")
    settings = dict(
      temperature=temperature,
      top_k=number("top_k", get("top_k")),
      top_p=number("top_p", get("top_p")),
      min_p=number("min_p", get("min_p") or 0.0),
    )
  else:  # greedy: transformers ignores the sampling fields
    settings = {k: v for k, v in GREEDY.items() if k != "repetition_penalty"}
  max_new = config.get("max_new_tokens")
  max_new = MAX_NEW_TOKENS if max_new is None else validation.as_count(f"{source}: max_new_tokens", max_new, low=1)
  defaults = GenerationDefaults(**settings, repetition_penalty=penalty, max_new_tokens=max_new, source=source)
  try:
    sampling.validate_sampling_args(**{k: getattr(defaults, k) for k in SAMPLING_FIELDS})
  except ValueError as e:
    raise ValueError(f"{source}: {e}") from None
  return defaults


@functools.lru_cache(maxsize=32)
def _read(path: str, mtime_ns: int) -> GenerationDefaults:
  try:
    with open(path, encoding="utf-8") as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"could not read the checkpoint's {path}: {e}") from None
  return from_generation_config(config, source=path)


def generation_config_path(checkpoint: str | os.PathLike | None) -> str | None:
  """The generation_config.json of a checkpoint directory, a hub id (from the local Hugging Face
  cache only; nothing is downloaded) or None (a .gguf file, "demo", no such file)."""
  if checkpoint is None:
    return None
  path = os.fspath(checkpoint)
  if os.path.isdir(path):
    candidate = os.path.join(path, GENERATION_CONFIG_FILE)
    return candidate if os.path.isfile(candidate) else None
  if os.path.exists(path) or path.count("/") != 1:
    return None  # a file (GGUF), "demo", or not a hub id
  try:
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(path, GENERATION_CONFIG_FILE)
  except Exception:  # noqa: BLE001  (not a valid repo id, no cache: no file)
    return None
  return cached if isinstance(cached, str) else None


def for_checkpoint(checkpoint: str | os.PathLike | None) -> GenerationDefaults:
  """The defaults of a checkpoint (directory, hub id, .gguf or "demo"): its generation_config.json
  when it has one, else the :data:`TABLE`; no checkpoint (None): ``transformers``' library defaults."""
  if checkpoint is None:
    return transformers_defaults()
  path = generation_config_path(checkpoint)
  if path is None:
    return table_defaults()
  return _read(path, os.stat(path).st_mtime_ns)


def for_tokenizer(tokenizer) -> GenerationDefaults:
  """The defaults for generating with ``tokenizer``: its checkpoint's (``tokenizer.directory`` when
  the tokenizer knows the folder its files came from, else ``tokenizer.name_or_path``); without a
  tokenizer, or with one that names no checkpoint, ``transformers``' library defaults (greedy)."""
  if tokenizer is None:
    return transformers_defaults()
  source = getattr(tokenizer, "directory", None) or getattr(tokenizer, "name_or_path", None)
  return for_checkpoint(source)


def describe(defaults: GenerationDefaults) -> str:
  """One line for logs: the settings and their source."""
  values = ", ".join(f"{k}={v}" for k, v in defaults.as_dict().items())
  return f"{values} (from {defaults.source})"
