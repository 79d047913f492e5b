"""Serve a checkpoint: a web chat on http://127.0.0.1:3000 and an OpenAI-style API.

  python experiments/serve.py --checkpoint=demo
  curl http://127.0.0.1:3000/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"messages": [{"role": "user", "content": "Hi!"}], "stream": true}'

Sampling flags left unset take the checkpoint's defaults (its generation_config.json, else the table in
smollm3_jax/generation/defaults.py); they are the defaults of requests that do not set them.
``--checkpoint=tiny`` is a random-weight tiny model (instant start, gibberish answers) for smoke tests.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from smollm3_jax import cli  # noqa: E402
from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.serving import chat

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a local HF dir, a .gguf file, a hub id, or 'tiny' (random).")
flags.DEFINE_string("tokenizer", None, "Tokenizer checkpoint (default: the model's; 'demo' for tiny).")
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (the default keeps it local).")
flags.DEFINE_integer("port", 3000, "Port.", lower_bound=1, upper_bound=65535)
flags.DEFINE_string("model_name", None, "Model id reported by the API (default: the checkpoint's name).")
flags.DEFINE_bool(
  "thinking",
  generation_defaults.THINKING,
  "Default enable_thinking for requests that do not set it (the template's default).",
)
cli.define_sampling_flags()  # unset: the checkpoint's defaults
flags.DEFINE_integer("max_tokens", None, "Default max_tokens (unset: the checkpoint's default).", lower_bound=1)
flags.DEFINE_integer(
  "seed", None, "Default seed (unset: a random seed per request).", lower_bound=0, upper_bound=2**32 - 1
)
flags.DEFINE_integer(
  "context_length",
  4096,
  "Prompt + answer tokens per request (capped at the model's maximum; each slot holds a cache of this many tokens).",
  lower_bound=2,
)
flags.DEFINE_integer("chunk_steps", 4, "Decode steps between streamed pieces.", lower_bound=1)
flags.DEFINE_integer("slots", 8, "Requests (choices) decoding at once; more wait for a free slot.", lower_bound=1)
cli.define_date_flag()
cli.define_dtype_flag()
cli.define_quantize_flag()
cli.define_compilation_cache_flag()
flags.DEFINE_bool(
  "warmup",
  True,
  "Compile every program of the slot pool before accepting requests (no request then waits for a compile).",
)
flags.DEFINE_bool("access_log", False, "Log one line per HTTP request (uvicorn's access log).")
flags.DEFINE_string(
  "api_key",
  None,
  "Require 'Authorization: Bearer <key>' on /v1/* (else 401), as vLLM's "
  "--api-key; default: $SMOLLM3_JAX_API_KEY, else none.",
)


def _is_loopback(host: str) -> bool:
  """Whether ``host`` (an address or a name) only listens on this machine."""
  import ipaddress
  import socket

  if host == "localhost":
    return True
  if not host:  # every interface
    return False
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    try:
      return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
    except (OSError, ValueError):
      return False


def main(argv):
  del argv
  import uvicorn

  from smollm3_jax.serving import server

  sampling_kwargs = cli.sampling_flag_values()  # validated when the flags were parsed
  api_key = FLAGS.api_key or os.environ.get("SMOLLM3_JAX_API_KEY") or None
  if api_key is None and not _is_loopback(FLAGS.host):
    print(
      f"warning: serving on {FLAGS.host}, beyond this machine, with no API key: anyone who reaches the "
      "port can use the model; pass --api_key (or set SMOLLM3_JAX_API_KEY)",
      file=sys.stderr,
      flush=True,
    )
  limit = chat.context_limit(FLAGS.checkpoint)
  context = min(FLAGS.context_length, limit) if not FLAGS["context_length"].present else FLAGS.context_length
  if context > limit:
    raise app.UsageError(f"--context_length={FLAGS.context_length} exceeds the model's {limit} positions")

  print(f"loading {FLAGS.checkpoint} ...", flush=True)
  model, tokenizer = chat.load_chat_model(
    FLAGS.checkpoint, tokenizer=FLAGS.tokenizer, dtype=FLAGS.dtype, quantize=FLAGS.quantize
  )
  name = FLAGS.model_name or os.path.basename(os.path.normpath(FLAGS.checkpoint))
  application = server.create_app(
    model,
    tokenizer,
    model_name=name,
    max_tokens=FLAGS.max_tokens,
    thinking=FLAGS.thinking,
    seed=FLAGS.seed,
    context_length=context,
    chunk_steps=FLAGS.chunk_steps,
    slots=FLAGS.slots,
    date=FLAGS.date,
    api_key=api_key,
    **sampling_kwargs,
  )
  defaults = application.state.server.defaults
  print(
    "request defaults: "
    + ", ".join(f"{k}={v}" for k, v in defaults.items())
    + f" (checkpoint defaults from {generation_defaults.for_tokenizer(tokenizer).source})",
    flush=True,
  )
  if FLAGS.warmup:
    print(f"compiling the programs of {FLAGS.slots} slots x {context} tokens ...", flush=True)
    t0 = time.perf_counter()
    server.warmup(application)
    print(f"compiled in {time.perf_counter() - t0:.1f} s", flush=True)
  print(f"serving {name} on http://{FLAGS.host}:{FLAGS.port}/ (API: /v1/chat/completions)", flush=True)
  uvicorn.run(application, host=FLAGS.host, port=FLAGS.port, log_level="info", access_log=FLAGS.access_log)


if __name__ == "__main__":
  cli.run(main)
