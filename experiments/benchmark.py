"""Throughput benchmark of smollm3-jax, optionally side by side with transformers.

  python experiments/benchmark.py --checkpoint=demo --compare=transformers --output_json=/tmp/bench.json
  python experiments/benchmark.py --checkpoint=random --preset=smollm3_3b --dtype=bfloat16   # GPU, no download
  python experiments/benchmark.py --checkpoint=demo --startup        # fresh-process start-up, cold vs warm cache

Rows: prefill (one prompt of each --prompt_lengths), decode (--batch_sizes chat prompts, greedy,
--new_tokens tokens each, no early stop), and a sweep (3 temperatures x 3 repetition penalties x
2 thinking modes over 8 prompts: ours as ONE batched call, transformers setting by setting).
Timings are best-of --repeats, ours and theirs interleaved so both see the same machine load.
Decode bandwidth = (weight bytes + KV bytes of the filled prefix) per step / step time, as a
fraction of --bandwidth_gbps (measured on the same device when 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_T_START = time.time()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_baseline  # noqa: E402  (experiments/bench_baseline.py, beside this script)
import bench_continuous  # noqa: E402  (experiments/bench_continuous.py, beside this script)
import probes  # noqa: E402  (experiments/probes.py, beside this script)
from smollm3_jax import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "demo", "'demo', a .gguf, a local HF dir, a hub id, or 'random' (--preset shape).")
flags.DEFINE_string("preset", "smollm2_135m", "Config preset for --checkpoint=random (smollm2_135m, smollm3_3b, tiny).")
flags.DEFINE_integer("num_layers", 0, "Override the preset's layer count (random weights only; 0 = preset's).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype (both sides).")
flags.DEFINE_enum("quantize", "none", ["none", "int8"], "Ours only: 'int8' quantizes our weights after "
                  "loading (smollm3_jax.nn.quantize); transformers keeps --dtype weights.")
flags.DEFINE_string("quality_text", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                 "data", "eval", "quality.txt"),
                    "With --quantize: a text scored teacher-forced by the model before and after quantizing "
                    "(top-1 agreement, KL, perplexities).")
flags.DEFINE_list("prompt_lengths", ["128", "512", "2048"], "Prefill rows: prompt lengths in tokens.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Decode rows: batch sizes.")
flags.DEFINE_integer("new_tokens", 128, "Decode rows: new tokens per prompt (no early stop).")
flags.DEFINE_bool("sweep", True, "Add the 3x3x2-settings x 8-prompts sweep row.")
flags.DEFINE_list("cache_budgets", ["256", "1024", "4096"], "Cache-budget rows: allocated cache lengths (batch 8, "
                  "the same prompt and 48 decode steps), each with the read window and with the whole cache read "
                  "every step (the engine before read windows); empty = no budget rows.")
flags.DEFINE_bool("accelerator_check", False, "Only the accelerator check: decode tokens/s, roofline and compile "
                  "seconds at --check_batches x --check_budgets, greedy and sampled (T=0.6, top_p=0.95). "
                  "On a GPU/TPU: --checkpoint=random --preset=smollm3_3b --dtype=bfloat16 --accelerator_check.")
flags.DEFINE_list("check_batches", ["1", "8", "64"], "Accelerator check: batch sizes.")
flags.DEFINE_list("check_budgets", ["1024", "8192"], "Accelerator check: allocated cache lengths (token budgets).")
flags.DEFINE_integer("check_steps", 64, "Accelerator check: decode steps per run.")
flags.DEFINE_bool("sampled", True, "Add the sampled-vs-greedy decode rows (batch 32, T=0.7, top_p=0.95, min_p=0.05).")
flags.DEFINE_integer("sweep_new_tokens", 32, "Sweep row: new tokens per row.")
flags.DEFINE_bool("continuous", False, "Add the continuous-batching rows: a 24-prompt x 2-cell sweep with a 512-token "
                  "budget through 16 slots, refill on vs off; the server with 8 clients at once vs one after another.")
flags.DEFINE_bool("continuous_only", False, "Only the continuous-batching rows.")
flags.DEFINE_integer("refill_slots", 16, "Continuous rows: slots of the sweep's pool.")
flags.DEFINE_integer("refill_prompts", 24, "Continuous rows: prompts of the sweep (x 2 cells: thinking off/on).")
flags.DEFINE_integer("refill_budget", 512, "Continuous rows: max_new_tokens of the sweep.")
flags.DEFINE_integer("server_clients", 8, "Continuous rows: concurrent clients of the server row.")
flags.DEFINE_integer("server_tokens", 64, "Continuous rows: tokens each server client asks for.")
flags.DEFINE_string("baseline", None, "Another checkout (e.g. `git worktree add /tmp/before <commit>`): decode "
                    "tokens/s of both, greedy / sampled / sampled with log-probabilities recorded, in alternating "
                    "fresh processes (experiments/bench_baseline.py). Runs only these rows.")
flags.DEFINE_enum("compare", "none", ["none", "transformers"], "Also run transformers generate on the same weights.")
flags.DEFINE_integer("repeats", 3, "Timed repetitions per row (best is reported; all are in the JSON).")
flags.DEFINE_float("bandwidth_gbps", 0.0, "Device memory bandwidth for the roofline; 0 = measure it.")
flags.DEFINE_integer("seed", 0, "Seed of random weights and synthetic prompts.")
flags.DEFINE_integer("torch_threads", 0, "torch.set_num_threads for transformers (0 = torch's default).")
flags.DEFINE_bool("compilation_cache", True, "Use the persistent compilation cache (smollm3_jax.utils.runtime).")
flags.DEFINE_string("cache_dir", None, "Compilation cache directory (default: runtime.default_cache_dir()).")
flags.DEFINE_bool("startup", False, "Measure fresh-process start-up instead: time to first token and to the "
                  "end of the first generation, without / with a cold / with a warm compilation cache.")
flags.DEFINE_bool("startup_child", False, "(internal) one fresh-process start-up measurement.")
flags.DEFINE_string("mesh", "", "Device mesh for ours, e.g. 'data=2,model=4' ('' = all devices on the data axis).")
flags.DEFINE_string("output_json", None, "Write all figures here.")

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
SWEEP_TEMPERATURES = (0.0, 0.7, 1.0)
SWEEP_PENALTIES = (1.0, 1.1, 1.3)
SWEEP_THINKING = (False, True)


# --------------------------------------------------------------------------------------------
# Models and prompts
# --------------------------------------------------------------------------------------------
def load_ours(checkpoint: str, preset: str, dtype, seed: int, num_layers: int = 0, mesh: str = ""):
  """(model, tokenizer or None, description); the weights are placed on ``mesh`` as they load."""
  from smollm3_jax.nn import config as config_lib
  from smollm3_jax.loading import load_model_and_tokenizer

  if checkpoint == "random":
    if preset not in config_lib.PRESETS:
      raise app.UsageError(f"--preset={preset!r} is not one of {sorted(config_lib.PRESETS)}")
    spec = dict(dtype=dtype, random=dict(preset=preset, num_layers=num_layers, seed=seed))
    model, _ = load_model_and_tokenizer(spec, mesh=mesh)
    return model, None, f"random weights, {preset} shape"
  model, tokenizer = load_model_and_tokenizer(dict(checkpoint=checkpoint, dtype=dtype), mesh=mesh)
  return model, tokenizer, checkpoint


def hf_model_from(model, dtype_name: str):
  """A transformers SmolLM3ForCausalLM holding exactly our model's weights (on CUDA if torch has it)."""
  import numpy as np
  import torch
  import transformers
  from flax import nnx
  from smollm3_jax.checkpoints.mapping import param_to_hf

  hf_cfg = transformers.SmolLM3Config(**{k: v for k, v in model.config.to_hf_dict().items()
                                         if k != "architectures"})
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
  return lambda: dict(tokens=int(ids.shape[1]), **quantize.compare_logits(
      reference, np.asarray(model(ids)[0][0, :-1]), ids[0, 1:]))


