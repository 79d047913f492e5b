"""The OpenAI chat-completions protocol, as this server speaks it: a request body checked field by
field into a :class:`ChatRequest` (:func:`parse_request`), or a :class:`RequestError` naming the field.

A field the server does not implement is refused with a 400 naming it, unless it is set to the value
that means "off" (``n: 1``, ``logprobs: false``, ...) or is purely informational (``user``,
``metadata``): see :data:`APPLIED_FIELDS`, :data:`INFORMATIONAL_FIELDS`, :data:`NEUTRAL_VALUES`.
Plain Python (no web framework): the app (:mod:`smollm3_jax.serving.server`) turns errors into responses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from typing import Any

from smollm3_jax.generation import sampling
from smollm3_jax.generation.engine import MAX_TOP_LOGPROBS
from smollm3_jax.generation.stop import check_stop
from smollm3_jax.utils.validation import check_messages

# What the API calls each stop reason (finish_reason).
FINISH_REASONS = {
  "eos": "stop",
  "newlines": "stop",
  "max_tokens": "length",
  "context": "length",
  "cancelled": "stop",
  "stop": "stop",
}


class RequestError(Exception):
  """A client error: becomes a 4xx JSON response."""

  def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400):
    super().__init__(message)
    self.message, self.param, self.code, self.status = message, param, code, status


# --------------------------------------------------------------------------------------------
# Request parsing
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChatRequest:
  messages: list[dict]
  thinking: bool
  sampling: dict[str, float]
  max_tokens: int | None
  seed: int
  stream: bool
  include_usage: bool = True  # stream_options.include_usage (a usage record ends the stream)
  n: int = 1  # choices (samples) for this request
  stop: tuple = ()  # stop strings
  logprobs: bool = False  # per-token log-probabilities in the response
  top_logprobs: int = 0  # alternatives per token (with logprobs)


# Request field of each sampling setting (OpenAI's and vLLM's names; min_tokens is vLLM's).
REQUEST_NAMES = {
  name: {"min_new_tokens": "min_tokens"}.get(name, name) for name in sampling.SETTINGS if name != "logit_bias"
}
# Bounds the API puts on settings beyond the library's own checks (OpenAI's ranges).
_API_BOUNDS = {
  "temperature": dict(low=0.0, high=2.0),
  "top_p": dict(low=0.0, high=1.0, low_open=True),
  "top_k": dict(low=-1),
  "min_p": dict(low=0.0, high=1.0),
  "repetition_penalty": dict(low=0.0, high=10.0, low_open=True),
}

# What the server does with each field of a chat-completions request (OpenAI's, as the official
# client sends them, plus vLLM's extras). A null value is the same as leaving the field out.
APPLIED_FIELDS = frozenset(
  {
    "messages",
    "model",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "stream",
    "stream_options",
    "chat_template_kwargs",
    "n",
    "stop",
    "logit_bias",
    "logprobs",
    "top_logprobs",
  }
) | frozenset(REQUEST_NAMES.values())
# Accepted and without effect on the text: labels and hints for a hosted service's bookkeeping.
INFORMATIONAL_FIELDS = frozenset(
  {"user", "metadata", "safety_identifier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options"}
)
# Not implemented: accepted only at the value that means "off" (the same as leaving them out);
# any other value is refused with a 400 naming the field.
NEUTRAL_VALUES: dict[str, tuple] = {
  "tools": ([],),
  "functions": ([],),
  "tool_choice": ("none",),
  "function_call": ("none",),
  "parallel_tool_calls": (),
  "response_format": ({"type": "text"},),
  "store": (False,),
  "modalities": (["text"],),
  "audio": (),
  "prediction": (),
  "reasoning_effort": (),
  "service_tier": (),
  "verbosity": (),
  "web_search_options": (),
  "moderation": (),
}
MAX_N = 16  # choices per request


def _shown(value: Any, limit: int = 80) -> str:
  """``value`` as JSON for an error message, cut to about ``limit`` characters (a client may send megabytes)."""
  try:
    text = json.dumps(value)
  except (TypeError, ValueError, RecursionError):
    text = type(value).__name__
  return text if len(text) <= limit else text[:limit] + "..."


def _name(key: str, limit: int = 80) -> str:
  """A field name for an error message and ``param``, cut to ``limit`` characters."""
  return key if len(key) <= limit else key[:limit] + "..."


def _clip(message: str, limit: int = 300) -> str:
  """A library's error message, cut for a response (its repr of a huge value would be echoed whole)."""
  return message if len(message) <= limit else message[:limit] + "..."


