"""SmolLM3Config from both config.json layouts, YaRN fields, and errors for impossible configs."""

from __future__ import annotations

import json

import pytest

from smollm3_jax.nn.config import RopeScaling, SmolLM3Config, smollm3_3b

# HuggingFaceTB/SmolLM3-3B config.json as published (rope_theta / rope_scaling at the top level).
PUBLISHED_3B = {
  "architectures": ["SmolLM3ForCausalLM"],
  "attention_bias": False,
  "attention_dropout": 0.0,
  "bos_token_id": 128000,
  "eos_token_id": 128012,
  "hidden_act": "silu",
  "hidden_size": 2048,
  "initializer_range": 0.02,
  "intermediate_size": 11008,
  "layer_types": ["full_attention"] * 36,
  "max_position_embeddings": 65536,
  "max_window_layers": 28,
  "mlp_bias": False,
  "model_type": "smollm3",
  "no_rope_layer_interval": 4,
  "no_rope_layers": [1, 1, 1, 0] * 9,
  "num_attention_heads": 16,
  "num_hidden_layers": 36,
  "num_key_value_heads": 4,
  "pad_token_id": 128004,
  "pretraining_tp": 2,
  "rms_norm_eps": 1e-06,
  "rope_scaling": None,
  "rope_theta": 5000000.0,
  "sliding_window": None,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.54.0.dev0",
  "use_cache": False,
  "use_sliding_window": False,
  "vocab_size": 128256,
}


def test_published_3b_config_equals_preset():
  cfg = SmolLM3Config.from_dict(PUBLISHED_3B)
  assert cfg == smollm3_3b()
  assert cfg.head_dim == 128 and cfg.rope_scaling is None and cfg.tie_word_embeddings
  assert [i for i in range(36) if not cfg.uses_rope(i)] == list(range(3, 36, 4))
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (128000, (128012,), 128004)


def test_published_3b_from_json_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(PUBLISHED_3B))
  assert SmolLM3Config.from_json(path) == smollm3_3b()


def test_current_transformers_layout(tmp_path):
  """The layout transformers 5 writes: rope_parameters, computed no_rope_layers."""
  import transformers

  hf = transformers.SmolLM3Config(
    vocab_size=1000,
    hidden_size=96,
    intermediate_size=200,
    num_hidden_layers=10,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    no_rope_layer_interval=3,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    rope_parameters={"rope_type": "default", "rope_theta": 12345.0},
  )
  hf.save_pretrained(tmp_path)
  written = json.loads((tmp_path / "config.json").read_text())
  assert "rope_parameters" in written  # the new layout, really
  cfg = SmolLM3Config.from_json(tmp_path / "config.json")
  assert cfg == SmolLM3Config(
    vocab_size=1000,
    hidden_size=96,
    intermediate_size=200,
    num_hidden_layers=10,
    num_attention_heads=6,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=12345.0,
    rope_scaling=None,
    max_position_embeddings=4096,
    rms_norm_eps=1e-5,
    tie_word_embeddings=False,
    no_rope_layers=tuple(hf.no_rope_layers),
    bos_token_id=1,
    eos_token_id=(2,),
    pad_token_id=0,
  )
  assert cfg.no_rope_layers == (1, 1, 0, 1, 1, 0, 1, 1, 0, 1)


def test_yarn_in_rope_parameters(tmp_path):
  import transformers

  hf = transformers.SmolLM3Config(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    rope_parameters={
      "rope_type": "yarn",
      "rope_theta": 10000.0,
      "factor": 2.0,
      "original_max_position_embeddings": 512,
      "beta_fast": 16.0,
    },
  )
  hf.save_pretrained(tmp_path)
  cfg = SmolLM3Config.from_json(tmp_path / "config.json")
  assert cfg.rope_theta == 10000.0
  rs = cfg.rope_scaling
  assert (rs.rope_type, rs.factor, rs.original_max_position_embeddings) == ("yarn", 2.0, 512)
  assert (rs.beta_fast, rs.beta_slow) == (16.0, 1.0)


