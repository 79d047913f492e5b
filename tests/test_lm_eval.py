"""The lm-eval model (smollm3_jax.evaluation.lm_eval_model) against lm-eval's own `hf` backend, offline.

The tasks are YAML files over JSONL files in tests/data/lm_eval (their `custom_dataset` reads the
files from disk): a multiple-choice task (loglikelihood), a generate_until task and a perplexity task
(loglikelihood_rolling). lm-eval never touches the network here (HF_*_OFFLINE, a private datasets cache).
"""

from __future__ import annotations

import os

import lm_eval  # in the test extra: a missing install fails here, not skips
import numpy as np
import pytest

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "lm_eval")
TASKS = ["smollm3_jax_capitals", "smollm3_jax_arithmetic", "smollm3_jax_documents"]


@pytest.fixture(scope="module", autouse=True)
def offline(tmp_path_factory):
  keys = {
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("hf_datasets")),
  }
  old = {k: os.environ.get(k) for k in keys}
  os.environ.update(keys)
  yield
  for k, v in old.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v


@pytest.fixture(scope="module")
def task_manager(offline):
  from lm_eval.tasks import TaskManager

  return TaskManager(include_path=DATA, include_defaults=False)


def _evaluate(lm, task_manager, tasks=TASKS, **kwargs):
  return lm_eval.simple_evaluate(
    model=lm, tasks=tasks, task_manager=task_manager, log_samples=True, bootstrap_iters=0, **kwargs
  )


@pytest.fixture(scope="module")
def ours(demo_model, demo_tokenizer, task_manager):
  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  # Two rows per program everywhere in this module (here, in `lm` and in the grid test): the three
  # tasks' requests share one scoring shape (2 rows x 16 tokens) and one generation pool (2 slots),
  # so the module compiles each once.
  lm = SmolLM3JaxLM(model=demo_model, tokenizer=demo_tokenizer, batch_size=2, progress=False)
  return _evaluate(lm, task_manager)


@pytest.fixture(scope="module")
def hf_tokenizer():
  """transformers' own tokenizer of the demo GGUF."""
  from transformers import AutoTokenizer

  from smollm3_jax.checkpoints.demo import demo_gguf_path

  directory, name = os.path.split(demo_gguf_path())
  return AutoTokenizer.from_pretrained(directory, gguf_file=name)


@pytest.fixture(scope="module")
def theirs(demo_hf_model, hf_tokenizer, task_manager):
  from lm_eval.models.huggingface import HFLM

  return _evaluate(HFLM(pretrained=demo_hf_model, tokenizer=hf_tokenizer, batch_size=32), task_manager)


def test_registered_with_lm_eval():
  from lm_eval.api.registry import get_model

  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  assert get_model("smollm3_jax") is SmolLM3JaxLM


def _samples(results, task):
  return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def test_loglikelihoods_and_accuracy_equal_hf(ours, theirs):
  task = "smollm3_jax_capitals"
  a, b = _samples(ours, task), _samples(theirs, task)
  assert len(a) == len(b) == 6
  for x, y in zip(a, b):
    assert x["arguments"] == y["arguments"]  # the same requests
    ll_x = np.array([r[0][0] for r in x["resps"]])
    ll_y = np.array([r[0][0] for r in y["resps"]])
    np.testing.assert_allclose(ll_x, ll_y, atol=1e-4, rtol=0)
    assert [r[0][1] for r in x["resps"]] == [r[0][1] for r in y["resps"]]  # is_greedy
    assert x["acc"] == y["acc"]
  acc = ours["results"][task]["acc,none"]
  assert acc == theirs["results"][task]["acc,none"] and 0 < acc < 1  # a score that can move both ways


