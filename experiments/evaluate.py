"""Evaluate a checkpoint with lm-evaluation-harness, over a grid of decoding settings.

  python experiments/evaluate.py --checkpoint=HuggingFaceTB/SmolLM3-3B --tasks=gsm8k_cot \
      --apply_chat_template --grid=thinking=true,false --grid=temperature=0.0,0.6,1.0 \
      --gen_kwargs=max_gen_toks=4096 --workdir=out/gsm8k_3b

Each cell of the grid (every combination of the --grid axes) runs ``lm_eval.simple_evaluate`` with
the ``smollm3_jax`` model (smollm3_jax/evaluation/lm_eval_model.py) and writes lm-eval's results JSON and
per-sample logs under ``<workdir>/cells/<cell>/``; ``<workdir>/summary.csv`` has one row per cell.
Running the same command again skips finished cells (a killed run resumes). See
smollm3_jax/evaluation/grid.py for the workdir's files.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file, an Orbax dir, or a hub id.")
flags.DEFINE_list("tasks", None, "lm-eval task (or group) names, comma-separated.")
flags.DEFINE_multi_string("include_path", [], "Directories of extra task YAML files (repeatable).")
flags.DEFINE_string("workdir", None, "Where results, per-sample logs and summary.csv go.")
flags.DEFINE_multi_string(
  "grid",
  [],
  "An axis, name=v1,v2,... (repeatable; every combination is a cell): a "
  "gen_kwargs key (temperature, top_p, top_k, min_p, repetition_penalty, do_sample, "
  "max_gen_toks, or another sampling setting of the engine: typical_p, epsilon_cutoff, "
  "eta_cutoff, no_repeat_ngram_size, min_new_tokens, frequency_penalty, presence_penalty), "
  "thinking (the chat template's enable_thinking) or seed.",
)
flags.DEFINE_string("gen_kwargs", "", "gen_kwargs of every cell, lm-eval's form: 'max_gen_toks=1024,top_p=0.95'.")
flags.DEFINE_bool(
  "thinking",
  None,
  "The chat template's enable_thinking when no thinking axis is given (unset: the template's default).",
)
flags.DEFINE_string("think_end_token", None, "Answers are the text after it (default '</think>' with thinking on).")
flags.DEFINE_bool("apply_chat_template", False, "Render prompts with the chat template (instruct models).")
flags.DEFINE_bool("fewshot_as_multiturn", False, "With --apply_chat_template: few-shot examples as chat turns.")
flags.DEFINE_string("system_instruction", None, "A system message for every prompt.")
flags.DEFINE_integer("num_fewshot", None, "Few-shot examples (unset: each task's default).", lower_bound=0)
flags.DEFINE_float("limit", None, "Documents per task (a count, or a fraction when < 1).", lower_bound=0)
flags.DEFINE_integer("batch_size", 8, "Rows per compiled call.", lower_bound=1)
flags.DEFINE_integer("max_length", None, "Context in tokens (unset: the model's).", lower_bound=2)
flags.DEFINE_integer(
  "seed",
  0,
  "Seed of lm-eval's shuffles and few-shot draws, and of the sampled rows (unless a seed axis is given).",
  lower_bound=0,
  upper_bound=2**32 - 1,
)
flags.DEFINE_bool("progress", True, "Progress bars.")
cli.define_date_flag()
cli.define_dtype_flag()
cli.define_quantize_flag()
cli.define_mesh_flag()
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["tasks", "workdir"])


def _check_grid(specs) -> bool:
  from smollm3_jax.evaluation import grid as evaluation

  try:
    evaluation.parse_grid(specs)
  except ValueError as e:
    raise flags.ValidationError(str(e)) from None
  return True


def _check_gen_kwargs(value) -> bool:
  from lm_eval.utils import simple_parse_args_string

  from smollm3_jax.evaluation import grid as evaluation

  try:
    given = simple_parse_args_string(value)
  except Exception:  # noqa: BLE001  (lm-eval's parser raises plain errors on malformed strings)
    raise flags.ValidationError(f"--gen_kwargs: expected 'key=value,...', got {value!r}") from None
  unknown = sorted(set(given) - set(evaluation._gen_axes()) - {"until", "max_new_tokens"})
  if unknown:
    raise flags.ValidationError(f"--gen_kwargs: {', '.join(unknown)} not supported")
  return True


def _check_include_paths(paths) -> bool:
  missing = [p for p in paths if not os.path.isdir(p)]
  if missing:
    raise flags.ValidationError(f"--include_path: not a directory: {missing[0]}")
  return True


flags.register_validator("grid", _check_grid)
flags.register_validator("gen_kwargs", _check_gen_kwargs)
flags.register_validator("include_path", _check_include_paths)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from lm_eval.tasks import TaskManager
  from lm_eval.utils import simple_parse_args_string

  from smollm3_jax.evaluation import grid as evaluation
  from smollm3_jax.evaluation.lm_eval_model import SmolLM3JaxLM
  from smollm3_jax.loading import load_model_and_tokenizer

  grid = evaluation.parse_grid(FLAGS.grid)
  gen_kwargs = simple_parse_args_string(FLAGS.gen_kwargs)
  # Tasks all found under --include_path skip indexing lm-eval's ~15k bundled task files (~5 s).
  task_manager = TaskManager(include_path=FLAGS.include_path, include_defaults=False) if FLAGS.include_path else None
  if task_manager is None or any(t not in task_manager.all_tasks for t in FLAGS.tasks):
    task_manager = TaskManager(include_path=FLAGS.include_path or None)
  unknown = [t for t in FLAGS.tasks if t not in task_manager.all_tasks]
  if unknown:
    raise app.UsageError(f"--tasks: unknown task(s) {', '.join(unknown)} (lm-eval's names, or pass --include_path)")
  limit = FLAGS.limit
  if limit is not None and limit >= 1:
    limit = int(limit)
  config = dict(
    checkpoint=FLAGS.checkpoint,
    dtype=FLAGS.dtype,
    quantize=FLAGS.quantize,
    thinking=FLAGS.thinking,
    think_end_token=FLAGS.think_end_token,
    apply_chat_template=FLAGS.apply_chat_template,
    fewshot_as_multiturn=FLAGS.fewshot_as_multiturn,
    system_instruction=FLAGS.system_instruction,
    num_fewshot=FLAGS.num_fewshot,
    limit=limit,
    max_length=FLAGS.max_length,
    seed=FLAGS.seed,
    date=FLAGS.date,
  )
  model, tokenizer = load_model_and_tokenizer(
    {"checkpoint": FLAGS.checkpoint, "dtype": FLAGS.dtype, "quantize": FLAGS.quantize}, FLAGS.mesh
  )

  def make_lm(cell):
    return SmolLM3JaxLM(
      model=model,
      tokenizer=tokenizer,
      batch_size=FLAGS.batch_size,
      max_length=FLAGS.max_length,
      enable_thinking=cell.get("thinking", FLAGS.thinking),
      think_end_token=FLAGS.think_end_token,
      date=FLAGS.date,
      seed=cell.get("seed", FLAGS.seed),
      progress=FLAGS.progress,
    )

  seed = FLAGS.seed
  evaluate_kwargs = dict(
    task_manager=task_manager,
    num_fewshot=FLAGS.num_fewshot,
    limit=limit,
    apply_chat_template=FLAGS.apply_chat_template,
    fewshot_as_multiturn=FLAGS.fewshot_as_multiturn,
    system_instruction=FLAGS.system_instruction,
    random_seed=seed,
    numpy_random_seed=seed,
    torch_random_seed=seed,
    fewshot_random_seed=seed,
  )
  out = evaluation.run_grid(
    make_lm,
    workdir=FLAGS.workdir,
    tasks=FLAGS.tasks,
    grid=grid,
    config=config,
    gen_kwargs=gen_kwargs,
    evaluate_kwargs=evaluate_kwargs,
  )
  with open(out["summary"], encoding="utf-8") as f:
    print(f.read())
  print(
    f"ran {len(out['ran'])} cell(s), {len(out['skipped'])} done before; results and per-sample logs in "
    f"{os.path.join(FLAGS.workdir, 'cells')}, summary in {out['summary']}"
  )


if __name__ == "__main__":
  cli.run(main)