def _lone_surrogate(body: Any) -> tuple[str, bool] | None:
  """(path, is a key) of the first string or key of ``body`` holding a lone surrogate (JSON's unpaired
  ``\\ud800``-``\\udfff`` escapes; path e.g. ``messages[0].content``), else None. Such text is not
  Unicode: encoding it later (the tokenizer, a response or log line echoing it) would fail."""
  escaped = lambda k: k.encode("utf-8", "backslashreplace").decode("utf-8")
  bad = lambda s: not s.isascii() and not _encodes(s)
  stack = [(body, "")]  # (an explicit stack: a deeply nested body must not exhaust the recursion limit)
  while stack:
    value, path = stack.pop()
    if isinstance(value, str):
      if bad(value):
        return path, False
    elif isinstance(value, dict):
      items = []
      for key, item in value.items():
        at = f"{path}.{escaped(key)}" if path else escaped(key)
        if bad(key):
          return at, True
        items.append((item, at))
      stack.extend(reversed(items))
    elif isinstance(value, list):
      stack.extend(reversed([(item, f"{path}[{i}]") for i, item in enumerate(value)]))
  return None


def _encodes(text: str) -> bool:
  try:
    text.encode("utf-8")
    return True
  except UnicodeEncodeError:
    return False


def _number(body: dict, name: str, default, *, low=None, high=None, low_open=False, integer=False):
  value = body.get(name)
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RequestError(f"'{name}' must be {'an integer' if integer else 'a number'}, got {_shown(value)}", param=name)
  if isinstance(value, float):  # (a JSON integer stays a Python int of any size: never float() it)
    if not math.isfinite(value):
      raise RequestError(f"'{name}' must be finite", param=name)
    if integer and not value.is_integer():
      raise RequestError(f"'{name}' must be an integer, got {value}", param=name)
  if low is not None and (value <= low if low_open else value < low):
    raise RequestError(f"'{name}' must be {'>' if low_open else '>='} {low}, got {value}", param=name)
  if high is not None and value > high:
    raise RequestError(f"'{name}' must be <= {high}, got {value}", param=name)
  if isinstance(value, int) and not _fits_float(value):  # (the settings' checks convert to float64)
    raise RequestError(f"'{name}' is out of range (a number of {len(str(value))} digits)", param=name)
  return int(value) if integer else value


def _fits_float(value: int) -> bool:
  try:
    float(value)
    return True
  except OverflowError:
    return False


def _same(value: Any, off: Any) -> bool:
  """JSON equality that keeps booleans apart from numbers (0 == false in Python, not in JSON)."""
  if isinstance(off, bool) or isinstance(value, bool):
    return value is off
  return value == off


def _check_fields(body: dict) -> None:
  """Refuses every field the server would otherwise ignore (unknown, or not implemented and not off)."""
  for name, value in body.items():
    if value is None or name in APPLIED_FIELDS or name in INFORMATIONAL_FIELDS:
      continue
    if name not in NEUTRAL_VALUES:
      raise RequestError(f"unknown field '{_name(name)}': this server does not implement it", param=_name(name))
    if not any(_same(value, off) for off in NEUTRAL_VALUES[name]):
      raise RequestError(f"'{name}' is not supported by this server", param=name)


def _object(body: dict, name: str, keys: dict) -> dict:
  """An optional object field whose keys must all be known (``keys``: key -> its check)."""
  value = body.get(name)
  if value is None:
    return {}
  if not isinstance(value, dict):
    raise RequestError(f"'{name}' must be an object", param=name)
  for key, item in value.items():
    if key not in keys:
      raise RequestError(
        f"'{name}.{_name(key)}' is not supported by this server (known: {', '.join(keys)})",
        param=f"{name}.{_name(key)}",
      )
    if item is not None and not keys[key](item):
      raise RequestError(f"'{name}.{key}' must be true or false", param=f"{name}.{key}")
  return {k: v for k, v in value.items() if v is not None}


