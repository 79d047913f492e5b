"""Sampling sweeps on a tiny random model with the demo tokenizer's vocabulary."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys

import pytest
from _helpers import kill_at_marker, sweep_config
from _helpers import tiny_sweep_config as _tiny_config

from smollm3_jax import sweep
from smollm3_jax.evaluation import metrics as M
from smollm3_jax.generation.api import generate
from smollm3_jax.generation.engine import COMPILE_COUNTS
from smollm3_jax.sweep import presets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm3_template_tokenizer):
  """(model, tokenizer, tokenizer_dir): the "tiny" preset's random model; the demo tokenizer with
  SmolLM3's chat template (a thinking mode), saved as a directory (loads in well under a second in
  the subprocess test)."""
  cfg = sweep_config("tiny")
  model, _ = sweep.load_model_and_tokenizer(cfg.model)
  tokenizer = smollm3_template_tokenizer
  tok_dir = str(tmp_path_factory.mktemp("tok"))
  tokenizer.save_pretrained(tok_dir)
  return model, tokenizer, tok_dir


def _lines(path):
  with open(path, "rb") as f:
    return f.read().split(b"\n")


@pytest.fixture(scope="module")
def tiny_sweep(tiny, tmp_path_factory):
  """One finished tiny sweep: (config, workdir, outcome, compile counts it added)."""
  model, tokenizer, tok_dir = tiny
  cfg = _tiny_config(tok_dir)
  workdir = tmp_path_factory.mktemp("sweep")
  before = dict(COMPILE_COUNTS)
  out = sweep.run_sweep(cfg, str(workdir), model=model, tokenizer=tokenizer, log=lambda s: None)
  compiles = {k: COMPILE_COUNTS[k] - before.get(k, 0) for k in ("prefill", "insert", "decode")}
  return cfg, workdir, out, compiles


def test_sweep_writes_rows_summary_plots_and_compiles_once(tiny, tiny_sweep):
  model, tokenizer, tok_dir = tiny
  cfg, tmp_path, out, compiles = tiny_sweep
  # 24 rows through 5 slots: prefill calls of 1 or 5 rows, one insert and one decode program
  assert compiles["prefill"] in (1, 2) and (compiles["insert"], compiles["decode"]) == (1, 1)
  assert (out.total_rows, out.new_rows) == (24, 24)
  assert out.batches == 3  # rows are appended in groups of 8 as they finish

  rows = [json.loads(l) for l in _lines(tmp_path / "generations.jsonl") if l]
  assert len(rows) == 24 and len({r["key"] for r in rows}) == 24
  cells = {(r["settings"]["thinking"], r["settings"]["temperature"], r["settings"]["repetition_penalty"]) for r in rows}
  assert cells == {(th, t, rp) for th in (False, True) for t in (0.0, 1.0) for rp in (1.0, 1.3)}
  assert {r["prompt_id"] for r in rows} == {"capital_france", "add_small", "story_lighthouse"}
  for r in rows:
    assert r["num_tokens"] == len(r["token_ids"]) and 1 <= r["num_tokens"] <= 5
    assert r["stop_reason"] in ("eos", "max_tokens")
    assert r["settings"]["max_new_tokens"] == 5 and r["timing"]["slots"] == 5
    assert 0 < r["timing"]["slot_utilization"] <= 1 and r["timing"]["queue_seconds"] >= 0
    for field in ("text", "thinking", "answer", "prompt", "seed", "sample", "correct"):
      assert field in r
  # a prompt with a reference is scored, an open one is not
  assert {r["correct"] is None for r in rows if r["prompt_id"] == "story_lighthouse"} == {True}
  assert {r["correct"] is None for r in rows if r["prompt_id"] == "add_small"} == {False}

  with open(tmp_path / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  assert len(summary) == 8
  assert all(s["rows"] == "3" for s in summary)
  for s in summary:
    mine = [r for r in rows if r["cell_key"] == s["run_key"]]
    assert float(s["mean_tokens"]) == pytest.approx(sum(r["num_tokens"] for r in mine) / 3)
    d1 = [M.distinct_n(M.words(r["text"]), 1) for r in mine]
    assert float(s["distinct_1"]) == pytest.approx(sum(d1) / 3)
    assert s["scored"] == "2"
  assert "rep_pen" in out.table and out.table.count("\n") == 9
  # one heatmap and one line plot per metric with a value (one sample: no majority vote, self-BLEU,
  # pass@k), and the throughput apart
  # (and no log-probabilities: record_logprobs is off)
  quality = [m for m in sweep.METRICS if m not in ("majority_accuracy", "self_bleu", "mean_logprob", "mean_entropy")]
  # (less those with one value over the cells: no plot of a constant)
  quality = [m for m in quality if len({s[m] for s in out.summary}) > 1]
  assert quality
  names = sorted(os.listdir(tmp_path / "plots"))
  assert names == sorted([f"{m}.png" for m in quality] + [f"{m}.lines.png" for m in quality] + ["throughput.png"])
  assert sorted(out.plots) == [str(tmp_path / "plots" / n) for n in names]
  for n in out.plots:
    with open(n, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["config"]["sweep"]["temperature"] == [0.0, 1.0]

  # Rerunning with the same config runs nothing and compiles nothing.
  before = dict(COMPILE_COUNTS)
  again = sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tokenizer, log=lambda s: None)
  assert (again.skipped_rows, again.new_rows, again.batches) == (24, 0, 0)
  assert dict(COMPILE_COUNTS) == before
  assert len([l for l in _lines(tmp_path / "generations.jsonl") if l]) == 24

  # Another config in the same workdir is refused with a message naming the difference.
  other = _tiny_config(tok_dir, **{"sweep.temperature": (0.0, 0.7)})
  with pytest.raises(sweep.ConfigMismatchError, match=r"sweep\.temperature"):
    sweep.run_sweep(other, str(tmp_path), model=model, tokenizer=tokenizer, log=lambda s: None)


def test_rows_equal_generating_each_setting_alone(tiny, tiny_sweep):
  model, tokenizer, tok_dir = tiny
  _, tmp_path, _, _ = tiny_sweep
  rows = [json.loads(l) for l in _lines(tmp_path / "generations.jsonl") if l]
  greedy = next(r for r in rows if r["settings"]["temperature"] == 0.0 and r["settings"]["thinking"])
  sampled = [r for r in rows if r["settings"]["temperature"] == 1.0 and r["settings"]["repetition_penalty"] == 1.3]
  for r in [greedy] + sampled[:2]:
    s = r["settings"]
    alone = generate(
      model,
      tokenizer,
      r["prompt"],
      thinking=s["thinking"],
      temperature=s["temperature"],
      repetition_penalty=s["repetition_penalty"],
      top_p=s["top_p"],
      top_k=s["top_k"],
      min_p=s["min_p"],
      seed=[r["seed"]],
      max_new_tokens=s["max_new_tokens"],
    )
    assert alone.completions[0].token_ids == r["token_ids"], r["key"]
    assert alone.completions[0].text == r["text"]
  # Seeds depend on (prompt, cell, sample), not on the batch position: distinct per row.
  assert len({r["seed"] for r in rows}) == len(rows)
  assert sweep.row_seed(0, "p", "c", 1) == sweep.row_seed(0, "p", "c", 1) != sweep.row_seed(0, "p", "c", 2)


# Runs experiments/sweep.py with one change: after the first group of rows is durable, the child
# touches a marker file and waits to be killed. The kill lands at a point the test chose, on any
# machine speed (no sleep-and-hope).
_STOP_AFTER_FIRST_BATCH = """
import os, runpy, sys, time
from smollm3_jax.sweep import store
_append = store.ResultsFile.append
def append(self, rows):
  rows = list(rows)
  _append(self, rows)
  with open(os.environ["SWEEP_TEST_MARKER"] + ".tmp", "w") as f:
    f.write(str(len(rows)))
  os.replace(os.environ["SWEEP_TEST_MARKER"] + ".tmp", os.environ["SWEEP_TEST_MARKER"])
  time.sleep(3600)
