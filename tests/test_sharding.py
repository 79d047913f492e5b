"""Sharded generation on 8 fake CPU devices: same greedy tokens as one device, intended shardings.

The multi-device part runs once, in a subprocess that sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts (running this file as a
script); it reports tokens and shardings as JSON and the tests below assert on them. Everything
else in the suite keeps its single CPU device.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from _helpers import run_multidevice_child

MESHES = ["8,1", "2,4", "1,8"]
NEW = 12


# --------------------------------------------------------------------------------------------
# Child process (8 devices)
# --------------------------------------------------------------------------------------------
def _write_hf_dir(model, path):
  """Saves an NNX SmolLM3 as an HF checkpoint dir (config.json + model.safetensors)."""
  import numpy as np
  from flax import nnx
  from safetensors.numpy import save_file

  from smollm3_jax.checkpoints.mapping import hf_to_param, param_to_hf

  os.makedirs(path, exist_ok=True)
  tensors = {}
  for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    name = param_to_hf(tuple(p))
    x = np.asarray(var.get_value())
    tensors[name] = np.ascontiguousarray(x.T if hf_to_param(name)[1] else x)
  save_file(tensors, os.path.join(path, "model.safetensors"))
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(model.config.to_hf_dict(), f)


def _child(workdir: str) -> dict:
  import jax
  import numpy as np
  from flax import nnx

  import smollm3_jax
  from smollm3_jax.generation.engine import Engine, Request, get_engine
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn import quantize
  from smollm3_jax.nn import sharding as S
  from smollm3_jax.nn.model import SmolLM3

  out: dict = {"devices": len(jax.devices())}
  # 8 query heads, 4 kv heads: kv heads split on model=4 but must be replicated on model=8.
  cfg = C.tiny(num_layers=4, num_key_value_heads=4)
  ckpt = os.path.join(workdir, "tiny")
  _write_hf_dir(SmolLM3(cfg, rngs=nnx.Rngs(0)), ckpt)
  rs = np.random.RandomState(0)
  prompts = [rs.randint(1, 500, n).tolist() for n in (5, 11, 3)]
  kw = dict(max_new_tokens=NEW, stop_ids=[])

  ref = smollm3_jax.from_pretrained(ckpt)
  out["reference"] = [c.token_ids for c in smollm3_jax.generate(ref, None, prompts, **kw)]
  out["reference_one"] = smollm3_jax.generate(ref, None, prompts[:1], **kw)[0].token_ids
  # Repeated prompts: prefilled once, then copied into the other rows' slots (on a mesh, across chips).
  shared = [prompts[1]] * 3 + [prompts[0]] * 3 + [prompts[2]] * 2
  out["reference_shared"] = [c.token_ids for c in smollm3_jax.generate(ref, None, shared, **kw)]
  out["reference_engine_sharding"] = repr(get_engine(ref).sharding)

  def specs(tree):
    return {
      jax.tree_util.keystr(p): [str(x.sharding.spec), list(x.addressable_shards[0].data.shape)]
      for p, x in jax.tree_util.tree_leaves_with_path(tree)
    }

  for spec in MESHES:
    d, m = spec.split(",")
    model = smollm3_jax.from_pretrained(ckpt, mesh=f"data={d},model={m}")  # placed shard by shard by the loader hook
    res = smollm3_jax.generate(model, None, prompts, **kw)
    eng = get_engine(model)
    pool = eng.pool(eng.slots_for(3), eng.cache_length_for(max(map(len, prompts)) + NEW))
    placed = dict(
      cache=specs(pool.state.cache.k[0]),
      tokens_in=specs(pool.state.tokens),
      presence=specs(pool.state.context.presence),
    )
    pool.submit([Request(prompt=p, max_new=NEW) for p in prompts])
    pool.run()  # donates the state to each program
    s = pool.state
    one = smollm3_jax.generate(model, None, prompts[:1], **kw) if m != "8" else res
    copied = smollm3_jax.generate(model, None, shared, **kw)
    out[spec] = dict(
      tokens=[c.token_ids for c in res],
      shared=[c.token_ids for c in copied],
      shared_prefilled=copied.stats.prefilled_prompts,
      one=one[0].token_ids,
      batch=res.stats.batch_size,
      batch_one=one.stats.batch_size,
      params={k: v for k, v in specs(nnx.state(model, nnx.Param)).items() if "layers'][0]" in k or "layers" not in k},
      cache_after=specs(s.cache.k[0]),
      mesh=S.describe(S.mesh_of(model)),
      **placed,
    )

  # An already-loaded single-device model moved onto a mesh; streaming on it.
  moved = smollm3_jax.from_pretrained(ckpt)
  res = smollm3_jax.generate(moved, None, prompts, mesh="data=2,model=4", **kw)
  out["moved"] = dict(tokens=[c.token_ids for c in res], mesh=S.describe(S.mesh_of(moved)))
  # Chunked decoding (what stream() runs) on the mesh.
  eng = get_engine(moved)
  pool = eng.pool(eng.slots_for(1), eng.cache_length_for(len(prompts[0]) + NEW), chunk_steps=3)
  row = Request(prompt=prompts[0], max_new=NEW)
  pool.submit([row])
  chunks = []
  while not pool.idle:
    pool.step()
    chunks.append(list(row.token_ids))
  out["stream"] = dict(tokens=chunks[-1], chunks=len(chunks))

  # int8 mode on a mesh: the quantized weights follow the logical-axis rules; tokens unchanged.
  ref8 = smollm3_jax.from_pretrained(ckpt, quantize="int8")
  on_mesh8 = smollm3_jax.from_pretrained(ckpt, mesh="data=2,model=4", quantize="int8")
  moved8 = smollm3_jax.from_pretrained(ckpt)
  S.engine_sharding(moved8, "data=2,model=4")
  quantize.quantize_int8(moved8)  # quantized where it lives: stays on its mesh
  out["int8"] = dict(
    reference=[c.token_ids for c in smollm3_jax.generate(ref8, None, prompts, **kw)],
    mesh=[c.token_ids for c in smollm3_jax.generate(on_mesh8, None, prompts, **kw)],
    moved=[c.token_ids for c in smollm3_jax.generate(moved8, None, prompts, **kw)],
    params={k: v for k, v in specs(nnx.state(on_mesh8, nnx.Param)).items() if "layers'][0]" in k or "layers" not in k},
    moved_mesh=S.describe(S.mesh_of(moved8)),
  )

  # Uneven cases: refused with a clear error, before any compile.
  errors = {}
  sh = S.MeshSharding(S.make_mesh(4, 2), cfg)
  try:
    eng = Engine(moved, None, sharding=sh, batch_buckets=(1, 2, 3))
    eng.pool(3, 128)
  except ValueError as e:
    errors["batch"] = str(e)
  for bad in ("data=16,model=1", "data=3", "data=x", "pipe=2"):
    try:
      S.mesh_from_flag(bad)
    except ValueError as e:
      errors[bad] = str(e)
  out["errors"] = errors
  return out


if __name__ == "__main__":
  print("RESULT " + json.dumps(_child(sys.argv[1])))
  sys.exit(0)


# --------------------------------------------------------------------------------------------
# Tests (single-device parent)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi(tmp_path_factory):
  return run_multidevice_child(__file__, str(tmp_path_factory.mktemp("shard")), timeout=900)


def test_child_sees_eight_devices(multi):
  assert multi["devices"] == 8
  assert multi["reference_engine_sharding"] == "None"  # one device: no sharding at all


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_greedy_tokens_equal_single_device(multi, mesh):
  assert multi[mesh]["tokens"] == multi["reference"]
  # rows whose prompt was copied from another row's slot (another chip's, on a data axis)
  assert multi[mesh]["shared"] == multi["reference_shared"] and multi[mesh]["shared_prefilled"] == 3
  assert all(len(t) == NEW for t in multi["reference"])
  # one prompt: the batch is padded up to a multiple of the data axis
  if mesh != "1,8":
    assert multi[mesh]["one"] == multi["reference_one"]
  data = int(mesh.split(",")[0])
  assert multi[mesh]["batch_one"] % data == 0 and multi[mesh]["batch"] % data == 0


def _param(multi, mesh, suffix):
  hits = [v for k, v in multi[mesh]["params"].items() if k.endswith(suffix)]
  assert len(hits) == 1, (suffix, list(multi[mesh]["params"]))
  return hits[0]


def test_parameter_shardings_on_2x4(multi):
  # tiny config: hidden 64, 8 heads x 16, 4 kv heads x 16, mlp 128, vocab 512 (4 layers)
  expect = {
    "['embed_tokens']['embedding'].value": ["P('model', None)", [128, 64]],
    "['q_proj']['kernel'].value": ["P(None, 'model')", [64, 32]],
    "['k_proj']['kernel'].value": ["P(None, 'model')", [64, 16]],
    "['v_proj']['kernel'].value": ["P(None, 'model')", [64, 16]],
    "['o_proj']['kernel'].value": ["P('model', None)", [32, 64]],
    "['gate_proj']['kernel'].value": ["P(None, 'model')", [64, 32]],
    "['up_proj']['kernel'].value": ["P(None, 'model')", [64, 32]],
    "['down_proj']['kernel'].value": ["P('model', None)", [32, 64]],
    "['input_layernorm']['scale'].value": ["P(None,)", [64]],
  }
  for suffix, want in expect.items():
    assert _param(multi, "2,4", suffix) == want, suffix


def test_int8_weights_on_a_mesh(multi):
  r = multi["int8"]
  assert r["mesh"] == r["reference"] and r["moved"] == r["reference"]
  assert r["moved_mesh"].startswith("data=2,model=4")
  expect = {  # int8 kernels are stored [out, in]; gate/up fused (rows interleaved) on the mlp axis
    "['embed_tokens']['qembedding'].value": ["P('model', None)", [128, 64]],
    "['embed_tokens']['qscale'].value": ["P('model',)", [128]],
    "['q_proj']['qkernel'].value": ["P('model', None)", [32, 64]],
    "['q_proj']['qscale'].value": ["P('model',)", [32]],
    "['k_proj']['qkernel'].value": ["P('model', None)", [16, 64]],
    "['o_proj']['qkernel'].value": ["P(None, 'model')", [64, 32]],
    "['gate_up_proj']['qkernel'].value": ["P('model', None)", [64, 64]],
    "['down_proj']['qkernel'].value": ["P(None, 'model')", [64, 32]],
    "['down_proj']['qscale'].value": ["P(None,)", [64]],
  }
  for suffix, want in expect.items():
    hits = [v for k, v in r["params"].items() if k.endswith(suffix)]
    assert hits == [want], (suffix, hits)


def test_parameter_shardings_on_1x8_replicate_what_does_not_divide(multi):
  assert _param(multi, "1,8", "['q_proj']['kernel'].value") == ["P(None, 'model')", [64, 16]]
  # 4 kv heads cannot split 8 ways: replicated, not split inside a head
  assert _param(multi, "1,8", "['k_proj']['kernel'].value") == ["P(None, None)", [64, 64]]
  assert _param(multi, "1,8", "['down_proj']['kernel'].value") == ["P('model', None)", [16, 64]]
  # pure data parallelism: everything replicated
  assert _param(multi, "8,1", "['q_proj']['kernel'].value") == ["P(None, None)", [64, 128]]


@pytest.mark.parametrize(
  "mesh,cache_spec,shard_shape",
  [
    ("8,1", "P('data', None, None, None)", [1, 4, 64, 16]),
    ("2,4", "P('data', 'model', None, None)", [2, 1, 64, 16]),
    ("1,8", "P(None, None, None, None)", [4, 4, 64, 16]),
  ],
)
def test_cache_and_batch_shardings(multi, mesh, cache_spec, shard_shape):
  r = multi[mesh]
  ((spec, shape),) = r["cache"].values()
  assert spec == cache_spec and shape == shard_shape
  # the compiled programs keep the cache in that layout
  ((spec_after, shape_after),) = r["cache_after"].values()
  assert shape_after == shard_shape
  data = int(mesh.split(",")[0])
  ((tok_spec, tok_shape),) = r["tokens_in"].values()
  assert tok_shape[0] == r["batch"] // data
  ((p_spec, p_shape),) = r["presence"].values()
  assert p_shape == [r["batch"] // data, 512]


def test_model_moved_onto_mesh_and_streaming(multi):
  assert multi["moved"]["mesh"].startswith("data=2,model=4 (8 x cpu)")
  assert multi["moved"]["tokens"] == multi["reference"]
  assert multi["stream"]["tokens"] == multi["reference"][0]
  assert multi["stream"]["chunks"] >= NEW // 3


def test_uneven_cases_are_refused_clearly(multi):
  e = multi["errors"]
  assert "does not divide the mesh's data axis (4)" in e["batch"]
  assert "needs 16 devices, only 8 available" in e["data=16,model=1"]
  assert "data=3 does not divide the 8 available devices" in e["data=3"]
  assert "'data' size must be an integer" in e["data=x"]
  assert "unknown axis 'pipe'" in e["pipe=2"]


def test_parse_mesh_forms():
  from smollm3_jax.nn.sharding import parse_mesh

  assert parse_mesh("data=2,model=4") == (2, 4)
  assert parse_mesh("(data=2, model=4)") == (2, 4)
  assert parse_mesh("model=8") == (None, 8)
  assert parse_mesh("(2,4)") == (2, 4)
  assert parse_mesh("") == (None, None) and parse_mesh("auto") == (None, None) and parse_mesh(None) == (None, None)
  assert parse_mesh((1, 8)) == (1, 8)


def test_single_device_mesh_leaves_generation_untouched():
  """The default mesh (every device on "data") generates the same tokens as no mesh; on one
  device it is no sharding at all."""
  import jax
  from flax import nnx

  from smollm3_jax.generation.api import generate
  from smollm3_jax.nn import config as C
  from smollm3_jax.nn import sharding as S
  from smollm3_jax.nn.model import SmolLM3

  model = SmolLM3(C.tiny(num_layers=2), rngs=nnx.Rngs(0))
  mesh = S.make_mesh()
  devices = len(jax.devices())
  assert mesh.shape == {"data": devices, "model": 1}
  if devices == 1:
    assert S.engine_sharding(model, mesh) is None
    assert S.engine_sharding(model) is None
  prompts = [[5 + i, 6, 7 + i, 9][: 2 + i % 3] for i in range(2 * devices)]
  kw = dict(max_new_tokens=6, stop_ids=[], temperature=[0.0, 1.0] * devices, seed=list(range(2 * devices)))
  plain = generate(model, None, prompts, **kw)
  meshed = generate(model, None, prompts, mesh=mesh, **kw)
  assert [c.token_ids for c in meshed] == [c.token_ids for c in plain]
  assert [len(c.token_ids) for c in plain] == [6] * (2 * devices)