def test_rolling_loglikelihoods_equal_hf(ours, theirs):
  task = "smollm3_jax_documents"
  a, b = _samples(ours, task), _samples(theirs, task)
  atol = 1e-3  # a sum over ~10 tokens of log-probabilities each within 1e-4 of hf's
  for x, y in zip(a, b):
    assert x["resps"][0][0] == pytest.approx(y["resps"][0][0], abs=atol)
  # Each metric is exp(-sum ll / units) (perplexities) or -sum ll / (units ln 2) (bits per byte): with
  # every document's sum within atol, -sum ll moves by at most len(a) * atol, so log(perplexity) and
  # bits_per_byte move by at most that share of themselves (host float rounding stays inside it).
  total = -sum(y["resps"][0][0] for y in b)
  share = len(a) * atol / total
  results, reference = ours["results"][task], theirs["results"][task]
  for metric in ("word_perplexity,none", "byte_perplexity,none"):
    assert np.log(results[metric]) == pytest.approx(np.log(reference[metric]), rel=share)
  assert results["bits_per_byte,none"] == pytest.approx(reference["bits_per_byte,none"], rel=share)
  assert share < 1e-3  # the bound stays tight: a wrong unit count (words, bytes) would exceed it


def test_generate_until_greedy_equals_hf(ours, theirs):
  task = "smollm3_jax_arithmetic"
  a, b = _samples(ours, task), _samples(theirs, task)
  texts = [x["filtered_resps"][0] for x in a]
  assert texts == [y["filtered_resps"][0] for y in b]
  assert any(t.strip() for t in texts)  # not all empty
  assert all("\n" not in t and "Question:" not in t for t in texts)  # `until` cut
  assert ours["results"][task]["exact_match,none"] == theirs["results"][task]["exact_match,none"]


# --------------------------------------------------------------------------------------------
# gen_kwargs, seeds, the chat template (no comparison run needed)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lm(demo_model, demo_tokenizer):
  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  return SmolLM3JaxLM(model=demo_model, tokenizer=demo_tokenizer, batch_size=2, progress=False, seed=7)


def test_gen_kwargs_mapping(lm):
  greedy = lm.generation_settings({"until": ["\n"], "do_sample": False, "temperature": 0.7})
  assert greedy["settings"]["temperature"] == 0.0
  assert greedy["until"] == ["\n", "<|im_end|>"]  # lm-eval's eos added, as hf
  s = lm.generation_settings(
    {
      "temperature": 0.6,
      "top_p": 0.9,
      "top_k": 20,
      "min_p": 0.05,
      "repetition_penalty": 1.2,
      "max_gen_toks": 33,
      "until": "Q:",
    }
  )
  assert s["settings"] == dict(
    temperature=0.6, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.2, max_new_tokens=33
  )
  assert s["until"] == ["Q:", "<|im_end|>"]
  # Unset: what transformers.generate uses for a checkpoint without generation_config.json (the demo).
  s = lm.generation_settings({"do_sample": True, "max_new_tokens": 5})
  assert s["settings"] == dict(
    temperature=1.0, top_p=1.0, top_k=50, min_p=0.0, repetition_penalty=1.0, max_new_tokens=5
  )
  assert lm.generation_settings({})["settings"]["max_new_tokens"] == 256  # lm-eval's default budget
  # The engine's other settings pass through when given (off otherwise).
  s = lm.generation_settings(
    {"temperature": 0.8, "typical_p": 0.9, "no_repeat_ngram_size": 3, "min_new_tokens": 2, "frequency_penalty": 0.5}
  )
  assert {
    k: s["settings"][k] for k in ("typical_p", "no_repeat_ngram_size", "min_new_tokens", "frequency_penalty")
  } == dict(typical_p=0.9, no_repeat_ngram_size=3, min_new_tokens=2, frequency_penalty=0.5)
  assert "eta_cutoff" not in lm.generation_settings({})["settings"]
  # Up to four stop strings end rows early (lm-eval's eos string is already a stop id).
  assert lm.generation_settings({"until": ["a", "b", "c", "d", "e"]})["stop"] == ["a", "b", "c", "d"]
  assert lm.generation_settings({})["stop"] is None


