"""Thinking text: the tag pair, the split of a completion into (thinking, answer), and the streaming
splitter and filter that the stream, the chat and the server use. The one home of these rules.

The rule, as SmolLM3's template and reasoning parsers (vLLM's, transformers' chat parsing) read a
completion: the first ``<think>...</think>`` block is the thinking and everything else is the
answer, both stripped; an unclosed block is thinking to the end. A completion *starts* inside a
block only when its prompt opened one (``inside=True``; :func:`prompt_opens_thinking`): then the
text up to the first ``</think>`` is thinking. Otherwise a lone ``</think>`` (no ``<think>`` before
it) is ordinary answer text. SmolLM3's own prompts never open a block (thinking mode lets the model
write ``<think>``; no-think mode closes an empty block in the prompt), so there a lone close tag is
text. The streaming splitter gives exactly the whole-text split, however the text is cut into pieces,
because the rule never needs text that has not arrived yet.

Imports nothing from the package.
"""

from __future__ import annotations

THINK_START = "<think>"
THINK_END = "</think>"

__all__ = [
  "THINK_START",
  "THINK_END",
  "ThinkingSplitter",
  "VisibleText",
  "has_closed_thinking",
  "prompt_opens_thinking",
  "split_thinking",
]


def prompt_opens_thinking(prompt_text: str) -> bool:
  """Whether a rendered prompt ends inside an open <think> block (the completion starts thinking)."""
  return prompt_text.rstrip().endswith(THINK_START)


def has_closed_thinking(text: str, inside: bool = False) -> bool:
  """Whether a completion closed its thinking block, by the module's rule (a lone ``</think>``
  closes one only when the prompt opened it: ``inside``)."""
  splitter = ThinkingSplitter(inside)
  splitter.feed(text)
  return splitter.closed


class _Stripper:
  """Streams text with leading and trailing whitespace removed (trailing space is held back)."""

  def __init__(self):
    self.started = False
    self.pending = ""

  def push(self, text: str) -> str:
    if not self.started:
      text = text.lstrip()
      if not text:
        return ""
      self.started = True
    text = self.pending + text
    body = text.rstrip()
    self.pending = text[len(body) :]
    return body


class ThinkingSplitter:
  """Splits streamed completion text into ("thinking", text) and ("answer", text) pieces.

  The concatenated pieces of each kind equal :func:`split_thinking` of the whole text (the module's
  rule), for any cut into pieces. ``inside=True`` when the prompt opened the block. A tag split
  across pieces is held back until it is complete.
  """

  def __init__(self, inside: bool = False):
    self._state = "inside" if inside else "before"  # before -> inside -> after
    self._buffer = ""
    self._strip = {"thinking": _Stripper(), "answer": _Stripper()}

  def _emit(self, kind: str, text: str, out: list):
    text = self._strip[kind].push(text)
    if text:
      out.append((kind, text))

  def feed(self, text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    self._buffer += text
    while self._buffer:
      if self._state == "after":
        self._emit("answer", self._buffer, out)
        self._buffer = ""
        break
      tag = THINK_START if self._state == "before" else THINK_END
      kind = "answer" if self._state == "before" else "thinking"
      i = self._buffer.find(tag)
      if i >= 0:
        self._emit(kind, self._buffer[:i], out)
        self._buffer = self._buffer[i + len(tag) :]
        self._state = "inside" if self._state == "before" else "after"
        continue
      # Hold back a suffix that may be the start of the tag.
      keep = max((k for k in range(1, len(tag)) if self._buffer.endswith(tag[:k])), default=0)
      self._emit(kind, self._buffer[: len(self._buffer) - keep], out)
      self._buffer = self._buffer[len(self._buffer) - keep :]
      break
    return out

  @property
  def closed(self) -> bool:
    """Whether the thinking block has been closed by the text fed so far."""
    return self._state == "after"

  def finish(self) -> list[tuple[str, str]]:
    """The held-back text (a partial tag is just text); trailing whitespace is dropped."""
    out: list[tuple[str, str]] = []
    if self._buffer:
      self._emit("thinking" if self._state == "inside" else "answer", self._buffer, out)
      self._buffer = ""
    return out

  @classmethod
  def split(cls, text: str, inside: bool = False) -> tuple[str, str]:
    """(thinking, answer) of a whole text, exactly as streaming it would give."""
    parts = {"thinking": [], "answer": []}
    splitter = cls(inside)
    for kind, piece in splitter.feed(text) + splitter.finish():
      parts[kind].append(piece)
    return "".join(parts["thinking"]), "".join(parts["answer"])


def split_thinking(text: str, inside: bool = False) -> tuple[str, str]:
  """``(thinking, answer)`` of a whole completion, both stripped (the module's rule).

  "<think>a</think>b" -> ("a", "b"); an unclosed "<think>a" -> ("a", ""); no tags -> ("", text);
  "a</think>b" -> ("", "a</think>b"), or ("a", "b") with ``inside=True`` (the prompt opened it).
  """
  return ThinkingSplitter.split(text, inside)


class VisibleText:
  """A stream filter: with ``hide``, only the answer is passed on (the thinking never is), and the
  pieces concatenate to :func:`split_thinking`'s answer; without, text passes unchanged."""

  def __init__(self, hide: bool, inside: bool = False):
    self.hide = hide
    self._splitter = ThinkingSplitter(inside) if hide else None

  def feed(self, text: str, final: bool = False) -> str:
    if self._splitter is None:
      return text
    parts = self._splitter.feed(text) + (self._splitter.finish() if final else [])
    return "".join(piece for kind, piece in parts if kind == "answer")
