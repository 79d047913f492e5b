"""Teacher-forced scoring (smollm3_jax.score / score_rolling) against a transformers forward."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

import smollm3_jax
from smollm3_jax.evaluation import scoring


def _hf_logprobs(hf_model, ids):
  """log-softmax of transformers' logits over ``ids`` [T]: [T, V] float64 (position t scores t + 1)."""
  import torch

  with torch.no_grad():
    logits = hf_model(torch.tensor([ids])).logits[0].double()
  return torch.log_softmax(logits, dim=-1).numpy()


def _hf_continuation(hf_model, prompt, cont):
  """(log p of each continuation token, argmax ids) from one transformers forward."""
  lp = _hf_logprobs(hf_model, list(prompt) + list(cont)[:-1])
  rows = lp[len(prompt) - 1 :]
  return rows[np.arange(len(cont)), cont], rows.argmax(-1)


@pytest.fixture(scope="module")
def tiny(hf_checkpoints):
  ckpt = hf_checkpoints("untied")
  return smollm3_jax.from_pretrained(ckpt.path, dtype=jnp.float32), ckpt.model


def _pairs(rng, vocab, specs):
  return [(rng.integers(3, vocab, p).tolist(), rng.integers(3, vocab, c).tolist()) for p, c in specs]


def test_score_equals_transformers_tiny(tiny):
  model, hf = tiny
  rng = np.random.default_rng(0)
  # Lengths (prompt, continuation): short ones, one across the 64-token length bucket edge (inputs of
  # 63 and 64 positions fit bucket 64, 65 and 70 need 128), one continuation longer than its prompt.
  specs = [(5, 3), (1, 1), (40, 24), (40, 25), (62, 4), (3, 60), (20, 7)]
  pairs = _pairs(rng, model.config.vocab_size, specs)
  before = scoring.TRACE_COUNTS["score"]
  out = smollm3_jax.score(model, None, [p for p, _ in pairs], [c for _, c in pairs], batch_size=4)
  assert scoring.TRACE_COUNTS["score"] - before <= 2  # (4 rows, 128 tokens), (4 rows, 32): by shape only
  assert [len(s.logprobs) for s in out] == [c for _, c in specs]
  for (p, c), s in zip(pairs, out):
    ref, ref_argmax = _hf_continuation(hf, p, c)
    np.testing.assert_allclose(s.logprobs, ref, atol=1e-4, rtol=0)
    assert s.log_likelihood == pytest.approx(float(ref.sum()), abs=1e-3)
    assert s.greedy_token_ids == ref_argmax.tolist()
    assert s.is_greedy == (ref_argmax.tolist() == c)
    assert s.prompt_token_ids == p and s.token_ids == c


def test_one_program_per_shape(tiny):
  model, _ = tiny
  rng = np.random.default_rng(1)
  smollm3_jax.score(model, None, *zip(*_pairs(rng, 512, [(10, 5)] * 3)), batch_size=4)
  before = scoring.TRACE_COUNTS["score"]
  # Other texts and lengths in the same (4-row, 16-token) bucket: no new program.
  smollm3_jax.score(model, None, *zip(*_pairs(rng, 512, [(8, 2), (3, 9), (6, 6)])), batch_size=4)
  assert scoring.TRACE_COUNTS["score"] == before


def test_is_greedy_true_for_the_argmax_continuation(tiny):
  model, hf = tiny
  prompt = [5, 17, 99, 300]
  ids = list(prompt)
  for _ in range(6):  # transformers' own greedy continuation, token by token
    ids.append(int(_hf_logprobs(hf, ids)[-1].argmax()))
  s = smollm3_jax.score(model, None, [prompt, prompt], [ids[4:], ids[4:-1] + [(ids[-1] + 1) % 512]])
  assert s[0].is_greedy and not s[1].is_greedy