def chat_prompt_ids(tokenizer, vocab_size: int, n: int, *, thinking: bool = False, seed: int = 0):
  """n chat prompts as token ids (synthetic ids of chat-prompt length without a tokenizer)."""
  import numpy as np
  if tokenizer is None:
    rs = np.random.RandomState(seed)
    return [rs.randint(1, vocab_size, 24 + 5 * (i % 8)).tolist() for i in range(n)]
  out = []
  for i in range(n):
    text = tokenizer.apply_chat_template([{"role": "user", "content": CHAT_PROMPTS[i % len(CHAT_PROMPTS)]}],
                                         add_generation_prompt=True, enable_thinking=thinking, tokenize=False)
    out.append(tokenizer.encode(text))
  return out


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------
class Ours:
  def __init__(self, model, tokenizer):
    from smollm3_jax.generation import api
    self.gen = api
    self.model = model
    self.tokenizer = tokenizer

  def run(self, prompt_ids, new_tokens, **settings):
    """GenerationResult of a greedy (unless settings say otherwise) run of exactly new_tokens per row."""
    from smollm3_jax.generation.defaults import GREEDY  # not the checkpoint's (sampled) defaults
    return self.gen.generate(self.model, self.tokenizer, prompt_ids, max_new_tokens=new_tokens,
                             stop_ids=[], **{**GREEDY, **settings})


