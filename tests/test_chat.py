"""Chat sessions: thinking split, history trimming, commands, and the terminal chat in a pseudo-terminal."""

from __future__ import annotations

import copy
import io
import os
import pty
import subprocess
import sys

import pytest

import smollm3_jax
from smollm3_jax.serving import chat
from smollm3_jax.text import prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_PATH = os.path.join(ROOT, "tests", "data", "smollm3_chat_template.jinja")


@pytest.fixture(scope="module")
def model_and_tokenizer():
  return chat.load_chat_model("tiny", tiny_context=512)


def test_history_is_trimmed_from_the_oldest_turn(model_and_tokenizer):
  model, tok = model_and_tokenizer
  session = chat.ChatSession(model, tok, system="Be brief.", context_length=200, max_new_tokens=40)
  turns = [(f"question {i} " + "word " * 20, f"answer {i} " + "text " * 20) for i in range(6)]
  for q, a in turns:
    session.history += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
  messages, text, ids, dropped = session.build_prompt("latest question")
  assert dropped > 0
  assert len(ids) <= session.context_length - session.reserve_tokens
  assert session.history == [
    m for q, a in turns[dropped:] for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})
  ]
  assert messages[0] == {"role": "system", "content": "Be brief."}
  assert messages[-1] == {"role": "user", "content": "latest question"}
  # One turn fewer would not have fit.
  longer = session._messages(
    [{"role": "user", "content": turns[dropped - 1][0]}, {"role": "assistant", "content": turns[dropped - 1][1]}]
    + session.history,
    "latest question",
  )
  assert len(prompts.render_chat(tok, longer, False)[1]) > session.context_length - session.reserve_tokens
  # A message that cannot fit on its own is refused, not sent; the history stays.
  kept = list(session.history)
  with pytest.raises(chat.PromptTooLong, match="too long"):
    session.ask("long " * 400)
  assert session.history == kept


def test_after_warmup_later_turns_compile_nothing(model_and_tokenizer):
  """Every turn runs in one pool of the session's context (a fixed program set the warm-up compiles):
  the growing history moves to longer prompts and larger read windows without a compile."""
  from smollm3_jax.generation.engine import COMPILE_COUNTS

  model, tok = model_and_tokenizer
  session = chat.ChatSession(model, tok, context_length=512, max_new_tokens=24, temperature=0.0)
  session.warmup()
  before = dict(COMPILE_COUNTS)
  lengths = []
  for question in ("Hello there", "Tell me more " + "please " * 60, "And again " + "more " * 120):
    reply = session.ask(question)
    list(reply)
    lengths.append(len(reply.prompt_ids))
  assert lengths[0] < 256 < lengths[2]  # the third turn reads a larger window than the first
  assert dict(COMPILE_COUNTS) == before


