"""Score texts from a JSONL file: log-probabilities of continuations, or perplexity of whole texts.

  python experiments/score.py --checkpoint=demo --input=pairs.jsonl --output=scores.jsonl
  python experiments/score.py --checkpoint=demo --rolling --window=1024 --input=docs.jsonl --output=ppl.jsonl

Input lines: ``{"prompt": ..., "continuation": ...}`` (a prompt is a string, a message list with
``--chat``, or token ids; a continuation a string or token ids), or with ``--rolling``
``{"text": ...}`` (a string or token ids). Other keys (an ``id``) are copied to the output. Output
lines, in input order: the input's keys plus ``token_ids``, ``logprobs`` (natural log, one per
token), ``log_likelihood``, ``num_tokens`` and ``is_greedy`` (pairs) or ``perplexity`` and
``num_windows`` (rolling).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file, an Orbax dir, or a hub id.")
flags.DEFINE_string("input", None, "JSONL file of {prompt, continuation} (or {text} with --rolling) lines.")
flags.DEFINE_string("output", None, "JSONL file to write, one result per input line.")
flags.DEFINE_bool("rolling", False, "Score whole texts in rolling windows (log-likelihood and perplexity).")
flags.DEFINE_integer("window", None, "--rolling: tokens per window (unset: the model's context).", lower_bound=1)
flags.DEFINE_integer(
  "context_len",
  1,
  "--rolling: least context each later window keeps (lm-eval's context_len; 1 = disjoint windows).",
  lower_bound=1,
)
flags.DEFINE_bool("chat", False, "Render prompts with the chat template (continuations are the assistant's reply).")
flags.DEFINE_bool(
  "thinking",
  False,
  "--chat: the template's enable_thinking (off: the continuation is scored as the answer, after an empty think block).",
)
flags.DEFINE_integer("batch_size", 8, "Rows per compiled call.", lower_bound=1)
flags.DEFINE_bool("progress", True, "Show a progress bar.")
cli.define_date_flag()
cli.define_dtype_flag()
cli.define_quantize_flag()
cli.define_mesh_flag()
cli.define_compilation_cache_flag()
flags.mark_flags_as_required(["input", "output"])


def read_requests(path: str, rolling: bool) -> list[dict]:
  """The JSON objects of a JSONL file, each checked for the keys its mode needs (ValueError naming
  the line)."""
  if not os.path.isfile(path):
    raise ValueError(f"--input: file not found: {path}")
  need = ("text",) if rolling else ("prompt", "continuation")
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e})") from None
      if not isinstance(row, dict) or any(k not in row for k in need):
        raise ValueError(
          f"{path}:{n}: expected an object with {', '.join(repr(k) for k in need)}"
          + (" (or drop --rolling)" if rolling else " (or pass --rolling for {'text': ...})")
        )
      rows.append(row)
  if not rows:
    raise ValueError(f"--input: {path} holds no requests")
  return rows


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from smollm3_jax.utils.files import atomic_write, check_writable_file

  try:
    rows = read_requests(FLAGS.input, FLAGS.rolling)
    check_writable_file(FLAGS.output, "--output")
  except ValueError as e:
    raise app.UsageError(str(e)) from None

  import smollm3_jax
  from smollm3_jax.checkpoints.mapping import dtype_from_name
  from smollm3_jax.nn import sharding

  dtype = None if FLAGS.dtype == "auto" else dtype_from_name(FLAGS.dtype)
  tokenizer = smollm3_jax.Tokenizer.from_pretrained(FLAGS.checkpoint)
  model = smollm3_jax.from_pretrained(
    FLAGS.checkpoint, mesh=sharding.mesh_from_flag(FLAGS.mesh), dtype=dtype, quantize=FLAGS.quantize
  )
  t0 = time.perf_counter()
  out = []
  if FLAGS.rolling:
    scores = smollm3_jax.score_rolling(
      model,
      tokenizer,
      [r["text"] for r in rows],
      window=FLAGS.window,
      context_len=FLAGS.context_len,
      batch_size=FLAGS.batch_size,
      progress=FLAGS.progress,
    )
    for row, s in zip(rows, scores):
      out.append(
        {
          **row,
          "token_ids": s.token_ids,
          "logprobs": s.logprobs.tolist(),
          "log_likelihood": s.log_likelihood,
          "num_tokens": s.num_tokens,
          "perplexity": s.perplexity,
          "num_windows": s.num_windows,
        }
      )
  else:
    scores = smollm3_jax.score(
      model,
      tokenizer,
      [r["prompt"] for r in rows],
      [r["continuation"] for r in rows],
      chat=FLAGS.chat,
      thinking=FLAGS.thinking,
      date=FLAGS.date,
      batch_size=FLAGS.batch_size,
      progress=FLAGS.progress,
    )
    for row, s in zip(rows, scores):
      out.append(
        {
          **row,
          "token_ids": s.token_ids,
          "logprobs": s.logprobs.tolist(),
          "log_likelihood": s.log_likelihood,
          "num_tokens": len(s.token_ids),
          "is_greedy": s.is_greedy,
        }
      )
  seconds = time.perf_counter() - t0
  atomic_write(FLAGS.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
  tokens = sum(r["num_tokens"] for r in out)
  total = sum(r["log_likelihood"] for r in out)
  print(
    f"scored {len(out)} {'texts' if FLAGS.rolling else 'continuations'} ({tokens} tokens) in {seconds:.1f} s "
    f"(compiles included): log-likelihood {total:.3f}, perplexity over all tokens "
    f"{math.exp(-total / tokens):.3f}"
  )
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  cli.run(main)
