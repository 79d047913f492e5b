"""experiments/generate.py end to end (a fresh process, as a user runs it) on a tiny checkpoint: a
random 2-layer SmolLM3 with the demo tokenizer's vocabulary, saved with that tokenizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import smollm3_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "generate.py")


def _run(*args, tmp_path):
  env = dict(os.environ, SMOLLM3_JAX_CACHE_DIR=str(tmp_path / "jax_cache"))
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env,
                        timeout=300, cwd=ROOT)


def test_generate_script_writes_the_json_it_promises(tmp_path, demo_model, demo_tokenizer):
  out = tmp_path / "gen.json"
  proc = _run("--checkpoint=demo", "--prompt=What is the capital of France?", "--prompt=Name a colour.",
              "--max_new_tokens=12", "--temperature=0", f"--output_json={out}", tmp_path=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())
  assert set(record["stats"]) >= {"prompt_tokens", "generated_tokens", "compile_seconds", "prefill_seconds",
                                  "time_to_first_token", "decode_tokens_per_second"}
  assert [c["prompt"] for c in record["completions"]] == ["What is the capital of France?", "Name a colour."]
  ref = smollm3_jax.generate(demo_model, demo_tokenizer, ["What is the capital of France?", "Name a colour."],
                             thinking=False, max_new_tokens=12, temperature=0.0)
  for c, r in zip(record["completions"], ref):
    assert set(c) >= {"prompt_token_ids", "token_ids", "text", "thinking", "answer", "stop_reason"}
    assert c["token_ids"] == r.token_ids and c["text"] == r.text and c["stop_reason"] == r.stop_reason
  assert all(len(c["token_ids"]) >= 1 for c in record["completions"])
  assert "stats:" in proc.stdout


def test_generate_script_rejects_bad_flags_before_loading(tmp_path):
  proc = _run("--checkpoint=demo", "--top_p=1.5", tmp_path=tmp_path)
  assert proc.returncode != 0
  assert "top_p" in proc.stderr and "(0, 1]" in proc.stderr
