"""The on-disk GGUF header index (checkpoints/gguf.py + runtime switches) and the cheap abstract model.

Every test points the index at its own tmp_path; nothing is written under ~/.cache.
"""

from __future__ import annotations

import json
import logging
import os

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smollm3_jax import Tokenizer, from_pretrained
from smollm3_jax.checkpoints import gguf as g
from smollm3_jax.checkpoints.demo import demo_gguf_path
from smollm3_jax.nn.model import SmolLM3, abstract_model
from smollm3_jax.text import gguf_tokenizer
from smollm3_jax.utils import runtime

_PARSE = g._parse  # unpatched (the fixture counts calls of the module's one)
TEXTS = [
  "Hello world, how are you?",
  "The capital of France is Paris. 12345 + 678 = ?",
  "<|im_start|>user\nÜnïcödé — 日本語 🙂<|im_end|>\n",
]


def _clear_process_caches():
  g._read_header_cached.cache_clear()


@pytest.fixture
def index_dir(tmp_path, monkeypatch):
  """The index enabled in tmp_path/gguf_index, process caches empty; parses counted in .parses."""
  _clear_process_caches()
  path = runtime.enable_gguf_index(tmp_path / "gguf_index")
  parses = []
  parse = g._parse

  def counting_parse(**key):
    parses.append(key["path"])
    return parse(**key)

  monkeypatch.setattr(g, "_parse", counting_parse)
  yield path, parses
  runtime.disable_gguf_index()
  _clear_process_caches()


def _fresh_header(path):
  """A header parsed by gguf.GGUFReader in this process, bypassing every cache."""
  st = os.stat(path)
  return _PARSE(path=os.path.realpath(path), size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def _index_files(directory):
  return sorted(f for f in os.listdir(directory)) if os.path.isdir(directory) else []


def write_tiny_gguf(path, *, seed=0, eps=1e-5, hidden=16):
  """A 1-layer llama GGUF (F32 + one Q8_0 tensor) with a toy vocabulary in its metadata."""
  rng = np.random.RandomState(seed)
  w = gguf.GGUFWriter(str(path), "llama")
  vocab, ffn, heads, kv_heads, head_dim = 32, 32, 2, 1, hidden // 2
  w.add_block_count(1)
  w.add_context_length(64)
  w.add_embedding_length(hidden)
  w.add_feed_forward_length(ffn)
  w.add_head_count(heads)
  w.add_head_count_kv(kv_heads)
  w.add_layer_norm_rms_eps(eps)
  w.add_rope_freq_base(10000.0)
  w.add_tokenizer_model("gpt2")
  w.add_token_list([f"t{i}" for i in range(vocab)])
  w.add_token_types([1] * vocab)
  w.add_token_merges(["t 1", "t 2"])
  w.add_eos_token_id(2)
  shapes = {
    "token_embd.weight": (vocab, hidden),
    "output_norm.weight": (hidden,),
    "blk.0.attn_norm.weight": (hidden,),
    "blk.0.ffn_norm.weight": (hidden,),
    "blk.0.attn_q.weight": (heads * head_dim, hidden),
    "blk.0.attn_k.weight": (kv_heads * head_dim, hidden),
    "blk.0.attn_v.weight": (kv_heads * head_dim, hidden),
    "blk.0.attn_output.weight": (hidden, heads * head_dim),
    "blk.0.ffn_gate.weight": (ffn, hidden),
    "blk.0.ffn_up.weight": (ffn, hidden),
    "blk.0.ffn_down.weight": (hidden, ffn),
  }
  for name, shape in shapes.items():
    x = rng.standard_normal(shape).astype(np.float32)
    if name == "blk.0.ffn_down.weight":  # rows of ffn = 32: one Q8_0 block each
      w.add_tensor(
        name, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0
      )
    else:
      w.add_tensor(name, x)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return str(path)


def _read_all(tensors):
  return {name: info.read() for name, info in tensors.items()}


def _assert_same_tensors(a, b):
  assert a.keys() == b.keys()
  for name in a:
    assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
    np.testing.assert_array_equal(a[name], b[name], err_msg=name)  # bitwise for these dtypes


# --------------------------------------------------------------------------------------------
def test_demo_round_trip_matches_a_fresh_parse(index_dir):
  """Config, every tensor (bitwise) and tokenizer ids from the index equal a GGUFReader parse."""
  directory, parses = index_dir
  path = demo_gguf_path()
  # Reference: parsed by gguf.GGUFReader with the index off.
  runtime.disable_gguf_index()
  fresh_config, fresh_tensors = g.load(path)
  fresh_tensors = _read_all(fresh_tensors)
  fresh_ids = [Tokenizer.from_gguf(path).encode(t) for t in TEXTS]
  assert _index_files(directory) == [] and len(parses) == 1

  # The first process with the index on parses once and writes the index...
  _clear_process_caches()
  runtime.enable_gguf_index(directory)
  g.load_config(path)
  assert len(parses) == 2 and len(_index_files(directory)) == 1
  # ... a later one (process caches empty) reads it and never parses.
  _clear_process_caches()
  header = g.read_header(path)
  assert len(parses) == 2
  assert header == _fresh_header(path)  # fields (incl. vocabulary) and tensor directory
  config, tensors = g.load(path)
  assert config == fresh_config
  _assert_same_tensors(_read_all(tensors), fresh_tensors)
  assert [Tokenizer.from_gguf(path).encode(t) for t in TEXTS] == fresh_ids
  assert len(parses) == 2


def test_index_is_json_keyed_by_file_version(index_dir, tmp_path):
  directory, _ = index_dir
  path = write_tiny_gguf(tmp_path / "tiny.gguf")
  g.read_header(path)
  (name,) = _index_files(directory)
  record = json.loads(open(os.path.join(directory, name), encoding="utf-8").read())
  st = os.stat(path)
  assert record["version"] == g.INDEX_VERSION and record["path"] == os.path.realpath(path)
  assert (record["size"], record["mtime_ns"], record["inode"]) == (st.st_size, st.st_mtime_ns, st.st_ino)
  assert record["fields"]["tokenizer.ggml.tokens"][:2] == ["t0", "t1"]
  assert record["tensors"][0][0] == "token_embd.weight"


def test_tiny_model_loads_the_same_from_the_index(index_dir, tmp_path):
  directory, parses = index_dir
  path = write_tiny_gguf(tmp_path / "tiny.gguf")
  first = from_pretrained(path)
  _clear_process_caches()
  second = from_pretrained(path)
  assert len(parses) == 1  # the second load read the index
  assert first.config == second.config
  for (p, a), (q, b) in zip(
    nnx.to_flat_state(nnx.state(first, nnx.Param)), nnx.to_flat_state(nnx.state(second, nnx.Param))
  ):
    assert p == q
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(p))


