"""Small helpers shared by several test modules (imported as a plain module from tests/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def run_multidevice_child(script: str, arg: str, *, devices: int = 8, timeout: int = 900) -> dict:
  """Runs ``script`` (a test module's ``__main__``) in a fresh process that sees ``devices`` fake
  CPU devices (set before JAX starts) and returns the JSON it prints after ``RESULT ``."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, os.path.abspath(script), arg], env=env, capture_output=True, text=True, timeout=timeout
  )
  line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
  assert proc.returncode == 0 and line, f"child failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
  return json.loads(line[len("RESULT ") :])


class SlowTokenizer:
  """Wraps a tokenizer with a slow ``decode``, so a generation lasts long enough to watch it stream
  (or to walk away from it)."""

  def __init__(self, tok, delay):
    self._tok, self._delay = tok, delay

  def decode(self, *args, **kwargs):
    time.sleep(self._delay)
    return self._tok.decode(*args, **kwargs)

  def __getattr__(self, name):
    return getattr(self._tok, name)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sweep_config(preset: str):
  """configs/sweep.py's ``get_config(preset)`` (config files are loaded by path, as absl does)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("sweep_config", os.path.join(ROOT, "configs", "sweep.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def tiny_sweep_config(tok_dir, **changes):
  """The "tiny" preset on the tokenizer saved in ``tok_dir``, no progress bar: 2 temperatures x 2
  penalties x 2 thinking modes, 3 prompts (one per kind) = 24 rows; 5 batches of 5 rows, the last
  one padded. ``changes``: dotted field -> value."""
  cfg = sweep_config("tiny")
  cfg.model.tokenizer = tok_dir
  cfg.progress = False
  cfg.prompts.limit = 3
  cfg.batch_size = 5
  cfg.max_new_tokens = 5
  return override(cfg, changes)


def override(cfg, changes: dict):
  """``cfg`` with each dotted field of ``changes`` set (as --config.a.b=... would)."""
  for k, v in changes.items():
    node = cfg
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return cfg


def kill_at_marker(cmd, *, env, cwd, marker, what: str, timeout: float = 240) -> "subprocess.Popen":
  """Runs ``cmd`` until it creates the file ``marker``, then SIGKILLs it (a kill at a point the test
  chose, on any machine speed). Fails naming ``what`` if the marker never came. Returns the process."""
  import signal
  import subprocess
  import time

  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    assert marker.exists() and proc.poll() is None, f"{what}: " + (
      proc.stderr.read().decode()[-3000:] if proc.poll() is not None else "timeout"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
    proc.stderr.close()
  return proc