@pytest.mark.parametrize(
  "gen_kwargs, message",
  [
    ({"num_beams": 4}, "num_beams not supported"),
    ({"do_sample": True, "temperature": 0.0}, "temperature > 0"),
    ({"temperature": 0.5, "top_p": 1.5}, "top_p"),
    ({"max_gen_toks": 8192}, "max_gen_toks"),
    ({"typical_p": 0.0}, "typical_p"),
    ({"top_k": 1.5}, "top_k"),
  ],
)
def test_bad_gen_kwargs_are_refused(lm, gen_kwargs, message):
  with pytest.raises(ValueError, match=message):
    lm.generation_settings(gen_kwargs)


def test_sampled_rows_do_not_depend_on_their_batch(lm, demo_model, demo_tokenizer):
  from lm_eval.api.instance import Instance

  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  # The arithmetic task's shapes (2 slots, 12 new tokens): no new compile; 3-4 rows through 2 slots.
  kwargs = {"temperature": 1.0, "max_gen_toks": 12, "until": []}
  contexts = ["Once upon a time", "The weather today", "Once upon a time", "My favourite food"]

  def reqs(order):
    return [Instance("generate_until", {}, (contexts[i], dict(kwargs)), i) for i in order]

  first = lm.generate_until(reqs([0, 1, 2]))
  again = lm.generate_until(reqs([3, 1, 0, 2]))  # other rows, other neighbours
  assert again[1:] == [first[1], first[0], first[2]]
  assert first[0] != first[2]  # a repeated request samples anew
  other_seed = SmolLM3JaxLM(model=demo_model, tokenizer=demo_tokenizer, batch_size=2, progress=False, seed=8)
  assert other_seed.generate_until(reqs([0, 1, 2])) != first


def test_chat_template_matches_transformers(
  smollm3_template_tokenizer, demo_model, hf_tokenizer, pinned_transformers_clock
):
  import copy

  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  hf = copy.deepcopy(hf_tokenizer)
  hf.chat_template = smollm3_template_tokenizer.chat_template
  chat = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}]
  prefixed = chat + [{"role": "assistant", "content": "The answer is"}]
  for thinking in (True, False):
    lm = SmolLM3JaxLM(model=demo_model, tokenizer=smollm3_template_tokenizer, enable_thinking=thinking, progress=False)
    assert lm.apply_chat_template(chat) == hf.apply_chat_template(
      chat, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
    )
    # A task's gen_prefix: lm-eval asks for no generation prompt; the assistant turn stays open.
    assert lm.apply_chat_template(prefixed, add_generation_prompt=False) == hf.apply_chat_template(
      prefixed, tokenize=False, add_generation_prompt=False, continue_final_message=True, enable_thinking=thinking
    )
    assert lm.think_end_token == ("</think>" if thinking else None)


def test_thinking_is_stripped_before_until(lm, demo_model, smollm3_template_tokenizer):
  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  tok = smollm3_template_tokenizer
  thinking = SmolLM3JaxLM(model=demo_model, tokenizer=tok, enable_thinking=True, progress=False)
  ids = tok.encode("<think>\nQ: let me think. 4\n</think>\n\nThe answer is 4.\nQ: next") + [tok.eos_token_id]
  assert thinking.postprocess(ids, ["Q:", "\n"]) == "The answer is 4."
  assert thinking.generation_settings({"until": ["Q:"]})["stop"] is None  # no early stop inside the thinking
  assert lm.postprocess(ids, ["Q:"]) == "<think>\n"  # without thinking mode: hf's plain cut


