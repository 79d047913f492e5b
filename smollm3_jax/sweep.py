"""Sampling sweeps: a grid of decoding settings x prompts x samples, run as batched rows.

The grid (temperature x repetition penalty x thinking x top_p x top_k x min_p) is expanded into
*rows* (prompt, cell, sample), each with its own sampling parameters and seed. Rows run in
batches of one fixed size through one :class:`~smollm3_jax.generate.Engine` whose prompt and cache
buckets are fixed for the whole sweep, so prefill and decode compile once.

Results go to a workdir:

* ``config.json``: the config and a hash of the prompt set (a rerun with another config refuses);
* ``generations.jsonl``: one line per row, appended and fsync'ed batch by batch (a torn last line
  from a killed run is dropped and its row redone; finished rows are skipped);
* ``summary.csv``: one line per cell (metrics in :data:`METRICS`);
* ``plots/<metric>.png``: a heatmap per metric over temperature x repetition penalty, one panel
  per thinking mode.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from smollm3_jax import metrics as M

AXES = ("thinking", "temperature", "repetition_penalty", "top_p", "top_k", "min_p")
# Config fields that may change between a run and its resumption (they do not change results
# beyond float noise from another batch shape).
RESUMABLE_FIELDS = ("batch_size", "prompts.path", "progress", "mesh")
FORMAT_VERSION = 1

# name -> (column header, description); order = column order of summary.csv and the table.
METRICS = {
    "mean_tokens": ("tokens", "mean generated tokens per row (stop token included)"),
    "distinct_1": ("dist1", "mean per-row distinct-1 over words of the whole text"),
    "distinct_2": ("dist2", "mean per-row distinct-2 over words of the whole text"),
    "rep4_share": ("rep4", "mean per-row share of word 4-grams repeating an earlier one"),
    "eos_share": ("eos", "share of rows stopped by an EOS / stop token"),
    "mean_thinking_tokens": ("think_tok", "mean tokens of the thinking part"),
    "closed_think_share": ("closed", "share of rows whose text contains </think>"),
    "accuracy": ("acc", "share correct among rows whose prompt has a reference"),
    "decode_tokens_per_second": ("tok/s", "decode tokens/s of the batches holding the cell's rows"),
}


class ConfigMismatchError(ValueError):
  """The workdir holds results of another config."""


# --------------------------------------------------------------------------------------------
# Config helpers
# --------------------------------------------------------------------------------------------
def to_plain(config) -> dict:
  """A ConfigDict / mapping as a JSON-compatible dict (tuples become lists)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(config, sort_keys=True))


def _get(d: Mapping, dotted: str, default=None):
  for part in dotted.split("."):
    if not isinstance(d, Mapping) or part not in d:
      return default
    d = d[part]
  return d


def _drop(d: dict, dotted: str) -> None:
  parts = dotted.split(".")
  for part in parts[:-1]:
    d = d.get(part, {})
    if not isinstance(d, dict):
      return
  d.pop(parts[-1], None)


def _as_tuple(name: str, value) -> tuple:
  if isinstance(value, (list, tuple)):
    out = tuple(value)
  else:
    out = (value,)
  if not out:
    raise ValueError(f"sweep.{name}: needs at least one value")
  return out


