"""Smoke tests of experiments/benchmark.py (the entry point of experiments/benchmarks/) and
smollm3_jax.utils.runtime (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax

from smollm3_jax.utils import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "benchmark.py")


def _run(args, tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
    [sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return proc


def test_benchmark_tiny_vs_transformers(tmp_path):
  out = tmp_path / "bench.json"
  proc = _run(
    [
      "--checkpoint=random",
      "--preset=tiny",
      "--num_layers=2",
      "--prompt_lengths=16",
      "--batch_sizes=1,2",
      "--new_tokens=3",
      "--sweep_new_tokens=2",
      "--repeats=1",
      "--compare=transformers",
      "--bandwidth_gbps=10",
      f"--cache_dir={tmp_path / 'cc'}",
      "--cache_budgets=256,1024",
      f"--output_json={out}",
    ],
    tmp_path,
  )
  assert "decode batch 2" in proc.stdout and "ratio" in proc.stdout
  report = json.loads(out.read_text())
  assert report["bandwidth_gbps"] == 10
  kinds = [r["kind"] for r in report["rows"]]
  assert kinds == ["prefill", "decode", "decode", "sweep"] + ["budget"] * 4 + ["sampling"] * 2
  prefill, d1, d2, sweep = report["rows"][:4]
  budget, sampling_rows = report["rows"][4:8], report["rows"][8:]
  # The cache-budget rows: each allocated cache read through the window and whole; same greedy tokens.
  assert [(r["cache"], r["read"]) for r in budget] == [
    (256, "window"),
    (256, "whole cache"),
    (1024, "window"),
    (1024, "whole cache"),
  ]
  assert all(r["same_tokens"] and r["ours_tokens_per_second"] > 0 for r in budget)
  assert [r["mode"] for r in sampling_rows] == ["greedy", "sampled"]
  assert all(r["ours_tokens_per_second"] > 0 and r["batch"] == 32 for r in sampling_rows)
  assert prefill["prompt_length"] == 16
  for row in report["rows"][:4]:
    for key in ("ours_tokens_per_second", "theirs_tokens_per_second", "ratio", "compile_seconds"):
      assert row[key] is not None and row[key] >= 0, (row["kind"], key)
  for row in (d1, d2):
    assert row["weight_bytes"] > 0 and row["kv_bytes_per_step"] > 0
    assert 0 < row["roofline_fraction"]
    assert row["time_to_first_token"] > 0
    # Same weights, greedy, f32: our tokens equal transformers'.
    assert row["greedy_match_row0"] is True
  assert (d1["batch"], d2["batch"]) == (1, 2)
  assert sweep["settings"] == 18 and sweep["rows"] == 144
  assert os.listdir(tmp_path / "cc")  # the persistent compilation cache was written


def test_benchmark_rejects_bad_flags(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run(
    [sys.executable, SCRIPT, "--checkpoint=random", "--preset=tiny", "--batch_sizes=0"],
    capture_output=True,
    text=True,
    env=env,
    cwd=str(tmp_path),
  )
  assert proc.returncode != 0 and "batch sizes must be >= 1" in proc.stderr


def test_help_lists_every_benchmarks_flags(tmp_path):
  """Each benchmark module defines its own flags; the entry point's --help lists them all."""
  env = dict(os.environ, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, env=env, cwd=str(tmp_path))
  listed = {
    line.split(":")[0].strip().replace("--[no]", "--")
    for line in proc.stdout.splitlines()
    if line.strip().startswith("--")
  }
  for flag in (
    "--checkpoint",
    "--repeats",
    "--compare",
    "--prompt_lengths",
    "--cache_budgets",
    "--accelerator_check",
    "--check_steps",
    "--continuous_only",
    "--refill_slots",
    "--server_clients",
    "--baseline",
    "--startup",
  ):
    assert flag in listed, (flag, proc.stdout[-2000:], proc.stderr[-2000:])


def test_baseline_child_runs_from_another_checkout(tmp_path):
  """The --baseline child is experiments/benchmarks/baseline.py run as a script with another checkout
  first on PYTHONPATH: it must import nothing of experiments/ beyond itself, and measure the checkout
  it is given (the parent's own checkout is the repository root)."""
  child = os.path.join(ROOT, "experiments", "benchmarks", "baseline.py")
  env = dict(os.environ, PYTHONPATH=str(tmp_path))  # (a checkout without experiments/benchmarks)
  proc = subprocess.run([sys.executable, child], capture_output=True, text=True, env=env, cwd=str(tmp_path))
  assert proc.returncode == 0 and not proc.stdout, proc.stderr[-3000:]
  code = "import benchmarks.baseline as b; print(b.ROOT)"
  proc = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=str(tmp_path),
    env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "experiments")),
  )
  assert proc.stdout.strip() == ROOT, proc.stderr[-3000:]