def parse_request(
  body: Any, defaults: dict, model_name: str | None = None, vocab_size: int | None = None
) -> ChatRequest:
  """Validates a chat-completions body (before any work); RequestError names the bad field.
  ``defaults``: the values of unset settings; ``model_name``: the one model served (another
  ``model`` gets a 404); ``vocab_size``: bounds ``logit_bias`` ids."""
  if not isinstance(body, dict):
    raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
  found = _lone_surrogate(body)
  if found is not None:
    path, is_key = found
    raise RequestError(
      f"{'the field name ' if is_key else ''}'{path}' holds a lone surrogate (an unpaired "
      "\\ud800-\\udfff escape): it is not Unicode text; send valid UTF-8",
      param=path,
    )
  if "messages" not in body:
    raise RequestError("'messages' is required", param="messages")
  try:
    messages = check_messages(body["messages"])
  except ValueError as e:
    raise RequestError(_clip(str(e)), param="messages") from None
  _check_fields(body)
  model = body.get("model")
  if model is not None and not isinstance(model, str):
    raise RequestError(f"'model' must be a string, got {_shown(model)}", param="model")
  if model is not None and model_name is not None and model != model_name:
    raise RequestError(
      f"the model {_shown(model)} does not exist; this server serves {json.dumps(model_name)}",
      param="model",
      code="model_not_found",
      status=404,
    )

  stream = body.get("stream", False)
  if stream is None:
    stream = False
  if not isinstance(stream, bool):
    raise RequestError("'stream' must be true or false", param="stream")
  is_bool = lambda v: isinstance(v, bool)
  options = _object(body, "stream_options", {"include_usage": is_bool})
  if options and not stream:
    raise RequestError("'stream_options' is only allowed with 'stream': true", param="stream_options")
  kwargs = _object(body, "chat_template_kwargs", {"enable_thinking": is_bool})
  thinking = kwargs.get("enable_thinking", defaults["thinking"])

  settings = {}
  for name, field in REQUEST_NAMES.items():
    spec = sampling.SETTINGS[name]
    value = _number(body, field, defaults.get(name, spec.off), integer=spec.integer, **_API_BOUNDS.get(name, {}))
    if name == "top_k":
      value = max(value, 0)  # vLLM's -1 means off, as our 0 does
    try:
      sampling.validate_sampling_args(**{name: value})
    except ValueError as e:
      raise RequestError(str(e), param=field) from None
    if name in defaults or value != spec.off:
      settings[name] = value
  bias = body.get("logit_bias")
  if bias is not None and not isinstance(bias, dict):  # ([], 0 or "" are no "off": refused, not ignored)
    raise RequestError("'logit_bias' must be an object mapping token ids to biases", param="logit_bias")
  if bias:
    parsed = {}
    for key, value in bias.items():
      try:
        token = int(key)
      except ValueError:
        raise RequestError(f"'logit_bias' keys must be token ids, got {_shown(key)}", param="logit_bias") from None
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
        raise RequestError(
          f"'logit_bias' values must be numbers in [-100, 100], got {_shown(value)}", param="logit_bias"
        )
      parsed[token] = float(value)
    try:
      sampling.validate_sampling_args(logit_bias=parsed, vocab_size=vocab_size)
    except ValueError as e:
      raise RequestError(str(e), param="logit_bias") from None
    settings["logit_bias"] = parsed
  n = _number(body, "n", 1, low=1, high=MAX_N, integer=True)
  logprobs = body.get("logprobs")
  if logprobs is not None and not isinstance(logprobs, bool):
    raise RequestError(f"'logprobs' must be true or false, got {_shown(logprobs)}", param="logprobs")
  top_logprobs = _number(body, "top_logprobs", 0, low=0, high=MAX_TOP_LOGPROBS, integer=True)
  if top_logprobs and not logprobs:
    raise RequestError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
  stop = body.get("stop")
  try:
    stop = check_stop(stop if stop != "" else None)
  except ValueError as e:
    raise RequestError(_clip(str(e)), param="stop") from None

  max_tokens = _number(body, "max_tokens", None, low=1, integer=True)
  max_completion = _number(body, "max_completion_tokens", None, low=1, integer=True)
  if max_tokens is not None and max_completion is not None and max_tokens != max_completion:
    raise RequestError(
      f"'max_tokens' ({max_tokens}) and 'max_completion_tokens' ({max_completion}) differ; send one of them",
      param="max_completion_tokens",
    )
  max_tokens = max_completion if max_completion is not None else max_tokens
  seed = _number(body, "seed", None, low=0, high=2**32 - 1, integer=True)
  if seed is None:
    seed = defaults["seed"] if defaults["seed"] is not None else secrets.randbits(32)
  return ChatRequest(
    messages=messages,
    thinking=thinking,
    sampling=settings,
    max_tokens=max_tokens,
    seed=seed,
    stream=stream,
    include_usage=options.get("include_usage", True),
    n=n,
    stop=stop,
    logprobs=bool(logprobs),
    top_logprobs=top_logprobs,
  )