class Theirs:
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
      ids[i, width - len(p):] = torch.tensor(p)
      mask[i, width - len(p):] = 1
    return ids.to(self.device), mask.to(self.device)

  def run(self, prompt_ids, new_tokens, *, temperature=0.0, repetition_penalty=1.0, seed=0):
    """(seconds, generated ids [B, new_tokens] as lists)."""
    torch = self.torch
    ids, mask = self._batch(prompt_ids)
    kw = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=float(temperature),
                                                               top_k=0, top_p=1.0)
    torch.manual_seed(seed)
    self._sync()
    t0 = time.perf_counter()
    with torch.no_grad():
      out = self.hm.generate(ids, attention_mask=mask, max_new_tokens=new_tokens,
                             repetition_penalty=float(repetition_penalty), **kw)
    self._sync()
    dt = time.perf_counter() - t0
    return dt, out[:, ids.shape[1]:].tolist()

  def _sync(self):
    if self.device.type == "cuda":
      self.torch.cuda.synchronize()


def _best(xs):
  return min(xs) if xs else float("nan")


def _ratio(a, b):
  return a / b if a and b and b == b else None


def bench_prefill(ours, theirs, cfg, lengths, repeats, seed):
  import numpy as np
  rows = []
  rs = np.random.RandomState(seed + 1)
  for length in lengths:
    if length >= cfg.max_position_embeddings:
      print(f"skipping prompt length {length}: beyond max_position_embeddings {cfg.max_position_embeddings}")
      continue
    ids = [rs.randint(1, cfg.vocab_size, length).tolist()]
    first = ours.run(ids, 1)
    row = dict(kind="prefill", prompt_length=length, batch=1, compile_seconds=first.stats.compile_seconds,
               ours_seconds=[], ours_ttft=[], theirs_seconds=[])
    if theirs is not None:
      theirs.run(ids, 1)  # warm-up
    for _ in range(repeats):
      r = ours.run(ids, 1)
      row["ours_seconds"].append(r.stats.prefill_seconds)
      row["ours_ttft"].append(r.stats.time_to_first_token)
      if theirs is not None:
        row["theirs_seconds"].append(theirs.run(ids, 1)[0])
    row["ours_tokens_per_second"] = length / _best(row["ours_seconds"])
    row["time_to_first_token"] = _best(row["ours_ttft"])
    if theirs is not None:
      row["theirs_tokens_per_second"] = length / _best(row["theirs_seconds"])
      row["ratio"] = _ratio(row["ours_tokens_per_second"], row["theirs_tokens_per_second"])
    rows.append(row)
    _print_row(row)
  return rows


def decode_bytes_per_step(model, batch, filled, cache_length, cache_itemsize):
  """(weight bytes read per decode step, KV bytes of ``filled`` slots, KV bytes of the whole cache)."""
  from flax import nnx
  cfg = model.config
  weights = probes.tree_nbytes(nnx.state(model, nnx.Param))
  if not cfg.tie_word_embeddings:  # only B rows of an untied embedding table are read
    table = probes.tree_nbytes(nnx.state(model.embed_tokens, nnx.Param))  # (int8: + row scales)
    weights -= table - batch * table // cfg.vocab_size
  per_slot = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * cache_itemsize * batch
  return weights, per_slot * filled, per_slot * cache_length


