"""Continuous batching: a row's tokens do not depend on its slot, its neighbours or when it starts
(alone, in a full batch, or inserted mid-flight into a slot another row used); the pool's program
set; utilization and queue figures."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import smollm3_jax
from smollm3_jax.generation.engine import COMPILE_COUNTS, Engine, Request
from smollm3_jax.nn import config as C
from smollm3_jax.nn.model import SmolLM3

# Settings per row: greedy, seeded sampling with filters, penalties, different budgets.
ROWS = [
  dict(temperature=0.0, max_new=9),
  dict(temperature=0.9, top_p=0.9, seed=3, max_new=4),
  dict(temperature=0.0, repetition_penalty=1.3, max_new=12),
  dict(temperature=1.1, top_k=20, min_p=0.05, seed=7, max_new=6),
  dict(temperature=0.7, repetition_penalty=1.2, seed=11, max_new=10),
  dict(temperature=0.0, max_new=3),
  dict(temperature=1.0, seed=5, max_new=8),
]
LENGTHS = [3, 17, 9, 40, 1, 25, 12]


@pytest.fixture(scope="module")
def tiny():
  model = SmolLM3(C.tiny(num_layers=2), rngs=nnx.Rngs(3))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(1, 500, n).tolist() for n in LENGTHS]
  return model, prompts


def _settings(row):
  return {k: v for k, v in row.items() if k not in ("seed", "max_new")}


def _alone(model, prompt, row):
  return smollm3_jax.generate(
    model, None, [prompt], stop_ids=[], seed=[row.get("seed", 0)], max_new_tokens=row["max_new"], **_settings(row)
  )[0].token_ids


@pytest.fixture(scope="module")
def alone(tiny):
  model, prompts = tiny
  return [_alone(model, p, r) for p, r in zip(prompts, ROWS)]


def test_batched_rows_equal_rows_alone(tiny, alone):
  model, prompts = tiny
  per_row = {
    k: [r.get(k, smollm3_jax.generation.sampling.SETTINGS[k].off) for r in ROWS]
    for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
  }
  res = smollm3_jax.generate(
    model,
    None,
    prompts,
    stop_ids=[],
    seed=[r.get("seed", 0) for r in ROWS],
    max_new_tokens=[r["max_new"] for r in ROWS],
    **per_row,
  )
  assert [c.token_ids for c in res] == alone
  assert [len(t) for t in alone] == [r["max_new"] for r in ROWS]


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_rows_inserted_mid_flight_equal_rows_alone(tiny, alone, slots):
  """More rows than slots: each finished row's slot is refilled by the next waiting row, whose cache
  and state start where another row's were."""
  model, prompts = tiny
  engine = Engine(model, None)
  pool = engine.pool(slots, engine.cache_length_for(max(LENGTHS) + 12), chunk_steps=2)
  requests = [
    Request(prompt=p, settings=_settings(r), seed=r.get("seed", 0), max_new=r["max_new"]) for p, r in zip(prompts, ROWS)
  ]
  pool.submit(requests)
  seen_slots = []
  while not pool.idle:
    seen_slots.append([None if r is None else requests.index(r) for r in pool.rows])
    pool.step()
  assert [r.token_ids for r in requests] == alone
  assert all(r.done and r.reason for r in requests)
  # Rows really started mid-flight, in slots other rows had used.
  starts = sorted({r.admitted for r in requests})
  assert len(starts) > 1 and any(r.queue_seconds > 0 for r in requests)
  reused = [s for s in range(slots) if len({row[s] for row in seen_slots if row[s] is not None}) > 1]
  assert reused
  assert 0 < pool.utilization() <= 1
  assert pool.stats["generated"] == sum(r["max_new"] for r in ROWS)


def test_a_narrowing_pool_keeps_every_rows_tokens(tiny, alone):
  """Once the queue is empty the pool narrows to the rows still running (the slots left idle stop
  costing decode work); their tokens do not change."""
  model, prompts = tiny
  engine = Engine(model, None)
  length = engine.cache_length_for(max(LENGTHS) + 12)
  outs = {}
  for shrink in (False, True):
    pool = engine.pool(8, length, chunk_steps=2, shrink=shrink)
    requests = [
      Request(prompt=p, settings=_settings(r), seed=r.get("seed", 0), max_new=r["max_new"])
      for p, r in zip(prompts, ROWS)
    ]
    pool.submit(requests)
    widths = []
    while not pool.idle:
      pool.step()
      widths.append(pool.slots)
    assert [r.token_ids for r in requests] == alone
    outs[shrink] = (pool.utilization(), widths)
  (fixed, fixed_widths), (narrow, narrow_widths) = outs[False], outs[True]
  assert set(fixed_widths) == {8} and min(narrow_widths) < 8 and narrow > fixed


