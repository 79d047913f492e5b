"""The sampling step sorts nothing of vocabulary width, with every filter on (top-k, top-p, min-p,
typical-p, epsilon, eta) and every processor on."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from smollm3_jax.generation import sampling

_PROCESS = jax.jit(sampling.process_logits)


def _sorts(hlo: str) -> list[str]:
  return [line for line in hlo.splitlines() if re.search(r"\bsort\(", line)]


def test_sampling_step_has_no_vocabulary_sort():
  b, v = 4, 1000
  params = sampling.SamplingParams.make(
    b,
    temperature=[0.7, 1.0, 0.7, 0.0],
    top_k=[0, 50, 0, 0],
    top_p=[0.95, 0.9, 1.0, 1.0],
    min_p=[0.05, 0.0, 0.1, 0.0],
    typical_p=[0.9, 1.0, 0.5, 1.0],
    epsilon_cutoff=[0.0, 1e-3, 0.0, 0.0],
    eta_cutoff=[1e-3, 0.0, 0.0, 0.0],
    no_repeat_ngram_size=[0, 2, 3, 0],
    frequency_penalty=0.5,
    presence_penalty=[0.0, 1.0, 0.0, 0.0],
    min_new_tokens=[0, 3, 0, 0],
    logit_bias={5: 1.0},
    repetition_penalty=1.1,
  )
  ctx = sampling.init_context(b, v, 64)

  def step(logits, ctx, params, keys, n):
    return sampling.sample_tokens(
      logits, ctx, params, sampling.step_keys(keys, n), num_generated=n, stop_ids=jnp.asarray([3, -1], jnp.int32)
    )

  hlo = (
    jax.jit(step)
    .lower(jnp.zeros((b, v)), ctx, params, sampling.row_keys(jnp.arange(b)), jnp.zeros((b,), jnp.int32))
    .compile()
    .as_text()
  )
  assert "conditional" in hlo or "select" in hlo  # the filters are in the program
  assert not _sorts(hlo), _sorts(hlo)[:3]
  # The check can fail: a program that sorts the logits shows it.
  text = jax.jit(lambda x: jnp.sort(x, axis=-1)).lower(jnp.zeros((4, 1000))).compile().as_text()
  assert _sorts(text)


def test_decode_program_has_no_vocabulary_sort():
  """The engine's compiled decode program, with every filter and processor on in some row."""
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.generation.engine import Engine
  from smollm3_jax.nn import config as C

  model = smollm3_jax.SmolLM3(C.tiny(vocab_size=1000), dtype=jnp.float32, rngs=nnx.Rngs(0))
  engine = Engine(model, None)
  smollm3_jax.generate(
    model,
    None,
    [[5, 6, 7]] * 4,
    engine=engine,
    max_new_tokens=4,
    stop_ids=[3],
    temperature=[0.7, 1.0, 0.7, 0.0],
    top_k=[0, 50, 0, 0],
    top_p=[0.95, 0.9, 1.0, 1.0],
    min_p=[0.05, 0.0, 0.1, 0.0],
    typical_p=[0.9, 1.0, 0.5, 1.0],
    eta_cutoff=[1e-3, 0, 0, 0],
    epsilon_cutoff=[0, 1e-3, 0, 0],
    no_repeat_ngram_size=[0, 2, 3, 0],
    frequency_penalty=0.5,
    presence_penalty=[0.0, 1.0, 0.0, 0.0],
    min_new_tokens=[0, 3, 0, 0],
    logit_bias={5: 1.0},
  )
  programs = [exe.as_text() for exe in engine.executables("decode")]
  assert programs and all("while" in hlo for hlo in programs)  # the decode loop is there
  for hlo in programs:
    assert not _sorts(hlo), _sorts(hlo)[:3]


def test_signed_zero_ties_are_kept_like_transformers():
  """-0.0 and +0.0 are equal values: a top-k cut-off at zero keeps both, as TopKLogitsWarper does
  (order keys that told them apart dropped one)."""
  import torch
  from transformers.generation.logits_process import TopKLogitsWarper

  logits = np.asarray([[0.0, -0.0, -1.0, -2.0], [-0.0, 0.0, 1.0, -3.0]], np.float32)
  ours = np.asarray(
    _PROCESS(
      jnp.asarray(logits),
      sampling.init_context(2, 4, 0),
      sampling.SamplingParams.make(2, temperature=1.0, top_k=[1, 2]),
    )
  )
  for row, k in enumerate((1, 2)):
    ref = TopKLogitsWarper(k)(None, torch.tensor(logits[row : row + 1])).numpy()
    np.testing.assert_array_equal(np.isinf(ours[row : row + 1]), np.isinf(ref))
  ours_p = np.asarray(
    _PROCESS(
      jnp.asarray(logits[:1]),
      sampling.init_context(1, 4, 0),
      sampling.SamplingParams.make(1, temperature=1.0, top_p=0.3),
    )
  )
  assert np.isfinite(ours_p[0, :2]).all()  # the two zeros are one value: both kept or both dropped
