"""Generate completions from the command line.

python experiments/generate.py --checkpoint=demo --prompt="What is the capital of France?" --stream
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file, an Orbax dir, or a hub id.")
flags.DEFINE_multi_string("prompt", ["What is the capital of France?"], "Prompt (repeatable).")
flags.DEFINE_bool("chat", True, "Render each prompt as one user message through the chat template.")
flags.DEFINE_bool(
  "thinking", None, "Thinking mode (the chat template's enable_thinking); unset: the template's default (on)."
)
cli.define_sampling_flags()
flags.DEFINE_integer("max_new_tokens", None, "Token budget per prompt; unset: the checkpoint's default.", lower_bound=1)
flags.DEFINE_integer("newline_limit", 0, "Stop after this many consecutive newline tokens (0 = off).", lower_bound=0)
flags.DEFINE_integer(
  "seed", 0, "Base seed; each row derives its own from it and its index.", lower_bound=0, upper_bound=2**32 - 1
)
cli.define_date_flag()
flags.DEFINE_bool("stream", False, "Stream the (first) prompt's answer as it decodes.")
flags.DEFINE_integer(
  "logprobs",
  None,
  "Record each token's log-probabilities (raw and as sampled), entropies and "
  "rank, with this many top alternatives (0-20); printed per token and written to --output_json.",
  lower_bound=0,
  upper_bound=20,
)
cli.define_stop_flag()
flags.DEFINE_bool("show_thinking", True, "When streaming, also print the thinking part.")
cli.define_dtype_flag()
cli.define_quantize_flag()
cli.define_mesh_flag()
flags.DEFINE_string("output_json", None, "Write prompts, token ids, texts, stop reasons and stats here.")
cli.define_compilation_cache_flag()
cli.define_distributed_flags()


def _nonblank_prompts(prompts) -> bool:
  if any(not p.strip() for p in prompts):
    raise flags.ValidationError("--prompt must not be empty (or only whitespace)")
  return True


def _output_problem(path) -> str | None:
  from smollm3_jax.utils.files import check_writable_file

  if path is not None:
    try:
      check_writable_file(path, "--output_json")
    except ValueError as e:
      return str(e)
  return None


def _writable_output(values) -> bool:
  # Over several processes only process 0 writes the file: it checks it once all have joined (main).
  problem = None if cli.in_multiprocess_run() else _output_problem(values["output_json"])
  if problem:
    raise flags.ValidationError(problem)
  return True


flags.register_validator("prompt", _nonblank_prompts)
flags.register_multi_flags_validator(
  ["output_json", "coordinator_address", "num_processes", "distributed"], _writable_output
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")

  import smollm3_jax
  from smollm3_jax.utils import distributed

  # Over several processes every one generates (its devices' share of each batch); process 0 prints
  # and writes, and its checks and chat date hold for all (a host in another time zone or a start
  # at midnight must not render another prompt).
  leader = distributed.is_leader()
  say = print if leader else (lambda *args, **kwargs: None)
  date = FLAGS.date
  if distributed.process_count() > 1:
    from smollm3_jax.text.chat_format import resolve_date

    problem, date = distributed.broadcast((_output_problem(FLAGS.output_json) if leader else None, resolve_date(date)))
    if problem:
      raise app.UsageError(problem)
  from smollm3_jax.checkpoints.mapping import dtype_from_name

  dtype = None if FLAGS.dtype == "auto" else dtype_from_name(FLAGS.dtype)
  sampling_kwargs = cli.sampling_flag_values()  # validated when the flags were parsed
  kwargs = dict(
    chat=FLAGS.chat,
    thinking=FLAGS.thinking,
    **sampling_kwargs,
    max_new_tokens=FLAGS.max_new_tokens,
    seed=FLAGS.seed,
    newline_limit=FLAGS.newline_limit or None,
    date=date,
  )
  if FLAGS.stop:
    kwargs["stop"] = cli.stop_flag_values()
  if FLAGS.logprobs is not None:
    kwargs.update(logprobs=True, top_logprobs=FLAGS.logprobs)
  beams = cli.beam_flag_values()
  if beams and FLAGS.stream:
    raise app.UsageError("--num_beams > 1 does not stream (beam search returns whole hypotheses)")
  if beams and FLAGS.logprobs is not None:
    raise app.UsageError("--logprobs records sampled or greedy decoding, not beam search")
  if beams and (FLAGS.stop or FLAGS.newline_limit):
    raise app.UsageError("--stop and --newline_limit end sampled or greedy rows, not beam hypotheses")
  kwargs.update(beams)

  from smollm3_jax.nn import sharding

  tokenizer = smollm3_jax.Tokenizer.from_pretrained(FLAGS.checkpoint)
  model = smollm3_jax.from_pretrained(
    FLAGS.checkpoint, mesh=sharding.mesh_from_flag(FLAGS.mesh), dtype=dtype, quantize=FLAGS.quantize
  )
  say("settings: " + _effective_settings(tokenizer, kwargs))

  if FLAGS.stream:
    streams = []
    for prompt in FLAGS.prompt:
      say(f">>> {prompt}", flush=True)
      s = smollm3_jax.stream(model, tokenizer, prompt, hide_thinking=not FLAGS.show_thinking, **kwargs)
      for piece in s:
        say(piece, end="", flush=True)
      say()
      streams.append(s.result)
    completions = [r.completions[0] for r in streams]
    stats = streams[-1].stats
  else:
    result = smollm3_jax.generate(model, tokenizer, FLAGS.prompt, **kwargs)
    completions, stats = result.completions, result.stats
    for c, prompt in zip(completions, FLAGS.prompt):
      say(f">>> {prompt}")
      if c.thinking:
        say(f"[thinking] {c.thinking}")
      say(c.answer)
      score = f", beam score {c.score:.4f}" if c.score is not None else ""
      say(f"[{len(c.token_ids)} tokens, stop: {c.stop_reason}{score}]\n")
      if c.logprobs is not None and leader:
        _print_logprobs(tokenizer, c)

  say("stats: " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.as_dict().items()))
  if FLAGS.output_json and leader:
    out = dict(
      checkpoint=FLAGS.checkpoint,
      settings=kwargs,
      completions=[
        dict(
          prompt=p,
          rendered_prompt=c.prompt,
          prompt_token_ids=c.prompt_token_ids,
          token_ids=c.token_ids,
          text=c.text,
          thinking=c.thinking,
          answer=c.answer,
          stop_reason=c.stop_reason,
          score=c.score,
          logprobs=_logprobs_json(c),
        )
        for p, c in zip(FLAGS.prompt, completions)
      ],
      stats=stats.as_dict(),
    )
    from smollm3_jax.utils.files import atomic_write

    atomic_write(FLAGS.output_json, json.dumps(out, indent=2, ensure_ascii=False))
    say(f"wrote {FLAGS.output_json}")


def _effective_settings(tokenizer, kwargs) -> str:
  """What the run decodes with: each setting given, and each left unset with the checkpoint's default
  it takes (marked "default"), e.g. the demo's repetition_penalty 1.1 at temperature 0."""
  from smollm3_jax.generation import defaults as generation_defaults

  defaults = generation_defaults.for_tokenizer(tokenizer)
  unset = {k for k in generation_defaults.FIELDS + ("thinking",) if kwargs.get(k) is None}
  if kwargs.get("num_beams", 1) > 1:  # beam search takes no sampling defaults
    unset -= {"temperature", "top_k", "top_p", "min_p"}
  filled = dict(kwargs, **{k: getattr(defaults, k) for k in unset})
  skip = {"chat", "date"}
  parts = [
    f"{k}={v!r}" + (" (default)" if k in unset else "")
    for k, v in filled.items()
    if k not in skip and v is not None and (k in unset or k in generation_defaults.FIELDS or v)
  ]
  return ", ".join(parts)


def _logprobs_json(c):
  if c.logprobs is None:
    return None
  lp = c.logprobs
  return {
    name: getattr(lp, name).tolist()
    for name in ("logprob", "processed_logprob", "entropy", "processed_entropy", "rank", "top_ids", "top_logprobs")
  }


def _print_logprobs(tokenizer, c):
  """One line per token: the token, its raw and sampled log-probabilities, the entropy, the rank and
  the top alternatives."""
  lp = c.logprobs
  print(f"{'token':>16} {'logprob':>9} {'sampled':>9} {'entropy':>8} {'rank':>5}  alternatives")
  for t, tid in enumerate(c.token_ids):
    alts = ", ".join(f"{tokenizer.decode([int(a)])!r} {v:.2f}" for a, v in zip(lp.top_ids[t], lp.top_logprobs[t]))
    print(
      f"{tokenizer.decode([tid])!r:>16} {lp.logprob[t]:9.3f} {lp.processed_logprob[t]:9.3f} "
      f"{lp.entropy[t]:8.3f} {int(lp.rank[t]):5d}  {alts}"
    )
  print()


if __name__ == "__main__":
  cli.run(main)