# --------------------------------------------------------------------------------------------
# A grid of gen_kwargs (smollm3_jax.evaluation.grid, what experiments/evaluate.py runs)
# --------------------------------------------------------------------------------------------
def test_grid_resumes_a_killed_run(tmp_path, demo_model, demo_tokenizer, task_manager, ours):
  import csv
  import json

  from smollm3_jax.evaluation import grid as evaluation
  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  made = []

  def make_lm(cell):
    made.append(evaluation.cell_name(cell))
    return SmolLM3JaxLM(model=demo_model, tokenizer=demo_tokenizer, batch_size=2, progress=False)

  class Killed(Exception):
    pass

  def kill(name):
    raise Killed(name)

  wd = tmp_path / "wd"
  kwargs = dict(
    workdir=str(wd),
    tasks=["smollm3_jax_arithmetic"],
    config={"checkpoint": "demo"},
    evaluate_kwargs=dict(task_manager=task_manager, bootstrap_iters=0),
    log=lambda s: None,
  )
  grid = evaluation.parse_grid(["temperature=0.0,0.7"])
  with pytest.raises(Killed):  # killed after the first cell
    evaluation.run_grid(make_lm, grid=grid, on_cell_done=kill, **kwargs)
  done = wd / "cells" / "temperature=0.0" / "results.json"
  stamp = done.stat().st_mtime_ns
  assert not (wd / "cells" / "temperature=0.7").exists()
  out = evaluation.run_grid(make_lm, grid=grid, **kwargs)
  assert out["ran"] == ["temperature=0.7"] and out["skipped"] == ["temperature=0.0"]
  assert made == ["temperature=0.0", "temperature=0.7"] and done.stat().st_mtime_ns == stamp
  rows = list(csv.DictReader(open(out["summary"])))
  assert [r["cell"] for r in rows] == ["temperature=0.0", "temperature=0.7"]
  assert "smollm3_jax_arithmetic/exact_match,none" in rows[0]
  results = json.loads(done.read_text())
  assert results["cell"] == {"temperature": 0.0} and "smollm3_jax_arithmetic" in results["results"]
  greedy = [json.loads(l) for l in open(wd / "cells" / "temperature=0.0" / "samples_smollm3_jax_arithmetic.jsonl")]
  sampled = [json.loads(l) for l in open(wd / "cells" / "temperature=0.7" / "samples_smollm3_jax_arithmetic.jsonl")]
  assert len(greedy) == 4 and greedy[0]["arguments"][0][1]["do_sample"] is False
  assert sampled[0]["arguments"][0][1]["temperature"] == 0.7
  assert sampled[0]["arguments"][0][1]["do_sample"] is True  # the YAML's do_sample: false overridden
  # The greedy cell decodes as the plain run (the hf-checked texts).
  plain = {s["doc_id"]: s["filtered_resps"][0] for s in ours["samples"]["smollm3_jax_arithmetic"]}
  assert {s["doc_id"]: s["filtered_resps"][0] for s in greedy} == plain
  # A grown axis runs only its new cell; other settings are refused before anything runs.
  out = evaluation.run_grid(make_lm, grid=evaluation.parse_grid(["temperature=0.0,0.7,1.0"]), **kwargs)
  assert out["ran"] == ["temperature=1.0"] and len(made) == 3
  with pytest.raises(ValueError, match=r"a grid run of a different config \(.*tasks"):
    evaluation.run_grid(make_lm, grid=grid, **{**kwargs, "tasks": ["smollm3_jax_capitals"]})
  with pytest.raises(ValueError, match="grid axes"):
    evaluation.run_grid(make_lm, grid=evaluation.parse_grid(["top_p=0.9"]), **kwargs)
  assert len(made) == 3