def validate_config(cfg: Mapping) -> None:
  """Checks the sweep config (plain dict) before anything expensive; ValueError names the field."""
  for name in ("batch_size", "samples", "max_new_tokens"):
    v = cfg.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
      raise ValueError(f"{name} must be a positive integer, got {v!r}")
  if cfg.get("newline_limit", 0) < 0:
    raise ValueError(f"newline_limit must be >= 0, got {cfg.get('newline_limit')!r}")
  expand_grid(cfg["sweep"])


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def resolve_path(path: str) -> str:
  """``path`` as given if it exists, else relative to the repository root."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  candidate = os.path.join(root, path)
  return candidate if os.path.exists(candidate) else path


def load_prompts(path: str, *, limit: int = 0, kinds: Sequence[str] = (), ids: Sequence[str] = ()) -> list[dict]:
  """Reads a JSONL prompt set: one object per line with ``id``, ``prompt`` and optionally ``kind``,
  ``answer_type`` ("text" | "numeric" | null) and ``reference``. Filters by ``ids`` / ``kinds``,
  then keeps the first ``limit`` (0 = all)."""
  path = resolve_path(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"prompts.path: no such file {path!r}")
  prompts, seen = [], set()
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        p = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
      if not isinstance(p, dict) or not isinstance(p.get("id"), str) or not isinstance(p.get("prompt"), str):
        raise ValueError(f"{path}:{lineno}: each line needs string fields 'id' and 'prompt'")
      if p["id"] in seen:
        raise ValueError(f"{path}:{lineno}: duplicate prompt id {p['id']!r}")
      if p.get("answer_type") not in (None, "text", "numeric"):
        raise ValueError(f"{path}:{lineno}: answer_type must be 'text', 'numeric' or null")
      seen.add(p["id"])
      p.setdefault("kind", "open")
      p.setdefault("answer_type", None)
      p.setdefault("reference", None)
      prompts.append(p)
  unknown = set(ids) - seen
  if unknown:
    raise ValueError(f"prompts.ids: unknown prompt ids {sorted(unknown)} in {path}")
  if ids:
    prompts = [p for p in prompts if p["id"] in set(ids)]
  if kinds:
    prompts = [p for p in prompts if p["kind"] in set(kinds)]
  if limit:
    prompts = prompts[:limit]
  if not prompts:
    raise ValueError(f"prompts: the selection from {path} is empty")
  return prompts


def prompts_hash(prompts: Sequence[Mapping]) -> str:
  blob = json.dumps(list(prompts), sort_keys=True, ensure_ascii=False).encode()
  return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------------
# Grid and rows
# --------------------------------------------------------------------------------------------
def expand_grid(sweep: Mapping) -> list[dict]:
  """The cells of the grid, thinking-major then temperature, penalty, top_p, top_k, min_p."""
  axes = {}
  for name in AXES:
    if name not in sweep:
      raise ValueError(f"sweep.{name}: missing axis")
    axes[name] = _as_tuple(name, sweep[name])
  from smollm3_jax.sampling import validate_sampling_args

  for name in AXES[1:]:
    validate_sampling_args(**{name: list(axes[name])})
  cells = []
  for values in itertools.product(*(axes[a] for a in AXES)):
    cell = dict(zip(AXES, values))
    cell["thinking"] = bool(cell["thinking"])
    cell["top_k"] = int(cell["top_k"])
    for name in ("temperature", "repetition_penalty", "top_p", "min_p"):
      cell[name] = float(cell[name])
    if cell not in cells:
      cells.append(cell)
  return cells


def cell_key(cell: Mapping) -> str:
  """A short stable name, e.g. ``think=1,t=0.6,rp=1.1,top_p=0.95,top_k=0,min_p=0``."""
  return (f"think={int(cell['thinking'])},t={cell['temperature']:g},rp={cell['repetition_penalty']:g},"
          f"top_p={cell['top_p']:g},top_k={cell['top_k']},min_p={cell['min_p']:g}")


def row_seed(seed: int, prompt_id: str, key: str, sample: int) -> int:
  """A uint32 seed from (base seed, prompt, cell, sample): a row samples the same whatever batch
  or position it runs in."""
  h = hashlib.blake2b(f"{seed}|{prompt_id}|{key}|{sample}".encode(), digest_size=4)
  return int.from_bytes(h.digest(), "little")


def make_rows(prompts: Sequence[Mapping], cells: Sequence[Mapping], *, samples: int, seed: int) -> list[dict]:
  """Rows in run order (cell-major, so a batch mostly holds one cell). Greedy cells
  (temperature 0) get one sample: more would repeat it."""
  rows = []
  for ci, cell in enumerate(cells):
    ck = cell_key(cell)
    n = 1 if cell["temperature"] == 0.0 else samples
    for p in prompts:
      for s in range(n):
        rows.append(dict(key=f"{p['id']}|{ck}|s{s}", prompt_id=p["id"], cell=ci, cell_key=ck, sample=s,
                         seed=row_seed(seed, p["id"], ck, s), settings=dict(cell)))
  return rows


# --------------------------------------------------------------------------------------------
# Workdir: config fingerprint and the results file
# --------------------------------------------------------------------------------------------
def _atomic_write(path: str, data: str | bytes) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data.encode() if isinstance(data, str) else data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _comparable(record: Mapping) -> dict:
  cfg = json.loads(json.dumps(record.get("config", {})))
  for field in RESUMABLE_FIELDS:
    _drop(cfg, field)
  return dict(config=cfg, prompts_sha256=record.get("prompts_sha256"), version=record.get("version"))


def _diff(a, b, prefix="") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{prefix}{k}.")
    return out
  return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def check_workdir(workdir: str, config: Mapping, phash: str) -> None:
  """Writes workdir/config.json, or checks that the one there matches (ConfigMismatchError)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  record = dict(version=FORMAT_VERSION, config=config, prompts_sha256=phash)
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        old = json.load(f)
    except json.JSONDecodeError:
      old = None  # never happens with atomic writes; treat as absent
    if old is not None:
      diffs = _diff(_comparable(old), _comparable(record))
      if diffs:
        raise ConfigMismatchError(
            f"workdir {workdir!r} holds results of a different config ({'; '.join(diffs[:8])}"
            f"{' ...' if len(diffs) > 8 else ''}). Use a new --workdir, or delete {workdir!r} to start over.")
      if old == json.loads(json.dumps(record)):
        return
  _atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