store.ResultsFile.append = append
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_sigkill_then_resume_completes_without_gaps_or_duplicates(tiny, tmp_path):
  model, tokenizer, tok_dir = tiny
  workdir = tmp_path / "wd"
  gens = workdir / "generations.jsonl"
  marker = tmp_path / "first_batch_written"
  wrapper = tmp_path / "stop_after_first_batch.py"
  wrapper.write_text(_STOP_AFTER_FIRST_BATCH)
  overrides = [
    "--config.model.tokenizer=" + tok_dir,
    "--config.progress=False",
    "--config.prompts.limit=3",
    "--config.batch_size=5",
    "--config.max_new_tokens=5",
  ]
  cmd = [
    sys.executable,
    str(wrapper),
    os.path.join(ROOT, "experiments", "sweep.py"),
    "--config=" + os.path.join(ROOT, "configs", "sweep.py") + ":tiny",
    f"--workdir={workdir}",
    *overrides,
  ]
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    SWEEP_TEST_MARKER=str(marker),
    PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  proc = kill_at_marker(cmd, env=env, cwd=ROOT, marker=marker, what="the sweep did not write its first group")
  assert proc.returncode == -signal.SIGKILL
  kept = [json.loads(l) for l in _lines(gens) if l]
  assert 0 < len(kept) == int(marker.read_text()) < 24  # exactly the first group written
  # Also leave a torn last line, as a kill in the middle of a write would.
  with open(gens, "ab") as f:
    f.write(b'{"key": "torn|row", "text": "half a li')

  cfg = _tiny_config(tok_dir)
  out = sweep.run_sweep(cfg, str(workdir), model=model, tokenizer=tokenizer, log=lambda s: None)
  assert out.skipped_rows == len(kept) and out.new_rows == 24 - len(kept)
  lines = [l for l in _lines(gens) if l]
  rows = [json.loads(l) for l in lines]  # every line parses: the torn one is gone
  keys = [r["key"] for r in rows]
  assert len(keys) == 24 and len(set(keys)) == 24
  assert set(keys) == {
    r["key"]
    for r in sweep.make_rows(
      sweep.load_prompts(presets.PROMPT_SET, limit=3),
      sweep.expand_grid(sweep.to_plain(cfg)["sweep"]),
      samples=1,
      seed=0,
    )
  }
  assert rows[: len(kept)] == kept  # finished rows are never rewritten
  with open(workdir / "summary.csv") as f:
    assert sum(1 for _ in csv.DictReader(f)) == 8


