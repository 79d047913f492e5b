"""SmolLM3's chat format in plain Python, for checkpoints that ship no chat template.

It produces the same string as the official SmolLM3-3B jinja template (checked in
tests/test_tokenizer.py against that template rendered the way ``transformers`` renders it):

- a system turn with a metadata block (knowledge cutoff, today's date as "%d %B %Y", reasoning mode)
  and "## Custom Instructions" (the user's system text or a default that depends on the mode);
- "/think" / "/no_think" in the system text override ``enable_thinking`` and are removed from it;
- "/system_override" replaces the whole system turn by the bare system text;
- without tools the system turn is left unclosed (no <|im_end|>): a quirk of the official template;
- past assistant turns in no-think mode get an empty "<think>\\n\\n</think>\\n" prefix;
- tool messages are rendered as user turns; system messages after the first one are dropped.

Imports nothing from the package.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Mapping, Sequence

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
EMPTY_THINK = "<think>\n\n</think>\n"
THINK_FLAG = "/think"
NO_THINK_FLAG = "/no_think"
SYSTEM_OVERRIDE_FLAG = "/system_override"
KNOWLEDGE_CUTOFF = "June 2025"
DATE_FORMAT = "%d %B %Y"

DEFAULT_SYSTEM_THINK = (
  "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Your role as an assistant "
  "involves thoroughly exploring questions through a systematic thinking process before providing the "
  "final precise and accurate solutions. This requires engaging in a comprehensive cycle of analysis, "
  "summarizing, exploration, reassessment, reflection, backtracking, and iteration to develop "
  "well-considered thinking process. Please structure your response into two main sections: Thought and "
  "Solution using the specified format: <think> Thought section </think> Solution section. In the Thought "
  "section, detail your reasoning process in steps. Each step should include detailed considerations such "
  "as analysing questions, summarizing relevant findings, brainstorming new ideas, verifying the accuracy "
  "of the current steps, refining any errors, and revisiting previous steps. In the Solution section, based "
  "on various attempts, explorations, and reflections from the Thought section, systematically present the "
  "final solution that you deem correct. The Solution section should be logical, accurate, and concise and "
  "detail necessary steps needed to reach the conclusion."
)
DEFAULT_SYSTEM_NO_THINK = "You are a helpful AI assistant named SmolLM, trained by Hugging Face."

XML_TOOLS_HEADER = (
  "You may call one or more functions to assist with the user query.\n"
  "You are provided with function signatures within <tools></tools> XML tags:\n\n<tools>\n"
)
XML_TOOLS_FOOTER = (
  "</tools>\n\nFor each function call, return a json object with function name and arguments within "
  "<tool_call></tool_call> XML tags:\n<tool_call>\n"
  "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
)
PYTHON_TOOLS_HEADER = (
  "When you send a message containing Python code between '<code>' and '</code>' tags, it will be "
  "executed in a stateful Jupyter notebook environment, and you will then be given the output to "
  "continued reasoning in an agentic loop.\n\n"
  "You can use the following tools in your python code like regular functions:\n<tools>\n"
)
PYTHON_TOOLS_FOOTER = (
  "</tools>\n\nThe state persists between code executions: so variables that you define in one step "
  "are still available thereafter."
)


# The date every chat template sees when no ``date=`` is passed (ISO "YYYY-MM-DD"), instead of the
# clock: tests pin it, so a rendered prompt (and what the model writes) never depends on the day.
DATE_ENV = "SMOLLM3_JAX_CHAT_DATE"

DateLike = datetime.date | str | None  # a datetime.datetime is a date too


def resolve_date(date: DateLike = None) -> datetime.datetime:
  """The moment a chat template's ``strftime_now`` sees.

  ``date``: a ``datetime.datetime`` (used as is), a ``datetime.date`` or an ISO string "YYYY-MM-DD"
  (midnight of that day), or None: ``$SMOLLM3_JAX_CHAT_DATE`` when set, else now (local time, as
  ``transformers`` renders templates). ValueError names a malformed date.
  """
  if date is None:
    date = os.environ.get(DATE_ENV) or None
    if date is None:
      return datetime.datetime.now()
  if isinstance(date, datetime.datetime):
    return date
  if isinstance(date, datetime.date):
    return datetime.datetime(date.year, date.month, date.day)
  if isinstance(date, str):
    try:
      day = datetime.date.fromisoformat(date.strip())
    except ValueError:
      raise ValueError(f"date must be an ISO date 'YYYY-MM-DD', got {date!r}") from None
    return datetime.datetime(day.year, day.month, day.day)
  raise ValueError(f"date must be a datetime.date, a datetime.datetime or 'YYYY-MM-DD', got {type(date).__name__}")


def iso_date(date: DateLike = None) -> str:
  """``date`` (see :func:`resolve_date`) as "YYYY-MM-DD": what a sweep stores to render alike later."""
  return resolve_date(date).date().isoformat()


def today_string(now: DateLike = None) -> str:
  """The date the way the template writes it ("%d %B %Y"), e.g. "05 March 2026"; ``now`` as
  :func:`resolve_date` takes it (None: the pinned date or today)."""
  return resolve_date(now).strftime(DATE_FORMAT)


def _tool_list(name: str, tools: Any) -> list:
  if not tools:
    return []
  if not isinstance(tools, (list, tuple)):
    raise ValueError(f"{name} must be a list of tool descriptions, got {type(tools).__name__}")
  return list(tools)


def _message_text(message: Mapping[str, Any]) -> str:
  # The template renders non-string content (e.g. a list of content blocks) as "".
  content = message.get("content")
  return content if isinstance(content, str) else ""


def format_smollm3_chat(
  messages: Sequence[Mapping[str, Any]],
  add_generation_prompt: bool = False,
  enable_thinking: bool = True,
  xml_tools: Sequence[Any] | None = None,
  python_tools: Sequence[Any] | None = None,
  today: str | None = None,
  date: DateLike = None,
) -> str:
  """Renders ``messages`` (dicts with "role" and "content") as a SmolLM3 prompt string.

  ``today`` is the date string for the metadata block (default: ``today_string(date)``). Tools are written
  with ``str(tool)``, as the template's ``string`` filter does.
  """
  if not messages:
    raise ValueError("messages must hold at least one message")
  for i, message in enumerate(messages):
    if not isinstance(message, Mapping) or "role" not in message:
      raise ValueError(f"messages[{i}] must be a dict with a 'role' key, got {message!r}")
  xml_tools = _tool_list("xml_tools", xml_tools)
  python_tools = _tool_list("python_tools", python_tools)

  thinking = bool(enable_thinking)
  system_text = None
  if messages[0]["role"] == "system":
    system_text = messages[0].get("content")
    if not isinstance(system_text, str):
      raise ValueError("messages[0]['content'] (the system message) must be a string")
    # "/no_think" wins when both flags are present.
    if NO_THINK_FLAG in system_text:
      thinking = False
    elif THINK_FLAG in system_text:
      thinking = True
  mode = THINK_FLAG if thinking else NO_THINK_FLAG

  parts = [f"{IM_START}system\n"]
  if system_text is not None:
    instructions = system_text.replace(NO_THINK_FLAG, "").replace(THINK_FLAG, "").rstrip()
  else:
    instructions = ""
  if system_text is not None and SYSTEM_OVERRIDE_FLAG in system_text:
    parts.append(instructions.replace(SYSTEM_OVERRIDE_FLAG, "").rstrip() + f"{IM_END}\n")
  else:
    parts.append("## Metadata\n\n")
    parts.append(f"Knowledge Cutoff Date: {KNOWLEDGE_CUTOFF}\n")
    parts.append(f"Today Date: {today if today is not None else today_string(date)}\n")
    parts.append(f"Reasoning Mode: {mode}\n\n")
    parts.append("## Custom Instructions\n\n")
    if instructions:
      parts.append(instructions + "\n\n")
    else:
      parts.append((DEFAULT_SYSTEM_THINK if thinking else DEFAULT_SYSTEM_NO_THINK) + "\n\n")
    if xml_tools or python_tools:
      parts.append("### Tools\n\n")
      if xml_tools:
        parts.append(XML_TOOLS_HEADER + "".join(f"{t}\n" for t in xml_tools) + XML_TOOLS_FOOTER)
      if python_tools:
        parts.append(PYTHON_TOOLS_HEADER + "".join(f"{t}\n" for t in python_tools) + PYTHON_TOOLS_FOOTER)
      parts.append(f"\n\n{IM_END}\n")
    # Without tools the system turn stays open: the official template's quirk, kept on purpose.

  for message in messages:
    role = message["role"]
    content = _message_text(message)
    if role in ("user", "tool"):
      parts.append(f"{IM_START}user\n{content}{IM_END}\n")
    elif role == "assistant":
      prefix = "" if thinking else EMPTY_THINK
      parts.append(f"{IM_START}assistant\n{prefix}{content.lstrip(chr(10))}{IM_END}\n")
    # Other roles (the leading system message included) are not rendered in the loop.

  if add_generation_prompt:
    parts.append(f"{IM_START}assistant\n" + ("" if thinking else EMPTY_THINK))
  return "".join(parts)