class ResultsFile:
  """Append-only JSONL of finished rows, made durable batch by batch.

  A run killed mid-write leaves at most one torn (newline-less) last line: ``load`` drops it
  (truncating the file so later appends start on a fresh line) and ignores lines that do not parse.
  """

  def __init__(self, path: str):
    self.path = path

  def load(self) -> dict[str, dict]:
    """Finished rows by key (the first line of a key wins)."""
    if not os.path.exists(self.path):
      return {}
    with open(self.path, "rb") as f:
      data = f.read()
    end = data.rfind(b"\n") + 1
    if end < len(data):  # torn last line: drop it so the row is redone
      with open(self.path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    rows: dict[str, dict] = {}
    for line in data[:end].split(b"\n"):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except (json.JSONDecodeError, UnicodeDecodeError):
        continue
      if isinstance(row, dict) and "key" in row:
        rows.setdefault(row["key"], row)
    return rows

  def append(self, rows: Iterable[Mapping]) -> None:
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with open(self.path, "ab") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------
# Model building
# --------------------------------------------------------------------------------------------
def build_model(model_cfg: Mapping, mesh: str = ""):
  """(model, tokenizer) from a model config: ``checkpoint`` ("demo", a dir, .gguf or hub id), or an
  empty checkpoint and ``random`` (preset, num_layers, seed) for a random model whose vocabulary
  matches ``tokenizer``. ``mesh`` (e.g. "data=2,model=4"; "" = all devices on the data axis) places
  the weights shard by shard as they load; on one device nothing is sharded."""
  from flax import nnx

  from smollm3_jax import config as config_lib
  from smollm3_jax import quantize as quantize_lib
  from smollm3_jax.checkpoints.mapping import dtype_from_name
  from smollm3_jax import sharding
  from smollm3_jax.model import SmolLM3
  from smollm3_jax.tokenizer import Tokenizer

  dtype = dtype_from_name(model_cfg.get("dtype", "float32"), "model.dtype")
  quantize = quantize_lib.check_mode(model_cfg.get("quantize", "none"))
  checkpoint = model_cfg.get("checkpoint") or ""
  tok_source = model_cfg.get("tokenizer") or checkpoint
  if not tok_source:
    raise ValueError("model.tokenizer: a random model needs a tokenizer (e.g. 'demo')")
  tokenizer = Tokenizer.from_pretrained(tok_source)
  if checkpoint:
    return sharding.load(checkpoint, mesh=mesh or None, dtype=dtype, quantize=quantize), tokenizer
  rnd = model_cfg.get("random") or {}
  preset = rnd.get("preset", "tiny")
  if preset not in config_lib.PRESETS:
    raise ValueError(f"model.random.preset must be one of {sorted(config_lib.PRESETS)}, got {preset!r}")
  changes = dict(vocab_size=tokenizer.vocab_size, eos_token_id=(int(tokenizer.eos_token_id),),
                 pad_token_id=int(tokenizer.pad_token_id))
  if preset == "tiny":
    cfg = config_lib.tiny(num_layers=int(rnd.get("num_layers", 2)), **changes)
  else:
    cfg = config_lib.PRESETS[preset]().replace(**changes)
  model = SmolLM3(cfg, dtype=dtype, rngs=nnx.Rngs(int(rnd.get("seed", 0))))
  sharding.engine_sharding(model, mesh or None)  # moves the weights onto a multi-device mesh
  return quantize_lib.apply(model, quantize), tokenizer


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SweepOutcome:
  workdir: str
  total_rows: int
  skipped_rows: int   # already finished before this run
  new_rows: int
  batches: int
  summary: list[dict]
  plots: list[str]
  table: str


def _render(tokenizer, prompts, cells, chat: bool) -> dict[tuple[str, bool], list[int]]:
  """Token ids of every (prompt id, thinking) pair used by the grid."""
  from smollm3_jax.generate import render_prompts

  out = {}
  for think in sorted({c["thinking"] for c in cells}):
    _, ids = render_prompts(tokenizer, [p["prompt"] for p in prompts], chat=chat, thinking=think)
    for p, i in zip(prompts, ids):
      out[(p["id"], think)] = i
  return out


def _score(row: Mapping, prompt: Mapping) -> dict:
  answer_type = prompt.get("answer_type")
  correct = M.is_correct(row["answer"], prompt.get("reference"), answer_type) if answer_type else None
  extracted = M.extract_number(row["answer"]) if answer_type == "numeric" else None
  return dict(correct=correct, extracted=extracted)


def run_sweep(config, workdir: str, *, model=None, tokenizer=None, progress: bool | None = None,
              log: Callable[[str], None] = print, max_batches: int | None = None) -> SweepOutcome:
  """Runs (or resumes) a sweep in ``workdir`` and writes its summary and plots.

  ``config``: a ConfigDict / dict as made by configs/sweep.py. ``model``/``tokenizer``: preloaded
  ones (else built from ``config.model``). ``max_batches``: stop after that many batches (tests).
  """
  cfg = to_plain(config)
  validate_config(cfg)
  pcfg = cfg.get("prompts", {})
  prompts = load_prompts(pcfg.get("path", "data/prompts/sweep.jsonl"), limit=pcfg.get("limit", 0),
                         kinds=pcfg.get("kinds", ()), ids=pcfg.get("ids", ()))
  cells = expand_grid(cfg["sweep"])
  rows = make_rows(prompts, cells, samples=cfg["samples"], seed=cfg.get("seed", 0))
  check_workdir(workdir, cfg, prompts_hash(prompts))
  results = ResultsFile(os.path.join(workdir, "generations.jsonl"))
  done = results.load()
  wanted = {r["key"] for r in rows}
  todo = [r for r in rows if r["key"] not in done]
  skipped = len(rows) - len(todo)
  log(f"sweep: {len(cells)} cells x {len(prompts)} prompts -> {len(rows)} rows "
      f"({skipped} already done, {len(todo)} to run) in {workdir}")

  batches = 0
  if todo:
    if model is None or tokenizer is None:
      t0 = time.perf_counter()
      model, tokenizer = build_model(cfg["model"], mesh=cfg.get("mesh", ""))
      log(f"loaded model {cfg['model'].get('name', '')!r} in {time.perf_counter() - t0:.1f}s")
    batches = _run_rows(model, tokenizer, cfg, prompts, cells, todo, results, progress, log, max_batches)

  done = results.load()
  finished = [done[r["key"]] for r in rows if r["key"] in done]
  extra = len(set(done) - wanted)
  if extra:
    log(f"note: {extra} rows in generations.jsonl are not part of this grid; ignored")
  summary = summarize(finished, cells, prompts)
  _atomic_write(os.path.join(workdir, "summary.csv"), summary_csv(summary))
  table = format_table(summary)
  plots = []
  if cfg.get("plots", True) and finished:
    plots = plot_heatmaps(summary, os.path.join(workdir, "plots"))
  return SweepOutcome(workdir=workdir, total_rows=len(rows), skipped_rows=skipped,
                      new_rows=len(finished) - skipped, batches=batches, summary=summary, plots=plots,
                      table=table)


_ENGINES: dict[tuple, Any] = {}


def _engine(model, tokenizer, p_len: int, cache_len: int, batch: int):
  """An Engine with one prompt bucket, one cache length and one batch size, reused by later sweeps
  of the same model and shapes in this process (so a resumed sweep does not recompile)."""
  from smollm3_jax.generate import Engine

  key = (id(model), id(tokenizer), p_len, cache_len, batch)
  eng = _ENGINES.get(key)
  if eng is None or eng.model is not model or eng.tokenizer is not tokenizer:
    eng = Engine(model, tokenizer, buckets=(p_len, cache_len), batch_buckets=(batch,))
    while len(_ENGINES) >= 4:  # engines hold their model: keep only the latest few
      _ENGINES.pop(next(iter(_ENGINES)))
    _ENGINES[key] = eng
  return eng


def _run_rows(model, tokenizer, cfg, prompts, cells, todo, results, progress, log, max_batches) -> int:
  # (the package's `generate` attribute is the function; import the module's members)
  from smollm3_jax.generate import generate

  chat = cfg.get("chat", True)
  by_id = {p["id"]: p for p in prompts}
  ids = _render(tokenizer, prompts, cells, chat)
  max_new = cfg["max_new_tokens"]
  batch = cfg["batch_size"]
  # One prompt bucket and one cache length for the whole sweep: every batch has the same shapes.
  p_len = max(len(v) for v in ids.values())
  context = model.config.max_position_embeddings
  if p_len + max_new > context:
    raise ValueError(f"max_new_tokens {max_new} + the longest prompt ({p_len} tokens) exceed the "
                     f"model's context of {context} tokens")
  engine = _engine(model, tokenizer, p_len, p_len + max_new - 1, batch)
  nl = cfg.get("newline_limit", 0) or None

  bar = None
  if progress is None:
    progress = cfg.get("progress", True)
  total = len(todo)
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="row", desc="sweep", dynamic_ncols=True, smoothing=0.1)
  n_batches = 0
  try:
    for start in range(0, total, batch):
      if max_batches is not None and n_batches >= max_batches:
        break
      chunk = todo[start:start + batch]
      sets = [r["settings"] for r in chunk]
      t0 = time.perf_counter()
      res = generate(
          model, tokenizer, [ids[(r["prompt_id"], s["thinking"])] for r, s in zip(chunk, sets)], chat=chat,
          thinking=[s["thinking"] for s in sets], temperature=[s["temperature"] for s in sets],
          top_k=[s["top_k"] for s in sets], top_p=[s["top_p"] for s in sets],
          min_p=[s["min_p"] for s in sets], repetition_penalty=[s["repetition_penalty"] for s in sets],
          seed=[r["seed"] for r in chunk], max_new_tokens=max_new, newline_limit=nl, engine=engine)
      wall = time.perf_counter() - t0
      st = res.stats
      out = []
      for r, c in zip(chunk, res.completions):
        row = dict(r, settings=dict(r["settings"], max_new_tokens=max_new))
        row.update(
            prompt=by_id[r["prompt_id"]]["prompt"], kind=by_id[r["prompt_id"]]["kind"],
            text=c.text, thinking=c.thinking, answer=c.answer,
            num_tokens=len(c.token_ids), thinking_tokens=len(tokenizer.encode(c.thinking)) if c.thinking else 0,
            closed_think=M.has_closed_thinking(c.text), stop_reason=c.stop_reason,
            prompt_tokens=len(c.prompt_token_ids), token_ids=c.token_ids,
            timing=dict(batch=n_batches, batch_rows=len(chunk), batch_size=st.batch_size,
                        wall_seconds=wall, compile_seconds=st.compile_seconds,
                        prefill_seconds=st.prefill_seconds, decode_seconds=st.decode_seconds,
                        decode_tokens_per_second=st.decode_tokens_per_second))
        row.update(_score(row, by_id[r["prompt_id"]]))
        out.append(row)
      results.append(out)
      n_batches += 1
      if bar is not None:
        bar.update(len(chunk))
        bar.set_postfix_str(f"{st.decode_tokens_per_second:.0f} tok/s", refresh=False)
  finally:
    if bar is not None:
      bar.close()
  return n_batches