def test_results_file_torn_line_and_duplicates(tmp_path):
  path = tmp_path / "g.jsonl"
  path.write_bytes(b'{"key": "a", "v": 1}\n{"key": "a", "v": 2}\nnot json\n{"key": "b", "v": 3}\n{"key": "c"')
  rf = sweep.ResultsFile(str(path))
  rows = rf.load()
  assert rows == {"a": {"key": "a", "v": 1}, "b": {"key": "b", "v": 3}}
  assert path.read_bytes().endswith(b'"v": 3}\n')  # the torn line was cut off
  rf.append([{"key": "c", "v": 4}])
  assert sweep.ResultsFile(str(path)).load()["c"] == {"key": "c", "v": 4}


def test_grid_expansion_and_validation(tmp_path):
  cfg = sweep.to_plain(sweep_config("demo"))
  cells = sweep.expand_grid(cfg["sweep"])
  # (the config's other axes, at their off values, are in every cell too)
  assert len(cells) == 18 and cells[0] == dict(
    thinking=False,
    temperature=0.0,
    repetition_penalty=1.0,
    top_p=0.95,
    top_k=0,
    min_p=0.0,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    frequency_penalty=0.0,
    presence_penalty=0.0,
    no_repeat_ngram_size=0,
    min_new_tokens=0,
    num_beams=1,
  )
  rows = sweep.make_rows([{"id": "p"}], cells, samples=3, seed=0)
  assert len(rows) == 6 * 1 + 12 * 3  # greedy cells run once
  bad = dict(cfg["sweep"], temperature=[-1.0])
  with pytest.raises(ValueError, match="temperature"):
    sweep.expand_grid(bad)
  with pytest.raises(ValueError, match="batch_size"):
    sweep.validate_config(dict(cfg, batch_size=0))
  with pytest.raises(FileNotFoundError, match="prompts.path"):
    sweep.load_prompts(str(tmp_path / "missing.jsonl"))
  prompts = sweep.load_prompts(presets.PROMPT_SET)
  assert len(prompts) >= 40
  kinds = {p["kind"] for p in prompts}
  assert kinds == {"open", "factual", "math"}
  assert all(p["reference"] is not None for p in prompts if p["kind"] != "open")


