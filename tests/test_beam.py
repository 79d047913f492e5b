"""Beam search against transformers' generate(num_beams=4, do_sample=False): the returned beams'
tokens and sequences_scores, on a tiny random SmolLM3 and on the demo checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smollm3_jax
from smollm3_jax.generation.beam import beam_search

NEW = 20
BEAMS = 4


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
  """transformers' beam search on a tiny model is all per-step overhead: torch's thread pool makes it
  ~30x slower on a busy 2-core machine."""
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(threads)


def _prompts(n=5, seed=3):
  rs = np.random.RandomState(seed)
  return [rs.randint(3, 500, rs.randint(2, 12)).tolist() for _ in range(n)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_hf_model):
  """A tiny random SmolLM3 with decisive logits (LM head x4, as test_generate's) whose eos ids are
  the three tokens its beams (searched without a stop id) produce most often: hypotheses finish at
  different lengths, prompts finish before the budget (the stop heuristic and early_stopping act),
  and stop-id continuations rank below the first num_beams too."""
  ref = make_hf_model(seed=7, tie_word_embeddings=False)
  counts = np.zeros(ref.config.vocab_size, np.int64)
  with torch.no_grad():
    ref.lm_head.weight.mul_(4.0)
    for p in _prompts():
      out = ref.generate(
        torch.tensor([p]),
        max_new_tokens=NEW,
        num_beams=BEAMS,
        num_return_sequences=BEAMS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
        top_k=None,
        top_p=None,
      )
      counts += np.bincount(out[:, len(p) :].reshape(-1), minlength=len(counts))
  ref.config.eos_token_id = np.argsort(-counts, kind="stable")[:3].tolist()
  ref.generation_config.eos_token_id = ref.config.eos_token_id
  path = tmp_path_factory.mktemp("tiny_beam")
  ref.save_pretrained(path)
  return smollm3_jax.from_pretrained(str(path)), ref


def _hf_beams(ref, prompt, stop_ids, length_penalty, early_stopping, new=NEW):
  """transformers' returned beams (generated tokens, trimmed at their length) and scores."""
  with torch.no_grad():
    out = ref.generate(
      torch.tensor([prompt]),
      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
      max_new_tokens=new,
      num_beams=BEAMS,
      num_return_sequences=BEAMS,
      do_sample=False,
      length_penalty=length_penalty,
      early_stopping=early_stopping,
      eos_token_id=list(stop_ids) or None,
      pad_token_id=0,
      top_k=None,
      top_p=None,
      temperature=None,
      return_dict_in_generate=True,
      output_scores=True,
    )
  lengths = (out.beam_indices >= 0).sum(-1).tolist()
  seqs = [out.sequences[j, len(prompt) : len(prompt) + lengths[j]].tolist() for j in range(BEAMS)]
  return seqs, out.sequences_scores.tolist()


def _check(res, refs):
  for i, (seqs, scores) in enumerate(refs):
    assert res.beams[i] == seqs, (i, res.beams[i], seqs)
    # Sums of up to NEW f32 log-probs, each ~1e-5 from torch's on one CPU and up to ~3e-5 on another
    # (XLA:CPU's and torch's matmul kernels round differently by host), x length ** 0.5 at length
    # penalty -0.5: 5e-4 absolute. The beams themselves must be equal token for token (above).
    np.testing.assert_allclose(res.beam_scores[i], scores, atol=5e-4, rtol=2e-6)
    assert res.sequences[i] == seqs[0] and res.scores[i] == res.beam_scores[i][0]


@pytest.mark.parametrize(
  "length_penalty,early_stopping", [(1.0, False), (-0.5, False), (0.5, True), (0.5, "never"), (1.5, "never")]
)
def test_tiny_beam_search_equals_transformers(tiny, length_penalty, early_stopping):
  model, ref = tiny
  stop = ref.config.eos_token_id
  prompts = _prompts()
  res = beam_search(
    model,
    None,
    prompts,
    num_beams=BEAMS,
    length_penalty=length_penalty,
    early_stopping=early_stopping,
    max_new_tokens=NEW,
    stop_ids=stop,
    num_return_sequences=BEAMS,
  )
  refs = [_hf_beams(ref, p, stop, length_penalty, early_stopping) for p in prompts]
  _check(res, refs)
  lengths = [[len(s) for s in seqs] for seqs, _ in refs]
  assert any(min(row) < NEW for row in lengths)  # hypotheses finished on a stop id
  if length_penalty < 1.0:
    assert any(max(row) < NEW for row in lengths)  # a prompt finished before the budget


def test_beam_search_without_stop_ids_runs_to_the_budget(tiny):
  model, ref = tiny
  prompts = _prompts(5, seed=4)  # as many prompts as above: the same compiled program
  res = beam_search(model, None, prompts, num_beams=BEAMS, max_new_tokens=NEW, stop_ids=[], num_return_sequences=2)
  refs = [_hf_beams(ref, p, [], 1.0, False) for p in prompts]
  for i, (seqs, scores) in enumerate(refs):
    assert res.beams[i] == seqs[:2] and all(len(s) == NEW for s in res.beams[i])
    np.testing.assert_allclose(res.beam_scores[i], scores[:2], atol=1e-4, rtol=0)


class _VLLMPenalties:
  """vLLM's frequency / presence penalties over each row's generated tokens (a transformers logits
  processor: transformers has none)."""

  def __init__(self, freq, pres, prompt_len):
    self.freq, self.pres, self.prompt_len = freq, pres, prompt_len

  def __call__(self, input_ids, scores):
    out = scores.clone()
    for r in range(scores.shape[0]):
      counts = torch.bincount(input_ids[r, self.prompt_len :], minlength=scores.shape[-1]).to(scores.dtype)
      out[r] -= float(np.float32(self.freq)) * counts + float(np.float32(self.pres)) * (counts > 0).to(scores.dtype)
    return out


PROCESSOR_ROWS = [
  {},
  dict(no_repeat_ngram_size=2),
  dict(repetition_penalty=1.5),
  dict(frequency_penalty=1.0, presence_penalty=0.5),
  dict(min_new_tokens=8, logit_bias={7: 2.0}),
]


def test_beam_search_with_processors_equals_transformers(tiny):
  """The logits processors act on each beam's log-probabilities, per prompt, as transformers'."""
  from transformers import LogitsProcessorList

  model, ref = tiny
  stop = ref.config.eos_token_id
  prompts = _prompts()
  names = sorted({k for r in PROCESSOR_ROWS for k in r})
  from smollm3_jax.generation.sampling import SETTINGS

  kwargs = {k: [r.get(k, SETTINGS[k].off) for r in PROCESSOR_ROWS] for k in names}
  res = beam_search(
    model, None, prompts, num_beams=BEAMS, max_new_tokens=NEW, stop_ids=stop, num_return_sequences=BEAMS, **kwargs
  )
  plain = beam_search(
    model, None, prompts, num_beams=BEAMS, max_new_tokens=NEW, stop_ids=stop, num_return_sequences=BEAMS
  )
  for i, (p, row) in enumerate(zip(prompts, PROCESSOR_ROWS)):
    extra = LogitsProcessorList()
    if "frequency_penalty" in row:
      extra.append(_VLLMPenalties(row["frequency_penalty"], row["presence_penalty"], len(p)))
    with torch.no_grad():
      out = ref.generate(
        torch.tensor([p]),
        attention_mask=torch.ones(1, len(p), dtype=torch.long),
        max_new_tokens=NEW,
        num_beams=BEAMS,
        num_return_sequences=BEAMS,
        do_sample=False,
        eos_token_id=list(stop),
        pad_token_id=0,
        top_k=None,
        top_p=None,
        temperature=None,
        return_dict_in_generate=True,
        output_scores=True,
        logits_processor=extra,
        no_repeat_ngram_size=row.get("no_repeat_ngram_size"),
        repetition_penalty=row.get("repetition_penalty"),
        min_new_tokens=row.get("min_new_tokens"),
        sequence_bias=[[[t], b] for t, b in row.get("logit_bias", {}).items()] or None,
      )
    lengths = (out.beam_indices >= 0).sum(-1).tolist()
    seqs = [out.sequences[j, len(p) : len(p) + lengths[j]].tolist() for j in range(BEAMS)]
    assert res.beams[i] == seqs, (i, row)
    np.testing.assert_allclose(res.beam_scores[i], out.sequences_scores.tolist(), atol=1e-4, rtol=2e-6)
    assert (res.beams[i] != plain.beams[i]) == bool(row), (i, row)  # each processor changed the beams


def test_beam_search_refuses_sampling_settings(tiny):
  model, _ = tiny
  with pytest.raises(ValueError, match="top_p"):
    beam_search(model, None, [[1, 2]], num_beams=2, max_new_tokens=2, top_p=0.9)
  with pytest.raises(ValueError, match="typical"):
    beam_search(model, None, [[1, 2]], num_beams=2, max_new_tokens=2, typical=0.9)


def test_demo_beam_search_equals_transformers(demo_model, demo_tokenizer, demo_hf_model):
  texts = ["The capital of France is", "def fibonacci(n):", "Once upon a time", "1, 2, 3, 4,", "The best way to learn"]
  prompts = [demo_tokenizer.encode(t) for t in texts]
  stop = list(demo_tokenizer.stop_token_ids)
  for length_penalty in (1.0, 0.0):
    res = beam_search(
      demo_model,
      demo_tokenizer,
      prompts,
      num_beams=BEAMS,
      length_penalty=length_penalty,
      max_new_tokens=8,
      stop_ids=stop,
      num_return_sequences=BEAMS,
    )
    _check(res, [_hf_beams(demo_hf_model, p, stop, length_penalty, False, new=8) for p in prompts])
    assert res.texts[0] == demo_tokenizer.decode(res.sequences[0])


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(num_beams=0), "num_beams"),
    (dict(num_return_sequences=5), "num_return_sequences"),
    (dict(length_penalty=float("nan")), "length_penalty"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(stop_ids=[10_000]), "stop_ids"),
    (dict(prompt_ids=[[]]), "prompt_ids"),
    (dict(prompt_ids=[[1, 600]]), "prompt_ids"),
    (dict(max_new_tokens=600), "context"),
  ],
)
def test_bad_arguments_raise_before_compiling(tiny, kwargs, match):
  model, _ = tiny
  args = dict(prompt_ids=[[1, 2, 3]], num_beams=BEAMS, max_new_tokens=4, stop_ids=[2])
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    beam_search(model, None, args.pop("prompt_ids"), **args)


