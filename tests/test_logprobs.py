"""Per-token log-probabilities recorded in the decode loop, against transformers: raw ones against
``generate(output_logits=True)``, processed ones against ``compute_transition_scores`` on the scores
of transformers' own processors run along the same tokens, top-N ids against ``torch.topk``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
  LogitsProcessorList,
  MinPLogitsWarper,
  RepetitionPenaltyLogitsProcessor,
  TemperatureLogitsWarper,
  TopKLogitsWarper,
  TopPLogitsWarper,
)

import smollm3_jax

TOP = 5
# Per row: greedy, greedy with a repetition penalty, and sampled rows with each filter.
ROWS = [
  dict(temperature=0.0),
  dict(temperature=0.0, repetition_penalty=1.3),
  dict(temperature=0.8, top_k=20, seed=1),
  dict(temperature=1.2, top_p=0.9, repetition_penalty=1.2, seed=2),
  dict(temperature=0.7, min_p=0.1, seed=3),
]


def _processors(row) -> LogitsProcessorList:
  """transformers' chain for one row, in GenerationMixin._get_logits_processor's order."""
  out = LogitsProcessorList()
  if row.get("repetition_penalty", 1.0) != 1.0:
    out.append(RepetitionPenaltyLogitsProcessor(row["repetition_penalty"]))
  if row["temperature"] > 0:
    out.append(TemperatureLogitsWarper(row["temperature"]))
    if row.get("top_k"):
      out.append(TopKLogitsWarper(row["top_k"]))
    if row.get("top_p", 1.0) < 1.0:
      out.append(TopPLogitsWarper(row["top_p"]))
    if row.get("min_p"):
      out.append(MinPLogitsWarper(row["min_p"]))
  return out


def _check_against_transformers(model, hf, prompts, new_tokens=8, processed_tol=1e-4):
  settings = {
    k: [r.get(k, smollm3_jax.generation.sampling.SETTINGS[k].off) for r in ROWS]
    for k in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")
  }
  res = smollm3_jax.generate(
    model,
    None,
    prompts,
    max_new_tokens=new_tokens,
    stop_ids=[],
    logprobs=True,
    top_logprobs=TOP,
    seed=[r.get("seed", 0) for r in ROWS],
    **settings,
  )
  for prompt, row, c in zip(prompts, ROWS, res):
    lp = c.logprobs
    assert lp is not None and lp.logprob.shape == (new_tokens,) and lp.top_ids.shape == (new_tokens, TOP)
    ids = torch.tensor([prompt + c.token_ids])
    with torch.no_grad():
      # Raw: transformers generate's own logits, fed our tokens (greedy rows produce them itself).
      logits = hf(ids).logits[0, len(prompt) - 1 : -1].float()  # [T, V] the logits each token was drawn from
      if row["temperature"] == 0 and row.get("repetition_penalty", 1.0) == 1.0:
        out = hf.generate(
          torch.tensor([prompt]),
          attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
          max_new_tokens=new_tokens,
          do_sample=False,
          output_logits=True,
          return_dict_in_generate=True,
          eos_token_id=None,
          pad_token_id=0,
        )
        assert out.sequences[0, len(prompt) :].tolist() == c.token_ids
        logits = torch.cat(out.logits).float()
      raw = torch.log_softmax(logits, -1)
      tok = torch.tensor(c.token_ids)
      np.testing.assert_allclose(lp.logprob, raw[torch.arange(new_tokens), tok].numpy(), atol=1e-4)
      # Processed: transformers' processors along the same sequence, then compute_transition_scores.
      procs = _processors(row)
      scores = tuple(procs(ids[:, : len(prompt) + t], logits[t : t + 1].clone()) for t in range(new_tokens))
      want = hf.compute_transition_scores(ids, scores, normalize_logits=True)[0].numpy()
      # The two models' raw logits differ by ~1e-5 to 1e-4 in f32; temperature T scales that by 1/T and
      # a repetition penalty p by up to p (it multiplies negative logits).
      t = row["temperature"]
      tol = processed_tol * max(1.0, 1.0 / t if t else 1.0) * max(1.0, row.get("repetition_penalty", 1.0))
      np.testing.assert_allclose(lp.processed_logprob, want, atol=tol)
      # Entropies, rank and the top-N alternatives.
      p = torch.exp(raw)
      np.testing.assert_allclose(lp.entropy, (-(p * raw).sum(-1)).numpy(), atol=1e-4)
      norm = torch.log_softmax(torch.cat(scores), -1)
      ent = -torch.where(torch.isfinite(norm), torch.exp(norm) * norm, torch.zeros(()))
      np.testing.assert_allclose(lp.processed_entropy, ent.sum(-1).numpy(), atol=tol)
      chosen = logits[torch.arange(new_tokens), tok]
      assert lp.rank.tolist() == (1 + (logits > chosen[:, None]).sum(-1)).tolist()
      top = torch.topk(raw, TOP, -1)
      assert lp.top_ids.tolist() == top.indices.tolist()
      np.testing.assert_allclose(lp.top_logprobs, top.values.numpy(), atol=1e-4)
  return res


def test_recorded_logprobs_equal_transformers_on_a_tiny_smollm3(hf_checkpoints):
  ckpt = hf_checkpoints("untied")
  model = smollm3_jax.from_pretrained(ckpt.path)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(3, 500, n).tolist() for n in (4, 9, 6, 13, 7)]
  res = _check_against_transformers(model, ckpt.model, prompts)
  # Off by default: no record, and the same tokens.
  plain = smollm3_jax.generate(
    model,
    None,
    prompts,
    max_new_tokens=8,
    stop_ids=[],
    temperature=[r["temperature"] for r in ROWS],
    top_k=[r.get("top_k", 0) for r in ROWS],
    top_p=[r.get("top_p", 1.0) for r in ROWS],
    min_p=[r.get("min_p", 0.0) for r in ROWS],
    repetition_penalty=[r.get("repetition_penalty", 1.0) for r in ROWS],
    seed=[r.get("seed", 0) for r in ROWS],
  )
  assert all(c.logprobs is None for c in plain)
  assert [c.token_ids for c in plain] == [c.token_ids for c in res]


def test_recorded_logprobs_equal_transformers_on_the_demo(demo_model, demo_tokenizer, demo_hf_model):
  texts = ["What is the capital of France?", "Name three colours.", "Write a haiku.", "Count to five.", "Say hello."]
  _, prompts = smollm3_jax.text.prompts.render_prompts(demo_tokenizer, texts)
  # The demo's raw log-probabilities agree within 1e-4 (checked); the processed ones are compared
  # against transformers' log-softmax of its own logits, two roundings away: 2e-4.
  _check_against_transformers(demo_model, demo_hf_model, prompts, new_tokens=6, processed_tol=2e-4)


def test_bad_logprob_arguments_are_refused_before_compiling(demo_model):
  with pytest.raises(ValueError, match="top_logprobs"):
    smollm3_jax.generate(demo_model, None, [[1, 2, 3]], top_logprobs=21, max_new_tokens=2)
  with pytest.raises(ValueError, match="logprobs"):
    smollm3_jax.generate(demo_model, None, [[1, 2, 3]], logprobs="yes", max_new_tokens=2)


def test_sweep_records_logprobs_per_row_and_cell_means(tmp_path, demo_tokenizer):
  """record_logprobs: each row carries its tokens' log-probabilities and entropies (aligned with
  token_ids) and their means; the summary has the cells' mean_logprob / mean_entropy."""
  import csv
  import json

  from _helpers import tiny_sweep_config

  from smollm3_jax import sweep

  tok_dir = str(tmp_path / "tok")
  demo_tokenizer.save_pretrained(tok_dir)
  cfg = tiny_sweep_config(
    tok_dir, record_logprobs=True, **{"sweep.thinking": (False,), "sweep.repetition_penalty": (1.0,)}
  )
  model, tok = sweep.load_model_and_tokenizer(cfg.model)
  out = sweep.run_sweep(cfg, str(tmp_path / "wd"), model=model, tokenizer=tok, log=lambda s: None)
  rows = [json.loads(l) for l in (tmp_path / "wd" / "generations.jsonl").read_text().splitlines()]
  assert len(rows) == out.total_rows == 6
  for r in rows:
    assert len(r["logprobs"]["logprob"]) == len(r["token_ids"]) == len(r["logprobs"]["entropy"])
    assert all(v <= 0 for v in r["logprobs"]["logprob"])
    assert r["mean_logprob"] == pytest.approx(np.mean(r["logprobs"]["logprob"]), abs=1e-4)
    if r["settings"]["temperature"] == 0:  # greedy with no penalty: the sampled distribution is the raw one
      assert r["logprobs"]["processed_logprob"] == r["logprobs"]["logprob"]
  with open(tmp_path / "wd" / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  for s in summary:
    mine = [r for r in rows if r["cell_key"] == s["run_key"]]
    assert float(s["mean_logprob"]) == pytest.approx(np.mean([r["mean_logprob"] for r in mine]), abs=1e-6)
    assert float(s["mean_entropy"]) > 0