def test_reply_streams_generate_text_and_joins_history(model_and_tokenizer):
  model, tok = model_and_tokenizer
  session = chat.ChatSession(model, tok, max_new_tokens=16, temperature=0.8, top_p=0.9, seed=5, chunk_steps=2)
  reply = session.ask("Hello there")
  pieces = list(reply)
  assert len(pieces) > 1 and {k for k, _ in pieces} <= {"thinking", "answer"}
  want = smollm3_jax.generate(
    model,
    tok,
    [[{"role": "user", "content": "Hello there"}]],
    thinking=True,
    max_new_tokens=16,
    temperature=0.8,
    top_p=0.9,
    seed=5,
  ).completions[0]
  assert reply.answer == want.answer and reply.thinking == want.thinking
  assert session.history == [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": want.answer}]
  assert reply.stats.generated_tokens == 16 and reply.stats.stop_reason == "max_tokens"
  assert reply.stats.time_to_first_token > 0 and reply.stats.tokens_per_second > 0
  # Cancelled after the first piece: stops early, keeps the partial answer.
  reply = session.ask("Again")
  for _ in reply:
    reply.cancel()
  assert reply.stats.stop_reason == "cancelled" and reply.stats.generated_tokens < 16
  assert session.history[-1] == {"role": "assistant", "content": reply.answer}


def test_terminal_commands_and_thinking_switch(model_and_tokenizer):
  model, tok = model_and_tokenizer
  tok = copy.copy(tok)
  with open(TEMPLATE_PATH, encoding="utf-8") as f:
    tok.chat_template = f.read()  # SmolLM3's template: it has a thinking mode
  session = chat.ChatSession(model, tok, max_new_tokens=4, thinking=False)
  prompts = {}
  lines = iter(["/help", "/stats", "/think", "/bogus", "/no_think", "/reset", "/quit"])

  def scripted_input(prompt):
    line = next(lines)
    prompts[line] = session.build_prompt("hi")[1]
    return line

  out = io.StringIO()
  chat.run_terminal(session, input_fn=scripted_input, out=out)
  text = out.getvalue()
  for needle in [
    "/no_think",
    "[no reply yet]",
    "[thinking mode on]",
    "unknown command /bogus",
    "[thinking mode off]",
    "[history cleared]",
  ]:
    assert needle in text
  assert "/think" in prompts["/bogus"] and "/no_think" in prompts["/think"]  # rendered after each switch


def test_terminal_chat_in_a_pseudo_terminal(tmp_path):
  """experiments/chat.py on a pseudo-terminal that is its controlling terminal, so the Ctrl-C byte
  (\\x03) written to the terminal becomes a SIGINT, as when a person presses it."""
  fdpexpect = pytest.importorskip("pexpect.fdpexpect")
  import pexpect

  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, TERM="xterm")
  args = [
    sys.executable,
    os.path.join(ROOT, "experiments", "chat.py"),
    "--checkpoint=tiny",
    "--context_length=512",
    "--max_new_tokens=300",
    "--chunk_steps=1",
    "--temperature=0",
  ]
  master, slave = pty.openpty()
  # `setsid -c`: a new session whose controlling terminal is the pty (no fork of this threaded process
  # outside subprocess's exec path).
  proc = subprocess.Popen(
    ["setsid", "-c", *args], stdin=slave, stdout=slave, stderr=slave, env=env, cwd=str(tmp_path), close_fds=True
  )
  os.close(slave)
  log = open(tmp_path / "chat.log", "w")
  child = fdpexpect.fdspawn(master, encoding="utf-8", timeout=180)
  child.logfile_read = log
  try:
    child.expect("you> ")
    # Turn 1: a full answer.
    child.sendline("hello")
    child.expect("assistant>")
    child.expect("you> ")
    child.sendline("/stats")
    child.expect(r"\[(\d+) tokens \(prompt (\d+)\).*stop: (\w+)\]")
    assert child.match.group(3) in ("max_tokens", "eos")
    # Mode switch.
    child.sendline("/think")
    child.expect(r"\[thinking mode on\]")
    # Turn 2: the 300-token answer of turn 1 no longer fits with room for a new one: trimmed.
    child.sendline("tell me more")
    child.expect(r"\[history trimmed: dropped the 1 oldest turn")
    child.expect("assistant>")
    child.expect(r"\w\w")  # the answer has started streaming
    child.send("\x03")  # Ctrl-C
    child.expect(r"\[stopped\]")
    assert "^C" not in child.before  # the terminal does not echo it into the answer
    child.expect("you> ")
    child.sendline("/stats")
    child.expect(r"\[(\d+) tokens .*stop: (\w+)\]")
    assert child.match.group(2) == "cancelled"
    assert int(child.match.group(1)) < 300
    # Still chatting after the Ctrl-C.
    child.sendline("/no_think")
    child.expect(r"\[thinking mode off\]")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    assert proc.wait(30) == 0
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    child.close()  # closes the pty master
    log.close()


def test_the_pinned_date_reaches_the_template(model_and_tokenizer):
  """ChatSession(date=...) and create_app(date=...) render the day given, not today (the suite pins
  today to another day through the environment)."""
  from smollm3_jax.serving import protocol, server

  model, tok = model_and_tokenizer
  tok = copy.copy(tok)
  with open(TEMPLATE_PATH, encoding="utf-8") as f:
    tok.chat_template = f.read()
  session = chat.ChatSession(model, tok, date="2024-02-29")
  text = session.build_prompt("hi")[1]
  assert "Today Date: 29 February 2024" in text
  srv = server.create_app(model, tok, date="2024-02-29").state.server
  req = protocol.parse_request({"messages": [{"role": "user", "content": "hi"}]}, srv.defaults)
  assert srv.prepare(req)[0] == text
  with pytest.raises(ValueError, match="date"):
    chat.ChatSession(model, tok, date="2024-02-30")
  with pytest.raises(ValueError, match="date"):
    server.create_app(model, tok, date="yesterday")


@pytest.mark.parametrize("flag,needle", [("--context_length=99999", "context_length"), ("--date=2024-02-30", "date")])
def test_chat_script_refuses_bad_flags_before_loading(flag, needle):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run(
    [sys.executable, os.path.join(ROOT, "experiments", "chat.py"), "--checkpoint=demo", flag],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
    stdin=subprocess.DEVNULL,
  )
  assert proc.returncode != 0
  assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "loading" not in proc.stdout
