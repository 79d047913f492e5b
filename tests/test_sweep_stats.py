"""Sweep statistics per cell (intervals, majority vote, pass@k, self-BLEU), greedy cells sharing
rows, growing a finished sweep, and ``sweep.load``."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from _helpers import tiny_sweep_config
from test_sweep import tiny  # noqa: F401  (the tiny random model and the saved demo tokenizer)

from smollm3_jax import sweep
from smollm3_jax.evaluation import metrics as M
from smollm3_jax.sweep import presets

QUIET = dict(log=lambda s: None)
PROMPTS = [
  dict(id="sum", prompt="2+2?", kind="math", answer_type="numeric", reference=4),
  dict(id="cap", prompt="Capital of France?", kind="factual", answer_type="text", reference=["Paris"]),
  dict(id="open", prompt="Tell a story.", kind="open", answer_type=None, reference=None),
]
TEXTS = {
  "sum": ["it is 4", "it is 5 I think", "5"],
  "cap": ["Paris is the capital", "Paris, of course", "Lyon"],
  "open": ["the old keeper lit the lamp", "the keeper lit the old lamp again", "waves broke"],
}


def _rows(cells, samples):
  """Rows for every (prompt, run key, sample) of ``cells``: TEXTS[prompt][sample] as text and answer."""
  rows = []
  for r in sweep.make_rows(PROMPTS, cells, samples=samples, seed=0):
    text = TEXTS[r["prompt_id"]][r["sample"]]
    rows.append(
      dict(
        r,
        text=text,
        answer=text,
        num_tokens=len(text.split()),
        thinking_tokens=0,
        closed_think=False,
        stop_reason="eos" if r["sample"] != 1 else "max_tokens",
        timing=dict(decode_tokens_per_second=50.0),
      )
    )
  return rows


def test_majority_vote_pass_at_k_and_self_bleu_per_cell():
  import sacrebleu

  cells = sweep.expand_grid(
    dict(temperature=[0.0, 1.0], repetition_penalty=[1.0], thinking=[False], top_p=[1.0], top_k=[0], min_p=[0.0])
  )
  rows = _rows(cells, samples=3)
  summary = sweep.summarize(rows, cells, PROMPTS, samples=3, resamples=200, seed=5)
  greedy, sampled = summary
  assert (greedy["rows"], sampled["rows"]) == (3, 9)
  # sampled: "sum" answers 4, 5, 5 (majority 5: wrong; c=1 of n=3); "cap" Paris, Paris, Lyon (c=2)
  assert sampled["accuracy"] == pytest.approx(3 / 6)
  assert sampled["majority_accuracy"] == pytest.approx((0 + 1) / 2)
  for k in (1, 2, 3):
    want = ((1 - math.comb(2, k) / math.comb(3, k)) + (1 - math.comb(1, k) / math.comb(3, k))) / 2
    assert sampled[f"pass_at_{k}"] == pytest.approx(want), k
  bleu = [sum(sacrebleu.sentence_bleu(t[i], t[:i] + t[i + 1 :]).score for i in range(3)) / 3 for t in TEXTS.values()]
  assert sampled["self_bleu"] == pytest.approx(sum(bleu) / 3)
  # greedy: its one row per prompt ("it is 4", "Paris is the capital": both right) stands for every sample
  assert greedy["accuracy"] == greedy["majority_accuracy"] == greedy["pass_at_3"] == pytest.approx(1.0)
  assert math.isnan(greedy["self_bleu"])
  # Intervals: the seeded bootstrap over the cell's prompts (groups) and samples.
  acc = M.bootstrap_interval([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], resamples=200, seed=5)
  assert (sampled["accuracy_lo"], sampled["accuracy_hi"]) == pytest.approx(acc)
  eos = M.bootstrap_interval([[1.0, 0.0, 1.0]] * 3, resamples=200, seed=5)
  assert (sampled["eos_share_lo"], sampled["eos_share_hi"]) == pytest.approx(eos)
  assert sampled["eos_share_lo"] < sampled["eos_share"] < sampled["eos_share_hi"]
  sb = M.bootstrap_interval([[b] for b in bleu], resamples=200, seed=5)
  assert (sampled["self_bleu_lo"], sampled["self_bleu_hi"]) == pytest.approx(sb)
  # ... in summary.csv, and reproducible with the seed
  table = list(csv.DictReader(io.StringIO(sweep.summary_csv(summary))))
  for col in ("majority_accuracy", "pass_at_2", "self_bleu", "accuracy_lo", "accuracy_hi", "pass_at_3_hi"):
    assert float(table[1][col]) == pytest.approx(sampled[col]), col
  # (the rows' order in the results file, which depends on when each finished, does not matter)
  again = sweep.summarize(rows[::-1], cells, PROMPTS, samples=3, resamples=200, seed=5)
  assert sweep.summary_csv(again) == sweep.summary_csv(summary)
  other = sweep.summarize(rows, cells, PROMPTS, samples=3, resamples=200, seed=6)
  assert sweep.summary_csv(other) != sweep.summary_csv(summary)
  assert "maj" in sweep.format_table(summary) and "pass@2" in sweep.format_table(summary)
  # One sample per cell: no pass@k columns, no majority vote.
  one = sweep.summarize(_rows(cells, samples=1), cells, PROMPTS, samples=1, resamples=50)
  assert not any(k.startswith("pass_at_") for k in one[1]) and math.isnan(one[1]["majority_accuracy"])


def test_greedy_cells_run_once_and_are_shared():
  cells = sweep.expand_grid(
    dict(
      temperature=[0.0, 1.0],
      repetition_penalty=[1.0, 1.2],
      thinking=[False],
      top_p=[0.9, 1.0],
      top_k=[0, 20],
      min_p=[0.0, 0.1],
    )
  )
  assert len(cells) == 2 * 2 * 2 * 2 * 2
  rows = sweep.make_rows(PROMPTS, cells, samples=2, seed=0)
  greedy = [r for r in rows if r["settings"]["temperature"] == 0.0]
  # one greedy run per repetition penalty (it changes greedy output), with the filters off
  assert len(greedy) == 2 * len(PROMPTS)
  assert {(r["settings"]["top_p"], r["settings"]["top_k"], r["settings"]["min_p"]) for r in greedy} == {(1.0, 0, 0.0)}
  assert len(rows) == len(greedy) + 16 * len(PROMPTS) * 2
  assert len({r["key"] for r in rows}) == len(rows)
  summary = sweep.summarize(_rows(cells, samples=2), cells, PROMPTS, samples=2, resamples=50)
  assert len(summary) == len(cells)
  for s in summary:
    if s["temperature"] == 0.0:
      same = [t for t in summary if t["temperature"] == 0.0 and t["repetition_penalty"] == s["repetition_penalty"]]
      assert len(same) == 8 and all(t["rows"] == 3 and t["run_key"] == s["run_key"] for t in same)
      assert {t["mean_tokens"] for t in same} == {s["mean_tokens"]}
      assert len({t["cell_key"] for t in same}) == 8
  # the axes come from one list: its names are the grid's, sampling axes are all but thinking and
  # num_beams (beam search is its own method, not a sampling setting)
  assert sweep.AXES == tuple(a.name for a in sweep.SWEEP_AXES)
  assert set(sweep.SAMPLING_AXES) == set(sweep.AXES) - {"thinking", "num_beams"}


def test_config_checks_of_the_new_fields(tmp_path):
  cfg = sweep.to_plain(tiny_sweep_config("demo"))
  for field, value, message in [
    ("plot_axes", ["temperature", "typo"], "plot_axes"),
    ("plot_axes", ["top_p", "top_p"], "plot_axes"),
    ("stats", dict(resamples=0), "stats.resamples"),
    ("stats", dict(level=1.5), "stats.level"),
  ]:
    with pytest.raises(ValueError, match=message):
      sweep.validate_config(dict(cfg, **{field: value}))
  with pytest.raises(ValueError, match="unknown axes"):
    sweep.expand_grid(dict(cfg["sweep"], temprature=[1.0]))
  # an optional axis left out is fixed at its "off" value
  partial = {k: v for k, v in cfg["sweep"].items() if k not in ("top_k", "min_p")}
  assert {(c["top_k"], c["min_p"]) for c in sweep.expand_grid(partial)} == {(0, 0.0)}


def _lines(path):
  with open(path, "rb") as f:
    return [l for l in f.read().split(b"\n") if l]


def test_a_finished_sweep_grows_by_its_new_rows_only(tiny, tmp_path, monkeypatch):  # noqa: F811
  model, tokenizer, tok_dir = tiny
  small = {
    "sweep.thinking": (False,),
    "sweep.repetition_penalty": (1.0,),
    "sweep.temperature": (0.0, 1.0),
    "plots": False,
  }  # (plots: test_sweep_plots.py)
  first = sweep.run_sweep(tiny_sweep_config(tok_dir, **small), str(tmp_path), model=model, tokenizer=tokenizer, **QUIET)
  assert (first.total_rows, first.new_rows) == (6, 6)
  before = _lines(tmp_path / "generations.jsonl")

  grown = dict(small, samples=2, **{"sweep.temperature": (0.0, 0.5, 1.0), "sweep.top_p": (0.95, 1.0)})
  cfg = tiny_sweep_config(tok_dir, **grown)
  # A grow killed before its first row leaves config.json as it was: the first command still resumes.
  stored = (tmp_path / "config.json").read_bytes()
  from smollm3_jax.sweep import run as sweep_run

  def killed(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(sweep_run, "run_rows", killed)
  with pytest.raises(KeyboardInterrupt):
    sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tokenizer, **QUIET)
  monkeypatch.undo()
  assert (tmp_path / "config.json").read_bytes() == stored
  again = sweep.run_sweep(tiny_sweep_config(tok_dir, **small), str(tmp_path), model=model, tokenizer=tokenizer, **QUIET)
  assert (again.total_rows, again.new_rows) == (6, 0)
  out = sweep.run_sweep(cfg, str(tmp_path), model=model, tokenizer=tokenizer, **QUIET)
  # 3 greedy rows shared by both top_p values + 2 temperatures x 2 top_p x 3 prompts x 2 samples
  assert (out.total_rows, out.skipped_rows, out.new_rows) == (27, 6, 21)
  after = _lines(tmp_path / "generations.jsonl")
  assert after[:6] == before and len(after) == 27  # finished rows are kept as they were
  plan = sweep.make_rows(
    sweep.load_prompts(presets.PROMPT_SET, limit=3), sweep.expand_grid(sweep.to_plain(cfg)["sweep"]), samples=2, seed=0
  )
  assert sorted(json.loads(l)["key"] for l in after) == sorted(r["key"] for r in plan)
  record = json.loads((tmp_path / "config.json").read_text())
  assert record["config"]["samples"] == 2 and record["config"]["sweep"]["temperature"] == [0.0, 0.5, 1.0]
  assert len(out.summary) == 6 and all(s["rows"] == (3 if s["temperature"] == 0.0 else 6) for s in out.summary)
  assert {"pass_at_1", "pass_at_2"} <= set(out.summary[0])

  # Shrinking, or changing what existing rows are, is refused before anything runs.
  for changes, message in [
    (dict(grown, samples=1), "samples"),
    (dict(grown, **{"sweep.temperature": (0.0, 1.0)}), r"sweep\.temperature.*0\.5"),
    (dict(grown, max_new_tokens=4), "max_new_tokens"),
    (dict(grown, seed=3), "seed"),
  ]:
    with pytest.raises(sweep.ConfigMismatchError, match=message):
      sweep.run_sweep(tiny_sweep_config(tok_dir, **changes), str(tmp_path), model=model, tokenizer=tokenizer, **QUIET)
  assert _lines(tmp_path / "generations.jsonl") == after

  # sweep.load: the rows with their settings as columns, and the summary.
  rows, summary = sweep.load(str(tmp_path))
  assert len(rows) == 27 and len(summary) == 6
  assert {
    "temperature",
    "top_p",
    "min_p",
    "max_new_tokens",
    "thinking",
    "thinking_text",
    "text",
    "timing.decode_tokens_per_second",
  } <= set(rows.columns)
  assert rows["thinking"].dtype == bool and not rows["thinking"].any()
  assert sorted(rows.groupby("temperature").size().to_dict().items()) == [(0.0, 3), (0.5, 12), (1.0, 12)]
  with open(tmp_path / "summary.csv") as f:
    table = list(csv.DictReader(f))
  assert list(summary["cell_key"]) == [t["cell_key"] for t in table]
  assert summary["accuracy_lo"].tolist() == pytest.approx([float(t["accuracy_lo"]) for t in table], nan_ok=True)
  with pytest.raises(FileNotFoundError, match="summary.csv"):
    sweep.load(str(tmp_path / "nothing"))


def test_rows_written_before_an_axis_existed_still_match():
  """A row without a setting ran with it off: it matches the planned row where that axis is off, and
  is refused where the plan turns it on."""
  from smollm3_jax.sweep.store import check_rows

  cells = sweep.expand_grid(
    dict(temperature=[1.0], repetition_penalty=[1.0], thinking=[False], top_p=[1.0], top_k=[0], min_p=[0.0])
  )
  (planned,) = sweep.make_rows(PROMPTS[:1], cells, samples=1, seed=0)
  old = dict(planned, settings={k: v for k, v in planned["settings"].items() if k != "min_p"})
  old["settings"]["max_new_tokens"] = 5
  check_rows({planned["key"]: old}, [planned], 5)
  on = dict(planned, settings=dict(planned["settings"], min_p=0.1))
  with pytest.raises(sweep.ConfigMismatchError, match="differ"):
    check_rows({planned["key"]: old}, [on], 5)