def test_enable_compilation_cache(tmp_path, monkeypatch):
  old = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv(runtime.CACHE_ENV, str(tmp_path / "env_cache"))
    assert runtime.default_cache_dir() == str(tmp_path / "env_cache")
    path = runtime.enable_compilation_cache(tmp_path / "cache")
    assert path == str(tmp_path / "cache") and os.path.isdir(path)
    assert jax.config.jax_compilation_cache_dir == path
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
    jax.jit(lambda x: x * 3 + 1)(jax.numpy.arange(7.0)).block_until_ready()
    assert os.listdir(path), "nothing was written to the compilation cache"
  finally:
    if old:
      runtime.enable_compilation_cache(old)
    else:
      runtime.disable_compilation_cache()


def test_measure_bandwidth_small():
  sys.path.insert(0, os.path.join(ROOT, "experiments"))
  import probes

  probe = probes.measure_bandwidth(4 * 2**20, repeats=2)
  assert probe["gbps"] > 0 and probe["gbps"] == max(probe["sum_gbps"], probe["gemv_gbps"])
  assert probe["nbytes"] == 4 * 2**20


def test_accelerator_check_on_the_tiny_preset(tmp_path):
  """The GPU/TPU check's command, on the tiny preset: every batch x budget x mode row, with the
  budget really allocated, a roofline fraction and compile seconds."""
  out = tmp_path / "check.json"
  _run(
    [
      "--checkpoint=random",
      "--preset=tiny",
      "--num_layers=2",
      "--dtype=bfloat16",
      "--accelerator_check",
      "--check_batches=1,4",
      "--check_budgets=256,512",
      "--check_steps=4",
      "--repeats=1",
      "--bandwidth_gbps=10",
      f"--cache_dir={tmp_path / 'cc'}",
      f"--output_json={out}",
    ],
    tmp_path,
  )
  rows = json.loads(out.read_text())["rows"]
  assert [(r["budget"], r["batch"], r["mode"]) for r in rows] == [
    (budget, b, mode) for budget in (256, 512) for b in (1, 4) for mode in ("greedy", "sampled")
  ]
  for r in rows:
    assert r["kind"] == "accelerator" and r["cache_length"] == r["budget"]
    assert r["ours_tokens_per_second"] > 0 and 0 < r["roofline_fraction"] and r["compile_seconds"] >= 0
  assert all(r["compile_seconds"] > 0 for r in rows if r["mode"] == "greedy")  # a new engine per shape


def test_continuous_batching_rows(tmp_path):
  """--continuous_only on the demo at toy sizes: the refill on/off rows (same tokens) and the server
  rows (same texts) with their ratios and the targets printed."""
  out = tmp_path / "cont.json"
  proc = _run(
    [
      "--checkpoint=demo",
      "--continuous_only",
      "--refill_slots=2",
      "--refill_prompts=3",
      "--refill_budget=8",
      "--server_clients=2",
      "--server_tokens=4",
      "--repeats=1",
      "--bandwidth_gbps=10",
      f"--cache_dir={tmp_path / 'cc'}",
      f"--output_json={out}",
    ],
    tmp_path,
  )
  rows = json.loads(out.read_text())["rows"]
  assert [(r["kind"], r.get("refill", r.get("mode"))) for r in rows] == [
    ("refill", True),
    ("refill", False),
    ("server", "concurrent"),
    ("server", "sequential"),
  ]
  on, off, together, in_turn = rows
  assert on["same_tokens_as_refill_off"] is True and together["same_texts_as_sequential"] is True
  assert on["rows"] == 6 and on["generated_tokens"] == off["generated_tokens"] > 0
  assert 0 < off["slot_utilization"] <= on["slot_utilization"] <= 1
  assert together["generated_tokens"] == in_turn["generated_tokens"] == 2 * 4
  assert "slot utilization with refill" in proc.stdout and "clients at once vs one after another" in proc.stdout