def test_sampling_axes_take_kind_and_off_from_the_settings_registry():
  """The sweep restates no setting: each sampling axis has its kind and off value from
  ``sampling.SETTINGS`` (temperature alone is required), so an axis the config leaves out runs with
  the setting off, and a cell key names an optional axis only when it is on."""
  from smollm3_jax.generation.sampling import SETTINGS
  from smollm3_jax.sweep import plan

  assert set(sweep.SAMPLING_AXES) <= set(SETTINGS)
  for name in sweep.SAMPLING_AXES:
    axis, setting = plan.AXIS[name], SETTINGS[name]
    assert axis.kind is (int if setting.integer else float), name
    assert axis.off == (None if name == "temperature" else setting.off), name
  (cell,) = sweep.expand_grid(dict(thinking=[False], temperature=[0.5]))
  assert {k: cell[k] for k in sweep.SAMPLING_AXES if k != "temperature"} == {
    k: SETTINGS[k].off for k in sweep.SAMPLING_AXES if k != "temperature"
  }
  assert sweep.cell_key(cell) == "think=0,t=0.5,rp=1,top_p=1,top_k=0,min_p=0"


@pytest.mark.parametrize(
  "record, message",
  [
    (
      {"id": "a", "prompt": "x", "answer_type": "numeric", "reference": "1,234"},
      r"p\.jsonl:2 \(prompt 'a'\): reference: expected a finite number",
    ),
    ({"id": "a", "prompt": "x", "answer_type": "numeric", "reference": float("nan")}, "expected a finite number"),
    ({"id": "a", "prompt": "x", "answer_type": "text", "reference": 7}, "expected a string or a list of strings"),
    ({"id": "a", "prompt": "x", "answer_type": "text", "reference": ["ok", 3]}, "a list of strings"),
    ({"id": "a", "prompt": "3 + 4 =", "reference": 7}, "given without answer_type"),
    ({"prompt": "x"}, r"p\.jsonl:2: id: expected a string, got nothing \(the field is missing\)"),
    ({"id": 3, "prompt": "x"}, r"id: expected a string, got 3 \(int\)"),
    ({"id": "a", "prompt": None}, "prompt: expected a string"),
    ({"id": "a", "prompt": "x", "answer_type": "number"}, "answer_type: expected 'text', 'numeric' or null"),
    (["a", "x"], "expected a JSON object"),
  ],
)
def test_bad_prompt_records_are_refused_before_anything_runs(record, message, tmp_path):
  """A prompt record that cannot be run or scored is refused when the set is read, naming the line, the
  prompt and the field: never after its rows were generated (every rerun would crash the same way)."""
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"id": "ok", "prompt": "fine"}) + "\n" + json.dumps(record) + "\n")
  with pytest.raises(ValueError, match=message):
    sweep.load_prompts(str(path))
  cfg = sweep_config("demo")
  cfg.prompts.path = str(path)
  workdir = tmp_path / "wd"
  with pytest.raises(ValueError, match=message):
    sweep.run_sweep(cfg, str(workdir), log=lambda s: None)
  assert not workdir.exists()  # nothing loaded, compiled or written


def test_prompts_given_directly_need_distinct_string_ids():
  cells = sweep.expand_grid(sweep.to_plain(sweep_config("demo"))["sweep"])
  with pytest.raises(ValueError, match=r"prompts\[1\]: id: expected a string, got nothing"):
    sweep.make_rows([{"id": "a"}, {"prompt": "x"}], cells, samples=1, seed=0)
  with pytest.raises(ValueError, match=r"prompts\[1\]: duplicate prompt id 'a'"):
    sweep.make_rows([{"id": "a"}, {"id": "a"}], cells, samples=1, seed=0)


def test_a_checkpoint_without_a_thinking_mode_runs_each_row_once_and_says_so(tmp_path):
  """The demo tokenizer's template (SmolLM2's) ignores enable_thinking: thinking on and off render the
  same prompts, so the thinking=on cells read the thinking=off rows (half the rows run), said once."""
  cfg = _tiny_config("demo")
  model, tokenizer = sweep.load_model_and_tokenizer(sweep.to_plain(cfg)["model"])
  cells = sweep.expand_grid(sweep.to_plain(cfg)["sweep"])
  assert {c["thinking"] for c in cells} == {False, True}
  logs = []
  out = sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tokenizer, log=logs.append)
  assert (out.total_rows, out.new_rows) == (12, 12)
  assert sum("has no thinking mode" in line for line in logs) == 1
  rows = [json.loads(l) for l in _lines(tmp_path / "generations.jsonl") if l]
  assert {r["settings"]["thinking"] for r in rows} == {False}
  on = {(s["temperature"], s["repetition_penalty"]): s for s in out.summary if s["thinking"]}
  off = {(s["temperature"], s["repetition_penalty"]): s for s in out.summary if not s["thinking"]}
  assert len(on) == len(off) == 4
  for k, s in on.items():
    assert s["run_key"] == off[k]["run_key"] and s["mean_tokens"] == off[k]["mean_tokens"]


