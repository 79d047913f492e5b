"""The deviceless compile check (smollm3_jax/generation/aot.py, experiments/aot.py): the tiny model's
programs compiled for a compile-only TPU v5e (libtpu is a test dependency: nothing here is skipped),
their figures consistent, whole-cache copies counted, an over-sized pool reported as not fitting.

The model is the tiny preset with 2 layers (what the checkpoint presets' random model uses), so the
whole file compiles in well under a minute on one core."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smollm3_jax.generation import aot
from smollm3_jax.nn import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "aot.py")
SLOTS, LENGTH = 8, 512  # read windows 256 and 512: two prefill and two decode programs
# Programs that copy a whole cache layer today, (program, window) -> copies: the target is none. Empty
# on v5e:1x1 (the 3B model's programs make none either; docs/performance.md). On v5e:2x4 the tiny
# model's decode programs make 4 (not compiled here).
KNOWN_CACHE_COPIES: dict[tuple[str, int], int] = {}


@pytest.fixture(scope="module")
def tgt():
  return aot.target("v5e:1x1")


@pytest.fixture(scope="module")
def model():
  return aot.abstract_model(config_lib.tiny(num_layers=2), dtype=jnp.bfloat16)


@pytest.fixture(scope="module")
def pool_rows(model, tgt):
  return aot.pool_programs(model, tgt, SLOTS, LENGTH, keep_hlo=True)


def _weights(model, tgt) -> int:
  return aot.tree_bytes(aot.place_model_state(nnx.state(model), tgt, model.config))


def _cache_bytes(model, slots, length) -> int:
  cfg = model.config
  return 2 * cfg.num_hidden_layers * slots * cfg.num_key_value_heads * length * cfg.head_dim * 2  # (uint16)


def _whole_copies(hlo: str, shape: str) -> int:
  """A second count of whole-buffer copies: ``copy(`` lines whose result is ``shape`` in device memory."""
  n = 0
  for line in hlo.splitlines():
    m = re.search(r"= (\S+) copy\(", line)
    if m and m.group(1).startswith(shape + "{") and "S(" not in m.group(1):
      n += 1
  return n


def test_every_pool_program_compiles_fits_and_its_figures_agree(pool_rows, model, tgt):
  assert [(r.program, r.window) for r in pool_rows] == [
    ("prefill", 256),
    ("prefill", 512),
    ("insert", 0),
    ("decode", 256),
    ("decode", 512),
    ("tails", 0),
  ]
  weights, cache = _weights(model, tgt), _cache_bytes(model, SLOTS, LENGTH)
  embedding = aot.tree_bytes(aot.place_model_state(nnx.state(model), tgt, model.config)["embed_tokens"])
  assert 0 < embedding < weights
  for r in pool_rows:
    label = f"{r.program} {r.window}"
    assert r.fits and not r.error and 0 < r.hbm_bytes <= tgt.hbm_bytes, label
    assert r.slots == SLOTS and r.cache_length == LENGTH and r.compile_seconds > 0, label
    assert r.bytes_accessed > 0 and r.ideal_bytes > 0 and r.hbm_traffic > 0, label
    # XLA counts at least what the program cannot avoid; the HBM estimate is a part of XLA's count.
    assert r.ratio >= 1.0 and r.hbm_traffic <= r.bytes_accessed, label
    assert r.ratio == pytest.approx(r.bytes_accessed / r.ideal_bytes), label
    if r.program in ("prefill", "decode"):
      assert r.argument_bytes >= weights + cache and r.flops > 0, label
      # (prefill runs no LM head: it reads the chunk's rows of the embedding, not the whole table)
      skipped = embedding if r.program == "prefill" else 0
      rows = SLOTS if r.program == "prefill" else 1
      assert r.ideal_bytes >= weights - skipped + cache * r.window // LENGTH // rows, label
    if r.program == "insert":
      assert r.argument_bytes >= cache, label
  decode = {r.window: r for r in pool_rows if r.program == "decode"}
  assert decode[512].ideal_bytes - decode[256].ideal_bytes == cache // 2  # half the cache more to read
  assert decode[512].flops > decode[256].flops


def test_prefill_moves_little_more_than_its_ideal(pool_rows):
  # Prefill writes only its chunk into the pool cache and reads the row's window in place. With the
  # TPU's 256-token chunk (2026-12-07; the ideal without the LM head prefill does not run): HLO
  # estimate / ideal 1.00 at window 256 (the chunk is the whole window) and 0.92 at 512; through a
  # gathered copy of the window written back whole, 0.91 and 1.26.
  prefill = {r.window: r for r in pool_rows if r.program == "prefill"}
  assert prefill[256].hbm_ratio < 1.05 and prefill[512].hbm_ratio < 1.0, {w: r.hbm_ratio for w, r in prefill.items()}


def test_no_pool_program_copies_a_whole_cache_layer(pool_rows):
  shape = f"u16[{SLOTS},2,{LENGTH},16]"  # one layer's keys (or values), as the cache stores bfloat16
  for r in pool_rows:
    assert r.cache_copies == _whole_copies(r.hlo, shape), r.program
    assert r.cache_copies == KNOWN_CACHE_COPIES.get((r.program, r.window), 0), (r.program, r.window)


def test_a_planted_whole_cache_copy_is_counted(tgt):
  # An output that is its (undonated) input: XLA copies the whole buffer, 512 MB (too big for on-chip memory).
  shape = (64, 8, 4096, 128)
  x = jax.ShapeDtypeStruct(shape, jnp.uint16, sharding=aot.replicated(tgt))
  row, _ = aot.compile_row(
    "copy", jax.jit(lambda c: (c, c + 1)), (x,), tgt=tgt, cache_shapes=(("uint16", shape),), keep_hlo=True
  )
  assert row.cache_copies == _whole_copies(row.hlo, "u16[64,8,4096,128]") >= 1
  # Moves into another memory space (TPU prefetches into VMEM) and other shapes are not counted.
  text = (
    "  %copy.1 = u16[8,2,512,16]{3,2,1,0:T(8,128)(2,1)S(1)} copy(%p)\n"
    "  %copy.2 = u16[8,2,512,16]{3,2,1,0:T(8,128)(2,1)} copy(%p)\n"
    "  %copy-start.3 = (u16[8,2,512,16]{3,2,1,0}, u16[8,2,512,16]{3,2,1,0}, u32[]) copy-start(%p)\n"
    "  %copy-start.4 = (u16[8,2,512,16]{3,2,1,0:S(1)}, u16[8,2,512,16]{3,2,1,0}, u32[]) copy-start(%p)\n"
    "  %copy.5 = u16[8,2,256,16]{3,2,1,0} copy(%p)\n"
    "  %v = u16[8,2,512,16]{3,2,1,0:T(8,128)(2,1)S(1)} fusion(%p), kind=kLoop\n"
    "  %copy.6 = u16[8,2,512,16]{3,2,1,0:T(8,128)(2,1)} copy(%v)\n"  # out of on-chip memory
  )
  assert aot.count_copies(text, (("uint16", (8, 2, 512, 16)),)) == 2


def test_an_oversized_pool_is_reported_as_not_fitting(model, tgt):
  row, exe = aot.decode_row(model, tgt, 128, 2**21)  # 128 x 2M slots: ~70 GB of keys and values
  assert exe is None and not row.fits and aot.is_oom(row.error)
  assert row.hbm_bytes > tgt.hbm_bytes  # what the compiler asked for


def test_largest_pool_is_the_last_size_that_fits(model, tgt):
  # Wide kv heads: ~540 MB per slot at 16k slots, so HBM holds a few dozen and each compile is quick.
  wide = aot.abstract_model(config_lib.tiny(num_layers=4, num_key_value_heads=8, head_dim=256), dtype=jnp.bfloat16)
  n, rows = aot.largest_pool(wide, tgt, 2**14)
  assert 8 < n < 64 and len(rows) <= 6
  by_slots = {r.slots: r for r in rows}
  assert by_slots[n].fits and not by_slots[n + 1].fits and aot.is_oom(by_slots[n + 1].error)
  capped, rows = aot.largest_pool(model, tgt, 256, upper=16)
  assert capped == 16 and len(rows) == 1 and rows[0].fits


def test_beam_search_and_int8_decode_compile_and_fit(model, tgt):
  row = aot.beam_row(model, tgt, keep_hlo=True)
  assert row.fits and row.program == "beam" and row.slots == 4 and row.flops > 0 and row.ratio >= 1.0
  assert row.argument_bytes >= _weights(model, tgt)
  assert row.cache_copies == _whole_copies(row.hlo, f"u16[4,2,{row.cache_length},16]") == 0
  int8 = aot.abstract_model(model.config, dtype=jnp.bfloat16, quantize_mode="int8")
  assert _weights(int8, tgt) < _weights(model, tgt)
  row, _ = aot.decode_row(int8, tgt, 4, 256, keep_hlo=True)
  assert row.fits and row.argument_bytes >= _weights(int8, tgt) and row.ratio >= 1.0
  # "int8" on a TPU is weight-only (utils.backend): the products accumulate in f32; W8A8's int8 x int8
  # products accumulate in s32.
  products = lambda hlo: collections.Counter(re.findall(r"= (\w+)\[[^\]]*\]\S* (?:convolution|dot)\(", hlo))
  assert products(row.hlo)["s32"] == 0 and products(row.hlo)["f32"] > 0
  w8a8 = aot.abstract_model(model.config, dtype=jnp.bfloat16, quantize_mode="int8_w8a8")
  row, _ = aot.decode_row(w8a8, tgt, 4, 256, keep_hlo=True)
  assert row.fits and products(row.hlo)["s32"] > 0


def test_the_traffic_estimate_sees_the_weights_and_the_read_window(pool_rows):
  decode = [r for r in pool_rows if r.program == "decode"]
  for r in decode:
    ops = aot.traffic_by_op(r.hlo, 10**6)
    assert sum(b for b, _ in ops) == r.hbm_traffic == sum(t.bytes for t in aot.traffic(r.hlo, None))
  assert decode[1].hbm_traffic > decode[0].hbm_traffic  # twice the window read


def _script(*args, tmp_path):
  env = dict(os.environ, SMOLLM3_JAX_CACHE_DIR=str(tmp_path / "jax_cache"))
  return subprocess.run(
    [sys.executable, SCRIPT, "--preset=tiny", "--num_layers=2", *args],
    capture_output=True,
    text=True,
    env=env,
    timeout=300,
    cwd=ROOT,
  )


@pytest.mark.parametrize(
  "flag,message",
  [
    ("--cache_length=100", "must be a multiple of v5e:1x1's prefill chunk"),
    ("--windows=256,x", "'x' is not an integer"),
    ("--target=v5e:2x4 --slots=4", "must be a multiple of v5e:2x4's 8 chips"),
  ],
)
def test_the_script_refuses_bad_flags_before_compiling(flag, message, tmp_path):
  out = tmp_path / "out.json"
  proc = _script(*flag.split(), f"--output_json={out}", tmp_path=tmp_path)
  assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert "compiling for" not in proc.stdout and not out.exists()


def test_the_script_compiles_pool_score_and_train_programs_and_writes_json(tmp_path):
  out = tmp_path / "aot.json"
  proc = _script(
    "--slots=4",
    "--cache_length=256",
    "--programs=pool,score,train",
    "--train_length=64",
    "--traffic=2",
    f"--output_json={out}",
    tmp_path=tmp_path,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  rows = report["rows"]
  assert [r["program"] for r in rows] == ["prefill", "insert", "decode", "tails", "score", "train"]
  assert all(r["fits"] and r["ideal_bytes"] > 0 and r["ratio"] >= 1.0 and r["hbm_bytes"] > 0 for r in rows)
  assert all(r["flops"] > 0 for r in rows if r["program"] in ("prefill", "decode", "score", "train"))
  assert set(aot.FIELDS) <= set(rows[0]) and report["target"] == "v5e:1x1" and report["num_layers"] == 2
  assert "score" in proc.stdout and "estimated HBM traffic" in proc.stdout


def _weight_shapes(model) -> tuple:
  return tuple({(jnp.dtype(x.dtype).name, tuple(x.shape)) for x in jax.tree.leaves(nnx.state(model)) if x.ndim == 2})


def test_no_program_re_lays_out_a_weight(pool_rows, model, tgt):
  # The q/k/v projections read as [hidden, heads, head_dim] (model.project_heads): a product reshaped
  # into heads afterwards made XLA:TPU copy every q/k/v kernel into another layout at each decode
  # call (the 3B model on v5e: 0.54 GB a call). The tiny model never showed it; one layer of the 3B
  # model (its attention and vocabulary, a narrow MLP: ~5 s to compile) did.
  shapes = _weight_shapes(model)
  for r in pool_rows:
    assert aot.count_copies(r.hlo, shapes) == 0, (r.program, r.window)
  cfg = config_lib.smollm3_3b()
  layer = aot.abstract_model(
    cfg.replace(num_hidden_layers=1, no_rope_layers=cfg.no_rope_layers[:1], intermediate_size=256), jnp.bfloat16
  )
  row, _ = aot.decode_row(layer, tgt, 8, 256, keep_hlo=True)
  assert row.fits and aot.count_copies(row.hlo, _weight_shapes(layer)) == 0


def test_decode_on_an_accelerator_searches_the_filters_cut_offs_in_wide_rounds(pool_rows):
  # The TPU choices (utils.backend) reach the compiled decode step: the top-k/top-p/typical searches
  # run 8 rounds of radix 16, not 32 of bisection (sampling._bisect).
  for r in (r for r in pool_rows if r.program == "decode"):
    mod = aot._Module(r.hlo)
    trips = sorted(aot._trip_count(mod, i) for c in mod.comps.values() for i in c if i.op == "while")
    assert trips.count(8) >= 3 and 32 not in trips, trips


def test_the_traffic_estimate_takes_one_branch_and_counts_inner_loops():
  # A conditional runs one branch: the estimate takes the costliest ("max") or the cheapest ("min");
  # a loop inside the program's loop counts its trip count of times.
  text = """HloModule m

%cheap (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  ROOT %n = f32[1024]{0} negate(%p)
}

%dear (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  %a = f32[1024]{0} negate(%p)
  ROOT %b = f32[1024]{0} negate(%a)
}

%inner_cond (t: (s32[], f32[1024])) -> pred[] {
  %t = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %five = s32[] constant(5)
  ROOT %lt = pred[] compare(%i, %five), direction=LT
}

%inner_body (t: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %t = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[1024]{0} get-tuple-element(%t), index=1
  %y = f32[1024]{0} negate(%x)
  ROOT %r = (s32[], f32[1024]{0}) tuple(%i, %y)
}

%outer_cond (t: (s32[], f32[1024])) -> pred[] {
  %t = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %hundred = s32[] constant(100)
  ROOT %lt = pred[] compare(%i, %hundred), direction=LT
}

%outer_body (t: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %t = (s32[], f32[1024]{0}) parameter(0)
  %w = (s32[], f32[1024]{0}) while(%t), condition=%inner_cond, body=%inner_body
  %i = s32[] get-tuple-element(%w), index=0
  %x = f32[1024]{0} get-tuple-element(%w), index=1
  %k = s32[] constant(0)
  %z = f32[1024]{0} conditional(%k, %x, %x), branch_computations={%cheap, %dear}
  ROOT %r = (s32[], f32[1024]{0}) tuple(%i, %z)
}

ENTRY %main (x: f32[1024]) -> f32[1024] {
  %x = f32[1024]{0} parameter(0)
  %z = s32[] constant(0)
  %t = (s32[], f32[1024]{0}) tuple(%z, %x)
  %w = (s32[], f32[1024]{0}) while(%t), condition=%outer_cond, body=%outer_body
  ROOT %r = f32[1024]{0} get-tuple-element(%w), index=1
}
"""
  one = 2 * 4096  # a negate reads and writes 4 KB
  loops = 6 * 9  # the conditions' compares: 4 + 4 bytes read, 1 written; the inner one 5 times
  # The outer loop counts once (per step); the inner one 5 times; then one branch.
  assert aot.hbm_traffic(text, "min") == 5 * one + one + loops
  assert aot.hbm_traffic(text, "max") == 5 * one + 2 * one + loops


def test_decode_does_not_round_trip_the_cache_through_on_chip_memory(model, tgt):
  # With the window covering the whole cache, XLA:TPU's memory-space assignment moved each cache layer
  # into on-chip memory and back every step (a whole-layer copy each way). The TPU choices'
  # compiler option (utils.backend) keeps it in HBM: the tiny model's 64 x 1024 decode, plain path,
  # 1.85x its ideal without it, 1.12x with it (2026-12-07).
  row, _ = aot.decode_row(model, tgt, 64, 1024, 1024)
  assert row.fits and row.plain_ratio < 1.3, row.plain_ratio


def test_compile_only_programs_skip_the_persistent_cache(tgt, tmp_path):
  # A compile-only TPU executable cannot be loaded back in this process: it is neither written to the
  # cache nor read from it, and the host's own compiles still use the cache afterwards (JAX decides
  # once per process whether to use it; the pause asks it again).
  from smollm3_jax.utils import runtime

  def entries():
    return sorted(f for f in os.listdir(tmp_path) if f.endswith("-cache"))

  was = jax.config.jax_compilation_cache_dir
  runtime.enable_compilation_cache(tmp_path)
  try:
    ones = np.ones((8, 8), np.float32)
    jax.jit(lambda a: a @ a + 2.0)(ones).block_until_ready()  # the host's: cached
    host = entries()
    assert len(host) == 1, host
    x = jax.ShapeDtypeStruct((128, 128), jnp.float32, sharding=aot.replicated(tgt))
    for _ in range(2):  # the second would read what the first wrote
      row, exe = aot.compile_row("sq", jax.jit(lambda a: a @ a + 3.0), (x,), tgt=tgt)
      assert row.fits and exe is not None
    assert entries() == host
    jax.jit(lambda a: a @ a + 4.0)(ones).block_until_ready()
    assert len(entries()) == 2, entries()
  finally:
    if was:
      runtime.enable_compilation_cache(was)
    else:
      runtime.disable_compilation_cache()


def test_a_wide_prefill_against_a_long_window_keeps_its_scores_on_chip():
  # A 256-token prefill chunk (the TPU choice) against a window of 2048 slots or more: on v6e the
  # attention's scores went through HBM (the 3B model: 1.40x its ideal at 2048, 1.45x at 4096) until
  # the queries were taken in blocks of 64 (utils.backend query_block; 1.11x and 1.10x). Two layers of
  # the 3B model here: 0.74 of the ideal without the blocks, 0.60 with them (2026-12-07).
  cfg = config_lib.smollm3_3b()
  two = aot.abstract_model(cfg.replace(num_hidden_layers=2, no_rope_layers=cfg.no_rope_layers[:2]), jnp.bfloat16)
  row, _ = aot.prefill_row(two, aot.target("v6e:1x1"), 8, 2048)
  assert row.fits and row.hbm_ratio < 0.67, row.hbm_ratio


def test_prefill_and_insert_on_a_mesh_touch_only_their_rows():
  # On v5e:2x4 the pool's rows are split over the 8 chips (the mesh's data axis). Prefill and insert
  # index rows by a traced slot: a dynamic index into the split axis made XLA gather the whole cache
  # onto every chip (one layer of the 3B model, 64 x 2048: prefill 29x its ideal, insert 61x; the ideal
  # counts a row's bytes whole on the chip holding it). Each chip now slices and writes its own rows
  # (kv_cache.take_row / put_row): 0.57x and 0.53x (2026-12-08).
  cfg = config_lib.smollm3_3b()
  layer = aot.abstract_model(
    cfg.replace(num_hidden_layers=1, no_rope_layers=cfg.no_rope_layers[:1], intermediate_size=256), jnp.bfloat16
  )
  mesh = aot.target("v5e:2x4")
  prefill, _ = aot.prefill_row(layer, mesh, 64, 2048)
  insert, _ = aot.insert_row(layer, mesh, 64, 2048)
  assert prefill.fits and prefill.hbm_ratio < 1.3, prefill.hbm_ratio
  assert insert.fits and insert.hbm_ratio < 1.3, insert.hbm_ratio