def test_score_equals_transformers_demo_text_and_chat(demo_model, demo_tokenizer, demo_hf_model):
  prompts = ["The capital of France is", "def add(a, b):\n    return", "Water boils at"]
  conts = [" Paris.", " a + b", " 100 degrees Celsius at sea level."]
  out = smollm3_jax.score(demo_model, demo_tokenizer, prompts, conts)
  chat = smollm3_jax.score(demo_model, demo_tokenizer, ["What is 2 + 2?"], ["2 + 2 = 4."], chat=True, thinking=False)[0]
  for p, c, s in zip(prompts, conts, out):
    ref, _ = _hf_continuation(demo_hf_model, demo_tokenizer.encode(p), demo_tokenizer.encode(c))
    np.testing.assert_allclose(s.logprobs, ref, atol=1e-4, rtol=0)
  rendered = demo_tokenizer.apply_chat_template(
    [{"role": "user", "content": "What is 2 + 2?"}], add_generation_prompt=True, enable_thinking=False
  )
  assert chat.prompt == rendered and chat.prompt_token_ids == demo_tokenizer.encode(rendered)
  ref, _ = _hf_continuation(demo_hf_model, chat.prompt_token_ids, demo_tokenizer.encode("2 + 2 = 4."))
  np.testing.assert_allclose(chat.logprobs, ref, atol=1e-4, rtol=0)
  assert out[0].log_likelihood > -10  # the demo model knows Paris (a sanity check of the text path)


def test_rolling_windows_equal_lm_eval():
  from lm_eval import utils

  rng = np.random.default_rng(2)
  for n, window, ctx in [(1, 4, 1), (10, 4, 1), (17, 5, 3), (9, 9, 9), (30, 8, 2), (8, 8, 1)]:
    ids = rng.integers(0, 100, n).tolist()
    ref = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(ids, 7, window, ctx)]
    assert scoring.rolling_windows(ids, 7, window, ctx) == [tuple(map(list, w)) for w in ref]


@pytest.mark.parametrize("context_len", [1, 9])
def test_rolling_perplexity_equals_direct(tiny, context_len):
  model, hf = tiny
  rng = np.random.default_rng(3)
  doc = rng.integers(3, 512, 70).tolist()
  window = 24  # 70 tokens need 3+ windows
  res = smollm3_jax.score_rolling(
    model, None, [doc, doc[:10]], window=window, context_len=context_len, prefix_token_id=1, batch_size=4
  )
  # Direct: each token scored by one transformers forward over the `window` tokens before it at most,
  # always keeping >= context_len of context (the windows lm-eval defines), written out here.
  expected, pos = [], 0
  seq = [1] + doc
  while pos < len(doc):
    if pos == 0:
      span = min(window, len(doc))
      lp = _hf_logprobs(hf, seq[:span])
      expected += [lp[t, seq[t + 1]] for t in range(span)]
    else:
      span = min(len(doc) - pos, window - context_len + 1)
      end = pos + span  # predict doc[pos:end] from the window of `window` inputs ending at doc[end - 2]
      inputs = doc[end - 1 - window : end - 1]
      lp = _hf_logprobs(hf, inputs)
      expected += [lp[len(inputs) - span + j, doc[pos + j]] for j in range(span)]
    pos += span
  expected = np.asarray(expected)
  r = res[0]
  assert r.num_tokens == 70 and r.num_windows >= 3
  np.testing.assert_allclose(r.logprobs, expected, atol=1e-4, rtol=0)
  assert r.perplexity == pytest.approx(math.exp(-expected.sum() / 70), rel=1e-5)
  assert res[1].num_windows == 1 and res[1].num_tokens == 10