def test_grid_of_two_axes_resumes_in_either_axis_order(tmp_path, demo_model, demo_tokenizer, task_manager):
  """config.json's grid keeps the first run's axis order (its JSON is written with sorted keys): the same
  command, the axes in another order, or a workdir written before the order was kept, all resume the
  same cells, none run twice, no folder of another name."""
  import json

  from smollm3_jax.evaluation import grid as evaluation
  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  made = []

  def make_lm(cell):
    made.append(evaluation.cell_name(cell))
    return SmolLM3JaxLM(
      model=demo_model, tokenizer=demo_tokenizer, batch_size=2, progress=False, seed=cell.get("seed", 0)
    )

  class Killed(Exception):
    pass

  def kill(name):
    raise Killed(name)

  wd = tmp_path / "wd"
  # The perplexity task on one document: a cheap cell (its settings change no number; the files are the point).
  kwargs = dict(
    workdir=str(wd),
    tasks=["smollm3_jax_documents"],
    config={"checkpoint": "demo"},
    evaluate_kwargs=dict(task_manager=task_manager, bootstrap_iters=0, limit=1),
    log=lambda s: None,
  )
  given = [
    "temperature=0.0,0.7",
    "seed=1,2",
  ]  # not alphabetical (the GSM8K example of docs/scoring-and-evaluation.md: thinking, temperature)
  names = ["temperature=0.0,seed=1", "temperature=0.0,seed=2", "temperature=0.7,seed=1", "temperature=0.7,seed=2"]
  with pytest.raises(Killed):
    evaluation.run_grid(make_lm, grid=evaluation.parse_grid(given), on_cell_done=kill, **kwargs)
  first = wd / "cells" / names[0] / "results.json"
  stamp = first.stat().st_mtime_ns
  out = evaluation.run_grid(make_lm, grid=evaluation.parse_grid(given), **kwargs)  # the same command
  assert out["ran"] == names[1:] and out["skipped"] == names[:1]
  for spec in (given, given[::-1], ["seed=2,1", "temperature=0.7,0.0"]):  # finished: nothing runs
    out = evaluation.run_grid(make_lm, grid=evaluation.parse_grid(spec), **kwargs)
    assert out["ran"] == [] and sorted(out["skipped"]) == names
  assert made == names and first.stat().st_mtime_ns == stamp
  assert sorted(os.listdir(wd / "cells")) == names
  record = json.loads((wd / "config.json").read_text())
  assert record["grid_axes"] == ["temperature", "seed"]
  assert open(out["summary"]).readline().startswith("cell,temperature,seed,")
  # A grown axis, given in the other order, runs only its new cells, named as the others.
  out = evaluation.run_grid(make_lm, grid=evaluation.parse_grid(["seed=1,2,3", "temperature=0.0,0.7"]), **kwargs)
  assert out["ran"] == ["temperature=0.0,seed=3", "temperature=0.7,seed=3"] and len(out["skipped"]) == 4
  assert len(os.listdir(wd / "cells")) == 6 and len(made) == 6
  # A workdir written before "grid_axes" (config.json's grid sorted, the folders in the first run's order):
  # its folders give the order back.
  del record["grid_axes"]
  (wd / "config.json").write_text(json.dumps(record, indent=2, sort_keys=True))
  out = evaluation.run_grid(make_lm, grid=evaluation.parse_grid(["seed=1,2,3", "temperature=0.0,0.7"]), **kwargs)
  assert out["ran"] == [] and len(out["skipped"]) == 6 and len(made) == 6
  assert json.loads((wd / "config.json").read_text())["grid_axes"] == ["temperature", "seed"]
  assert len(os.listdir(wd / "cells")) == 6


@pytest.mark.parametrize(
  "spec, message",
  [
    (["temprature=0.1"], "unknown axis 'temprature'"),
    (["temperature=0.1,abc"], "not a number"),
    (["thinking=yes"], "true or false"),
    (["top_k=1.5"], "not an integer"),
    (["temperature"], "name=v1"),
    (["temperature=0.1,0.1"], "repeated value"),
  ],
)
def test_bad_grid_specs(spec, message):
  from smollm3_jax.evaluation import grid as evaluation

  with pytest.raises(ValueError, match=message):
    evaluation.parse_grid(spec)


def test_evaluate_script_refuses_bad_flags_before_loading(tmp_path):
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(root, "experiments", "evaluate.py")
  for args, message in [
    (["--grid=temprature=0.1"], "unknown axis 'temprature'"),
    (["--gen_kwargs=num_beams=4"], "num_beams not supported"),
  ]:
    base = ["--checkpoint=/nonexistent/never/loaded", f"--workdir={tmp_path / 'wd'}", "--tasks=smollm3_jax_capitals"]
    proc = subprocess.run(
      [sys.executable, script, *base, *args],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=root,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "wd").exists()