@pytest.mark.parametrize("change", ["size", "mtime"])
def test_rewritten_gguf_is_parsed_again(index_dir, tmp_path, change):
  directory, parses = index_dir
  path = write_tiny_gguf(tmp_path / "tiny.gguf", eps=1e-5)
  assert g.load_config(path).rms_norm_eps == pytest.approx(1e-5)
  old = os.stat(path)
  if change == "size":  # a different model
    write_tiny_gguf(path, hidden=32)
    assert os.stat(path).st_size != old.st_size
  else:  # same size and inode, one metadata value changed, a later mtime
    write_tiny_gguf(path, eps=1e-6)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns + 1_000_000))
    new = os.stat(path)
    assert (new.st_size, new.st_ino) == (old.st_size, old.st_ino)
  _clear_process_caches()  # as a new process would
  config = g.load_config(path)
  assert len(parses) == 2
  if change == "size":
    assert config.hidden_size == 32
  else:
    assert config.rms_norm_eps == pytest.approx(1e-6)
  assert len(_index_files(directory)) == 1  # the stale index was replaced, not kept beside
  _clear_process_caches()
  assert g.read_header(path) == _fresh_header(path) and len(parses) == 2


def test_truncated_after_indexing_still_fails_clearly(index_dir, tmp_path):
  directory, parses = index_dir
  path = write_tiny_gguf(tmp_path / "tiny.gguf")
  from_pretrained(path)
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[:-100])
  _clear_process_caches()
  with pytest.raises(ValueError, match=r"tiny\.gguf.*truncated or corrupt"):
    from_pretrained(path)


