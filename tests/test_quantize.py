"""int8 mode: the quantizers against torch, the model against transformers running the same scheme,
quality on the demo checkpoint, and the engine's guarantees (row independence, one compile)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from flax import nnx

import smollm3_jax
from smollm3_jax.generation.engine import COMPILE_COUNTS, Engine
from smollm3_jax.nn import quantize as Q


def test_quantize_rows_matches_torch_per_channel():
  rs = np.random.RandomState(0)
  w = (rs.randn(24, 40) * rs.uniform(0.01, 3, (24, 1))).astype(np.float32)
  w[5] = 0.0  # an all-zero channel gets scale 1, codes 0
  q, scale = Q.quantize_rows(w, axis=1)
  assert q.dtype == np.int8 and scale.shape == (24, 1) and scale[5, 0] == 1.0
  with warnings.catch_warnings():  # torch deprecates its quantized tensors, not the arithmetic
    warnings.simplefilter("ignore", UserWarning)
    ref = torch.quantize_per_channel(
      torch.from_numpy(w),
      torch.from_numpy(scale[:, 0].astype(np.float64)),
      torch.zeros(24, dtype=torch.long),
      0,
      torch.qint8,
    )
  np.testing.assert_array_equal(q, ref.int_repr().numpy())
  np.testing.assert_array_equal(np.abs(q).max(axis=1)[np.arange(24) != 5], 127)
  assert np.all(np.abs(w - q * scale) <= scale / 2 + 1e-7)


@pytest.mark.parametrize("lead", [(1,), (3,), (2, 5)])
def test_int8_matmul_equals_integer_reference(lead):
  """quantize(x) @ q.T in exact integers, rescaled; the one-row case (padded to two) included."""
  import jax.numpy as jnp

  rs = np.random.RandomState(1)
  x = rs.randn(*lead, 48).astype(np.float32)
  q = rs.randint(-127, 128, (20, 48)).astype(np.int8)
  scale = rs.uniform(0.001, 0.1, 20).astype(np.float32)
  got = np.asarray(Q.int8_matmul(jnp.asarray(x), jnp.asarray(q), jnp.asarray(scale)))
  x2 = x.reshape(-1, 48)
  xs = np.abs(x2).max(-1, keepdims=True) / np.float32(127)
  xq = np.clip(np.rint(x2 / xs), -127, 127).astype(np.int64)
  ref = (xq @ q.astype(np.int64).T).astype(np.float64) * xs * scale
  assert got.shape == (*lead, 20)
  np.testing.assert_allclose(got.reshape(-1, 20), ref, rtol=1e-6, atol=1e-6)


def test_weight_only_int8_matmul_is_the_dequantized_product():
  """activations=False: x @ (q * scale).T, x unrounded, accumulated in f32."""
  import jax.numpy as jnp

  rs = np.random.RandomState(3)
  x = rs.randn(3, 5, 48).astype(np.float32)
  q = rs.randint(-127, 128, (20, 48)).astype(np.int8)
  scale = rs.uniform(0.001, 0.1, 20).astype(np.float32)
  got = np.asarray(Q.int8_matmul(jnp.asarray(x), jnp.asarray(q), jnp.asarray(scale), activations=False))
  ref = x.astype(np.float64) @ (q.astype(np.float64) * scale[:, None]).T
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  w8a8 = np.asarray(Q.int8_matmul(jnp.asarray(x), jnp.asarray(q), jnp.asarray(scale)))
  assert np.abs(w8a8 - ref).max() > 100 * np.abs(got - ref).max()  # the activations' rounding shows


def test_compare_logits_equals_torch():
  rs = np.random.RandomState(5)
  ref, got = rs.randn(7, 30) * 3, rs.randn(7, 30) * 3
  got[:3] = ref[:3] + 0.01 * rs.randn(3, 30)
  targets = rs.randint(0, 30, 7)
  q = Q.compare_logits(ref, got, targets)
  r, g = torch.from_numpy(ref), torch.from_numpy(got)
  kl = torch.nn.functional.kl_div(g.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="batchmean")
  assert q["mean_kl"] == pytest.approx(kl.item(), rel=1e-9)
  assert q["top1_agreement"] == pytest.approx(np.mean(ref.argmax(-1) == got.argmax(-1)))
  ce = torch.nn.functional.cross_entropy(g, torch.from_numpy(targets))
  assert q["perplexity"] == pytest.approx(np.exp(ce.item()), rel=1e-9)
  assert q["perplexity_reference"] == pytest.approx(
    np.exp(torch.nn.functional.cross_entropy(r, torch.from_numpy(targets)).item()), rel=1e-9
  )


def test_bad_mode_is_refused_before_loading():
  with pytest.raises(
    ValueError, match=r"quantize='int4' is not one of \('none', 'int8', 'int8_w8a8', 'int8_weights'\)"
  ):
    smollm3_jax.from_pretrained("/nonexistent/checkpoint", quantize="int4")


# --------------------------------------------------------------------------------------------
# The model against transformers running the same scheme
# --------------------------------------------------------------------------------------------
def _hf_with_int8_scheme(hf_model, ours, activations=True):
  """A copy of ``hf_model`` whose weights are our dequantized int8 weights and (``activations``) whose
  every Linear quantizes its input per token first (forward pre-hooks): the W8A8 scheme, in torch;
  without: the weight-only scheme."""
  import copy

  hm = copy.deepcopy(hf_model)
  deq = lambda lin: torch.from_numpy(np.asarray(lin.qkernel[...], np.float32) * np.asarray(lin.qscale[...])[:, None])
  with torch.no_grad():
    for layer, ref in zip(ours.layers, hm.model.layers):
      for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(ref.self_attn, name).weight.copy_(deq(getattr(layer.self_attn, name)))
      gate_up = deq(layer.mlp.gate_up_proj)
      ref.mlp.gate_proj.weight.copy_(gate_up[0::2])
      ref.mlp.up_proj.weight.copy_(gate_up[1::2])
      ref.mlp.down_proj.weight.copy_(deq(layer.mlp.down_proj))
    emb = ours.embed_tokens
    hm.model.embed_tokens.weight.copy_(
      torch.from_numpy(np.asarray(emb.qembedding[...], np.float32) * np.asarray(emb.qscale[...])[:, None])
    )
    if not hm.config.tie_word_embeddings:
      hm.lm_head.weight.copy_(deq(ours.lm_head))

  def fake_quant(module, args):
    x = args[0]
    s = x.abs().amax(-1, keepdim=True) / 127
    s = torch.where(s > 0, s, torch.ones_like(s))
    return (torch.clamp(torch.round(x / s), -127, 127) * s,)

  for module in hm.modules():
    if isinstance(module, torch.nn.Linear) and activations:
      module.register_forward_pre_hook(fake_quant)
  return hm


@pytest.mark.parametrize("mode", ["int8", "int8_weights"])  # on CPU "int8" is W8A8 (utils.backend)
@pytest.mark.parametrize(
  "variant", [dict(tie_word_embeddings=True), dict(tie_word_embeddings=False, attention_bias=True, mlp_bias=True)]
)
def test_int8_logits_equal_transformers_with_the_same_scheme(make_hf_model, tmp_path, variant, mode):
  # Four layers (the last one NoPE): deep enough to cover every part, shallow enough that no
  # activation lands within float rounding of a .5 tie, which would change one code and then grow.
  hf_model = make_hf_model(seed=4, num_hidden_layers=4, **variant)
  hf_model.save_pretrained(tmp_path)
  ours = smollm3_jax.from_pretrained(str(tmp_path), quantize=mode)
  assert Q.is_quantized(ours)
  activations = mode == "int8"
  assert ours.layers[0].mlp.down_proj.activations is activations and ours.embed_tokens.activations is activations
  ids = np.random.RandomState(2).randint(3, hf_model.config.vocab_size, (2, 17))
  got = np.asarray(ours(ids)[0])
  ref_model = _hf_with_int8_scheme(hf_model, ours, activations)
  with torch.no_grad():
    ref = ref_model(torch.from_numpy(ids)).logits.numpy()
    exact = hf_model(torch.from_numpy(ids)).logits.numpy()
  scale = np.abs(ref).max()
  err_scheme = np.abs(got - ref).max() / scale
  err_f32 = np.abs(got - exact).max() / scale
  assert err_scheme < 1e-5, err_scheme
  assert err_f32 > 100 * err_scheme  # the comparison tells the int8 model from the f32 one


def test_int8_demo_quality_and_answer(demo_model, demo_tokenizer):
  """Teacher-forced on a fixed English text: int8 agrees with f32 on most next-token choices.
  The int8 model is the session's demo model copied and quantized (the same weights as
  ``from_pretrained("demo", quantize="int8")``, without reading the file again)."""
  ours8 = Q.quantize_int8(nnx.clone(demo_model))
  text = open(os.path.join(os.path.dirname(__file__), "..", "data", "eval", "quality.txt")).read()
  ids = np.asarray([demo_tokenizer.encode(text)])
  q = Q.compare_logits(np.asarray(demo_model(ids)[0][0, :-1]), np.asarray(ours8(ids)[0][0, :-1]), ids[0, 1:])
  assert q["top1_agreement"] > 0.8 and q["mean_kl"] < 0.1, q
  assert q["perplexity"] < 1.2 * q["perplexity_reference"], q
  prompt = demo_tokenizer.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
  )
  # Plain greedy (the checkpoint's defaults sample with a penalty). The rendered text goes in as the
  # user message, as before: with the question rendered once, int8 greedy answers
  # "L'Étoile, la France, est la maquette de la" (f32: "The capital of France is Paris.").
  res = smollm3_jax.generate(
    ours8, demo_tokenizer, [prompt], max_new_tokens=16, temperature=0.0, repetition_penalty=1.0, top_p=1.0
  )
  assert "Paris" in res[0].text


# --------------------------------------------------------------------------------------------
# Engine guarantees hold in int8 mode
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny8(hf_checkpoints):
  return smollm3_jax.from_pretrained(hf_checkpoints("tied").path, quantize="int8")


def test_int8_rows_are_independent_and_compile_once(tiny8):
  rs = np.random.RandomState(3)
  prompts = [rs.randint(3, 500, n).tolist() for n in (4, 9, 13)]
  engine = Engine(tiny8)
  kw = dict(engine=engine, max_new_tokens=10, stop_ids=[])
  before = dict(COMPILE_COUNTS)
  batch = smollm3_jax.generate(tiny8, None, prompts, temperature=[0.0, 0.8, 1.1], seed=[1, 2, 3], **kw)
  again = smollm3_jax.generate(
    tiny8, None, prompts, temperature=[0.5, 0.8, 0.0], repetition_penalty=[1.0, 1.0, 1.3], seed=[9, 2, 4], **kw
  )
  assert COMPILE_COUNTS["prefill"] - before.get("prefill", 0) == 1
  assert COMPILE_COUNTS["decode"] - before.get("decode", 0) == 1
  assert batch[1].token_ids == again[1].token_ids  # same prompt, setting and seed in a new batch
  alone = smollm3_jax.generate(tiny8, None, [prompts[1]], temperature=0.8, seed=[2], max_new_tokens=10, stop_ids=[])
  assert alone[0].token_ids == batch[1].token_ids  # batch 1 pads the int8 products to two rows


def test_quantizing_twice_is_a_no_op(tiny8):
  before = np.asarray(tiny8.layers[0].self_attn.q_proj.qkernel[...]).copy()
  assert Q.quantize_int8(tiny8) is tiny8
  np.testing.assert_array_equal(np.asarray(tiny8.layers[0].self_attn.q_proj.qkernel[...]), before)
