"""The README's quick start runs as written on the demo checkpoint (the docs pages: tests/test_docs.py)."""

from __future__ import annotations

import contextlib
import io
import os
import re

import smollm3_jax
from smollm3_jax.generation import defaults as generation_defaults

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _readme() -> str:
  with open(README, encoding="utf-8") as f:
    return f.read()


def quick_start() -> str:
  """The first python code block under "## Quick start"."""
  text = _readme()
  use = text[text.index("\n## Quick start\n") :]
  return re.search(r"```python\n(.*?)```", use, re.S).group(1)


def test_quick_start_runs_as_written_on_the_demo(monkeypatch):
  code = quick_start()
  assert 'checkpoint = "demo"' in code  # runs offline as written; the hub id is the commented alternative
  # The loader is the one the README calls: count the loads, and catch any dtype given explicitly.
  loads = []
  real = smollm3_jax.from_pretrained
  monkeypatch.setattr(smollm3_jax, "from_pretrained", lambda *a, **k: loads.append((a, k)) or real(*a, **k))
  out = io.StringIO()
  scope: dict = {}
  with contextlib.redirect_stdout(out):
    exec(compile(code, "README.md quick start", "exec"), scope)
  printed = out.getvalue()
  assert loads == [(("demo",), {})]  # dtype chosen automatically: float32 here, on a CPU
  assert scope["model"].dtype == smollm3_jax.checkpoints.default_dtype()
  result, s = scope["result"], scope["s"]
  assert len(result) == 2 and all(c.stop_reason in ("eos", "max_tokens") for c in result)
  assert result[1].settings["temperature"] == 0.0 and result[0].settings["thinking"] is True
  assert "decode_tokens_per_second" in printed and str(result.stats.generated_tokens) in printed
  # Stream.result holds what generate() returns, with the checkpoint's defaults for what was left out.
  streamed = s.result.completions[0]
  table = generation_defaults.table_defaults()
  assert {k: streamed.settings[k] for k in generation_defaults.SAMPLING_FIELDS} == {
    k: getattr(table, k) for k in generation_defaults.SAMPLING_FIELDS
  }
  assert streamed.answer.strip() and streamed.answer.strip()[:20] in printed
  assert s.result.stats.generated_tokens == len(streamed.token_ids) <= 128