def test_repeated_prompts_share_prefill_and_keep_their_own_seeds(tiny):
  model, prompts = tiny
  res = smollm3_jax.generate(
    model, None, [prompts[3]], num_return_sequences=4, temperature=1.0, seed=9, max_new_tokens=6, stop_ids=[]
  )
  assert res.stats.prefilled_prompts == 1 and len(res) == 4
  seeds = smollm3_jax.generation.api.row_seeds(9, 4)
  for c, s in zip(res, seeds):
    assert c.settings["seed"] == s
    want = smollm3_jax.generate(
      model, None, [prompts[3]], temperature=1.0, seed=[int(s)], max_new_tokens=6, stop_ids=[]
    )[0].token_ids
    assert c.token_ids == want
  assert len({tuple(c.token_ids) for c in res}) > 1  # four seeds, not one sample four times


def test_a_later_row_copies_the_prompt_of_a_running_row(tiny):
  """Rows repeating a prompt that start in later rounds copy its cache from a slot still holding it
  (a running or finished row), not prefilling again; the penalties see the prompt only, not what that
  row generated."""
  model, prompts = tiny
  engine = Engine(model, None)
  pool = engine.pool(2, 128, chunk_steps=2)
  budgets = [3, 9, 4, 6, 5]
  settings = dict(temperature=0.8, repetition_penalty=1.5, frequency_penalty=0.5, no_repeat_ngram_size=2)
  requests = [Request(prompt=prompts[1], settings=settings, seed=i, max_new=m, share=0) for i, m in enumerate(budgets)]
  pool.submit(requests)
  pool.run()
  assert pool.stats["prefilled_prompts"] == 1 and len({r.admitted for r in requests}) > 1
  for i, (r, m) in enumerate(zip(requests, budgets)):
    want = smollm3_jax.generate(model, None, [prompts[1]], seed=[i], max_new_tokens=m, stop_ids=[], **settings)[
      0
    ].token_ids
    assert r.token_ids == want, i


def test_a_pool_compiles_its_program_set_once(tiny):
  """Warm-up compiles prefill (per rows bucket x window), insert and each decode window; then rows
  of any prompt length and budget run without a compile."""
  model, prompts = tiny
  engine = Engine(model, None, prefill_chunk=64)
  pool = engine.pool(2, 320)
  before = dict(COMPILE_COUNTS)
  pool.warmup()
  # windows: 256 and the whole cache (320); prefill one prompt per call
  added = {k: COMPILE_COUNTS[k] - before.get(k, 0) for k in ("prefill", "insert", "decode")}
  assert added == {"prefill": 2, "insert": 1, "decode": 2}
  before = dict(COMPILE_COUNTS)
  rng = np.random.default_rng(1)
  long = rng.integers(1, 500, 290).tolist()  # 5 prefill chunks, then the 320-slot window
  pool.submit([Request(prompt=p, max_new=m) for p, m in ((prompts[0], 4), (long, 20), (prompts[3], 9))])
  pool.run()
  assert dict(COMPILE_COUNTS) == before


def test_cancelled_rows_free_their_slot(tiny):
  model, prompts = tiny
  engine = Engine(model, None)
  pool = engine.pool(1, 128, chunk_steps=2)
  first, second = (Request(prompt=p, max_new=40) for p in prompts[:2])
  pool.submit([first, second])
  pool.step()
  assert pool.rows[0] is first and 0 < len(first.token_ids) < 40
  pool.cancel(first)
  pool.run()
  assert first.done and smollm3_jax.generation.decode.STOP_REASONS[first.reason] == "cancelled"
  assert len(first.token_ids) < 40 and len(second.token_ids) == 40
  assert (
    second.token_ids
    == smollm3_jax.generate(model, None, [prompts[1]], max_new_tokens=40, stop_ids=[], temperature=0.0)[0].token_ids
  )


def test_a_request_that_does_not_fit_is_refused_before_queueing(tiny):
  model, prompts = tiny
  pool = Engine(model, None).pool(2, 128)
  with pytest.raises(ValueError, match="cache slots"):
    pool.submit([Request(prompt=prompts[0], max_new=4), Request(prompt=prompts[3], max_new=100)])
  assert not pool.queue  # nothing queued
  with pytest.raises(ValueError, match="empty"):
    pool.submit([Request(prompt=[], max_new=4)])


def test_prefill_and_decode_update_the_cache_in_place(tiny):
  """Cost follows the work: a prefill call (or a decode chunk) never copies the pool's whole cache.
  Scattering a prefill's read window back once made XLA copy every layer's cache on every call."""
  import re

  import jax.numpy as jnp

  from smollm3_jax.generation.decode import decode_jit, prefill_slots_jit

  model, _ = tiny
  eng = Engine(model, None)
  pool = eng.pool(8, 512, stop_ids=[])
  k = pool.state.cache.k[0]
  shape = "%s[%s]" % (k.dtype.name.replace("float", "f"), ",".join(map(str, k.shape)))
  cache_copy = re.compile(re.escape(shape) + r"\{[0-9,]*\} copy\(")
  z = jnp.zeros((1,), jnp.int32)
  prefill, _ = eng._compiled_fn(
    "prefill",
    prefill_slots_jit,
    eng.state,
    pool.state,
    jnp.zeros((1, eng.prefill_chunk), jnp.int32),
    z,
    z,
    z,
    window=256,
  )
  decode, _ = eng._compiled_fn(
    "decode",
    decode_jit,
    eng.state,
    pool.state,
    pool.shared,
    jnp.asarray(1, jnp.int32),
    jnp.asarray(1, jnp.int32),
    jnp.asarray(pool._stop),
    window=256,
  )
  for exe in (prefill, decode):
    text = exe.as_text()
    assert shape in text  # the cache goes through the program ...
    assert not cache_copy.findall(text)  # ... and is never copied whole


