"""Orbax conversion: exact round trip, config + tokenizer files, restore onto other meshes.

The multi-device part (save from a (2,4) mesh, restore onto (8,1), (1,8) and one device) runs once
in a subprocess with 8 fake CPU devices (this file run as a script).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from _helpers import run_multidevice_child

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/
from test_sharding import _write_hf_dir  # noqa: E402  (shared helper: NNX model -> HF dir)


def _params(model) -> dict:
  from flax import nnx

  return {tuple(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _child(workdir: str) -> dict:
  import jax
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.checkpoints import orbax as O
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn import sharding as S
  from smollm3_jax.nn.model import SmolLM3

  cfg = C.tiny(num_layers=2, num_key_value_heads=4)
  original = _params(SmolLM3(cfg, rngs=nnx.Rngs(1)))
  hf = os.path.join(workdir, "hf")
  _write_hf_dir(SmolLM3(cfg, rngs=nnx.Rngs(1)), hf)
  src = smollm3_jax.from_pretrained(hf, mesh="data=2,model=4")
  out = os.path.join(workdir, "orbax")
  O.save(out, src)  # saved from sharded arrays
  result = {"devices": len(jax.devices())}
  for spec in ("data=8,model=1", "data=1,model=8", "data=2,model=4"):
    sh = S.MeshSharding(S.mesh_from_flag(spec), cfg)
    model = smollm3_jax.from_pretrained(out, place=sh)
    got = _params(model)
    q = model.layers[0].self_attn.q_proj.kernel.get_value()
    k = model.layers[1].self_attn.k_proj.kernel.get_value()
    result[spec] = dict(
      equal=all(np.array_equal(got[p], original[p]) for p in original),
      placed=sh.is_placed(model),
      q=str(q.sharding.spec),
      k=str(k.sharding.spec),
      q_shard=list(q.addressable_shards[0].data.shape),
      mesh=S.describe(q.sharding.mesh),
    )
  one = smollm3_jax.from_pretrained(out)
  x = one.embed_tokens.embedding.get_value()
  result["single"] = dict(
    equal=all(np.array_equal(_params(one)[p], original[p]) for p in original), devices=len(x.sharding.device_set)
  )
  return result


if __name__ == "__main__":
  print("RESULT " + json.dumps(_child(sys.argv[1])))
  sys.exit(0)


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
  return run_multidevice_child(__file__, str(tmp_path_factory.mktemp("orbax8")), timeout=600)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
  from flax import nnx

  from smollm3_jax.nn import config as C
  from smollm3_jax.nn.model import SmolLM3

  path = str(tmp_path_factory.mktemp("tiny_hf"))
  _write_hf_dir(SmolLM3(C.tiny(num_layers=2), rngs=nnx.Rngs(0)), path)
  return path


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_convert_round_trip_is_exact(tiny_hf, tmp_path, dtype):
  import jax.numpy as jnp

  import smollm3_jax
  from experiments.convert import convert
  from smollm3_jax.checkpoints import orbax as O

  out = tmp_path / "out"
  stats = convert(tiny_hf, str(out), dtype=dtype, tokenizer=False)
  assert O.is_orbax_dir(out) and stats["bytes"] > 0
  assert O.read_marker(out)["param_dtype"] == dtype
  want = _params(smollm3_jax.from_pretrained(tiny_hf, dtype=jnp.dtype(dtype)))
  restored = smollm3_jax.from_pretrained(str(out), dtype=jnp.dtype(dtype))
  got = _params(restored)
  assert set(got) == set(want)
  for p in want:
    assert got[p].dtype == want[p].dtype and np.array_equal(got[p], want[p]), p
  assert restored.config == smollm3_jax.load_config(tiny_hf) == smollm3_jax.load_config(str(out))


def test_converted_model_generates_like_the_source(tiny_hf, tmp_path):
  import smollm3_jax
  from experiments.convert import convert

  convert(tiny_hf, str(tmp_path / "out"), dtype="float32", tokenizer=False, verify=False)
  a = smollm3_jax.generate(smollm3_jax.from_pretrained(tiny_hf), None, [[5, 6, 7]], max_new_tokens=6, stop_ids=[])
  b = smollm3_jax.generate(
    smollm3_jax.from_pretrained(str(tmp_path / "out")), None, [[5, 6, 7]], max_new_tokens=6, stop_ids=[]
  )
  assert a[0].token_ids == b[0].token_ids and len(a[0].token_ids) == 6


def test_tokenizer_files_travel_with_the_checkpoint(tmp_path):
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.checkpoints import orbax as O
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn.model import SmolLM3

  tok = smollm3_jax.Tokenizer.from_pretrained("demo")
  model = SmolLM3(C.tiny(num_layers=1, vocab_size=tok.vocab_size), rngs=nnx.Rngs(0))
  O.save(tmp_path / "ck", model, tokenizer=tok, source="demo")
  again = smollm3_jax.Tokenizer.from_pretrained(str(tmp_path / "ck"))
  text = "Hello, world! 12345 <|im_start|>user\nCafé ünïcödé"
  assert again.encode(text) == tok.encode(text)
  messages = [{"role": "user", "content": "What is 2+2?"}]
  assert again.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == tok.apply_chat_template(
    messages, add_generation_prompt=True, tokenize=False
  )
  assert again.stop_token_ids == tok.stop_token_ids


def test_bad_directories_are_refused(tmp_path, tiny_hf):
  from flax import nnx

  from smollm3_jax.checkpoints import orbax as O
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn.model import SmolLM3

  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x.txt").write_text("keep me")
  model = SmolLM3(C.tiny(num_layers=1), rngs=nnx.Rngs(0))
  with pytest.raises(FileExistsError, match="not empty"):
    O.save(tmp_path / "full", model)
  with pytest.raises(FileNotFoundError, match="not an Orbax conversion"):
    O.restore(tiny_hf)
  # a config that does not match the stored parameters
  O.save(tmp_path / "ck", model)
  cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
  cfg["num_hidden_layers"] = 2
  cfg["no_rope_layers"] = [1, 1]
  (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="do not match its config.json"):
    O.restore(tmp_path / "ck")


def test_restore_onto_other_meshes(multi):
  assert multi["devices"] == 8
  expect = {
    "data=8,model=1": ("P(None, None)", [64, 128]),
    "data=1,model=8": ("P(None, 'model')", [64, 16]),
    "data=2,model=4": ("P(None, 'model')", [64, 32]),
  }
  for spec, (q_spec, q_shard) in expect.items():
    r = multi[spec]
    assert r["equal"], spec
    assert r["placed"], spec
    assert (r["q"], r["q_shard"]) == (q_spec, q_shard), spec
    assert r["mesh"].startswith(spec), spec
  assert multi["data=1,model=8"]["k"] == "P(None, None)"  # 4 kv heads do not split 8 ways
  assert multi["data=2,model=4"]["k"] == "P(None, 'model')"
  assert multi["single"] == {"equal": True, "devices": 1}
