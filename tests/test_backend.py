"""Per-backend choices (smollm3_jax.utils.backend): the table, where an engine reads its platform from,
and a pool that does not wait between programs (the accelerators' choice) giving the same tokens."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smollm3_jax.generation import engine as engine_lib
from smollm3_jax.generation.engine import Engine, Request
from smollm3_jax.nn import config as C
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.utils import backend


def test_the_table_names_each_backend():
  assert backend.choices("cpu").sync_phases
  assert not backend.choices("tpu").sync_phases
  assert backend.choices("cuda") == backend.choices("gpu") == backend.choices("rocm")
  assert not backend.choices("gpu").sync_phases
  assert backend.choices() == backend.choices(jax.default_backend())


def test_platform_is_where_the_parameters_live():
  from smollm3_jax.generation import aot

  assert backend.platform_of({"w": jnp.zeros(3)}) == "cpu"
  tpu = aot.target("v5e:1x1").devices[0]
  abstract = jax.ShapeDtypeStruct((3,), jnp.float32, sharding=jax.sharding.SingleDeviceSharding(tpu))
  assert backend.platform_of([abstract]) == "tpu"
  assert backend.platform_of([jax.ShapeDtypeStruct((3,), jnp.float32)]) == jax.default_backend()


@pytest.fixture(scope="module")
def model():
  return SmolLM3(C.tiny(num_layers=2), rngs=nnx.Rngs(5))


def _run(eng, prompts):
  pool = eng.pool(4, 128, stop_ids=())
  reqs = [
    Request(prompt=p, settings=dict(temperature=0.8 if i % 2 else 0.0), seed=i, max_new=6 + i)
    for i, p in enumerate(prompts)
  ]
  pool.submit(reqs)
  while not pool.idle:
    pool.step()
  return [list(r.token_ids) for r in reqs]


def test_a_pool_that_does_not_wait_between_programs_gives_the_same_tokens(model, monkeypatch):
  rng = np.random.default_rng(1)
  prompts = [rng.integers(1, 500, n).tolist() for n in (5, 70, 12, 33, 9, 21)]  # 6 rows, 4 slots: refills
  synced = Engine(model)
  assert synced.choices.sync_phases  # (CPU)
  want = _run(synced, prompts)
  assert [len(t) for t in want] == [6 + i for i in range(6)]

  free = Engine(model)
  free.choices = dataclasses.replace(free.choices, sync_phases=False)
  waits = []
  real = jax.block_until_ready
  monkeypatch.setattr(engine_lib.jax, "block_until_ready", lambda x: waits.append(1) or real(x))
  assert _run(free, prompts) == want
  assert not waits  # nothing waited for between prefill, insert and decode
  _run(synced, prompts)
  assert waits  # (the count sees the synced pool's waits)