# --------------------------------------------------------------------------------------------
# Summary, table, plots
# --------------------------------------------------------------------------------------------
def summarize(rows: Sequence[Mapping], cells: Sequence[Mapping], prompts: Sequence[Mapping]) -> list[dict]:
  """One dict per cell: its settings, ``rows`` and every metric of :data:`METRICS` (NaN if undefined)."""
  by_id = {p["id"]: p for p in prompts}
  out = []
  for ci, cell in enumerate(cells):
    rs = [r for r in rows if r["cell_key"] == cell_key(cell)]
    ws = [M.words(r["text"]) for r in rs]
    scored = []
    for r in rs:
      p = by_id.get(r["prompt_id"], {})
      if p.get("answer_type"):
        scored.append(M.is_correct(r["answer"], p.get("reference"), p["answer_type"]))
    # tokens-weighted throughput: each row's decode time is its token share of its batch's time
    tps = [(r["num_tokens"], r["timing"]["decode_tokens_per_second"]) for r in rs
           if r["timing"]["decode_tokens_per_second"] > 0]
    tok_s = sum(n for n, _ in tps) / sum(n / v for n, v in tps) if tps else float("nan")
    out.append(dict(
        cell=ci, cell_key=cell_key(cell), **cell, rows=len(rs),
        mean_tokens=M.mean(r["num_tokens"] for r in rs),
        distinct_1=M.mean(M.distinct_n(w, 1) for w in ws),
        distinct_2=M.mean(M.distinct_n(w, 2) for w in ws),
        rep4_share=M.mean(M.repeated_ngram_share(w, 4) for w in ws),
        eos_share=M.mean(float(r["stop_reason"] == "eos") for r in rs),
        mean_thinking_tokens=M.mean(r.get("thinking_tokens", 0) for r in rs),
        closed_think_share=M.mean(float(M.has_closed_thinking(r["text"])) for r in rs),
        accuracy=M.mean(float(s) for s in scored if s is not None),
        scored=len(scored),
        decode_tokens_per_second=tok_s))
  return out


