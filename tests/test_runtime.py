"""The start-up caches are on by default for library use (not only the scripts), off with one setting,
and a cache the caller chose is left alone. Each case runs in a fresh process (the switch is per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHILD = r"""
import json, os, sys
import jax
if sys.argv[1] == "caller":
  jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["SMOLLM3_JAX_CACHE_DIR"], "mine"))
from flax import nnx
import smollm3_jax
from smollm3_jax.nn import config as C
from smollm3_jax.utils import runtime
model = smollm3_jax.SmolLM3(C.tiny(num_layers=1), rngs=nnx.Rngs(0))
smollm3_jax.generate(model, None, [[1, 2, 3]], max_new_tokens=2, stop_ids=[])
print("RESULT " + json.dumps(dict(dir=jax.config.jax_compilation_cache_dir, index=runtime.gguf_index_dir())))
"""


@pytest.mark.parametrize("case", ["default", "off", "caller"])
def test_library_use_turns_the_compilation_cache_on_unless_told_otherwise(tmp_path, case):
  env = dict(
    os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", SMOLLM3_JAX_CACHE_DIR="off" if case == "off" else str(tmp_path)
  )
  if case == "off":
    env["HOME"] = str(tmp_path)  # nothing may land in a default directory either
  proc = subprocess.run([sys.executable, "-c", CHILD, case], capture_output=True, text=True, env=env, timeout=300)
  line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
  assert proc.returncode == 0 and line, proc.stderr[-3000:]
  got = json.loads(line[len("RESULT ") :])
  if case == "default":
    assert got["dir"] == str(tmp_path) and got["index"] == os.path.join(str(tmp_path), "gguf_index")
    assert any(name.endswith("-cache") or "cache" in name for name in os.listdir(tmp_path)), os.listdir(tmp_path)
  elif case == "off":
    assert got == dict(dir=None, index=None) and not os.listdir(tmp_path)
  else:
    assert got["dir"] == os.path.join(str(tmp_path), "mine") and got["index"] is None