def bench_decode(ours, theirs, model, tokenizer, batch_sizes, new_tokens, repeats, bandwidth, seed):
  import numpy as np
  rows = []
  cfg = model.config
  steps = new_tokens - 1  # transformers' decode steps: its first token comes with its prefill
  for b in batch_sizes:
    ids = chat_prompt_ids(tokenizer, cfg.vocab_size, b, seed=seed)
    first = ours.run(ids, new_tokens)
    row = dict(kind="decode", batch=b, new_tokens=new_tokens, prompt_tokens=[len(p) for p in ids],
               compile_seconds=first.stats.compile_seconds, ours_decode_seconds=[], ours_ttft=[],
               theirs_decode_seconds=[])
    if theirs is not None:
      theirs.run(ids, min(new_tokens, 8))  # warm-up
    for _ in range(repeats):
      r = ours.run(ids, new_tokens)
      row["ours_decode_seconds"].append(r.stats.decode_seconds)
      row["ours_ttft"].append(r.stats.time_to_first_token)
      if theirs is not None:
        # Their decode time: a full generate minus a 1-token generate (its prefill + first token).
        t_full, toks = theirs.run(ids, new_tokens)
        t_one, _ = theirs.run(ids, 1)
        row["theirs_decode_seconds"].append(max(t_full - t_one, 1e-9))
    step = _best(row["ours_decode_seconds"]) / new_tokens  # ours: every token from a decode step
    row["ours_tokens_per_second"] = b / step
    row["time_to_first_token"] = _best(row["ours_ttft"])
    row["cache_length"] = r.stats.cache_length
    itemsize = np.dtype(model.dtype).itemsize  # the engine's cache dtype defaults to the model's
    avg_real = float(np.mean(row["prompt_tokens"])) + steps / 2
    w, kv_real, kv_full = decode_bytes_per_step(model, b, avg_real, r.stats.cache_length, itemsize)
    row.update(weight_bytes=w, kv_bytes_per_step=kv_real, kv_bytes_read_per_step=kv_full,
               achieved_gbps=(w + kv_real) / step / 1e9)
    if bandwidth:
      row["roofline_fraction"] = row["achieved_gbps"] / bandwidth
    if theirs is not None:
      row["theirs_tokens_per_second"] = b * steps / _best(row["theirs_decode_seconds"])
      row["ratio"] = _ratio(row["ours_tokens_per_second"], row["theirs_tokens_per_second"])
      row["greedy_match_row0"] = r.completions[0].token_ids == toks[0]
    rows.append(row)
    _print_row(row)
  return rows


def bench_sweep(ours, theirs, model, tokenizer, new_tokens, repeats, seed):
  """3 temperatures x 3 penalties x 2 thinking modes x 8 prompts: ours in one call, theirs per setting."""
  cfg = model.config
  prompts = {th: chat_prompt_ids(tokenizer, cfg.vocab_size, 8, thinking=th, seed=seed) for th in SWEEP_THINKING}
  grid = [(t, r, th) for t in SWEEP_TEMPERATURES for r in SWEEP_PENALTIES for th in SWEEP_THINKING]
  ids, temps, pens = [], [], []
  for t, r, th in grid:
    for p in prompts[th]:
      ids.append(p)
      temps.append(t)
      pens.append(r)
  total = len(ids) * new_tokens
  first = ours.run(ids, new_tokens, temperature=temps, repetition_penalty=pens, seed=seed, share_prefill=True)
  row = dict(kind="sweep", settings=len(grid), prompts=8, rows=len(ids), new_tokens=new_tokens,
             batch=first.stats.batch_size, compile_seconds=first.stats.compile_seconds, ours_seconds=[],
             theirs_seconds=[])
  if theirs is not None:
    theirs.run(prompts[False], 2)  # warm-up
  for rep in range(repeats):
    t0 = time.perf_counter()
    ours.run(ids, new_tokens, temperature=temps, repetition_penalty=pens, seed=seed + rep,
             share_prefill=True)
    row["ours_seconds"].append(time.perf_counter() - t0)
    if theirs is not None and rep == 0:  # setting by setting is slow: one timed pass
      t_theirs = 0.0
      for t, r, th in grid:
        t_theirs += theirs.run(prompts[th], new_tokens, temperature=t, repetition_penalty=r, seed=seed)[0]
      row["theirs_seconds"].append(t_theirs)
  row["ours_tokens_per_second"] = total / _best(row["ours_seconds"])
  if theirs is not None:
    row["theirs_tokens_per_second"] = total / _best(row["theirs_seconds"])
    row["ratio"] = _ratio(row["ours_tokens_per_second"], row["theirs_tokens_per_second"])
  _print_row(row)
  return [row]