@pytest.mark.parametrize("key", ["type", "rope_type"])
def test_yarn_in_published_layout(key):
  """The SmolLM3 model card's long-context setting: top-level rope_scaling."""
  d = dict(
    PUBLISHED_3B,
    rope_scaling={
      key: "yarn",
      "factor": 2.0,
      "original_max_position_embeddings": 65536,
      "attention_factor": 1.1,
      "beta_slow": 2.0,
    },
  )
  cfg = SmolLM3Config.from_dict(d)
  assert cfg.rope_theta == 5000000.0
  assert cfg.rope_scaling == RopeScaling(
    rope_type="yarn",
    factor=2.0,
    original_max_position_embeddings=65536,
    attention_factor=1.1,
    beta_fast=32.0,
    beta_slow=2.0,
  )
  assert cfg.replace(rope_scaling=None) == smollm3_3b()


def test_irrelevant_fields_ignored():
  d = dict(
    PUBLISHED_3B,
    some_future_field={"x": 1},
    use_cache=True,
    attention_dropout=0.1,
    torch_dtype="float32",
    initializer_range=1.0,
    sliding_window=4096,
    quantization_config={},
  )
  assert SmolLM3Config.from_dict(d) == smollm3_3b()


def test_no_rope_layers_derived_from_interval():
  d = {k: v for k, v in PUBLISHED_3B.items() if k != "no_rope_layers"}
  assert SmolLM3Config.from_dict(d).no_rope_layers == smollm3_3b().no_rope_layers


def test_llama_config_uses_rope_everywhere():
  d = {k: v for k, v in PUBLISHED_3B.items() if not k.startswith("no_rope")}
  d["model_type"] = "llama"
  assert all(SmolLM3Config.from_dict(d).no_rope_layers)


def test_to_hf_dict_round_trips_through_transformers(tmp_path):
  import transformers

  cfg = smollm3_3b().replace(
    rope_scaling=RopeScaling(rope_type="yarn", factor=2.0, original_max_position_embeddings=65536)
  )
  d = {k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"}
  transformers.SmolLM3Config(**d).save_pretrained(tmp_path)
  assert SmolLM3Config.from_json(tmp_path / "config.json") == cfg


@pytest.mark.parametrize(
  "changes, field",
  [
    (dict(hidden_size=0), "hidden_size"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(num_hidden_layers=0, no_rope_layers=[]), "num_hidden_layers"),
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(num_key_value_heads=0), "num_key_value_heads"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),  # 16 heads not divisible by 3
    (dict(intermediate_size=0), "intermediate_size"),
    (dict(head_dim=127), "head_dim"),
    (dict(max_position_embeddings=0), "max_position_embeddings"),
    (dict(no_rope_layers=[1, 0] * 3), "no_rope_layers"),
    (dict(no_rope_layers=[2] * 36), "no_rope_layers"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(rope_scaling={"rope_type": "dynamic-ntk-magic", "factor": 2.0}), "rope_scaling"),
    (dict(rope_scaling={"rope_type": "yarn"}), "rope_scaling"),
    # issue 34.9: these loaded (rope_theta 0 with a warning) and gave NaN logits
    (dict(rope_theta=0), "rope_theta"),
    (dict(rope_theta=-5.0), "rope_theta"),
    (dict(rope_theta=float("nan")), "rope_theta"),
    (dict(rope_theta=float("inf")), "rope_theta"),
    (dict(rms_norm_eps=float("nan")), "rms_norm_eps"),
    (dict(rms_norm_eps=-1e-6), "rms_norm_eps"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 0.0}), "rope_theta"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 0.0}), "rope_scaling.factor"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": float("nan")}), "rope_scaling.factor"),
    (
      dict(rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": -4}),
      "original_max_position_embeddings",
    ),
  ],
)
def test_impossible_configs_name_the_field(changes, field):
  with pytest.raises(ValueError, match=field):
    SmolLM3Config.from_dict(dict(PUBLISHED_3B, **changes))


def test_bad_json_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    SmolLM3Config.from_json(tmp_path / "config.json")
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    SmolLM3Config.from_json(tmp_path / "config.json")