def test_cli_typo_fails_with_ml_collections_error(tmp_path):
  cmd = [
    sys.executable,
    os.path.join(ROOT, "experiments", "sweep.py"),
    "--config=" + os.path.join(ROOT, "configs", "sweep.py") + ":tiny",
    f"--workdir={tmp_path}",
    "--config.sweep.temprature=(0.0,)",
  ]
  res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert res.returncode != 0
  assert 'Did you mean "temperature"' in res.stderr
  assert not os.listdir(tmp_path)  # failed before writing anything


def test_summary_columns_recomputed_from_rows(tmp_path):
  """summary.csv's accuracy, eos, rep4 and closed-think shares equal values worked out by hand from rows
  built for the purpose (every column non-trivial), and the tiny sweep's columns equal the same
  formulas applied to its generations.jsonl."""
  cells = sweep.expand_grid(
    dict(temperature=[0.0, 1.0], repetition_penalty=[1.0], thinking=[False], top_p=[1.0], top_k=[0], min_p=[0.0])
  )
  keys = [sweep.cell_key(c) for c in cells]
  prompts = [
    dict(id="sum", prompt="2+2?", kind="math", answer_type="numeric", reference=4),
    dict(id="open", prompt="Tell a story.", kind="open", answer_type=None, reference=None),
  ]

  def row(cell, prompt_id, text, answer, stop, closed=False):
    return dict(
      cell_key=keys[cell],
      prompt_id=prompt_id,
      text=text,
      answer=answer,
      stop_reason=stop,
      num_tokens=len(text.split()),
      thinking_tokens=0,
      closed_think=closed,
      timing=dict(decode_tokens_per_second=10.0),
    )

  rows = [
    row(0, "sum", "the answer is 4", "4", "eos", closed=True),
    row(0, "sum", "a b c d a b c d", "5", "max_tokens"),  # 5 four-grams, 1 repeats one
    row(0, "open", "x y z w x y z w x y z w", "", "eos"),  # 9 four-grams, 5 repeat
    row(1, "sum", "4", "4", "newlines"),
    row(1, "sum", "four is 4 and 4", "4", "eos"),
  ]
  path = tmp_path / "summary.csv"
  path.write_text(sweep.summary_csv(sweep.summarize(rows, cells, prompts)))
  with open(path) as f:
    got = {r["cell_key"]: r for r in csv.DictReader(f)}
  expected = {
    keys[0]: dict(
      rows=3, accuracy=1 / 2, eos_share=2 / 3, rep4_share=(0 + 1 / 5 + 5 / 9) / 3, closed_think_share=1 / 3
    ),
    keys[1]: dict(rows=2, accuracy=1.0, eos_share=1 / 2, rep4_share=(0 + 0) / 2, closed_think_share=0.0),
  }
  for key, want in expected.items():
    assert int(got[key]["rows"]) == want["rows"]
    for col in ("accuracy", "eos_share", "rep4_share", "closed_think_share"):
      assert float(got[key][col]) == pytest.approx(want[col]), (key, col)


def test_tiny_sweep_summary_matches_its_rows(tiny_sweep):
  cfg, workdir, _, _ = tiny_sweep
  rows = [json.loads(l) for l in _lines(workdir / "generations.jsonl") if l]
  with open(workdir / "summary.csv") as f:
    summary = list(csv.DictReader(f))
  for s in summary:
    mine = [r for r in rows if r["cell_key"] == s["run_key"]]
    scored = [r["correct"] for r in mine if r["correct"] is not None]
    assert float(s["eos_share"]) == pytest.approx(sum(r["stop_reason"] == "eos" for r in mine) / len(mine))
    assert float(s["accuracy"]) == pytest.approx(sum(scored) / len(scored))
    assert int(s["scored"]) == len(scored)


