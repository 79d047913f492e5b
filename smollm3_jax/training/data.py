"""Fine-tuning data: JSONL conversations -> token ids with a loss mask -> padded batches in a
seeded, resumable order.

* A data file holds one JSON object per line: ``{"messages": [{"role", "content"}, ...]}`` and
  optionally ``"enable_thinking"`` (the chat template's flag for this conversation; default the
  caller's). In thinking mode an assistant turn may start with ``<think>...</think>``.
* The loss mask covers the *assistant tokens*: for each assistant message, the text the chat
  template appends after the generation prompt (``apply_chat_template(messages[:k],
  add_generation_prompt=True)``), up to the end of the turn (its end token and newline included).
  So the header ``<|im_start|>assistant\\n`` (and, in SmolLM3's no-think mode, the empty think block
  the template writes into the prompt) is context, never a target. With ``train_thinking=False`` the
  first ``<think>...</think>`` block of each turn (and the whitespace after it; the rule of
  :mod:`smollm3_jax.text.thinking`) is context too. Character spans map to tokens by the tokenizer's
  offsets: a token is a target when it starts inside a span.
* Batches: micro-step ``i`` takes the examples at positions ``i*B .. i*B+B-1`` of an endless
  stream of epochs, each epoch a permutation drawn from ``(seed, epoch)``; so the order depends
  only on the seed and a resumed run continues exactly where the checkpoint left off. Rows are
  right-padded to the length bucket of the batch's longest example (``buckets.bucket_length``).

Imports the tokenizer helpers (thinking tags, validation, cache buckets); never jax or the model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from smollm3_jax.text.thinking import THINK_END, THINK_START
from smollm3_jax.utils import validation
from smollm3_jax.utils.buckets import DEFAULT_BUCKETS, bucket_length


@dataclasses.dataclass(frozen=True)
class Example:
  """One conversation: tokens int32 [L] and loss_mask bool [L] (True = a training target)."""

  tokens: np.ndarray
  loss_mask: np.ndarray

  def __len__(self) -> int:
    return int(self.tokens.shape[0])


def load_conversations(path: str | os.PathLike) -> list[dict]:
  """The records of a JSONL file, checked: each has ``messages`` (a valid message list with at least
  one assistant message after a non-assistant one) and optionally a bool ``enable_thinking``."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"data file {path!r} does not exist")
  records = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f"{path}:{n}"
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
      if not isinstance(rec, dict) or "messages" not in rec:
        raise ValueError(f"{where}: expected an object with 'messages'")
      try:
        messages = validation.check_messages(rec["messages"])
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
      roles = [m["role"] for m in messages]
      if not any(r == "assistant" for r in roles[1:]):
        raise ValueError(f"{where}: no assistant message to train on (after the first message)")
      out = {"messages": messages}
      if "enable_thinking" in rec:
        try:
          out["enable_thinking"] = validation.as_bool("enable_thinking", rec["enable_thinking"])
        except ValueError as e:
          raise ValueError(f"{where}: {e}") from None
      records.append(out)
  if not records:
    raise ValueError(f"data file {path!r} holds no conversations")
  return records


def _thinking_span(text: str, start: int, end: int) -> tuple[int, int] | None:
  """The first <think>...</think> block in text[start:end] and the whitespace after it (an unclosed
  block runs to ``end``), as (begin, stop) character offsets; None when the turn has none."""
  begin = text.find(THINK_START, start, end)
  if begin < 0:
    return None
  close = text.find(THINK_END, begin + len(THINK_START), end)
  if close < 0:
    return begin, end
  stop = close + len(THINK_END)
  while stop < end and text[stop].isspace():
    stop += 1
  return begin, stop


