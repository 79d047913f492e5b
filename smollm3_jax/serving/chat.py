"""Multi-turn chat on top of :func:`smollm3_jax.stream`: history, context trimming, thinking split.

    session = ChatSession(model, tokenizer)    # unset settings: the checkpoint's defaults, thinking on
    reply = session.ask("Hello!")
    for kind, text in reply:          # kind: "thinking" | "answer", pieces as they decode
      print(text, end="")
    print(reply.stats)                # tokens, time to first token, tokens/s

``run_terminal(session)`` is the interactive loop behind ``experiments/chat.py`` (/think, /no_think,
/reset, /stats; Ctrl-C stops the current answer). Thinking is split by :mod:`smollm3_jax.text.thinking`.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Sequence, TextIO

from smollm3_jax import checkpoints
from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.generation.api import GenerationStats, stream
from smollm3_jax.generation.engine import get_engine
from smollm3_jax.generation.settings import check_limits
from smollm3_jax.generation.stop import default_stop_ids
from smollm3_jax.loading import load_model_and_tokenizer
from smollm3_jax.text import chat_format
from smollm3_jax.text.prompts import render_chat
from smollm3_jax.text.thinking import ThinkingSplitter, prompt_opens_thinking
from smollm3_jax.utils import validation


# --------------------------------------------------------------------------------------------
# Chat session
# --------------------------------------------------------------------------------------------
class PromptTooLong(ValueError):
  """The newest message alone (with the system prompt) does not fit the context."""


@dataclasses.dataclass
class TurnStats:
  """One reply: the stream's :class:`~smollm3_jax.generation.api.GenerationStats` (tokens, compile, time to
  first token, decode rate; seconds) plus the turn's wall time, stop reason and trimmed turns."""

  generation: GenerationStats
  total_seconds: float = 0.0
  stop_reason: str = ""
  trimmed_turns: int = 0

  prompt_tokens = property(lambda self: self.generation.prompt_tokens)
  generated_tokens = property(lambda self: self.generation.generated_tokens)
  time_to_first_token = property(lambda self: self.generation.time_to_first_token)
  compile_seconds = property(lambda self: self.generation.compile_seconds)
  tokens_per_second = property(
    lambda self: self.generation.decode_tokens_per_second, doc="the decode rate (first token excluded)"
  )

  def describe(self) -> str:
    return (
      f"{self.generated_tokens} tokens (prompt {self.prompt_tokens}), "
      f"time to first token {self.time_to_first_token:.3f} s, {self.tokens_per_second:.1f} tokens/s, "
      f"total {self.total_seconds:.2f} s (compile {self.compile_seconds:.2f} s), "
      f"stop: {self.stop_reason}"
    )


def _turn_starts(history: Sequence[dict]) -> list[int]:
  """Indices in ``history`` where a turn (a user message and what follows it) begins."""
  starts = [i for i, m in enumerate(history) if m["role"] == "user"]
  if not starts or starts[0] != 0:
    starts.insert(0, 0)
  return starts


