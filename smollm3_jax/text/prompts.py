"""Prompts as the model sees them: strings, message lists or token ids rendered to (text, ids).

One home for prompt rendering: ``generate``/``stream``, scoring, the sweep, the chat session and the
server all render through here, so a prompt gets the same ids whichever path runs it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from smollm3_jax.utils import validation


def render_prompts(
  tokenizer,
  prompts,
  *,
  chat: bool = True,
  thinking=True,
  date=None,
  vocab_size: int | None = None,
  split_special_tokens: bool = False,
) -> tuple[list[str], list[list[int]]]:
  """Prompt texts and ids. A prompt is a string (one user message when ``chat``), a message list,
  or a sequence of token ids (used as is, each checked to lie in ``[0, vocab_size)``; default the
  tokenizer's vocabulary). ``date``: the day the chat template sees; ``split_special_tokens``:
  special-token text in the messages stays text (see ``Tokenizer.apply_chat_template``; raw
  ``chat=False`` prompts are then encoded all as text)."""
  if isinstance(prompts, str) or validation.is_messages(prompts) or validation.is_ids(prompts):
    prompts = [prompts]
  if not isinstance(prompts, (list, tuple)):
    raise ValueError(
      f"prompts must be a string, a message list, token ids or a list of those, got {type(prompts).__name__}"
    )
  prompts = list(prompts)
  if not prompts:
    raise ValueError("prompts: need at least one prompt, got an empty list")
  thinking = validation.as_bools("thinking", thinking, len(prompts))
  chat = validation.as_bool("chat", chat)
  split_special_tokens = validation.as_bool("split_special_tokens", split_special_tokens)
  texts, ids = [], []
  for i, p in enumerate(prompts):
    if validation.is_ids(p) or (isinstance(p, (list, tuple, np.ndarray)) and len(p) == 0):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty")
      limit = vocab_size or (tokenizer.vocab_size if tokenizer is not None else 2**31 - 1)
      ids.append(validation.check_token_ids(f"prompt {i}", p, limit))
      texts.append(tokenizer.decode(ids[-1]) if tokenizer is not None else "")
      continue
    if tokenizer is None:
      raise ValueError("a tokenizer is needed for text prompts (or pass token ids)")
    if isinstance(p, str) and not p.strip():
      raise ValueError(f"prompt {i} is empty (or only whitespace)")
    if chat:
      if isinstance(p, str):
        messages = [{"role": "user", "content": p}]
      else:
        try:
          messages = validation.check_messages(p)
        except ValueError as e:
          raise ValueError(f"prompt {i}: {e}") from None
      _check_text(f"prompt {i}", messages)
      text, row_ids = render_chat(tokenizer, messages, bool(thinking[i]), date, split_special_tokens)
      ids.append(row_ids)
    else:
      if not isinstance(p, str):
        raise ValueError(f"prompt {i}: raw (chat=False) prompts must be strings or token ids")
      _check_text(f"prompt {i}", p)
      text = p
      ids.append(tokenizer.encode(text, split_special_tokens=split_special_tokens))
    texts.append(text)
  return texts, ids


def _check_text(name: str, prompt) -> None:
  """ValueError when a prompt's text (a string, or the contents of its messages) is not encodable
  text: a lone surrogate (e.g. half of an emoji from a JSON "\\ud83d") cannot be tokenized."""
  pieces = (
    [(name, prompt)]
    if isinstance(prompt, str)
    else [(f"{name}: message {j} content", m.get("content")) for j, m in enumerate(prompt) if isinstance(m, dict)]
  )
  for where, text in pieces:
    if isinstance(text, str):
      try:
        text.encode("utf-8")
      except UnicodeEncodeError as e:
        raise ValueError(
          f"{where} is not valid text: a lone surrogate {text[e.start]!r} at character {e.start}"
        ) from None


def render_chat(
  tokenizer, messages: Sequence[dict], thinking: bool, date=None, split_special_tokens: bool = False
) -> tuple[str, list[int]]:
  """The generation prompt for ``messages`` (text, ids) exactly as ``generate`` renders it;
  ``date``: the day the template sees (None: today, or ``$SMOLLM3_JAX_CHAT_DATE``);
  ``split_special_tokens``: special-token text in the contents stays text (the server's default)."""
  render = dict(add_generation_prompt=True, enable_thinking=bool(thinking), date=date)
  text = tokenizer.apply_chat_template(list(messages), tokenize=False, **render)
  if split_special_tokens:
    return text, tokenizer.apply_chat_template(list(messages), tokenize=True, split_special_tokens=True, **render)
  return text, tokenizer.encode(text)
