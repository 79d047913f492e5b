"""Chat templates rendered as ``transformers`` renders them (``apply_chat_template(tokenize=False)``,
``transformers.utils.chat_template_utils``): a sandboxed jinja environment with the same filters and
globals, messages normalised the same way, and ``strftime_now`` pinned to a chosen date.

Imports nothing from the package but :mod:`smollm3_jax.text.chat_format` (the date).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping, Sequence

from smollm3_jax.text import chat_format

__all__ = ["normalize_messages", "render_chat_template"]


@functools.lru_cache(maxsize=16)
def _compile_template(template: str):
  import jinja2
  from jinja2 import nodes
  from jinja2.ext import Extension, loopcontrols
  from jinja2.sandbox import ImmutableSandboxedEnvironment

  class GenerationBlock(Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text; rendering keeps it unchanged."""

    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_render_body"), [], [], body).set_lineno(lineno)

    def _render_body(self, caller):
      return caller()

  class SafeNamespace(jinja2.utils.Namespace):
    # No underscore attributes: keeps templates away from Python internals.
    def __init__(*args, **kwargs):
      self, args = args[0], args[1:]
      attrs = dict(*args, **kwargs)
      for key in attrs:
        SafeNamespace._check(key)
      jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, key, value):
      SafeNamespace._check(key)
      jinja2.utils.Namespace.__setitem__(self, key, value)

    @staticmethod
    def _check(key):
      if isinstance(key, str) and key.startswith("_"):
        raise jinja2.exceptions.SecurityError(
          f"chat templates may not set underscore attributes on a namespace, got {key!r}"
        )

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # Unlike jinja's own filter: no HTML escaping, and json.dumps' options exposed.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  def strftime_now(fmt):  # replaced per render by the pinned date (render_chat_template)
    return chat_format.resolve_date(None).strftime(fmt)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = strftime_now
  env.globals["namespace"] = SafeNamespace
  env.globals["dict"] = lambda *args, **kwargs: dict(*args, **kwargs)
  return env.from_string(template)


def _plain(value: Any) -> Any:
  """A JSON-like copy of template inputs (the template never sees the caller's objects)."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if hasattr(value, "item") and callable(value.item):  # numpy scalars
    return _plain(value.item())
  return f"<{type(value).__name__}>"


_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


def normalize_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
  """Messages as transformers hands them to a template: None values dropped, reasoning aliased."""
  if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
    raise ValueError("messages must be a list of dicts with 'role' and 'content'")
  out = []
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping):
      raise ValueError(f"messages[{i}] must be a dict, got {type(message).__name__}")
    message = {k: _plain(v) for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_KEYS if message.get(k) is not None), None)
    if reasoning is not None:
      message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    out.append(message)
  return out


def render_chat_template(
  template: str,
  messages: Sequence[Mapping[str, Any]],
  add_generation_prompt: bool = False,
  *,
  date=None,
  **variables: Any,
) -> str:
  """Renders a jinja chat template as ``transformers``' ``apply_chat_template(tokenize=False)``.

  ``date`` is what the template's ``strftime_now`` sees (see ``chat_format.resolve_date``: a date,
  "YYYY-MM-DD", or None for ``$SMOLLM3_JAX_CHAT_DATE`` / today).
  """
  compiled = _compile_template(template)
  now = chat_format.resolve_date(date)
  messages = normalize_messages(messages)
  variables = {k: _plain(v) for k, v in variables.items()}
  variables.setdefault("tools", None)
  variables.setdefault("documents", None)
  # A render-time variable shadows the environment's global of the same name.
  return compiled.render(
    messages=messages,
    add_generation_prompt=add_generation_prompt,
    strftime_now=lambda fmt: now.strftime(fmt),
    **variables,
  )
