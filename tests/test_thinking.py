"""The thinking rule, tested once: the whole-text split, the streaming splitter, the stream filter,
the chat session and the sweep's metric all read a completion the same way."""

from __future__ import annotations

import random

import pytest

from smollm3_jax.text import thinking
from smollm3_jax.text.thinking import ThinkingSplitter, VisibleText, has_closed_thinking, split_thinking

TEXTS = [
  "plain answer",
  "  padded answer \n",
  "<think>\nreasoning here\n</think>\n\nThe answer.",
  "<think>unclosed thinking",
  "<think></think>",
  "before <think>mid</think> after",
  "<think>a</think>b<think>c</think>d",
  "no tags but a < sign and </thin",
  "<thin",
  "",
  "\n\n<think>\n\n</think>\n\n  answer with trailing spaces   ",
  "x</think>",
  "a</think>b<think>c</think>d",
  "<think>😀 ünï</think>日本",
]


def test_split_examples():
  assert split_thinking("<think>\nLet me see.\n</think>\n\nParis.") == ("Let me see.", "Paris.")
  assert split_thinking("<think>\nstill thinking") == ("still thinking", "")
  assert split_thinking("Just the answer.\n") == ("", "Just the answer.")
  # a no-think prompt already holds "<think>\n\n</think>\n": the completion has no tags
  assert split_thinking("Paris.") == ("", "Paris.")
  assert split_thinking("<think>\n\n</think>\nParis.") == ("", "Paris.")
  assert split_thinking("before <think>mid</think> after") == ("mid", "before  after")
  assert split_thinking("<think>a</think>b<think>c</think>d") == ("a", "b<think>c</think>d")


def test_the_lone_close_tag_rule():
  # Without a <think> in prompt or text, a lone </think> is answer text; when the prompt opened
  # the block, the text up to </think> is the thinking.
  text = "reasoning</think>answer"
  assert split_thinking(text) == ("", "reasoning</think>answer")
  assert split_thinking(text, inside=True) == ("reasoning", "answer")
  assert not has_closed_thinking(text) and has_closed_thinking(text, inside=True)
  assert has_closed_thinking("<think>hmm</think>\n42") and not has_closed_thinking("<think>still going")
  # the stream filter shows exactly the split's answer, in both cases
  for inside in (False, True):
    v = VisibleText(hide=True, inside=inside)
    shown = "".join(v.feed(ch) for ch in text) + v.feed("", final=True)
    assert shown == split_thinking(text, inside)[1]
  assert thinking.prompt_opens_thinking("<|im_start|>assistant\n<think>\n")
  assert not thinking.prompt_opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n")


@pytest.mark.parametrize("inside", [False, True])
@pytest.mark.parametrize("text", TEXTS)
def test_streaming_split_equals_whole_text_split_for_any_chunking(text, inside):
  want = split_thinking(text, inside)
  assert ThinkingSplitter.split(text, inside) == want
  rng = random.Random(0)
  for _ in range(30):
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 6))))
    pieces = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
    splitter = ThinkingSplitter(inside)
    parts = {"thinking": "", "answer": ""}
    for kind, piece in [kp for p in pieces for kp in splitter.feed(p)] + splitter.finish():
      parts[kind] += piece
    assert (parts["thinking"], parts["answer"]) == want, pieces
    v = VisibleText(hide=True, inside=inside)
    assert "".join(v.feed(p) for p in pieces) + v.feed("", final=True) == want[1], pieces


@pytest.mark.parametrize(
  "pieces",
  [
    ["<think>\nabc", " def\n</think>\n", "The answer"],
    ["<th", "ink>\nabc</th", "ink>\nThe", " answer"],
    ["<think>", "abc", "<", "/", "think>", "\n", "The answer"],
  ],
)
def test_hidden_thinking_never_reaches_the_stream(pieces):
  v = VisibleText(hide=True)
  outs = [v.feed(p) for p in pieces] + [v.feed("", final=True)]
  assert "".join(outs) == "The answer" == split_thinking("".join(pieces))[1]
  assert not any("abc" in o or "think" in o for o in outs)


def test_visible_text_passes_everything_when_not_hiding():
  v = VisibleText(hide=False)
  assert v.feed("<think>x</think>y") == "<think>x</think>y"


def test_chat_session_and_sweep_rows_use_the_same_rule():
  """The chat session splits a reply with ThinkingSplitter(inside=prompt_opens_thinking(prompt)); the
  sweep records closed_think with has_closed_thinking(text, inside=...) and thinking/answer from
  generate's split_thinking(text, inside=...): the same functions, checked here by identity."""
  import sys

  from smollm3_jax.serving import chat
  from smollm3_jax.sweep import execute

  gen_module = sys.modules["smollm3_jax.generation.api"]

  assert chat.ThinkingSplitter is ThinkingSplitter and chat.prompt_opens_thinking is thinking.prompt_opens_thinking
  assert execute.has_closed_thinking is has_closed_thinking
  assert gen_module.split_thinking is split_thinking and gen_module.VisibleText is VisibleText