def test_prefill_rows_of_several_prompts_equal_one_by_one(tiny):
  """Prefill calls of several prompts (``prefill_rows``), padding rows included (a 4-row call for
  the last 3 prompts, 3-row calls for the last 1), write each slot's prompt as calls of one prompt do:
  a padding row must not write into any slot."""
  model, _ = tiny
  eng = Engine(model, None, prefill_chunk=8)
  lengths = [3, 17, 9, 40, 1, 25, 12, 5]
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, 500, n).tolist() for n in lengths]

  def prefilled(rows):
    pool = eng.pool(8, 64, stop_ids=[], prefill_rows=rows)
    pool.submit([Request(prompt=p, max_new=4) for p in prompts])
    pool._admit()  # prefill and insert, no decode step
    assert [len(r.prompt) for r in pool.rows] == lengths  # slot i holds prompt i
    return pool.stats["prefill_calls"], jax.device_get(pool.state.cache)

  calls1, ref = prefilled((1,))
  for rows, calls in (((4,), 2 * 5), ((3,), 3 * 5)):  # 5 chunks of 8 for the 40-token prompt
    n_calls, got = prefilled(rows)
    assert n_calls < calls1 and n_calls <= calls
    assert got.lengths.tolist() == ref.lengths.tolist() == [n - 1 for n in lengths]
    for k_ref, k_got in zip(ref.k + ref.v, got.k + got.v):
      for i, n in enumerate(lengths):
        np.testing.assert_allclose(k_got[i, :, : n - 1], k_ref[i, :, : n - 1], atol=1e-5, rtol=1e-5)


def test_many_rows_sharing_prompts_through_few_slots_equal_rows_alone(tiny):
  """Many rows over few slots, prompts repeated, penalties on: every row equals itself run alone. A row
  admitted in the same round as another row of its prompt must take the prompt (cache and token context)
  from a slot that holds it before the insert, never from a slot that copies it in that insert (whose
  token context is still its previous occupant's)."""
  model, prompts = tiny
  engine = Engine(model, None)
  settings = dict(
    temperature=0.9, repetition_penalty=1.4, frequency_penalty=0.6, presence_penalty=0.4, no_repeat_ngram_size=2
  )
  rng = np.random.default_rng(1)
  budgets = rng.integers(2, 12, 40).tolist()
  which = rng.integers(0, 3, 40).tolist()
  make = lambda share: [
    Request(prompt=prompts[(1, 2, 5)[w]], settings=settings, seed=i, max_new=m, share=share)
    for i, (w, m) in enumerate(zip(which, budgets))
  ]
  length = engine.cache_length_for(max(LENGTHS) + 12)
  shared = make(share=0)
  pool = engine.pool(4, length, chunk_steps=2)
  pool.submit(shared)
  pool.run()
  assert pool.stats["prefilled_prompts"] < len(shared)  # the prompts really were shared
  alone = make(share=None)
  for r in alone:  # one row at a time through a 4-slot pool (the same decode width)
    single = engine.pool(4, length, chunk_steps=2)
    single.submit([r])
    single.run()
  assert [r.token_ids for r in shared] == [r.token_ids for r in alone]


def test_a_shared_prompt_longer_than_one_copy_block_is_copied_whole():
  """Insert copies a shared prompt's cache row block by block (decode.COPY_BLOCK slots at a time): a
  prompt reaching into the last, partial block of a 1088-slot cache gives each sharing row the tokens it
  gets with its own prefill."""
  from smollm3_jax.generation.decode import COPY_BLOCK

  model = SmolLM3(dataclasses.replace(C.tiny(num_layers=2), max_position_embeddings=2048), rngs=nnx.Rngs(3))
  engine = Engine(model, None)
  length = 2 * COPY_BLOCK + 64
  prompt = np.random.default_rng(4).integers(1, 500, length - 40).tolist()  # into the third block
  make = lambda share: [
    Request(prompt=prompt, settings=dict(temperature=0.8), seed=i, max_new=8, share=share) for i in range(4)
  ]
  shared, alone = make(0), make(None)
  for rows in (shared, alone):
    pool = engine.pool(4, length, chunk_steps=4)
    pool.submit(rows)
    pool.run()
    if rows is shared:
      assert pool.stats["prefilled_prompts"] == 1  # one prefill, three copies
  assert [r.token_ids for r in shared] == [r.token_ids for r in alone]
  assert all(len(r.token_ids) == 8 for r in shared)