def bench_budget(model, tokenizer, budgets, repeats, seed, batch=8, steps=48):
  """Decode tokens/s at allocated caches ``budgets`` for the same prompt and steps, with the read
  window (this engine) and with the whole cache read every step; greedy tokens must agree."""
  import smollm3_jax
  from smollm3_jax.generation.engine import Engine

  cfg = model.config
  ids = chat_prompt_ids(tokenizer, cfg.vocab_size, 1, seed=seed) * batch
  rows, reference = [], None
  for budget in budgets:
    for label, windows in (("window", None), ("whole cache", ())):
      kw = {} if windows is None else dict(window_buckets=windows)
      engine = Engine(model, tokenizer, batch_buckets=(batch,), **kw)
      run = lambda: smollm3_jax.generate(model, tokenizer, ids, max_new_tokens=steps + 1, stop_ids=[],
                                         temperature=0.0, engine=engine, cache_length=budget)
      first = run()
      times = [run().stats.decode_seconds for _ in range(repeats)]
      toks = [c.token_ids for c in first]
      reference = reference or toks
      row = dict(kind="budget", cache=budget, read=label, batch=batch, steps=steps,
                 cache_length=first.stats.cache_length, compile_seconds=first.stats.compile_seconds,
                 ours_decode_seconds=times, ours_tokens_per_second=batch * (steps + 1) / _best(times),
                 same_tokens=toks == reference)
      rows.append(row)
      _print_row(row)
  return rows


def bench_sampled(ours, model, tokenizer, repeats, seed, batch=32, new_tokens=40):
  """Decode tokens/s at batch ``batch``: greedy, and sampled with T=0.7, top_p=0.95, min_p=0.05."""
  ids = chat_prompt_ids(tokenizer, model.config.vocab_size, batch, seed=seed)
  rows = []
  for label, settings in (("greedy", dict(temperature=0.0)),
                          ("sampled", dict(temperature=0.7, top_p=0.95, min_p=0.05, seed=seed))):
    first = ours.run(ids, new_tokens, **settings)
    times = [ours.run(ids, new_tokens, **settings).stats.decode_seconds for _ in range(repeats)]
    row = dict(kind="sampling", mode=label, batch=batch, compile_seconds=first.stats.compile_seconds,
               ours_decode_seconds=times, ours_tokens_per_second=batch * new_tokens / _best(times))
    rows.append(row)
    _print_row(row)
  return rows


def bench_accelerator(model, tokenizer, batches, budgets, steps, repeats, bandwidth, seed):
  """Decode at each batch size and allocated cache (budget), greedy and sampled: tokens/s, the
  roofline fraction (weights + the filled KV per step), compile seconds of the first run."""
  import numpy as np

  import smollm3_jax
  from smollm3_jax.generation.engine import Engine
  from smollm3_jax.generation.defaults import GREEDY

  cfg = model.config
  itemsize = np.dtype(model.dtype).itemsize
  rows = []
  for budget in budgets:
    for b in batches:
      ids = chat_prompt_ids(tokenizer, cfg.vocab_size, b, seed=seed)
      engine = Engine(model, tokenizer, batch_buckets=(b,))
      for mode, settings in (("greedy", GREEDY), ("sampled", dict(GREEDY, temperature=0.6, top_p=0.95))):
        # cache_length: the cache allocated is the budget itself
        run = lambda: smollm3_jax.generate(model, tokenizer, ids, max_new_tokens=steps + 1, stop_ids=[],
                                           engine=engine, seed=seed, cache_length=budget, **settings)
        first = run()
        times = [run().stats.decode_seconds for _ in range(repeats)]
        step = _best(times) / (steps + 1)  # every token from a decode step
        filled = float(np.mean([len(p) for p in ids])) + steps / 2
        w, kv, _ = decode_bytes_per_step(model, b, filled, first.stats.cache_length, itemsize)
        row = dict(kind="accelerator", batch=b, budget=budget, mode=mode, cache_length=first.stats.cache_length,
                   compile_seconds=first.stats.compile_seconds, step_ms=step * 1e3,
                   ours_tokens_per_second=b / step, achieved_gbps=(w + kv) / step / 1e9)
        if bandwidth:
          row["roofline_fraction"] = row["achieved_gbps"] / bandwidth
        rows.append(row)
        _print_row(row)
  return rows


def _print_row(row):
  print("  " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                           if not isinstance(v, list)}), flush=True)


# The table's row name for each kind of row.
_ROW_NAMES = {
    "prefill": lambda r: f"prefill {r['prompt_length']} tok",
    "decode": lambda r: f"decode batch {r['batch']}",
    "budget": lambda r: f"cache {r['cache']}, {r['read']}",
    "sampling": lambda r: f"decode b{r['batch']} {r['mode']}",
    "accelerator": lambda r: f"b{r['batch']} budget {r['budget']} {r['mode']}",
    "refill": lambda r: f"sweep {r['slots']} slots, refill {'on' if r['refill'] else 'off'}",
    "server": lambda r: f"server {r['clients']} {r['mode']}",
    "baseline": lambda r: f"vs baseline: {r['mode']}",
    "sweep": lambda r: f"sweep {r['settings']}x{r['prompts']} ({r['rows']} rows)",
}