def _fmt(v) -> str:
  if isinstance(v, bool):
    return "on" if v else "off"
  if isinstance(v, float):
    return "-" if math.isnan(v) else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
  return str(v)


def summary_csv(summary: Sequence[Mapping]) -> str:
  cols = ["cell", "cell_key", *AXES, "rows", *METRICS, "scored"]
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
  w.writeheader()
  for s in summary:
    w.writerow({k: ("" if isinstance(s[k], float) and math.isnan(s[k]) else s[k]) for k in cols})
  return buf.getvalue()


def format_table(summary: Sequence[Mapping]) -> str:
  """A fixed-width text table: the swept axes (those with >1 value) then every metric."""
  axes = [a for a in AXES if len({s[a] for s in summary}) > 1] or ["temperature"]
  short = {"thinking": "think", "temperature": "temp", "repetition_penalty": "rep_pen"}
  head = [short.get(a, a) for a in axes] + ["rows"] + [METRICS[m][0] for m in METRICS]
  body = [[_fmt(s[a]) for a in axes] + [str(s["rows"])] + [_fmt(s[m]) for m in METRICS] for s in summary]
  widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
  lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
  lines.append("  ".join("-" * w for w in widths))
  lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
  return "\n".join(lines)


def plot_heatmaps(summary: Sequence[Mapping], out_dir: str) -> list[str]:
  """One PNG per metric (per combination of the other swept axes): temperature (rows) x repetition
  penalty (columns), one panel per thinking mode. Returns the written paths."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  os.makedirs(out_dir, exist_ok=True)
  temps = sorted({s["temperature"] for s in summary})
  pens = sorted({s["repetition_penalty"] for s in summary})
  modes = sorted({s["thinking"] for s in summary})
  others = ("top_p", "top_k", "min_p")
  combos = sorted({tuple(s[o] for o in others) for s in summary})
  paths = []
  for combo in combos:
    sub = [s for s in summary if tuple(s[o] for o in others) == combo]
    suffix = "" if len(combos) == 1 else "__" + "_".join(f"{o}={v:g}" for o, v in zip(others, combo))
    for metric, (header, desc) in METRICS.items():
      fig, axes = plt.subplots(1, len(modes), figsize=(1.2 + 1.6 * len(pens) * len(modes), 1.4 + 0.8 * len(temps)),
                               squeeze=False, layout="constrained")
      vals = np.array([s[metric] for s in sub], float)
      finite = vals[np.isfinite(vals)]
      vmin, vmax = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
      if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
      for ax, mode in zip(axes[0], modes):
        grid = np.full((len(temps), len(pens)), np.nan)
        for s in sub:
          if s["thinking"] == mode:
            grid[temps.index(s["temperature"]), pens.index(s["repetition_penalty"])] = s[metric]
        im = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", origin="lower")
        for i in range(len(temps)):
          for j in range(len(pens)):
            v = grid[i, j]
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.3g}", ha="center", va="center",
                    color="white" if np.isnan(v) or v < (vmin + vmax) / 2 else "black", fontsize=8)
        ax.set_xticks(range(len(pens)), [f"{p:g}" for p in pens])
        ax.set_yticks(range(len(temps)), [f"{t:g}" for t in temps])
        ax.set_xlabel("repetition penalty")
        ax.set_ylabel("temperature")
        ax.set_title(f"thinking {'on' if mode else 'off'}")
      fig.colorbar(im, ax=list(axes[0]), shrink=0.9)
      title = f"{metric}: {desc}"
      if suffix:
        title += f"\n({', '.join(f'{o}={v:g}' for o, v in zip(others, combo))})"
      fig.suptitle(title, fontsize=9)
      path = os.path.join(out_dir, f"{metric}{suffix}.png")
      tmp = path + ".tmp.png"
      fig.savefig(tmp, dpi=100, bbox_inches="tight")
      plt.close(fig)
      os.replace(tmp, path)
      paths.append(path)
  return paths