def test_generate_with_num_beams_runs_beam_search():
  """generate(num_beams=...) returns beam_search's hypotheses as completions (best first, with their
  scores) and refuses sampling settings before compiling."""
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.generation.beam import beam_search
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn.model import SmolLM3

  model = SmolLM3(C.tiny(num_layers=2), rngs=nnx.Rngs(5))
  prompts = [[5, 9, 14, 3], [7, 7, 21]]
  direct = beam_search(
    model, None, prompts, num_beams=3, length_penalty=0.5, max_new_tokens=5, stop_ids=[], num_return_sequences=2
  )
  res = smollm3_jax.generate(
    model, None, prompts, num_beams=3, length_penalty=0.5, max_new_tokens=5, stop_ids=[], num_return_sequences=2
  )
  assert [c.token_ids for c in res] == [b for beams in direct.beams for b in beams]
  assert [c.score for c in res] == [s for scores in direct.beam_scores for s in scores]
  assert res[0].settings["num_beams"] == 3 and res[0].stop_reason == "max_tokens"
  with pytest.raises(ValueError, match="temperature"):
    smollm3_jax.generate(model, None, prompts, num_beams=3, temperature=0.7, max_new_tokens=5)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(stop=["\n"]), "stop"),
    (dict(logprobs=True), "logprobs"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(newline_limit=2), "newline_limit"),
    (dict(context_length=8), "context_length 8"),
  ],
)
def test_generate_with_beams_refuses_what_beam_search_does_not_do(tiny, kwargs, match):
  """generate(num_beams > 1) applies or refuses each argument; it used to drop stop strings, log-probs,
  the newline guard and the context length in silence (a 40-position context used 53 positions)."""
  model, _ = tiny
  with pytest.raises(ValueError, match=match):
    smollm3_jax.generate(model, None, [[1, 2, 3]], num_beams=2, max_new_tokens=6, stop_ids=[], **kwargs)
  # A context that holds the prompt and the budget is accepted.
  ok = smollm3_jax.generate(model, None, [[1, 2, 3]], num_beams=2, max_new_tokens=6, stop_ids=[], context_length=9)
  assert len(ok[0].token_ids) == 6


def test_generate_with_beams_reports_its_compile_run_and_cache(tiny):
  """Beam stats are the search's own: compile seconds apart from the run (0 once compiled), the cache
  length and steps (they printed 0, and a rate that counted the compile)."""
  model, _ = tiny
  kw = dict(num_beams=2, max_new_tokens=5, stop_ids=[])
  first = smollm3_jax.generate(model, None, [[1, 2, 3], [4, 5]], **kw).stats
  again = smollm3_jax.generate(model, None, [[1, 2, 3], [4, 5]], **kw).stats
  assert first.compile_seconds > 0 and again.compile_seconds == 0
  for s in (first, again):
    assert s.cache_length >= 3 + 5 and s.decode_steps == 5 and s.decode_seconds > 0
    assert s.time_to_first_token >= s.decode_seconds + s.compile_seconds - 1e-6
    assert s.decode_tokens_per_second == pytest.approx(s.generated_tokens / s.decode_seconds)