def assistant_spans(
  tokenizer,
  messages: Sequence[Mapping[str, Any]],
  *,
  enable_thinking: bool = True,
  train_thinking: bool = True,
  date=None,
) -> tuple[str, list[tuple[int, int]]]:
  """(rendered conversation, character spans of its targets) — see the module docstring.

  Raises ValueError when the template does not render a conversation as a prefix of its
  continuation (a template that rewrites earlier turns; its targets cannot be located)."""

  def render(msgs, gen):
    return tokenizer.apply_chat_template(
      list(msgs), add_generation_prompt=gen, enable_thinking=enable_thinking, tokenize=False, date=date
    )

  text = render(messages, False)
  spans = []
  for k, m in enumerate(messages):
    if m["role"] != "assistant" or k == 0:
      continue
    prompt, upto = render(messages[:k], True), render(messages[: k + 1], False)
    if not (upto.startswith(prompt) and text.startswith(upto)):
      raise ValueError(
        f"chat template: the rendering of the first {k} messages plus the generation "
        "prompt is not a prefix of the conversation's rendering; cannot locate "
        f"assistant message {k}"
      )
    start, end = len(prompt), len(upto)
    think = None if train_thinking else _thinking_span(text, start, end)
    if think is None:
      spans.append((start, end))
    else:
      spans.extend(s for s in ((start, think[0]), (think[1], end)) if s[1] > s[0])
  return text, spans


def encode_conversation(
  tokenizer, messages, *, enable_thinking: bool = True, train_thinking: bool = True, date=None
) -> Example:
  """Token ids (no BOS added, as the chat prompts of generation) and the loss mask of a conversation."""
  text, spans = assistant_spans(
    tokenizer, messages, enable_thinking=enable_thinking, train_thinking=train_thinking, date=date
  )
  enc = tokenizer.backend.encode(text, add_special_tokens=False)
  starts = np.asarray([o[0] for o in enc.offsets], np.int64)
  mask = np.zeros(len(starts), bool)
  for a, b in spans:
    mask |= (starts >= a) & (starts < b)
  return Example(np.asarray(enc.ids, np.int32), mask)


def encode_records(
  tokenizer,
  records: Sequence[Mapping],
  *,
  max_length: int,
  thinking_default: bool = True,
  train_thinking: bool = True,
  date=None,
) -> tuple[list[Example], int]:
  """Encodes records; examples longer than ``max_length`` are cut to it (their targets beyond the cut
  dropped) and those left with no target are skipped. Returns (examples, number cut)."""
  out, cut = [], 0
  for rec in records:
    ex = encode_conversation(
      tokenizer,
      rec["messages"],
      enable_thinking=rec.get("enable_thinking", thinking_default),
      train_thinking=train_thinking,
      date=date,
    )
    if len(ex) > max_length:
      cut += 1
      ex = Example(ex.tokens[:max_length], ex.loss_mask[:max_length])
    if ex.loss_mask[1:].any():  # position 0 is never a target (nothing predicts it)
      out.append(ex)
  return out, cut


def split(records: Sequence, eval_fraction: float, seed: int) -> tuple[list, list]:
  """(train, eval): a seeded ``eval_fraction`` of the records held out (at least one when > 0)."""
  if not 0 <= eval_fraction < 1:
    raise ValueError(f"eval_fraction must lie in [0, 1), got {eval_fraction!r}")
  n = len(records)
  n_eval = 0 if eval_fraction == 0 else max(1, int(round(n * eval_fraction)))
  if n_eval >= n:
    raise ValueError(f"eval_fraction {eval_fraction} leaves no training data ({n} records)")
  order = np.random.default_rng([int(seed), 0x5EED]).permutation(n)
  held = set(order[:n_eval].tolist())
  return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
  """Indices of the examples of micro-step ``step`` (see the module docstring)."""
  pos = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
  epochs, within = pos // num_examples, pos % num_examples
  out = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([int(seed), int(e)]).permutation(num_examples)
    out[epochs == e] = perm[within[epochs == e]]
  return out


def pad_batch(
  examples: Sequence[Example],
  pad_id: int,
  *,
  rows: int | None = None,
  max_length: int,
  buckets: Sequence[int] = DEFAULT_BUCKETS,
) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [rows, T], loss_mask bool [rows, T]): right-padded with ``pad_id`` to the bucket of
  the longest example (at most ``max_length``); extra rows (up to ``rows``) are all padding."""
  rows = len(examples) if rows is None else rows
  longest = max(len(e) for e in examples)
  t = bucket_length(longest, buckets, limit=max_length)
  tokens = np.full((rows, t), pad_id, np.int32)
  mask = np.zeros((rows, t), bool)
  for i, e in enumerate(examples):
    tokens[i, : len(e)] = e.tokens
    mask[i, : len(e)] = e.loss_mask
  return tokens, mask
