"""What every benchmark shares: the model flags, the model and its transformers twin, chat prompts, the
runners, the timing helpers (the first run compiles, then best of ``--repeats``), the printed row
and the table.

Imports JAX and the library lazily, inside functions: importing a benchmark module only defines flags.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

from absl import app, flags

EXPERIMENTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(EXPERIMENTS)
if EXPERIMENTS not in sys.path:  # probes.py lives beside benchmark.py
  sys.path.insert(0, EXPERIMENTS)

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a .gguf, a local HF dir, a hub id, or 'random' (--preset shape).")
flags.DEFINE_string("preset", "smollm2_135m", "Config preset for --checkpoint=random (smollm2_135m, smollm3_3b, tiny).")
flags.DEFINE_integer("num_layers", 0, "Override the preset's layer count (random weights only; 0 = preset's).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype (both sides).")
flags.DEFINE_string("mesh", "", "Device mesh for ours, e.g. 'data=2,model=4' ('' = all devices on the data axis).")
flags.DEFINE_integer("new_tokens", 128, "Decode rows and start-up: new tokens per prompt (no early stop).")
flags.DEFINE_integer("repeats", 3, "Timed repetitions per row (best is reported; all are in the JSON).")
flags.DEFINE_integer("seed", 0, "Seed of random weights and synthetic prompts.")
flags.DEFINE_bool("compilation_cache", True, "Use the persistent compilation cache (smollm3_jax.utils.runtime).")
flags.DEFINE_string("cache_dir", None, "Compilation cache directory (default: runtime.default_cache_dir()).")

CHAT_PROMPTS = [
  "Write a short story about a robot learning to paint.",
  "What is the capital of France?",
  "Explain photosynthesis to a ten-year-old.",
  "Give me three tips for writing clean Python code.",
  "How do vaccines work?",
  "Summarize the plot of Romeo and Juliet in a few sentences.",
  "What are the main differences between a list and a tuple?",
  "Describe a sunset over the ocean.",
]
DATE = "2025-06-15"  # the chat date of rendered prompts: the same tokens on any day


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def best(xs: Sequence[float]) -> float:
  """The fastest of the timed runs (seconds); NaN when none ran."""
  return min(xs) if xs else float("nan")


def ratio(a, b):
  """a / b, None when either is missing (or b is NaN)."""
  return a / b if a and b and b == b else None


def timed(run: Callable[[], Any], repeats: int, seconds: Callable[[Any], float]) -> tuple[Any, list[float]]:
  """(the first result, ``seconds`` of each of ``repeats`` more runs): the first run compiles and is
  kept out of the timings."""
  first = run()
  return first, [seconds(run()) for _ in range(repeats)]


def wall_seconds(run: Callable[[], Any]) -> tuple[Any, float]:
  """(``run()``'s result, its wall-clock seconds)."""
  t0 = time.perf_counter()
  out = run()
  return out, time.perf_counter() - t0


def print_row(row: Mapping, skip: Sequence[str] = ()) -> None:
  """One row as a JSON line (floats rounded; lists and ``skip`` left out: they are in the JSON file)."""
  print(
    "  "
    + json.dumps(
      {
        k: (round(v, 3) if isinstance(v, float) else v)
        for k, v in row.items()
        if not isinstance(v, list) and k not in skip
      }
    ),
    flush=True,
  )


def target(name: str, value, goal, fmt: str = "{:.2f}") -> list[str]:
  """A target line, met (OK) or not (MISSED); none when ``value`` was not measured."""
  if value is None:
    return []
  return [f"  {name}: {fmt.format(value)} (target >= {fmt.format(goal)}) {'OK' if value >= goal else 'MISSED'}"]


def _cell(v, spec: str) -> str:
  """``v`` formatted with ``spec``, or a dash of the same width when the row has no such figure."""
  return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(int(spec.split(".")[0]))


def format_table(rows: Sequence[Mapping], bandwidth: float, names: Mapping[str, Callable[[Mapping], str]]) -> str:
  """The printed table: one line per row (``names[kind](row)`` names it), ours vs theirs, the roofline."""
  head = (
    f"{'row':<26}{'ours tok/s':>12}{'theirs tok/s':>14}{'ratio':>8}{'TTFT s':>9}{'compile s':>11}"
    f"{'GB/s':>8}{'roofline':>10}"
  )
  lines = [head, "-" * len(head)]
  for r in rows:
    name = names[r["kind"]](r)
    lines.append(
      f"{name:<26}{_cell(r.get('ours_tokens_per_second'), '12.1f')}"
      f"{_cell(r.get('theirs_tokens_per_second'), '14.1f')}{_cell(r.get('ratio'), '8.2f')}"
      f"{_cell(r.get('time_to_first_token'), '9.3f')}{_cell(r.get('compile_seconds'), '11.2f')}"
      f"{_cell(r.get('achieved_gbps'), '8.2f')}{_cell(r.get('roofline_fraction'), '10.1%')}"
    )
  if bandwidth:
    lines.append(
      f"roofline = (weight bytes + KV bytes of the filled prefix) per decode step / step time / {bandwidth:.2f} GB/s"
    )
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Models and prompts
# --------------------------------------------------------------------------------------------
def load_ours(checkpoint: str, preset: str, dtype, seed: int, num_layers: int = 0, mesh: str = ""):
  """(model, tokenizer or None, description); the weights are placed on ``mesh`` as they load."""
  from smollm3_jax.loading import load_model_and_tokenizer
  from smollm3_jax.nn import config as config_lib

  if checkpoint == "random":
    if preset not in config_lib.PRESETS:
      raise app.UsageError(f"--preset={preset!r} is not one of {sorted(config_lib.PRESETS)}")
    spec = dict(dtype=dtype, random=dict(preset=preset, num_layers=num_layers, seed=seed))
    model, _ = load_model_and_tokenizer(spec, mesh=mesh)
    return model, None, f"random weights, {preset} shape"
  model, tokenizer = load_model_and_tokenizer(dict(checkpoint=checkpoint, dtype=dtype), mesh=mesh)
  return model, tokenizer, checkpoint


def load_from_flags():
  """:func:`load_ours` as the model flags say."""
  return load_ours(
    FLAGS.checkpoint, FLAGS.preset, FLAGS.dtype, FLAGS.seed, num_layers=FLAGS.num_layers, mesh=FLAGS.mesh
  )


def chat_prompt_ids(tokenizer, vocab_size: int, n: int, *, thinking: bool = False, seed: int = 0):
  """n chat prompts as token ids (synthetic ids of chat-prompt length without a tokenizer)."""
  import numpy as np

  if tokenizer is None:
    rs = np.random.RandomState(seed)
    return [rs.randint(1, vocab_size, 24 + 5 * (i % 8)).tolist() for i in range(n)]
  out = []
  for i in range(n):
    text = tokenizer.apply_chat_template(
      [{"role": "user", "content": CHAT_PROMPTS[i % len(CHAT_PROMPTS)]}],
      add_generation_prompt=True,
      enable_thinking=thinking,
      tokenize=False,
    )
    out.append(tokenizer.encode(text))
  return out


def decode_bytes_per_step(model, batch, filled, cache_length, cache_itemsize):
  """(weight bytes read per decode step, KV bytes of ``filled`` slots, KV bytes of the whole cache)."""
  import probes
  from flax import nnx

  cfg = model.config
  weights = probes.tree_nbytes(nnx.state(model, nnx.Param))
  if not cfg.tie_word_embeddings:  # only B rows of an untied embedding table are read
    table = probes.tree_nbytes(nnx.state(model.embed_tokens, nnx.Param))  # (int8: + row scales)
    weights -= table - batch * table // cfg.vocab_size
  per_slot = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * cache_itemsize * batch
  return weights, per_slot * filled, per_slot * cache_length


def hf_model_from(model, dtype_name: str):
  """A transformers SmolLM3ForCausalLM holding exactly our model's weights (on CUDA if torch has it)."""
  import numpy as np
  import torch
  import transformers
  from flax import nnx

  from smollm3_jax.checkpoints.mapping import param_to_hf

  hf_cfg = transformers.SmolLM3Config(**{k: v for k, v in model.config.to_hf_dict().items() if k != "architectures"})
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
  hm = transformers.SmolLM3ForCausalLM(hf_cfg)
  state = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    arr = np.asarray(var.get_value()).astype(np.float32)
    if path[-1] == "kernel":
      arr = arr.T
    state[param_to_hf(path)] = torch.from_numpy(np.ascontiguousarray(arr))
  missing, unexpected = hm.load_state_dict(state, strict=False)
  missing = [k for k in missing if not (k == "lm_head.weight" and model.config.tie_word_embeddings)]
  if missing or unexpected:
    raise RuntimeError(f"transformers model: missing {missing}, unexpected {unexpected}")
  hm = hm.to(torch_dtype).eval()
  hm.generation_config.eos_token_id = None  # rows never stop early: same work as ours
  hm.generation_config.pad_token_id = model.config.pad_token_id or 0
  if torch.cuda.is_available():
    hm = hm.cuda()
  return hm


def quality_scorer(model, tokenizer, path: str, max_tokens: int = 1024):
  """Scores ``path``'s text with the model as it is now; returns a function that scores it again
  (after quantizing) and compares the two (smollm3_jax.nn.quantize.compare_logits). None without a
  tokenizer or text."""
  import numpy as np

  from smollm3_jax.nn import quantize

  if tokenizer is None or not path:
    return None
  with open(path) as f:
    ids = np.asarray([tokenizer.encode(f.read())[:max_tokens]])
  reference = np.asarray(model(ids)[0][0, :-1])
  return lambda: dict(
    tokens=int(ids.shape[1]), **quantize.compare_logits(reference, np.asarray(model(ids)[0][0, :-1]), ids[0, 1:])
  )


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------
class Ours:
  def __init__(self, model, tokenizer):
    self.model = model
    self.tokenizer = tokenizer

  def run(self, prompt_ids, new_tokens, **settings):
    """GenerationResult of a greedy (unless settings say otherwise) run of exactly new_tokens per row."""
    from smollm3_jax.generation import api
    from smollm3_jax.generation.defaults import GREEDY  # not the checkpoint's (sampled) defaults

    return api.generate(
      self.model, self.tokenizer, prompt_ids, max_new_tokens=new_tokens, stop_ids=[], **{**GREEDY, **settings}
    )


class Theirs:
  """transformers ``generate`` on the same weights (:func:`hf_model_from`), left-padded batches."""

  def __init__(self, hm, pad_id: int):
    import torch

    self.torch = torch
    self.hm = hm
    self.pad_id = pad_id
    self.device = next(hm.parameters()).device

  def _batch(self, prompt_ids):
    torch = self.torch
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
    for i, p in enumerate(prompt_ids):
      ids[i, width - len(p) :] = torch.tensor(p)
      mask[i, width - len(p) :] = 1
    return ids.to(self.device), mask.to(self.device)

  def run(self, prompt_ids, new_tokens, *, temperature=0.0, repetition_penalty=1.0, seed=0):
    """(seconds, generated ids [B, new_tokens] as lists)."""
    torch = self.torch
    ids, mask = self._batch(prompt_ids)
    kw = (
      dict(do_sample=False)
      if temperature == 0
      else dict(do_sample=True, temperature=float(temperature), top_k=0, top_p=1.0)
    )
    torch.manual_seed(seed)
    self._sync()

    def generate():
      with torch.no_grad():
        out = self.hm.generate(
          ids, attention_mask=mask, max_new_tokens=new_tokens, repetition_penalty=float(repetition_penalty), **kw
        )
      self._sync()  # (a CUDA run has finished only once synchronized)
      return out

    out, dt = wall_seconds(generate)
    return dt, out[:, ids.shape[1] :].tolist()

  def _sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()