def test_rolling_demo_text_longer_than_window(demo_model, demo_tokenizer, demo_hf_model):
  text = (
    "The quick brown fox jumps over the lazy dog. " * 3 + "Pack my box with five dozen liquor jugs. "
    "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow."
  )
  ids = demo_tokenizer.encode(text)
  w = 16
  r = smollm3_jax.score_rolling(demo_model, demo_tokenizer, text, window=w)[0]
  assert len(ids) > 3 * w and r.num_windows == -(-len(ids) // w)
  # Disjoint windows (context_len 1): window k predicts ids[wk : wk + w], each window one forward over
  # the w tokens (BOS first) before its last prediction; the short last window keeps a longer context.
  expected, seq = [], [demo_tokenizer.bos_token_id] + ids
  for k in range(r.num_windows):
    end = min(w * k + w, len(ids))
    inputs, preds = seq[max(end - w, 0) : end], ids[w * k : end]
    lp = _hf_logprobs(demo_hf_model, inputs)
    expected += [lp[len(inputs) - len(preds) + j, t] for j, t in enumerate(preds)]
  np.testing.assert_allclose(r.logprobs, expected, atol=1e-4, rtol=0)
  assert r.perplexity == pytest.approx(math.exp(-np.sum(expected) / len(ids)), rel=1e-5)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(prompts=[[1, 2]], continuations=[[3], [4]]), "one per prompt"),
    (dict(prompts=["a"], continuations=["b"]), "a tokenizer is needed"),
    (dict(prompts=[[1, 2]], continuations=[[]]), "continuation 0 is empty"),
    (dict(prompts=[[1, 2]], continuations=[[3, 600]]), r"continuation 0\[1\] = 600"),
    (dict(prompts=[[1, 700]], continuations=[[3]]), r"prompt 0\[1\] = 700"),
    (dict(prompts=[[1] * 500], continuations=[[3] * 20]), "positions; the model has 512"),
    (dict(prompts=[[1]], continuations=[[3]], batch_size=0), "batch_size"),
    (dict(prompts=[[1]], continuations=[3.5]), "continuation 0 must be"),
  ],
)
def test_bad_input_fails_before_compiling(tiny, kwargs, message):
  model, _ = tiny
  before = scoring.TRACE_COUNTS["score"]
  with pytest.raises(ValueError, match=message):
    smollm3_jax.score(model, None, **kwargs)
  assert scoring.TRACE_COUNTS["score"] == before


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(window=0), "window"),
    (dict(window=600), "window"),
    (dict(window=8, context_len=9), "context_len"),
    (dict(texts=[[]]), "text 0 is empty"),
    (dict(prefix_token_id=512), "prefix_token_id"),
  ],
)
def test_rolling_bad_input(tiny, kwargs, message):
  model, _ = tiny
  kwargs = {"texts": [[1, 2, 3]], "prefix_token_id": 1, **kwargs}
  with pytest.raises(ValueError, match=message):
    smollm3_jax.score_rolling(model, None, **kwargs)


def _run_score_script(*args):
  import os
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run(
    [sys.executable, os.path.join(root, "experiments", "score.py"), *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=root,
  )


def test_score_script_writes_jsonl(tmp_path, demo_model, demo_tokenizer):
  import json

  rows = [
    {"id": "a", "prompt": "The capital of France is", "continuation": " Paris."},
    {"id": "b", "prompt": "Water boils at", "continuation": [220, 1135]},
  ]
  (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  out = tmp_path / "out.jsonl"
  proc = _run_score_script(
    "--checkpoint=demo", f"--input={tmp_path / 'in.jsonl'}", f"--output={out}", "--noprogress", "--dtype=float32"
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = [json.loads(line) for line in out.read_text().splitlines()]
  ref = smollm3_jax.score(demo_model, demo_tokenizer, [r["prompt"] for r in rows], [r["continuation"] for r in rows])
  assert [g["id"] for g in got] == ["a", "b"]
  for g, s in zip(got, ref):
    assert g["token_ids"] == s.token_ids and g["is_greedy"] == s.is_greedy and g["num_tokens"] == len(s.token_ids)
    np.testing.assert_allclose(g["logprobs"], s.logprobs, atol=1e-5)
    assert g["log_likelihood"] == pytest.approx(s.log_likelihood, abs=1e-4)
  assert "scored 2 continuations" in proc.stdout


def test_score_script_refuses_bad_lines_before_loading(tmp_path):
  (tmp_path / "in.jsonl").write_text('{"prompt": "a", "continuation": "b"}\n{"prompt": "c"}\n')
  proc = _run_score_script(f"--input={tmp_path / 'in.jsonl'}", f"--output={tmp_path / 'o.jsonl'}")
  assert proc.returncode != 0 and "in.jsonl:2: expected an object with 'prompt', 'continuation'" in proc.stderr
  proc = _run_score_script(f"--input={tmp_path / 'in.jsonl'}", f"--output={tmp_path / 'o.jsonl'}", "--rolling")
  assert proc.returncode != 0 and "in.jsonl:1: expected an object with 'text'" in proc.stderr


def test_sequences_longer_than_one_chunk(tiny):
  model, hf = tiny
  rng = np.random.default_rng(4)
  # 279 and 309 positions: a 512-slot program that runs in two chunks of scoring.CHUNK (256); the
  # continuations straddle the chunk edge.
  pairs = _pairs(rng, model.config.vocab_size, [(250, 30), (10, 300)])
  assert scoring.CHUNK == 256
  out = smollm3_jax.score(model, None, [p for p, _ in pairs], [c for _, c in pairs], batch_size=2)
  for (p, c), s in zip(pairs, out):
    ref, ref_argmax = _hf_continuation(hf, p, c)
    np.testing.assert_allclose(s.logprobs, ref, atol=1e-4, rtol=0)
    assert s.greedy_token_ids == ref_argmax.tolist()