def test_resume_with_another_batch_size_gives_the_same_rows(tiny, tmp_path):
  """batch_size (the pool's slots) may change between runs of one workdir: two batches' worth of rows
  through 4 slots, then the rest through 8; every row equals the uninterrupted sweep's row of the same
  key. (Widths that are multiples of 4: XLA:CPU rounds the rows of a 4-wide vector's remainder
  differently, ~1e-6 in the log-probs, which can move a sampled token at a near-tie.)"""
  model, tokenizer, tok_dir = tiny
  sweep.run_sweep(
    _tiny_config(tok_dir, batch_size=4), str(tmp_path / "full"), model=model, tokenizer=tokenizer, log=lambda s: None
  )
  full = {r["key"]: r for r in map(json.loads, filter(None, _lines(tmp_path / "full" / "generations.jsonl")))}
  first = sweep.run_sweep(
    _tiny_config(tok_dir, batch_size=4),
    str(tmp_path / "wd"),
    model=model,
    tokenizer=tokenizer,
    log=lambda s: None,
    max_batches=2,
  )
  assert first.new_rows == 8
  out = sweep.run_sweep(
    _tiny_config(tok_dir, batch_size=8), str(tmp_path / "wd"), model=model, tokenizer=tokenizer, log=lambda s: None
  )
  assert (out.skipped_rows, out.new_rows) == (8, 16) and out.batches >= 1
  rows = [json.loads(l) for l in _lines(tmp_path / "wd" / "generations.jsonl") if l]
  assert sorted(r["key"] for r in rows) == sorted(full)
  assert {r["timing"]["slots"] for r in rows} == {4, 8}
  for r in rows:
    assert (r["token_ids"], r["text"], r["stop_reason"]) == (
      full[r["key"]]["token_ids"],
      full[r["key"]]["text"],
      full[r["key"]]["stop_reason"],
    ), r["key"]


def test_a_typical_p_by_temperature_sweep_compiles_decode_once(tiny, tmp_path):
  """New sampling settings are traced per-row values: a grid over them is one decode program."""
  model, tokenizer, tok_dir = tiny
  cfg = _tiny_config(
    tok_dir,
    **{
      "sweep.typical_p": (0.5, 1.0),
      "sweep.temperature": (0.7, 1.0),
      "sweep.thinking": (False,),
      "sweep.repetition_penalty": (1.0,),
    },
  )
  sweep.run_sweep(cfg, str(tmp_path / "warm"), model=model, tokenizer=tokenizer, log=lambda s: None)
  before = dict(COMPILE_COUNTS)
  cfg2 = _tiny_config(
    tok_dir,
    **{
      "sweep.typical_p": (0.2, 0.9),
      "sweep.temperature": (0.3, 1.5),
      "sweep.thinking": (False,),
      "sweep.repetition_penalty": (1.0,),
    },
  )
  out = sweep.run_sweep(cfg2, str(tmp_path / "wd"), model=model, tokenizer=tokenizer, log=lambda s: None)
  assert out.new_rows == 12 and COMPILE_COUNTS["decode"] == before.get("decode", 0)
  rows = [json.loads(l) for l in _lines(tmp_path / "wd" / "generations.jsonl") if l]
  assert {r["settings"]["typical_p"] for r in rows} == {0.2, 0.9}
  assert all("typical_p=0.2" in r["cell_key"] or "typical_p=0.9" in r["cell_key"] for r in rows)


def test_num_beams_cells_run_beam_search(tiny, tmp_path):
  """A num_beams axis: beam cells run as their own beam-search call; their rows equal
  generate(num_beams=...) and carry the beam score; sampled beam cells are refused up front."""
  model, tokenizer, tok_dir = tiny
  cfg = _tiny_config(
    tok_dir,
    **{
      "sweep.num_beams": (1, 2),
      "sweep.temperature": (0.0,),
      "sweep.thinking": (False,),
      "sweep.repetition_penalty": (1.0, 1.3),
    },
  )
  out = sweep.run_sweep(cfg, str(tmp_path / "wd"), model=model, tokenizer=tokenizer, log=lambda s: None)
  rows = [json.loads(l) for l in _lines(tmp_path / "wd" / "generations.jsonl") if l]
  assert out.new_rows == len(rows) == 12
  beams = [r for r in rows if r["settings"]["num_beams"] == 2]
  assert len(beams) == 6 and all("beam_score" in r for r in beams)
  r = beams[0]
  want = generate(
    model,
    tokenizer,
    r["prompt"],
    thinking=False,
    num_beams=2,
    max_new_tokens=5,
    repetition_penalty=r["settings"]["repetition_penalty"],
  )[0]
  assert want.token_ids == r["token_ids"] and want.score == pytest.approx(r["beam_score"])
  bad = _tiny_config(tok_dir, **{"sweep.num_beams": (1, 2), "sweep.temperature": (0.0, 1.0)})
  with pytest.raises(ValueError, match="num_beams"):
    sweep.run_sweep(bad, str(tmp_path / "bad"), model=model, tokenizer=tokenizer, log=lambda s: None)