# experiments/evaluate.py with one change: after the first cell's results are written, the child
# touches a marker file and waits to be killed (the kill lands where the test chose, on any machine).
_STOP_AFTER_FIRST_CELL = """
import os, runpy, sys, time
from smollm3_jax.evaluation import grid as evaluation
_write_summary = evaluation.write_summary
def write_summary(workdir, grid):
  path = _write_summary(workdir, grid)
  with open(os.environ["EVAL_TEST_MARKER"] + ".tmp", "w") as f:
    f.write("1")
  os.replace(os.environ["EVAL_TEST_MARKER"] + ".tmp", os.environ["EVAL_TEST_MARKER"])
  time.sleep(3600)
evaluation.write_summary = write_summary
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_evaluate_script_resumes_a_killed_grid(tmp_path):
  import json
  import subprocess
  import sys

  from _helpers import kill_at_marker

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(root, "experiments", "evaluate.py")
  workdir, marker = tmp_path / "wd", tmp_path / "first_cell_done"
  wrapper = tmp_path / "stop_after_first_cell.py"
  wrapper.write_text(_STOP_AFTER_FIRST_CELL)
  # The perplexity task on one document (one small scoring program), two cells; two axes, not in
  # alphabetical order (config.json's keys are: the rerun must still match it).
  args = [
    script,
    "--checkpoint=demo",
    "--dtype=float32",
    "--tasks=smollm3_jax_documents",
    f"--include_path={DATA}",
    "--limit=1",
    "--grid=temperature=0.0",
    "--grid=seed=3,4",
    f"--workdir={workdir}",
    "--noprogress",
  ]
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    EVAL_TEST_MARKER=str(marker),
    PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  kill_at_marker(
    [sys.executable, str(wrapper), *args], env=env, cwd=root, marker=marker, what="evaluate.py did not finish a cell"
  )
  first = workdir / "cells" / "temperature=0.0,seed=3" / "results.json"
  stamp = first.stat().st_mtime_ns
  assert not (workdir / "cells" / "temperature=0.0,seed=4" / "results.json").exists()
  done = subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "ran 1 cell(s), 1 done before" in done.stdout
  assert first.stat().st_mtime_ns == stamp  # the finished cell was not redone
  second = json.loads((workdir / "cells" / "temperature=0.0,seed=4" / "results.json").read_text())
  assert second["cell"] == {"temperature": 0.0, "seed": 4}
  assert "word_perplexity,none" in second["results"]["smollm3_jax_documents"]
  samples = workdir / "cells" / "temperature=0.0,seed=4" / "samples_smollm3_jax_documents.jsonl"
  assert len(samples.read_text().splitlines()) == 1
  assert (workdir / "summary.csv").read_text().count("\n") == 3  # header and two cells
  assert sorted(os.listdir(workdir / "cells")) == ["temperature=0.0,seed=3", "temperature=0.0,seed=4"]


def test_long_requests_lose_tokens_on_the_left_as_hf(demo_model, demo_tokenizer, demo_hf_model):
  import torch

  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM

  small = SmolLM3JaxLM(model=demo_model, tokenizer=demo_tokenizer, batch_size=2, max_length=12, progress=False)
  ctx = demo_tokenizer.encode("One two three four five six seven eight nine ten eleven twelve thirteen")
  cont = demo_tokenizer.encode(" fourteen fifteen")
  assert len(ctx) + len(cont) > 13
  ((ll, greedy),) = small._loglikelihood_tokens([(None, ctx, cont)])
  # hf: the model sees (context + continuation)[-(max_length + 1):][:-1]; the continuation's tokens
  # are scored from the last len(continuation) positions.
  inputs = (ctx + cont)[-13:][:-1]
  with torch.no_grad():
    logp = torch.log_softmax(demo_hf_model(torch.tensor([inputs])).logits[0].double(), -1).numpy()
  rows = logp[-len(cont) :]
  assert ll == pytest.approx(float(rows[np.arange(len(cont)), cont].sum()), abs=1e-4)
  assert greedy == (rows.argmax(-1).tolist() == cont)
  with pytest.raises(ValueError, match="cannot be scored with max_length 12"):
    small._loglikelihood_tokens([(None, ctx, ctx)])
