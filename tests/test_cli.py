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
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, make_hf_model, demo_tokenizer):
  """(directory, model loaded by us, tokenizer): starts in about half the demo's time."""
  tok = demo_tokenizer
  hf = make_hf_model(
    seed=8,
    vocab_size=tok.vocab_size,
    num_hidden_layers=2,
    no_rope_layer_interval=2,
    tie_word_embeddings=True,
    bos_token_id=None,
    eos_token_id=int(tok.eos_token_id),
    pad_token_id=int(tok.pad_token_id),
  )
  path = str(tmp_path_factory.mktemp("cli_tiny"))
  hf.save_pretrained(path)
  tok.save_pretrained(path)
  return path, smollm3_jax.from_pretrained(path), smollm3_jax.Tokenizer.from_pretrained(path)


def test_generate_script_writes_the_json_it_promises(tmp_path, tiny_checkpoint):
  path, model, tokenizer = tiny_checkpoint
  out = tmp_path / "gen.json"
  proc = _run(
    f"--checkpoint={path}",
    "--prompt=What is the capital of France?",
    "--prompt=Name a colour.",
    "--max_new_tokens=12",
    "--temperature=0",
    f"--output_json={out}",
    tmp_path=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(out.read_text())
  assert set(record["stats"]) >= {
    "prompt_tokens",
    "generated_tokens",
    "compile_seconds",
    "prefill_seconds",
    "time_to_first_token",
    "decode_tokens_per_second",
  }
  assert [c["prompt"] for c in record["completions"]] == ["What is the capital of France?", "Name a colour."]
  ref = smollm3_jax.generate(
    model,
    tokenizer,
    ["What is the capital of France?", "Name a colour."],
    thinking=False,
    max_new_tokens=12,
    temperature=0.0,
  )
  for c, r in zip(record["completions"], ref):
    assert set(c) >= {"prompt_token_ids", "token_ids", "text", "thinking", "answer", "stop_reason"}
    assert c["token_ids"] == r.token_ids and c["text"] == r.text and c["stop_reason"] == r.stop_reason
  assert all(len(c["token_ids"]) >= 1 for c in record["completions"])
  assert "stats:" in proc.stdout


def test_generate_script_rejects_bad_flags_before_loading(tmp_path):
  proc = _run("--checkpoint=demo", "--top_p=1.5", tmp_path=tmp_path)
  assert proc.returncode != 0
  assert "top_p" in proc.stderr and "(0, 1]" in proc.stderr
