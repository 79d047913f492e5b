"""Serve a checkpoint: a web chat on http://127.0.0.1:3000 and an OpenAI-style API.

  python experiments/serve.py --checkpoint=demo
  curl http://127.0.0.1:3000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "Hi!"}], "stream": true}'

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
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (the default keeps it local).")
flags.DEFINE_integer("port", 3000, "Port.")
flags.DEFINE_string("model_name", None, "Model id reported by the API (default: the checkpoint's name).")
flags.DEFINE_bool("thinking", True, "Default enable_thinking for requests that do not set it.")
flags.DEFINE_float("temperature", 0.6, "Default temperature (0 = greedy).")
flags.DEFINE_float("top_p", 0.95, "Default top_p.")
flags.DEFINE_integer("top_k", 0, "Default top_k (0 = off).")
flags.DEFINE_integer("max_tokens", 2048, "Default max_tokens.")
flags.DEFINE_integer("seed", None, "Default seed (unset: a random seed per request).")
flags.DEFINE_integer("context_length", None, "Prompt + answer tokens (default: the model's maximum).")
flags.DEFINE_integer("chunk_steps", 4, "Decode steps between streamed pieces.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype.")
cli.define_quantize_flag()
flags.DEFINE_bool("warmup", True, "Compile the first shape bucket before accepting requests.")


def main(argv):
  del argv
  import uvicorn

  from smollm3_jax import chat, sampling, server

  try:
    sampling.validate_sampling_args(temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k)
  except ValueError as e:
    raise app.UsageError(str(e))
  if not 0 < FLAGS.port < 65536:
    raise app.UsageError(f"--port must be in 1..65535, got {FLAGS.port}")

  print(f"loading {FLAGS.checkpoint} ...", flush=True)
  model, tokenizer = chat.load_chat_model(FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, dtype=FLAGS.dtype,
                                          quantize=FLAGS.quantize)
  name = FLAGS.model_name or os.path.basename(os.path.normpath(FLAGS.checkpoint))
  application = server.create_app(
      model, tokenizer, model_name=name, temperature=FLAGS.temperature, top_p=FLAGS.top_p, top_k=FLAGS.top_k,
      max_tokens=FLAGS.max_tokens, thinking=FLAGS.thinking, seed=FLAGS.seed,
      context_length=FLAGS.context_length, chunk_steps=FLAGS.chunk_steps)
  if FLAGS.warmup:
    print("compiling ...", flush=True)
    server.warmup(application)
  print(f"serving {name} on http://{FLAGS.host}:{FLAGS.port}/ (API: /v1/chat/completions)", flush=True)
  uvicorn.run(application, host=FLAGS.host, port=FLAGS.port, log_level="info")


if __name__ == "__main__":
  app.run(main)
