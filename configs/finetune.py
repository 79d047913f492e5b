"""Fine-tuning config: ``--config=configs/finetune.py:<model preset>``.

  python experiments/finetune.py --config=configs/finetune.py:demo --workdir=out/ft_demo
  python experiments/finetune.py --config=configs/finetune.py:smollm3_3b --workdir=gs://.../ft_3b \
      --config.data.path=/data/chats.jsonl --config.unlikelihood_alpha=0.5

Presets (the argument) pick the model (smollm3_jax.checkpoints.presets) and sizes that suit it: "demo"
(SmolLM2-135M on a CPU, the bundled data/finetune/chats.jsonl), "smollm3_3b" (the hub checkpoint in
bfloat16 on a GPU/TPU), "tiny" (a random 2-layer model with the demo tokenizer, for tests).
Every field can be overridden on the command line; a misspelt field is an error.
"""

from __future__ import annotations

import os

import ml_collections

from smollm3_jax.checkpoints.presets import model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHATS = os.path.join(ROOT, "data", "finetune", "chats.jsonl")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "demo"
  c = ml_collections.ConfigDict()
  c.model = model_config(preset)  # checkpoint, tokenizer, dtype ("bfloat16": bf16 weights,
  # f32 optimiser state), quantize (must stay "none")

  c.data = ml_collections.ConfigDict()
  c.data.path = CHATS  # JSONL: {"messages": [...], "enable_thinking": bool (optional)}
  c.data.eval_path = ""  # a held-out JSONL; "" = hold out eval_fraction of data.path
  c.data.eval_fraction = 0.15
  c.data.max_length = 512  # tokens per conversation (longer ones are cut); rows are padded to
  # the length bucket (64, 128, 256, ...) of each batch's longest
  c.data.train_thinking = True  # the <think>...</think> block of assistant turns is a target too
  c.data.thinking_default = True  # enable_thinking for records that do not say

  c.steps = 100  # optimiser steps
  c.batch_size = 8  # conversations per micro-batch (a multiple of the mesh's data axis)
  c.accumulation = 1  # micro-batches per optimiser step (optax.MultiSteps)
  c.optim = ml_collections.ConfigDict(
    dict(
      learning_rate=1e-4,
      warmup_steps=10,
      end_learning_rate_ratio=0.1,
      weight_decay=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      clip_norm=1.0,
    )
  )
  c.unlikelihood_alpha = 0.0  # weight of Welleck et al.'s token-level unlikelihood term (0 = off)
  c.seed = 0  # the data order and the held-out split

  c.log_every = 1  # metrics.jsonl line every N steps
  c.eval_every = 25  # held-out loss before the first step and every N steps (0 = only at the end)
  c.checkpoint_every = 25  # Orbax checkpoint every N steps (and at the end; 0 = only at the end)
  c.keep_checkpoints = 2
  c.export = True  # write workdir/export (from_pretrained / sweep model.checkpoint)
  c.mesh = ""  # device mesh, e.g. 'data=4,model=2'; '' = all devices on the data axis
  c.date = ""  # the day the chat template sees; '' = today (stored, reused on resume)
  c.progress = True

  if preset == "demo":
    # SmolLM2-135M in f32 on a CPU: ~1-3 s per step of 4 short chats on 2 cores.
    c.steps = 30
    c.batch_size = 4
    c.data.max_length = 256
    c.optim.learning_rate = 5e-5
    c.optim.warmup_steps = 3
    c.eval_every = 10
    c.checkpoint_every = 10
    c.keep_checkpoints = 1  # 1.4 GB each (parameters and Adam state in float32)
  elif preset == "smollm3_3b":
    c.steps = 200
    c.batch_size = 16
    c.accumulation = 4
    c.data.max_length = 2048
    c.optim.learning_rate = 1e-5
    c.optim.warmup_steps = 20
    c.optim.weight_decay = 0.01
    c.mesh = "data=1"  # every chip on the model axis: parameters and Adam state shard only there
    c.eval_every = 50
    c.checkpoint_every = 50
  elif preset == "tiny":
    c.steps = 4
    c.batch_size = 2
    c.data.max_length = 64  # one length bucket: one compiled step
    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 1
    c.eval_every = 2
    c.checkpoint_every = 2
    c.progress = False
  return c
