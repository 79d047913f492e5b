"""Chat with a checkpoint in the terminal; answers stream as they decode.

  python experiments/chat.py --checkpoint=demo
  python experiments/chat.py --checkpoint=/path/to/SmolLM3-3B --thinking --temperature=0.6 --top_p=0.95

Commands: /think, /no_think, /reset, /stats, /help, /quit. Ctrl-C stops the current answer.
``--checkpoint=tiny`` is a random-weight tiny model (instant start, gibberish answers) for smoke tests.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file, a hub id, or 'tiny' (random).")
flags.DEFINE_string("tokenizer", None, "Tokenizer checkpoint (default: the model's; 'demo' for tiny).")
flags.DEFINE_bool("thinking", False, "Start in thinking mode (/think and /no_think switch it).")
flags.DEFINE_bool("show_thinking", True, "Print the thinking text (dimmed) before the answer.")
flags.DEFINE_string("system", None, "System prompt.")
cli.define_sampling_flags(temperature=0.6, top_p=0.95)  # the model card's recommendation
flags.DEFINE_integer("max_new_tokens", 1024, "Token budget per answer.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Base seed; turn t samples with seed + t.")
flags.DEFINE_integer("context_length", None, "Tokens of history + answer (default: the model's maximum).")
flags.DEFINE_integer("chunk_steps", 4, "Decode steps between streamed pieces.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype.")
cli.define_quantize_flag()


def main(argv):
  del argv
  from smollm3_jax import chat

  sampling_kwargs = cli.sampling_flag_values()  # validated when the flags were parsed

  print(f"loading {FLAGS.checkpoint} ...", flush=True)
  model, tokenizer = chat.load_chat_model(FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, dtype=FLAGS.dtype,
                                          quantize=FLAGS.quantize)
  session = chat.ChatSession(
      model, tokenizer, system=FLAGS.system, thinking=FLAGS.thinking, context_length=FLAGS.context_length,
      max_new_tokens=FLAGS.max_new_tokens, chunk_steps=FLAGS.chunk_steps, seed=FLAGS.seed,
      **sampling_kwargs)
  try:
    import readline  # noqa: F401  (line editing and history for input())
  except ImportError:
    pass
  chat.run_terminal(session, show_thinking=FLAGS.show_thinking)


if __name__ == "__main__":
  app.run(main)
