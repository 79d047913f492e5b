"""Checkpoint loading: parity with transformers, KV-cache consistency, GGUF, and every error path."""

from __future__ import annotations

import json
import os
import shutil

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from flax import nnx
from gguf import GGMLQuantizationType as QT

from smollm3_jax.checkpoints import from_pretrained, load_config
from smollm3_jax.nn.kv_cache import KVCache

TOKENS = np.random.RandomState(0).randint(3, 512, size=(3, 24))


def hf_logits(model, tokens) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(tokens)).logits.float().numpy()


# One compiled forward per (config, dtype, shape): tiny models compile faster than they run eagerly.
_forward = nnx.jit(lambda model, tokens: model(tokens)[0])


def our_logits(model, tokens, jit: bool = True) -> np.ndarray:
  tokens = jnp.asarray(tokens, jnp.int32)
  logits = _forward(model, tokens) if jit else model(tokens)[0]
  return np.asarray(logits, np.float32)


def flat_params(model) -> dict:
  return {tuple(p): np.asarray(v[...], np.float32) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# --------------------------------------------------------------------------------------------
# Parity with transformers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["tied", "untied", "yarn", "sharded"])
def test_f32_logits_match_transformers(hf_checkpoints, variant):
  ckpt = hf_checkpoints(variant)
  if variant == "sharded":
    shards = [f for f in os.listdir(ckpt.path) if f.endswith(".safetensors")]
    assert len(shards) > 2 and os.path.isfile(os.path.join(ckpt.path, "model.safetensors.index.json"))
  model = from_pretrained(ckpt.path)
  cfg = model.config
  assert cfg.tie_word_embeddings == (variant != "untied")
  assert cfg.no_rope_layers == (1, 1, 1, 0, 1, 1, 1, 0)
  if variant == "yarn":
    assert cfg.rope_scaling.rope_type == "yarn" and cfg.rope_scaling.factor == 2.0
    assert cfg.rope_scaling.original_max_position_embeddings == 256
  ref = hf_logits(ckpt.model, TOKENS)
  assert np.abs(ref).max() > 1.0  # non-trivial logits
  np.testing.assert_allclose(our_logits(model, TOKENS), ref, rtol=0, atol=1e-4)


def _hf_bf16(path):
  """transformers' own bf16 load of a saved checkpoint, eager attention (softmax in f32, as ours)."""
  import transformers

  return transformers.SmolLM3ForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()


def test_bf16_load_is_close(hf_checkpoints):
  """bf16 logits against transformers run in bf16. XLA on CPU fuses elementwise ops and skips
  some of the intermediate bf16 roundings torch makes, so the two bf16 runs differ about as much
  as bf16 and f32 do: measured max |diff| 0.76 (transformers bf16 vs f32: 0.70) on |logits| <= 38,
  argmax agreement 0.944. The two places where SmolLM3 computes in f32 inside a bf16 model are
  checked exactly, module by module, below."""
  ckpt = hf_checkpoints("tied")
  model = from_pretrained(ckpt.path, dtype=jnp.bfloat16)
  assert model.embed_tokens.embedding[...].dtype == jnp.bfloat16
  logits = our_logits(model, TOKENS)
  ref = hf_logits(_hf_bf16(ckpt.path), TOKENS)
  print(
    f"bf16 vs transformers bf16: max |diff| {np.abs(logits - ref).max():.3g}, max |logit| "
    f"{np.abs(ref).max():.3g}, argmax agreement {(logits.argmax(-1) == ref.argmax(-1)).mean():.3f}"
  )
  assert np.abs(logits - ref).max() < 0.03 * np.abs(ref).max()
  assert (logits.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def _mismatch(ours, ref) -> float:
  """Share of bf16 outputs that differ from the reference (both as f32 arrays)."""
  ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
  assert ours.shape == ref.shape
  return float((ours != ref).mean())


def test_bf16_rmsnorm_equals_transformers_bf16():
  """RMSNorm on bf16 activations: variance in f32, as transformers. Measured: 0 of 131k outputs
  differ; a variance taken in bf16 changes 12 % of them (by one bf16 step)."""
  from transformers.models.smollm3.modeling_smollm3 import SmolLM3RMSNorm

  from smollm3_jax.nn.model import RMSNorm

  rng = np.random.default_rng(0)
  d = 2048
  x = (rng.standard_normal((64, d)) * 3 + rng.standard_normal((64, 1))).astype(np.float32)
  w = (1 + 0.1 * rng.standard_normal(d)).astype(np.float32)
  ours = RMSNorm(d, 1e-6, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  ours.scale[...] = jnp.asarray(w, jnp.bfloat16)
  out = nnx.jit(lambda m, x: m(x))(ours, jnp.asarray(x, jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  ref = SmolLM3RMSNorm(d, eps=1e-6).to(torch.bfloat16)
  with torch.no_grad():
    ref.weight.copy_(torch.from_numpy(w).to(torch.bfloat16))
    expected = ref(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
  assert _mismatch(out, expected) < 0.01


def test_bf16_attention_equals_transformers_bf16():
  """Grouped-query causal attention on bf16 q/k/v against transformers' eager attention in bf16
  (scores in bf16, softmax in f32, probabilities cast back). Measured: 6e-5 of the outputs differ
  (by one bf16 step); a softmax taken in bf16 changes 39 % of them."""
  import types

  from transformers.models.smollm3.modeling_smollm3 import eager_attention_forward

  from smollm3_jax.nn.model import attend

  rng = np.random.default_rng(0)
  b, t, h, kvh, d = 2, 96, 8, 2, 64
  q = (rng.standard_normal((b, t, h, d)) * 2).astype(np.float32)
  k = (rng.standard_normal((b, kvh, t, d)) * 2).astype(np.float32)
  v = rng.standard_normal((b, kvh, t, d)).astype(np.float32)
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  bf = lambda a: jnp.asarray(a, jnp.bfloat16)
  out = jax.jit(attend)(bf(q), bf(k), bf(v), mask)
  assert out.dtype == jnp.bfloat16
  tb = lambda a: torch.from_numpy(a).to(torch.bfloat16)
  causal = torch.full((t, t), torch.finfo(torch.bfloat16).min, dtype=torch.bfloat16).triu(1)[None, None]
  module = types.SimpleNamespace(num_key_value_groups=h // kvh, training=False)
  with torch.no_grad():
    expected, _ = eager_attention_forward(module, tb(q).transpose(1, 2), tb(k), tb(v), causal, d**-0.5)
  assert _mismatch(out, expected.reshape(b, t, h * d).float().numpy()) < 0.01


def test_linear_rope_scaling_matches_transformers(make_hf_model, tmp_path):
  """rope_type "linear" (positions divided by the factor), saved by transformers, loaded by us."""
  hf = make_hf_model(
    seed=6, tie_word_embeddings=True, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}
  )
  hf.save_pretrained(tmp_path)
  model = from_pretrained(str(tmp_path))
  assert (model.config.rope_scaling.rope_type, model.config.rope_scaling.factor) == ("linear", 4.0)
  np.testing.assert_allclose(our_logits(model, TOKENS), hf_logits(hf, TOKENS), rtol=0, atol=1e-4)


def test_param_dtype_separate_from_dtype(hf_checkpoints):
  model = from_pretrained(hf_checkpoints("tied").path, dtype=jnp.float32, param_dtype=jnp.bfloat16)
  assert model.layers[0].self_attn.q_proj.kernel[...].dtype == jnp.bfloat16


def test_place_is_called_once_per_tensor(hf_checkpoints):
  seen = []

  def place(path, host):
    assert isinstance(host, np.ndarray) and host.flags.owndata and host.dtype == np.float32
    seen.append(path)
    return jax.device_put(host)

  model = from_pretrained(hf_checkpoints("untied").path, place=place)
  assert len(seen) == len(set(seen)) == len(flat_params(model))
  assert ("lm_head", "kernel") in seen and ("layers", 0, "self_attn", "q_proj", "bias") in seen


# Tolerances relative to the largest |logit| (~37 here). Measured (both paths jitted): f32 max
# |diff| 1.9e-5 (5e-7 relative); bf16 0. With an eager full forward bf16 differed by 0.56 (1.5%,
# ~2 bf16 ulps at |logit| 32..64), so bf16 allows 3%: XLA fusion choices may change rounding.
@pytest.mark.parametrize("dtype, rel_tol", [(jnp.float32, 2e-6), (jnp.bfloat16, 0.03)])
def test_kv_cache_steps_match_full_forward(hf_checkpoints, dtype, rel_tol):
  """Prefill 10 tokens, then one token at a time: every position's logits equal the full forward."""
  ckpt = hf_checkpoints("tied")
  model = from_pretrained(ckpt.path, dtype=dtype)
  tokens = TOKENS[:2, :16]
  full = our_logits(model, tokens)
  cache = KVCache.init(model.config, 2, 32, dtype=dtype)
  positions = lambda a, b: jnp.broadcast_to(jnp.arange(a, b, dtype=jnp.int32), (2, b - a))
  step = nnx.jit(lambda m, t, p, c: m(t, p, c))
  logits, cache = step(model, jnp.asarray(tokens[:, :10]), positions(0, 10), cache)
  pieces = [np.asarray(logits, np.float32)]
  for t in range(10, 16):
    logits, cache = step(model, jnp.asarray(tokens[:, t : t + 1]), positions(t, t + 1), cache)
    pieces.append(np.asarray(logits, np.float32))
  incremental = np.concatenate(pieces, axis=1)
  # The cached path reduces over the 32-slot cache, the full forward over 16 keys: same math,
  # different rounding.
  scale = np.abs(full).max()
  print(
    f"{np.dtype(dtype).name}: max |incremental - full| = {np.abs(incremental - full).max():.3g}, "
    f"max |logit| = {scale:.3g}"
  )
  np.testing.assert_allclose(incremental, full, rtol=0, atol=rel_tol * scale)
  if dtype == jnp.float32:  # and both equal transformers
    np.testing.assert_allclose(incremental, hf_logits(ckpt.model, tokens), rtol=0, atol=1e-4)


def test_load_config_reads_no_weights(hf_checkpoints, tmp_path):
  ckpt = hf_checkpoints("yarn")
  shutil.copy(os.path.join(ckpt.path, "config.json"), tmp_path / "config.json")
  cfg = load_config(tmp_path)  # no weights in this directory
  assert cfg.num_hidden_layers == 8 and cfg.rope_scaling.rope_type == "yarn"


# --------------------------------------------------------------------------------------------
# Error paths (local directories)
# --------------------------------------------------------------------------------------------
def _copy_ckpt(src: str, dst) -> str:
  shutil.copytree(src, dst)
  return str(dst)


def _tensors(path: str) -> dict:
  with open(os.path.join(path, "model.safetensors"), "rb") as f:
    return safetensors.numpy.load(f.read())


def _rewrite(path: str, tensors: dict):
  safetensors.numpy.save_file(tensors, os.path.join(path, "model.safetensors"))


def test_missing_config_json(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  os.remove(os.path.join(d, "config.json"))
  with pytest.raises(FileNotFoundError, match="config.json"):
    from_pretrained(d)


def test_missing_safetensors(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  os.remove(os.path.join(d, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    from_pretrained(d)


def test_missing_shard(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("sharded").path, tmp_path / "c")
  with open(os.path.join(d, "model.safetensors.index.json")) as f:
    shard = sorted(set(json.load(f)["weight_map"].values()))[1]
  os.remove(os.path.join(d, shard))
  with pytest.raises(FileNotFoundError, match=shard):
    from_pretrained(d)


def test_missing_tensor(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  t = _tensors(d)
  del t["model.layers.5.mlp.up_proj.weight"]
  _rewrite(d, t)
  with pytest.raises(ValueError, match=r"missing tensors: 'model\.layers\.5\.mlp\.up_proj\.weight'"):
    from_pretrained(d)


def test_wrong_shape(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  t = _tensors(d)
  t["model.layers.2.self_attn.k_proj.weight"] = np.zeros((16, 64), np.float32)
  _rewrite(d, t)
  with pytest.raises(
    ValueError,
    match=r"'model\.layers\.2\.self_attn\.k_proj\.weight' has shape "
    r"\(16, 64\), expected \(32, 64\)",
  ):
    from_pretrained(d)


def test_unexpected_tensor(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  t = _tensors(d)
  t["model.layers.0.self_attn.q_norm.weight"] = np.ones((16,), np.float32)
  _rewrite(d, t)
  with pytest.raises(ValueError, match=r"unexpected tensors.*q_norm"):
    from_pretrained(d)


def test_bias_tensors_without_bias_in_config_are_unexpected(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("untied").path, tmp_path / "c")
  with open(os.path.join(d, "config.json")) as f:
    cfg = json.load(f)
  cfg["attention_bias"] = False
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match=r"unexpected tensors.*q_proj\.bias"):
    from_pretrained(d)


def test_integer_tensor(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  t = _tensors(d)
  t["model.norm.weight"] = np.ones((64,), np.int32)
  _rewrite(d, t)
  with pytest.raises(ValueError, match=r"'model\.norm\.weight' is stored as I32"):
    from_pretrained(d)


@pytest.mark.parametrize("kwargs", [dict(dtype=jnp.int32), dict(param_dtype=jnp.bool_)])
def test_non_float_dtype_requested(hf_checkpoints, kwargs):
  with pytest.raises(ValueError, match="floating dtype"):
    from_pretrained(hf_checkpoints("tied").path, **kwargs)


def test_truncated_safetensors(hf_checkpoints, tmp_path):
  d = _copy_ckpt(hf_checkpoints("tied").path, tmp_path / "c")
  path = os.path.join(d, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 1000)
  with pytest.raises(ValueError, match="truncated.*"):
    from_pretrained(d)


def test_nonexistent_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="no such file"):
    from_pretrained(str(tmp_path / "nope" / "model"))
  with pytest.raises(FileNotFoundError, match=r"missing\.gguf.*no such file"):
    from_pretrained(str(tmp_path / "missing.gguf"))


# --------------------------------------------------------------------------------------------
# Hub ids (offline only)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
  from huggingface_hub import constants

  cache = tmp_path / "hub"
  cache.mkdir()
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("HF_HOME", str(tmp_path))
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
  return cache


def test_hub_id_offline_empty_cache(offline_hub):
  with pytest.raises(FileNotFoundError, match=r"'HuggingFaceTB/SmolLM3-3B'.*HF_HUB_OFFLINE"):
    from_pretrained("HuggingFaceTB/SmolLM3-3B")
  with pytest.raises(FileNotFoundError, match="HuggingFaceTB/SmolLM3-3B"):
    load_config("HuggingFaceTB/SmolLM3-3B")


def test_hub_id_offline_from_cache(offline_hub, hf_checkpoints):
  """A snapshot in the cache layout huggingface_hub uses is found by id without network."""
  ckpt = hf_checkpoints("tied")
  revision = "0" * 40
  repo = offline_hub / "models--someone--tiny-smollm3"
  shutil.copytree(ckpt.path, repo / "snapshots" / revision)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(revision)
  model = from_pretrained("someone/tiny-smollm3")
  np.testing.assert_allclose(our_logits(model, TOKENS), hf_logits(ckpt.model, TOKENS), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------
# GGUF written by the test, the way llama.cpp's converter writes it
# --------------------------------------------------------------------------------------------
def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf.py LlamaModel.permute (q/k rows -> interleaved RoPE pairs)."""
  return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
  "model.embed_tokens.weight": "token_embd.weight",
  "model.norm.weight": "output_norm.weight",
  "lm_head.weight": "output.weight",
}
GGUF_LAYER_NAMES = {
  "self_attn.q_proj": "attn_q",
  "self_attn.k_proj": "attn_k",
  "self_attn.v_proj": "attn_v",
  "self_attn.o_proj": "attn_output",
  "mlp.gate_proj": "ffn_gate",
  "mlp.up_proj": "ffn_up",
  "mlp.down_proj": "ffn_down",
  "input_layernorm": "attn_norm",
  "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
  if hf in GGUF_NAMES:
    return GGUF_NAMES[hf]
  _, _, layer, rest = hf.split(".", 3)
  module, kind = rest.rsplit(".", 1)
  return f"blk.{layer}.{GGUF_LAYER_NAMES[module]}.{kind}"


def write_gguf(path, hf_model, *, arch="smollm3", types=None, raw=None, metadata=None):
  """GGUF of a transformers SmolLM3: metadata, q/k permuted, tensors F32 unless ``types`` says
  otherwise (``{gguf_name: qtype}``); ``raw`` = ``{gguf_name: (bytes, qtype)}`` overrides data;
  ``metadata(writer)`` adds more keys."""
  c = hf_model.config
  types, raw = types or {}, raw or {}
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_key_length(c.head_dim)
  w.add_value_length(c.head_dim)
  w.add_rope_dimension_count(c.head_dim)
  w.add_rope_freq_base(c.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  w.add_bos_token_id(c.bos_token_id)
  w.add_eos_token_id(c.eos_token_id)
  w.add_pad_token_id(c.pad_token_id)
  if metadata is not None:
    metadata(w)
  for hf, tensor in hf_model.state_dict().items():
    if hf == "lm_head.weight" and c.tie_word_embeddings:
      continue
    name = gguf_name(hf)
    data = tensor.detach().numpy().astype(np.float32)
    if ".attn_q." in name:
      data = llama_cpp_permute(data, c.num_attention_heads)
    elif ".attn_k." in name:
      data = llama_cpp_permute(data, c.num_key_value_heads)
    if name in raw:
      w.add_tensor(name, raw[name][0], raw_dtype=raw[name][1])
    elif name in types:
      w.add_tensor(name, gguf.quants.quantize(data, types[name]), raw_dtype=types[name])
    else:
      w.add_tensor(name, data)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def test_gguf_matches_safetensors(hf_checkpoints, tmp_path):
  """smollm3 arch, q/k (weights and biases) permuted, separate output, one tensor in Q8_0."""
  ckpt = hf_checkpoints("untied")
  quantized = "blk.3.ffn_up.weight"
  path = write_gguf(tmp_path / "tiny.gguf", ckpt.model, types={quantized: QT.Q8_0})
  from_gguf = from_pretrained(path)
  from_st = from_pretrained(ckpt.path)
  g_cfg, s_cfg = from_gguf.config, from_st.config
  assert g_cfg.rms_norm_eps == pytest.approx(s_cfg.rms_norm_eps)
  assert g_cfg.replace(rms_norm_eps=s_cfg.rms_norm_eps) == s_cfg  # NoPE interval 4 derived
  g, s = flat_params(from_gguf), flat_params(from_st)
  assert g.keys() == s.keys()
  q_path = ("layers", 3, "mlp", "up_proj", "kernel")
  for path in s:
    if path == q_path:
      # Q8_0: per block of 32, scale = amax / 127 (f16) -> error <= scale / 2 + f16 rounding.
      bound = np.abs(s[path]).max() / 127
      err = np.abs(g[path] - s[path]).max()
      assert 0 < err <= bound, (err, bound)
    else:
      np.testing.assert_array_equal(g[path], s[path], err_msg=str(path))
  ref = hf_logits(ckpt.model, TOKENS)
  np.testing.assert_allclose(our_logits(from_gguf, TOKENS), ref, rtol=0, atol=0.1)


def test_gguf_rope_scaling_metadata(hf_checkpoints, tmp_path):
  """YaRN read from the GGUF's rope.scaling keys (type, factor, original context) gives the
  logits of the transformers YaRN model."""
  ckpt = hf_checkpoints("yarn")

  def yarn(w):
    w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    w.add_rope_scaling_factor(2.0)
    w.add_rope_scaling_orig_ctx_len(256)

  path = write_gguf(tmp_path / "yarn.gguf", ckpt.model, metadata=yarn)
  cfg = load_config(path)
  assert (cfg.rope_scaling.rope_type, cfg.rope_scaling.factor) == ("yarn", 2.0)
  assert cfg.rope_scaling.original_max_position_embeddings == 256
  np.testing.assert_allclose(
    our_logits(from_pretrained(path), TOKENS), hf_logits(ckpt.model, TOKENS), rtol=0, atol=1e-4
  )


@pytest.mark.parametrize("source", ["list", "interval"])
def test_gguf_no_rope_layers_metadata(make_hf_model, tmp_path, source):
  """NoPE layers from the GGUF: an explicit ``smollm3.no_rope_layers`` list (not the default
  pattern) or a ``smollm3.no_rope_layer_interval``; logits equal transformers' with the same layout."""
  if source == "list":
    layout = [1, 0, 1, 1, 0, 1, 1, 1]
    hf = make_hf_model(seed=7, tie_word_embeddings=True, no_rope_layers=layout)
    add = lambda w: w.add_array("smollm3.no_rope_layers", layout)
  else:
    layout = [1, 1, 0, 1, 1, 0, 1, 1]
    hf = make_hf_model(seed=7, tie_word_embeddings=True, no_rope_layer_interval=3)
    add = lambda w: w.add_uint32("smollm3.no_rope_layer_interval", 3)
  assert list(hf.config.no_rope_layers) == layout
  path = write_gguf(tmp_path / "nope.gguf", hf, metadata=add)
  assert load_config(path).no_rope_layers == tuple(layout)
  np.testing.assert_allclose(our_logits(from_pretrained(path), TOKENS), hf_logits(hf, TOKENS), rtol=0, atol=1e-4)


def _random_k_quant_bytes(rng, rows, cols, qtype):
  """Random K-quant blocks (python gguf cannot quantize these) with finite small f16 scales."""
  block, size = gguf.GGML_QUANT_SIZES[qtype]
  data = rng.randint(0, 256, size=(rows, cols // block, size)).astype(np.uint8)
  scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
  if qtype == QT.Q4_K:  # d, dmin at the start of each block
    data[..., 0:2] = scale
    data[..., 2:4] = scale
  else:  # Q6_K: d at the end
    data[..., -2:] = scale
  return data.reshape(rows, -1)


@pytest.mark.parametrize("qtype", [QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K])
def test_gguf_tensor_types(tmp_path, make_hf_model, qtype):
  """A 1-layer llama GGUF with every projection stored as ``qtype``: each loads as gguf's reference
  dequantization (K-quants need rows of 256, hence hidden 256)."""
  hf = make_hf_model(
    seed=3,
    hidden_size=256,
    intermediate_size=256,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=64,
    tie_word_embeddings=True,
  )
  rng = np.random.RandomState(0)
  names = [
    "blk.0.attn_v.weight",
    "blk.0.attn_output.weight",
    "blk.0.ffn_gate.weight",
    "blk.0.ffn_up.weight",
    "blk.0.ffn_down.weight",
  ]
  sd = {gguf_name(k): v.numpy() for k, v in hf.state_dict().items()}
  raw, expected = {}, {}
  for name in names:
    x = sd[name]
    if qtype in (QT.Q4_K, QT.Q6_K):
      data = _random_k_quant_bytes(rng, *x.shape, qtype)
    else:
      data = gguf.quants.quantize(x.astype(np.float32), qtype)
    raw[name] = (data, qtype)
    expected[name] = gguf.quants.dequantize(data, qtype).reshape(x.shape)
  path = write_gguf(tmp_path / "types.gguf", hf, arch="llama", raw=raw)
  assert load_config(path).no_rope_layers == (1,)  # llama: RoPE everywhere
  model = from_pretrained(path)
  layer = model.layers[0]
  got = {
    "blk.0.attn_v.weight": layer.self_attn.v_proj,
    "blk.0.attn_output.weight": layer.self_attn.o_proj,
    "blk.0.ffn_gate.weight": layer.mlp.gate_proj,
    "blk.0.ffn_up.weight": layer.mlp.up_proj,
    "blk.0.ffn_down.weight": layer.mlp.down_proj,
  }
  for name, module in got.items():
    np.testing.assert_array_equal(np.asarray(module.kernel[...]).T, expected[name], err_msg=name)
  if qtype not in (QT.Q4_K, QT.Q6_K):  # real weights: close to the originals
    x = sd["blk.0.ffn_up.weight"]
    assert np.abs(expected["blk.0.ffn_up.weight"] - x).max() < 0.25 * np.abs(x).max()


def test_gguf_unsupported_architecture(tmp_path):
  w = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
  w.add_block_count(1)
  w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(ValueError, match=r"unsupported GGUF architecture 'gpt2'"):
    from_pretrained(str(tmp_path / "gpt2.gguf"))


@pytest.mark.parametrize("keep", [40, -100])
def test_gguf_truncated(hf_checkpoints, tmp_path, keep):
  good = write_gguf(tmp_path / "good.gguf", hf_checkpoints("tied").model)
  bad = tmp_path / "bad.gguf"
  data = open(good, "rb").read()
  bad.write_bytes(data[:keep])
  with pytest.raises(ValueError, match=r"bad\.gguf.*truncated or corrupt"):
    from_pretrained(str(bad))


def test_gguf_unsupported_tensor_type(hf_checkpoints, tmp_path):
  # Q8_1 (blocks of 32 values in 40 bytes) has no dequantizer in gguf.quants.
  raw = {"output_norm.weight": (np.zeros((2 * 40,), np.uint8), QT.Q8_1)}
  path = write_gguf(tmp_path / "q81.gguf", hf_checkpoints("tied").model, raw=raw)
  with pytest.raises(ValueError, match=r"'output_norm\.weight' has type Q8_1"):
    from_pretrained(path)


def test_gguf_integer_tensor(hf_checkpoints, tmp_path):
  raw = {"output_norm.weight": (np.ones((64,), np.int32), QT.I32)}
  path = write_gguf(tmp_path / "i32.gguf", hf_checkpoints("tied").model, raw=raw)
  with pytest.raises(ValueError, match=r"'model\.norm\.weight' is stored as I32"):
    from_pretrained(path)


# --------------------------------------------------------------------------------------------
# The bundled demo checkpoint vs transformers' own GGUF loader
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(demo_model, demo_hf_model):
  from transformers import AutoTokenizer

  from smollm3_jax.checkpoints.demo import demo_gguf_path

  directory, name = os.path.split(demo_gguf_path())
  tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
  ids = tok.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_dict=False
  )
  return demo_model, demo_hf_model, np.asarray([ids])


def test_demo_config(demo):
  cfg = demo[0].config
  assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.vocab_size) == (
    30,
    576,
    9,
    3,
    49152,
  )
  assert cfg.tie_word_embeddings and all(cfg.no_rope_layers)
  assert (cfg.bos_token_id, cfg.eos_token_id) == (1, (2,))


def test_demo_logits_match_transformers_gguf(demo):
  ours, hf, ids = demo
  assert ids.shape[1] > 20
  ref = hf_logits(hf, ids)
  np.testing.assert_allclose(our_logits(ours, ids, jit=False), ref, rtol=0, atol=1e-3)