def _cell(v, spec: str) -> str:
  """``v`` formatted with ``spec``, or a dash of the same width when the row has no such figure."""
  return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(int(spec.split(".")[0]))


def format_table(rows, bandwidth) -> str:
  head = (f"{'row':<26}{'ours tok/s':>12}{'theirs tok/s':>14}{'ratio':>8}{'TTFT s':>9}{'compile s':>11}"
          f"{'GB/s':>8}{'roofline':>10}")
  lines = [head, "-" * len(head)]
  for r in rows:
    name = _ROW_NAMES.get(r["kind"], _ROW_NAMES["sweep"])(r)
    lines.append(f"{name:<26}{_cell(r.get('ours_tokens_per_second'), '12.1f')}"
                 f"{_cell(r.get('theirs_tokens_per_second'), '14.1f')}{_cell(r.get('ratio'), '8.2f')}"
                 f"{_cell(r.get('time_to_first_token'), '9.3f')}{_cell(r.get('compile_seconds'), '11.2f')}"
                 f"{_cell(r.get('achieved_gbps'), '8.2f')}{_cell(r.get('roofline_fraction'), '10.1%')}")
  if bandwidth:
    lines.append(f"roofline = (weight bytes + KV bytes of the filled prefix) per decode step / step time "
                 f"/ {bandwidth:.2f} GB/s")
  return "\n".join(lines)


def targets_text(rows, quantize: str = "none", dtype: str = "float32") -> str:
  """The issues' CPU targets for the demo checkpoint, met or not (those whose rows ran)."""
  by = {(r["kind"], r.get("batch")): r for r in rows}
  out = []

  def check(name, value, goal, fmt="{:.2f}"):
    if value is None:
      return
    out.append(f"  {name}: {fmt.format(value)} (target >= {fmt.format(goal)}) "
               f"{'OK' if value >= goal else 'MISSED'}")

  d1, d8 = by.get(("decode", 1)), by.get(("decode", 8))
  sweep = next((r for r in rows if r["kind"] == "sweep"), None)
  if d1:
    check("decode batch 1 vs transformers", d1.get("ratio"), 4.0)
    check("decode batch 1 roofline", d1.get("roofline_fraction"), 0.65, "{:.0%}")
  if d8:
    check("decode batch 8 vs transformers", d8.get("ratio"), 3.0)
  if sweep:
    check("sweep vs transformers", sweep.get("ratio"), 5.0)
  windowed = {r["cache"]: r for r in rows if r["kind"] == "budget" and r["read"] == "window"}
  if windowed:
    small, large = windowed[min(windowed)], windowed[max(windowed)]
    check(f"decode with a {large['cache']}-slot cache vs {small['cache']} (read window)",
          large["ours_tokens_per_second"] / small["ours_tokens_per_second"], 0.85)
    out.append(f"  greedy tokens identical across the cache budgets: "
               f"{all(r['same_tokens'] for r in rows if r['kind'] == 'budget')}")
  out += bench_continuous.targets(rows) + bench_baseline.targets(rows)
  mode = dtype if quantize == "none" else f"ours {quantize} weights, transformers {dtype}"
  return f"targets (demo checkpoint, 2-core CPU, {mode}):\n" + "\n".join(out) if out else ""


# --------------------------------------------------------------------------------------------
# Start-up (fresh processes)
# --------------------------------------------------------------------------------------------
def startup_child():
  """One fresh-process run: load, stream the first prompt; prints a JSON line of timings."""
  import jax
  from smollm3_jax.utils import runtime
  t_import = time.time() - _T_START
  if FLAGS.compilation_cache:
    runtime.enable_compilation_cache(FLAGS.cache_dir)
  import smollm3_jax
  model, tokenizer, _ = load_ours(FLAGS.checkpoint, FLAGS.preset, FLAGS.dtype, FLAGS.seed,
                              num_layers=FLAGS.num_layers, mesh=FLAGS.mesh)
  jax.block_until_ready(jax.tree.leaves(model))
  t_load = time.time() - _T_START
  ids = chat_prompt_ids(tokenizer, model.config.vocab_size, 1)[0]
  s = smollm3_jax.stream(model, tokenizer, ids, max_new_tokens=FLAGS.new_tokens, stop_ids=[], chunk_steps=8)
  t_first = None
  for _ in s:
    if t_first is None:
      t_first = time.time() - _T_START
  t_done = time.time() - _T_START
  print("STARTUP_JSON " + json.dumps(dict(
      import_seconds=t_import, loaded_seconds=t_load, first_token_seconds=t_first or t_done,
      first_generation_seconds=t_done, compile_seconds=s.result.stats.compile_seconds,
      new_tokens=FLAGS.new_tokens)), flush=True)


