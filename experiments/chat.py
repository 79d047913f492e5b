"""Chat with a checkpoint in the terminal; answers stream as they decode.

  python experiments/chat.py --checkpoint=demo
  python experiments/chat.py --checkpoint=/path/to/SmolLM3-3B --nothinking --temperature=0.6 --top_p=0.95

Commands: /think, /no_think, /reset, /stats, /help, /quit. Ctrl-C stops the current answer.
Sampling flags left unset take the checkpoint's defaults (its generation_config.json, else the table in
smollm3_jax/generation/defaults.py); thinking starts on, as the chat template defaults it.
``--checkpoint=tiny`` is a random-weight tiny model (instant start, gibberish answers) for smoke tests.
"""

from __future__ import annotations

import os
import sys
import threading

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402
from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.serving import chat

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file, a hub id, or 'tiny' (random).")
flags.DEFINE_string("tokenizer", None, "Tokenizer checkpoint (default: the model's; 'demo' for tiny).")
flags.DEFINE_bool(
  "thinking",
  generation_defaults.THINKING,
  "Start in thinking mode (the template's default; /think and /no_think switch it).",
)
flags.DEFINE_bool("show_thinking", True, "Print the thinking text (dimmed) before the answer.")
flags.DEFINE_string("system", None, "System prompt.")
cli.define_sampling_flags()  # unset: the checkpoint's defaults
flags.DEFINE_integer(
  "max_new_tokens", None, "Token budget per answer (unset: the checkpoint's default).", lower_bound=1
)
flags.DEFINE_integer("seed", 0, "Base seed; turn t samples with seed + t.", lower_bound=0, upper_bound=2**32 - 1)
flags.DEFINE_integer(
  "context_length", 4096, "Tokens of history + answer (capped at the model's maximum).", lower_bound=2
)
flags.DEFINE_bool(
  "warmup",
  True,
  "Compile every program a turn can run in the background while you type (no turn then waits for a compile).",
)
flags.DEFINE_integer("chunk_steps", 4, "Decode steps between streamed pieces.", lower_bound=1)
cli.define_date_flag()
cli.define_dtype_flag()
cli.define_quantize_flag()
cli.define_compilation_cache_flag()


def main(argv):
  del argv
  sampling_kwargs = cli.sampling_flag_values()  # validated when the flags were parsed
  limit = chat.context_limit(FLAGS.checkpoint)
  context = min(FLAGS.context_length, limit) if not FLAGS["context_length"].present else FLAGS.context_length
  if context > limit:
    raise app.UsageError(f"--context_length={FLAGS.context_length} exceeds the model's {limit} positions")

  print(f"loading {FLAGS.checkpoint} ...", flush=True)
  model, tokenizer = chat.load_chat_model(
    FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, dtype=FLAGS.dtype, quantize=FLAGS.quantize
  )
  session = chat.ChatSession(
    model,
    tokenizer,
    system=FLAGS.system,
    thinking=FLAGS.thinking,
    context_length=context,
    max_new_tokens=FLAGS.max_new_tokens,
    chunk_steps=FLAGS.chunk_steps,
    seed=FLAGS.seed,
    date=FLAGS.date,
    **sampling_kwargs,
  )
  if FLAGS.warmup:  # compiles while the user types; a turn that comes first waits for what it needs
    threading.Thread(target=session.warmup, name="smollm3-warmup", daemon=True).start()
  try:
    import readline  # noqa: F401  (line editing and history for input())
  except ImportError:
    pass
  chat.run_terminal(session, show_thinking=FLAGS.show_thinking)


if __name__ == "__main__":
  cli.run(main)
