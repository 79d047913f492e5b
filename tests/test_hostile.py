"""Hostile input: the replay of tools/hostile_replay.py (every group, loopback only, bounded in time),
and quick direct checks of what it found fixed in the server's request parsing and the loaders."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "hostile_replay.py")

# Replay cases that fail for bugs outside the server's parsing and the loaders (reported with a
# reproduction; see each case's expectation in `tools/hostile_replay.py --list`). Skipped here, still run
# by the script alone; empty this list as they are fixed.
KNOWN_BUGS: tuple[str, ...] = ()  # none open: every case of the replay passes


def _replay_module():
  """tools/hostile_replay.py as a module (importing it only defines the cases)."""
  if "hostile_replay" not in sys.modules:
    spec = importlib.util.spec_from_file_location("hostile_replay", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_replay"] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
  return sys.modules["hostile_replay"]


@pytest.mark.parametrize("groups", ["loaders", "api,server", "evaluate", "sweep,finetune"])
def test_replay(groups):
  """Every case of these groups gets its expected outcome (the server's memory check included)."""
  if "evaluate" in groups.split(",") and importlib.util.find_spec("lm_eval") is None:
    # experiments/evaluate.py checks its flags with the lm-eval model's tables (the eval extra)
    pytest.skip("needs lm_eval (the eval extra) for experiments/evaluate.py")
  proc = subprocess.run(
    [sys.executable, SCRIPT, f"--groups={groups}", f"--skip={','.join(KNOWN_BUGS)}"],
    capture_output=True,
    text=True,
    timeout=900,
    cwd=ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  lines = [l for l in proc.stdout.splitlines() if " ok " in l or " FAIL " in l or "cases ok" in l]
  print("\n".join(lines))
  assert proc.returncode == 0, "\n".join(lines) + "\n" + proc.stderr[-3000:]
  assert lines and "FAIL" not in "\n".join(lines)


def test_known_bugs_are_cases_of_the_replay():
  names = {c.name for c in _replay_module().CASES}
  assert set(KNOWN_BUGS) <= names, set(KNOWN_BUGS) - names


# --------------------------------------------------------------------------------------------
# Quick checks of the fixes (in this process: a Starlette test client, no worker, no compile)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
  from starlette.testclient import TestClient

  from smollm3_jax.serving import chat, server

  model, tok = chat.load_chat_model("tiny", tiny_context=512)
  app = server.create_app(model, tok, model_name="tiny", temperature=0.0, max_tokens=8, chunk_steps=2, seed=0)
  with TestClient(app) as c:
    yield c
  assert app.state.worker is None  # every request was refused before any work


def _hostile_bodies():
  replay = _replay_module()
  sur = "\ud800"
  hello = [{"role": "user", "content": "hi"}]
  cases = [
    (
      "surrogate content",
      {"messages": [{"role": "user", "content": "a" + sur}]},
      400,
      "messages[0].content",
      "lone surrogate",
    ),
    ("surrogate stop", {"messages": hello, "stop": [sur], "stream": True}, 400, "stop[0]", "lone surrogate"),
    ("surrogate field name", {"messages": hello, sur: 1}, 400, "\\ud800", "lone surrogate"),
    ("surrogate metadata", {"messages": hello, "metadata": {"k": [sur]}}, 400, "metadata.k[0]", "lone surrogate"),
    (
      "5000 digits",
      b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1' + b"0" * 5000 + b"}",
      400,
      None,
      "too many digits",
    ),
  ]
  cases += [(f"wrong type {i}",) + c for i, c in enumerate(replay.wrong_type_requests())]
  cases += [(f"huge number {i}",) + c for i, c in enumerate(replay.huge_number_requests())]
  return cases


@pytest.mark.parametrize(
  "name,body,status,param,needle", _hostile_bodies(), ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None
)
def test_hostile_bodies_get_a_4xx_naming_the_field(client, name, body, status, param, needle):
  content = body if isinstance(body, bytes) else json.dumps(body).encode()
  r = client.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
  assert r.status_code == status, r.text[:300]
  error = r.json()["error"]
  assert needle in error["message"] and len(error["message"]) < 2000, error["message"][:300]
  if param != "":
    assert error["param"] == param, error


def test_checkpoint_loaders_name_the_damaged_file(tmp_path):
  """The replay's loader cases (but the slow .gguf copies) in this process."""
  replay = _replay_module()
  run = replay.Run(str(tmp_path))
  cases = [c for c in replay.CASES if c.group == "loaders" and "gguf" not in c.name]
  assert len(cases) >= 6
  for c in cases:
    c.fn(run)  # raises Failed with what it saw


def test_a_refused_huge_prompt_is_freed_at_once(client):
  """A prompt past the context, refused after tokenizing: its token list is not left in a reference cycle
  (the exception's traceback through the thread pool) for the garbage collector to find some day."""
  import gc

  gc.collect()
  gc.set_debug(gc.DEBUG_SAVEALL)
  try:
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hello " * 50_000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    gc.collect()
    held = [len(o) for o in gc.garbage if isinstance(o, (list, str, bytes)) and len(o) >= 50_000]
  finally:
    gc.set_debug(0)
    gc.garbage.clear()
  assert not held, f"left in cycles: objects of {held} items"