def run_startup():
  """Fresh processes: no cache, an empty (cold) cache, then the warm cache."""
  results = {}
  with tempfile.TemporaryDirectory(prefix="smollm3_jax_cache_") as tmp:
    for name, cache_flags in [("no_cache", ["--nocompilation_cache"]),
                              ("cold_cache", ["--compilation_cache", f"--cache_dir={tmp}"]),
                              ("warm_cache", ["--compilation_cache", f"--cache_dir={tmp}"])]:
      cmd = [sys.executable, os.path.abspath(__file__), "--startup_child", f"--checkpoint={FLAGS.checkpoint}",
             f"--preset={FLAGS.preset}", f"--dtype={FLAGS.dtype}", f"--new_tokens={FLAGS.new_tokens}",
             f"--num_layers={FLAGS.num_layers}", f"--seed={FLAGS.seed}"] + cache_flags
      t0 = time.time()
      proc = subprocess.run(cmd, capture_output=True, text=True)
      wall = time.time() - t0
      line = next((l for l in proc.stdout.splitlines() if l.startswith("STARTUP_JSON ")), None)
      if proc.returncode != 0 or line is None:
        raise RuntimeError(f"start-up child ({name}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
      results[name] = dict(json.loads(line[len("STARTUP_JSON "):]), process_seconds=wall)
      r = results[name]
      print(f"{name:<11} import {r['import_seconds']:.1f}s  loaded {r['loaded_seconds']:.1f}s  "
            f"first token {r['first_token_seconds']:.1f}s  first generation ({r['new_tokens']} tokens) "
            f"{r['first_generation_seconds']:.1f}s  compile {r['compile_seconds']:.1f}s", flush=True)
  cold, warm = results["cold_cache"], results["warm_cache"]
  results["warm_speedup_first_token"] = cold["first_token_seconds"] / warm["first_token_seconds"]
  results["warm_speedup_after_load"] = ((cold["first_token_seconds"] - cold["loaded_seconds"])
                                        / max(warm["first_token_seconds"] - warm["loaded_seconds"], 1e-9))
  print(f"warm cache: first token {results['warm_speedup_first_token']:.2f}x sooner "
        f"({results['warm_speedup_after_load']:.2f}x counting from the end of loading)")
  return results


# --------------------------------------------------------------------------------------------
def _main_rows(ours, theirs, model, tokenizer, lengths, batches, bw):
  rows = bench_prefill(ours, theirs, model.config, lengths, FLAGS.repeats, FLAGS.seed)
  rows += bench_decode(ours, theirs, model, tokenizer, batches, FLAGS.new_tokens, FLAGS.repeats, bw, FLAGS.seed)
  if FLAGS.sweep:
    rows += bench_sweep(ours, theirs, model, tokenizer, FLAGS.sweep_new_tokens, FLAGS.repeats, FLAGS.seed)
  if FLAGS.cache_budgets:
    rows += bench_budget(model, tokenizer, [int(b) for b in FLAGS.cache_budgets], FLAGS.repeats, FLAGS.seed)
  if FLAGS.sampled:
    rows += bench_sampled(ours, model, tokenizer, FLAGS.repeats, FLAGS.seed)
  if FLAGS.continuous:
    rows += _continuous_rows(model, tokenizer)
  return rows


def _continuous_rows(model, tokenizer):
  if tokenizer is None:
    raise app.UsageError("the continuous-batching rows render chat prompts: use a checkpoint with a tokenizer "
                         "(e.g. --checkpoint=demo)")
  rows = bench_continuous.bench_refill(model, tokenizer, slots=FLAGS.refill_slots, n_prompts=FLAGS.refill_prompts,
                                       budget=FLAGS.refill_budget, seed=FLAGS.seed, repeats=min(2, FLAGS.repeats))
  return rows + bench_continuous.bench_server(model, tokenizer, clients=FLAGS.server_clients,
                                              max_tokens=FLAGS.server_tokens, seed=FLAGS.seed)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    lengths = [int(x) for x in FLAGS.prompt_lengths]
    batches = [int(x) for x in FLAGS.batch_sizes]
  except ValueError as e:
    raise app.UsageError(f"--prompt_lengths / --batch_sizes must be integers: {e}")
  if any(x < 1 for x in lengths + batches) or FLAGS.new_tokens < 2 or FLAGS.sweep_new_tokens < 1:
    raise app.UsageError("lengths and batch sizes must be >= 1, --new_tokens >= 2")
  if FLAGS.repeats < 1:
    raise app.UsageError("--repeats must be >= 1")
  if FLAGS.startup_child:
    return startup_child()

  import jax
  from smollm3_jax.utils import runtime

  report = dict(checkpoint=FLAGS.checkpoint, dtype=FLAGS.dtype, quantize=FLAGS.quantize,
                device=str(jax.devices()[0]), backend=jax.default_backend(), argv=sys.argv[1:])
  if FLAGS.startup:
    report["startup"] = run_startup()
    _write(report)
    return
  if FLAGS.compilation_cache:
    report["compilation_cache"] = runtime.enable_compilation_cache(FLAGS.cache_dir)

  bw = FLAGS.bandwidth_gbps
  if not bw:
    probe = probes.measure_bandwidth()
    report["bandwidth_probe"] = probe
    bw = probe["gbps"]
    print(f"bandwidth probe: sum {probe['sum_gbps']:.1f} GB/s, gemv {probe['gemv_gbps']:.1f} GB/s "
          f"-> roofline {bw:.1f} GB/s", flush=True)
  report["bandwidth_gbps"] = bw

  t0 = time.time()
  model, tokenizer, desc = load_ours(FLAGS.checkpoint, FLAGS.preset, FLAGS.dtype, FLAGS.seed,
                              num_layers=FLAGS.num_layers, mesh=FLAGS.mesh)
  report.update(model=desc, load_seconds=time.time() - t0, config=model.config.to_hf_dict())
  theirs = None
  if FLAGS.compare == "transformers":
    import torch
    if FLAGS.torch_threads:
      torch.set_num_threads(FLAGS.torch_threads)
    theirs = Theirs(hf_model_from(model, FLAGS.dtype), model.config.pad_token_id or 0)
    report["torch_threads"] = torch.get_num_threads()
  if FLAGS.quantize != "none":  # after transformers copied the unquantized weights
    from smollm3_jax.nn import quantize
    score = quality_scorer(model, tokenizer, FLAGS.quality_text)
    t0 = time.time()
    quantize.apply(model, FLAGS.quantize)
    report["quantize_seconds"] = time.time() - t0
    desc += f", {FLAGS.quantize} weights"
    if score is not None:
      report["quality"] = score()
      print("quality vs unquantized (teacher-forced on --quality_text): " + ", ".join(
          f"{k} {v:.4g}" for k, v in report["quality"].items()), flush=True)
  ours = Ours(model, tokenizer)

  print(f"model: {desc}, {FLAGS.dtype}; device {report['device']}", flush=True)
  rows = []
  if FLAGS.baseline:
    rows += bench_baseline.bench_baseline(FLAGS.baseline)
  elif FLAGS.continuous_only:
    rows += _continuous_rows(model, tokenizer)
  elif FLAGS.accelerator_check:
    try:
      check = ([int(x) for x in FLAGS.check_batches], [int(x) for x in FLAGS.check_budgets])
    except ValueError as e:
      raise app.UsageError(f"--check_batches / --check_budgets must be integers: {e}")
    rows += bench_accelerator(model, tokenizer, *check, FLAGS.check_steps, FLAGS.repeats, bw, FLAGS.seed)
  else:
    rows += _main_rows(ours, theirs, model, tokenizer, lengths, batches, bw)
  report["rows"] = rows
  report["peak_device_memory_bytes"] = probes.peak_memory_bytes()
  report["rows"] = rows
  report["peak_device_memory_bytes"] = probes.peak_memory_bytes()
  report["host_peak_rss_bytes"] = probes.host_peak_rss_bytes()
  table = format_table(rows, bw)
  print()
  print(table)
  mem = report["peak_device_memory_bytes"]
  print(f"peak device memory: {mem / 2**20:.0f} MiB" if mem else
        f"peak device memory: not reported by the backend (process peak RSS "
        f"{(report['host_peak_rss_bytes'] or 0) / 2**20:.0f} MiB)")
  if FLAGS.checkpoint == "demo":
    text = targets_text(rows, FLAGS.quantize, FLAGS.dtype)
    if text:
      print(text)
  _write(report)


def _write(report):
  if FLAGS.output_json:
    from smollm3_jax.utils.files import atomic_write
    atomic_write(FLAGS.output_json, json.dumps(report, indent=2, default=str))
    print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
  cli.run(main)
