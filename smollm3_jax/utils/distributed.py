"""Runs over several processes: JAX's multi-controller runtime (one process per host, a global mesh
over every host's devices, the same SPMD programs everywhere).

* :func:`initialize` joins the job (``jax.distributed.initialize``: a coordinator address, the
  number of processes and this one's index, or nothing on Cloud TPU / SLURM, where JAX finds them);
  a process that stops sending heartbeats for ``heartbeat_seconds`` fails the others with an error.
* Every process runs the same host loop on the same data, so each takes the same decisions and
  calls the same programs in the same order. Host values that enter a program are identical on
  every process (``jax.device_put`` then feeds each device its own slice); values read back from
  a program come through :func:`fetch`, whole on every process.
* Only the leader (process 0) touches shared state such as a sweep's workdir; :func:`broadcast`
  sends what it read to the others.

In a single process every function here is a cheap no-op. Imports jax and numpy only.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from typing import Any, NoReturn

import jax
import numpy as np

# A process silent for this long is declared dead and every other process fails with an error (JAX's
# default is 100 s); the shutdown of a finished run waits at most SHUTDOWN_SECONDS for the others.
HEARTBEAT_SECONDS = 20
SHUTDOWN_SECONDS = 60


class PeerLost(RuntimeError):
  """A collective with the other processes failed: one of them died or stopped answering."""


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  auto: bool = False,
  heartbeat_seconds: int = HEARTBEAT_SECONDS,
) -> bool:
  """Joins a multi-process run; returns whether one was joined (False: a single process).

  ``coordinator_address`` ("host:port" of process 0), ``num_processes`` and ``process_id``: as
  ``jax.distributed.initialize`` takes them; unset ones are detected from the environment (Cloud
  TPU, SLURM). With none of them set, nothing happens unless ``auto`` (then JAX detects them all).
  Call it before anything else uses JAX.
  """
  given = [coordinator_address, num_processes, process_id]
  if not auto and all(v is None for v in given):
    return False
  if num_processes is not None and num_processes < 1:
    raise ValueError(f"num_processes must be >= 1, got {num_processes}")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
  if heartbeat_seconds < 1:
    raise ValueError(f"heartbeat_seconds must be >= 1, got {heartbeat_seconds}")
  if num_processes == 1:
    return False
  jax.distributed.initialize(
    coordinator_address,
    num_processes,
    process_id,
    heartbeat_timeout_seconds=int(heartbeat_seconds),
    shutdown_timeout_seconds=SHUTDOWN_SECONDS,
  )
  return True


def fail(error: BaseException) -> NoReturn:
  """Ends this process of a multi-process run after ``error``, at once and with status 3: a normal
  exit would wait at JAX's shutdown barrier for processes that may be dead. Prints the traceback and
  what it most likely means."""
  traceback.print_exception(error)
  first = str(error).strip().splitlines()[0] if str(error).strip() else ""
  if isinstance(error, (PeerLost, jax.errors.JaxRuntimeError)):  # what a dead peer looks like from here
    why = "most likely another process died or stopped answering (see its log)"
  else:
    why = "the other processes stop too (their next exchange with this one fails)"
  print(
    f"error: {describe()} stopped: {type(error).__name__}: {first}\n{why}. Work already written is kept: "
    f"rerun every process with the same flags to resume.",
    file=sys.stderr,
    flush=True,
  )
  sys.stdout.flush()
  os._exit(3)


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_leader() -> bool:
  """Whether this process reads and writes shared files (process 0)."""
  return jax.process_index() == 0


def describe() -> str:
  """E.g. "process 1 of 2 (4 local cpu devices)"."""
  return (
    f"process {jax.process_index()} of {jax.process_count()} "
    f"({jax.local_device_count()} local {jax.devices()[0].platform} devices)"
  )


def _collective(fn, *args):
  if jax.process_count() == 1:
    return fn(*args)
  try:
    return fn(*args)
  except Exception as e:  # a peer that died surfaces as a runtime error of the collective
    raise PeerLost(
      f"{describe()}: lost contact with another process (it may have died; see its log): "
      f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
    ) from e


def portable(error: BaseException) -> BaseException:
  """``error`` if it pickles (to :func:`broadcast` it), else a RuntimeError with its type and message."""
  try:
    pickle.loads(pickle.dumps(error))
    return error
  except Exception:
    return RuntimeError(f"{type(error).__name__}: {error}")


def broadcast(value: Any) -> Any:
  """The leader's ``value`` (any picklable object), on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils

  payload = np.frombuffer(pickle.dumps(value), np.uint8) if is_leader() else np.zeros((0,), np.uint8)
  size = int(_collective(multihost_utils.broadcast_one_to_all, np.asarray([payload.size], np.int32))[0])
  buf = np.zeros((size,), np.uint8)
  if is_leader():
    buf[:] = payload
  data = _collective(multihost_utils.broadcast_one_to_all, buf)
  return pickle.loads(np.asarray(data, np.uint8).tobytes())


def barrier(name: str) -> None:
  """Waits until every process got here (a no-op in one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    _collective(multihost_utils.sync_global_devices, name)


def fetch(tree):
  """Host (numpy) copies of the arrays in ``tree``, whole on every process, however they are sharded
  over the processes' devices (a collective when some shards live on other hosts). Copies: on CPU a
  device buffer's host view would change when a program reuses (donates) the buffer."""

  def one(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.array(jax.device_get(x))
    if x.is_fully_replicated:
      return np.array(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.array(_collective(multihost_utils.process_allgather, x, True))

  return jax.tree.map(one, tree)