class ChatSession:
  """A conversation with one model: history, thinking mode and sampling settings.

  Settings left as None take the checkpoint's defaults (:mod:`smollm3_jax.generation.defaults`:
  its generation_config.json, else the documented table; thinking on, the template's default).
  ``context_length`` (default: the model's) bounds prompt + answer; before each turn the oldest turns
  are dropped until the prompt plus ``min(max_new_tokens, context // 2)`` tokens fit.
  ``seed`` is the base seed; turn t samples with ``seed + t``. ``date`` is the day the chat template
  sees (None: today).
  """

  def __init__(
    self,
    model,
    tokenizer,
    *,
    system: str | None = None,
    thinking: bool | None = None,
    context_length: int | None = None,
    max_new_tokens: int | None = None,
    chunk_steps: int = 4,
    seed: int = 0,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    date=None,
  ):

    self.defaults = generation_defaults.for_tokenizer(tokenizer)
    settings = self.defaults.fill(
      temperature=temperature,
      top_k=top_k,
      top_p=top_p,
      min_p=min_p,
      repetition_penalty=repetition_penalty,
      max_new_tokens=max_new_tokens,
      thinking=thinking,
    )
    thinking, max_new_tokens = settings.pop("thinking"), settings.pop("max_new_tokens")
    self.context_length = check_limits(
      model, context_length=context_length, max_new_tokens=max_new_tokens, chunk_steps=chunk_steps, **settings
    )
    if date is not None:
      chat_format.resolve_date(date)  # a malformed date fails here, not at the first turn
    self.model = model
    self.tokenizer = tokenizer
    self.system = system
    self.thinking = validation.as_bool("thinking", thinking)
    self.max_new_tokens = int(max_new_tokens)
    self.chunk_steps = int(chunk_steps)
    self.seed = validation.as_count("seed", seed, low=0, high=validation.UINT32_MAX)
    self.sampling = settings
    self.date = date
    self.history: list[dict] = []
    self.turns = 0
    self.last_stats: TurnStats | None = None

  @property
  def reserve_tokens(self) -> int:
    """Room kept for the answer when trimming history."""
    return max(1, min(self.max_new_tokens, self.context_length // 2))

  @property
  def cache_length(self) -> int:
    """Cache slots of every turn (the context, rounded to a bucket): one program set for all turns."""
    return get_engine(self.model, self.tokenizer).cache_length_for(self.context_length)

  def warmup(self) -> float:
    """Compiles every program a turn can run (prefill, insert, each decode window of the context),
    so no turn waits for a compile; returns the seconds spent."""
    engine = get_engine(self.model, self.tokenizer)
    pool = engine.pool(
      1,
      self.cache_length,
      stop_ids=default_stop_ids(self.tokenizer, self.model.config),
      context_length=self.context_length,
    )
    return pool.warmup()

  def reset(self):
    self.history = []
    self.last_stats = None

  def _messages(self, history: Sequence[dict], user_text: str) -> list[dict]:
    head = [{"role": "system", "content": self.system}] if self.system else []
    return head + list(history) + [{"role": "user", "content": user_text}]

  def build_prompt(self, user_text: str) -> tuple[list[dict], str, list[int], int]:
    """(messages, prompt text, prompt ids, turns dropped). Drops the oldest turns from the history
    (in place) until the prompt fits; raises PromptTooLong if even the new message alone does not."""
    budget = self.context_length - self.reserve_tokens
    starts = _turn_starts(self.history)
    for dropped, start in enumerate(starts + [len(self.history)]):
      kept = self.history[start:] if dropped else self.history
      messages = self._messages(kept, user_text)
      text, ids = render_chat(self.tokenizer, messages, self.thinking, self.date)
      if len(ids) <= budget:
        if dropped:
          self.history = list(kept)
        return messages, text, ids, dropped
    raise PromptTooLong(
      f"the message is too long: its prompt has {len(ids)} tokens but the context of "
      f"{self.context_length} tokens leaves {budget} for it (after {self.reserve_tokens} for the answer)"
    )

  def ask(self, user_text: str) -> "Reply":
    """Starts a reply to ``user_text`` (nothing runs until it is iterated)."""
    if not isinstance(user_text, str) or not user_text.strip():
      raise ValueError("the message is empty")
    messages, text, ids, dropped = self.build_prompt(user_text)
    return Reply(self, user_text, text, ids, dropped)


class Reply:
  """One streaming answer: iterate for ("thinking" | "answer", text) pieces; ``cancel()`` stops it
  after the current chunk. When iteration ends the turn joins the history (a stopped answer with
  its partial text; one stopped before any answer text is dropped)."""

  def __init__(self, session: ChatSession, user_text: str, prompt_text: str, prompt_ids: list[int], trimmed_turns: int):
    self.session = session
    self.user_text = user_text
    self.prompt_text = prompt_text
    self.prompt_ids = prompt_ids
    self.trimmed_turns = trimmed_turns
    self.thinking = ""
    self.answer = ""
    self.cancelled = False
    self.stats: TurnStats | None = None
    self._stream = None

  def cancel(self):
    self.cancelled = True
    if self._stream is not None:
      self._stream.cancel()

  def __iter__(self) -> Iterator[tuple[str, str]]:

    s = self.session
    t0 = time.perf_counter()
    self._stream = stream(
      s.model,
      s.tokenizer,
      self.prompt_ids,
      hide_thinking=False,
      chunk_steps=s.chunk_steps,
      thinking=s.thinking,
      max_new_tokens=s.max_new_tokens,
      seed=(s.seed + s.turns) % 2**32,
      context_length=s.context_length,
      cache_length=s.cache_length,
      **s.sampling,
    )
    if self.cancelled:
      self._stream.cancel()
    s.turns += 1
    splitter = ThinkingSplitter(inside=prompt_opens_thinking(self.prompt_text))
    parts = {"thinking": [], "answer": []}
    for piece in self._stream:
      for kind, text in splitter.feed(piece):
        parts[kind].append(text)
        yield kind, text
    for kind, text in splitter.finish():
      parts[kind].append(text)
      yield kind, text
    self.thinking, self.answer = "".join(parts["thinking"]), "".join(parts["answer"])
    result = self._stream.result
    st = result.stats
    c = result.completions[0]
    self.stats = TurnStats(
      st,
      total_seconds=time.perf_counter() - t0,
      stop_reason="cancelled" if self.cancelled else c.stop_reason,
      trimmed_turns=self.trimmed_turns,
    )
    s.last_stats = self.stats
    if self.answer or not self.cancelled:
      s.history += [{"role": "user", "content": self.user_text}, {"role": "assistant", "content": self.answer}]


# --------------------------------------------------------------------------------------------
# Loading (shared by experiments/chat.py and experiments/serve.py)
# --------------------------------------------------------------------------------------------
TINY = "tiny"


def load_chat_model(
  checkpoint: str,
  *,
  tokenizer: str | None = None,
  dtype: str | None = None,
  tiny_context: int = 2048,
  seed: int = 0,
  quantize: str | None = None,
):
  """(model, tokenizer) for a checkpoint ("demo", .gguf, HF dir, hub id).

  ``dtype``: "float32", "bfloat16", or None / "auto" (float32 on CPU, bfloat16 on GPU/TPU).
  ``checkpoint="tiny"`` builds a random-weight tiny model (``config.tiny``) with the vocabulary of
  ``tokenizer`` (default "demo") and ``tiny_context`` positions: it starts in seconds, for smoke tests.
  ``quantize``: None / "none" or "int8" (:mod:`smollm3_jax.nn.quantize`).
  """

  if checkpoint == TINY:
    spec = dict(
      tokenizer=tokenizer or "demo",
      random=dict(preset="tiny", num_layers=8, seed=seed, max_position_embeddings=tiny_context),
    )
  else:
    spec = dict(checkpoint=checkpoint, tokenizer=tokenizer)
  return load_model_and_tokenizer(dict(spec, dtype=dtype or "auto", quantize=quantize or "none"))


def context_limit(checkpoint: str, *, tiny_context: int = 2048) -> int:
  """The most positions a checkpoint's model takes, read from its config without loading weights
  (so a script can refuse a too-long ``--context_length`` before the slow part)."""
  if checkpoint == TINY:
    return tiny_context
  return checkpoints.load_config(checkpoint).max_position_embeddings


# --------------------------------------------------------------------------------------------
# Terminal loop
# --------------------------------------------------------------------------------------------
HELP = """commands:
  /think      thinking mode on        /no_think  thinking mode off
  /reset      clear the history       /stats     statistics of the last reply
  /help       this text               /quit      leave (or Ctrl-D)
Ctrl-C stops the current answer."""

_DIM, _BOLD, _RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"


class _Interrupts:
  """During an answer: the first Ctrl-C cancels it (after the current chunk), a second one raises."""

  def __init__(self, reply: Reply):
    self.reply = reply
    self.count = 0

  def __call__(self, signum, frame):
    self.count += 1
    if self.count > 1:
      raise KeyboardInterrupt
    self.reply.cancel()

  def __enter__(self):
    # Signal handlers can only be set from the main thread; elsewhere Ctrl-C keeps its default.
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self)
    self._tty = _without_echoctl(sys.stdin)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
    if self._tty is not None:
      import termios

      fd, attributes = self._tty
      termios.tcsetattr(fd, termios.TCSANOW, attributes)
    return False


def _without_echoctl(stream) -> tuple[int, list] | None:
  """Stops the terminal from echoing Ctrl-C as "^C" into the answer being printed (the ECHOCTL
  flag); returns (fd, previous attributes) to restore, or None when ``stream`` is not a terminal."""
  try:
    import termios

    fd = stream.fileno()
    if not os.isatty(fd):
      return None
    attributes = termios.tcgetattr(fd)
    quiet = list(attributes)
    quiet[3] &= ~termios.ECHOCTL  # lflag
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    return fd, attributes
  except (ImportError, AttributeError, OSError, ValueError):  # no termios (Windows), no real fd
    return None


def run_terminal(
  session: ChatSession,
  *,
  show_thinking: bool = True,
  input_fn: Callable[[str], str] = input,
  out: TextIO | None = None,
  color: bool | None = None,
) -> None:
  """Interactive chat on a terminal until /quit or end of input."""
  out = out or sys.stdout
  if color is None:  # ANSI styles only on a real terminal that wants them
    color = out.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ
  dim, bold, reset = (_DIM, _BOLD, _RESET) if color else ("", "", "")

  def say(text: str = "", end: str = "\n"):
    out.write(text + end)
    out.flush()

  settings = ", ".join(f"{k} {v}" for k, v in session.sampling.items())
  say(
    f"chat: thinking {'on' if session.thinking else 'off'}, {settings}, up to {session.max_new_tokens} "
    f"tokens per answer, context {session.context_length} tokens (defaults from {session.defaults.source}).\n"
    "/help for commands, Ctrl-C stops an answer, Ctrl-D quits."
  )
  while True:
    try:
      line = input_fn("you> ")
    except EOFError:
      say()
      return
    except KeyboardInterrupt:  # Ctrl-C at the prompt: drop the line, stay in the chat
      say("\n(Ctrl-C: the line was dropped; /quit or Ctrl-D leaves)")
      continue
    line = line.strip()
    if not line:
      continue
    if line.startswith("/"):
      command = line.split()[0].lower()
      if command in ("/quit", "/exit"):
        return
      elif command == "/think":
        session.thinking = True
        say("[thinking mode on]")
      elif command == "/no_think":
        session.thinking = False
        say("[thinking mode off]")
      elif command == "/reset":
        session.reset()
        say("[history cleared]")
      elif command == "/stats":
        say(f"[{session.last_stats.describe()}]" if session.last_stats else "[no reply yet]")
      elif command == "/help":
        say(HELP)
      else:
        say(f"[unknown command {command}; /help lists them]")
      continue

    try:
      reply = session.ask(line)
    except PromptTooLong as e:
      say(f"[not sent: {e}]")
      continue
    if reply.trimmed_turns:
      say(
        f"[history trimmed: dropped the {reply.trimmed_turns} oldest turn(s) to fit the context of "
        f"{session.context_length} tokens]"
      )
    say(f"{bold}assistant>{reset} ", end="")
    kind_shown = None
    try:
      with _Interrupts(reply):
        for kind, text in reply:
          if kind == "thinking" and not show_thinking:
            if kind_shown != "thinking":
              say(f"{dim}[thinking…]{reset} ", end="")
              kind_shown = "thinking"
            continue
          if kind != kind_shown:
            if kind == "thinking":
              say(f"{dim}[thinking] ", end="")
            elif kind_shown == "thinking":
              say(f"{reset}\n{bold}answer>{reset} " if show_thinking else "\n", end="")
            kind_shown = kind
          say(text, end="")
    except KeyboardInterrupt:  # a second Ctrl-C: abandon the answer at once
      say(f"{reset}\n[answer abandoned]")
      continue
    say(reset if kind_shown == "thinking" else "", end="")
    if reply.cancelled:
      say("\n[stopped]")
    else:
      say()