@pytest.mark.parametrize("garbage", [b"", b"\x00\xffnot json", b"[1, 2]", b'{"version": 1}', "tensors"])
def test_corrupt_index_is_ignored_and_rewritten(index_dir, tmp_path, garbage):
  directory, parses = index_dir
  path = write_tiny_gguf(tmp_path / "tiny.gguf")
  expected = g.read_header(path)
  (name,) = _index_files(directory)
  index_path = os.path.join(directory, name)
  if garbage == "tensors":  # right key, malformed tensor directory
    record = json.loads(open(index_path, encoding="utf-8").read())
    record["tensors"][0] = ["token_embd.weight", 99999, "x"]
    garbage = json.dumps(record).encode()
  with open(index_path, "wb") as f:
    f.write(garbage)
  _clear_process_caches()
  assert g.read_header(path) == expected
  assert len(parses) == 2
  record = json.loads(open(index_path, encoding="utf-8").read())  # rewritten, valid again
  assert record["version"] == g.INDEX_VERSION and len(record["tensors"]) == len(expected.tensors)
  _clear_process_caches()
  assert g.read_header(path) == expected and len(parses) == 2


def test_unwritable_index_dir_is_not_fatal(index_dir, tmp_path, caplog):
  blocker = tmp_path / "not_a_dir"
  blocker.write_text("")
  runtime.enable_gguf_index(blocker / "gguf_index")
  path = write_tiny_gguf(tmp_path / "tiny.gguf")
  with caplog.at_level(logging.WARNING, logger=g.__name__):
    assert g.load_config(path).hidden_size == 16
  assert "could not write the GGUF index" in caplog.text


def test_disabled_index_writes_nothing(index_dir, tmp_path):
  directory, parses = index_dir
  runtime.disable_gguf_index()
  assert runtime.gguf_index_dir() is None
  path = write_tiny_gguf(tmp_path / "tiny.gguf")
  from_pretrained(path)
  assert gguf_tokenizer.read_metadata(path)["tokens"][:2] == ["t0", "t1"]
  assert not os.path.exists(directory)
  assert len(parses) == 1


def test_compilation_cache_switches_the_index(tmp_path, monkeypatch):
  old = jax.config.jax_compilation_cache_dir
  try:
    path = runtime.enable_compilation_cache(tmp_path / "cc")
    assert runtime.gguf_index_dir() == os.path.join(path, "gguf_index")
    runtime.disable_compilation_cache()
    assert runtime.gguf_index_dir() is None
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "env"))
    assert runtime.enable_gguf_index() == str(tmp_path / "env" / "gguf_index")
  finally:
    runtime.disable_gguf_index()
    if old:
      runtime.enable_compilation_cache(old)
    else:
      runtime.disable_compilation_cache()


# --------------------------------------------------------------------------------------------
def test_abstract_model_matches_random_init_structure(tmp_path):
  """The loaders' abstract model (no random streams traced) has the graph, shapes and dtypes of
  ``SmolLM3(config, rngs=...)``, whose random init is unchanged."""
  config = g.load_config(write_tiny_gguf(tmp_path / "tiny.gguf"))
  for dtype, param_dtype in [(jnp.float32, None), (jnp.bfloat16, jnp.float32)]:
    got = abstract_model(config, dtype=dtype, param_dtype=param_dtype)
    ref = nnx.eval_shape(lambda: SmolLM3(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
    assert nnx.graphdef(got) == nnx.graphdef(ref)
    flat = lambda m: [(p, v.get_value().shape, v.get_value().dtype) for p, v in nnx.to_flat_state(nnx.state(m))]
    assert flat(got) == flat(ref)
  a = SmolLM3(config, rngs=nnx.Rngs(0))
  b = SmolLM3(config, rngs=nnx.Rngs(0))
  ka, kb = np.asarray(a.layers[0].mlp.up_proj.kernel[...]), np.asarray(a.layers[0].mlp.gate_proj.kernel[...])
  assert not np.array_equal(ka, kb)  # distinct keys per layer, as before
  np.testing.assert_array_equal(ka, np.asarray(b.layers[0].mlp.up_proj.kernel[...]))
