"""Fine-tuning: the loss and its gradients against transformers + torch autograd, the unlikelihood
term against a direct numpy implementation of Welleck et al.'s formula, the chat loss mask, a real
optimisation (50 steps), gradient accumulation, kill-and-resume, the export, and the sharded step on
8 fake CPU devices (a child process, as tests/test_sharding.py runs it)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
from _helpers import run_multidevice_child


def _random_batch(seed, rows=3, length=24, vocab=512, lengths=(24, 17, 9)):
  """Right-padded token rows (pad 0) and a random target mask over the real tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, vocab, (rows, length)).astype(np.int32)
  mask = rng.random((rows, length)) < 0.6
  for r, n in enumerate(lengths):
    tokens[r, n:] = 0
    mask[r, n:] = False
  return tokens, mask


@pytest.fixture(scope="module")
def small(tmp_path_factory, make_hf_model):
  """Tiny random transformers SmolLM3s (the conftest's shapes, fewer layers: quicker to compile), saved
  once: "tied" with 4 layers (layer 3 is NoPE), "two": 2 layers with its own LM head and attention and
  MLP biases."""
  out = {}
  for name, kw in (
    ("tied", dict(seed=10, tie_word_embeddings=True, num_hidden_layers=4)),
    ("two", dict(seed=12, tie_word_embeddings=False, attention_bias=True, mlp_bias=True, num_hidden_layers=2)),
  ):
    path = str(tmp_path_factory.mktemp(f"small_{name}"))
    model = make_hf_model(**kw)
    model.save_pretrained(path)
    out[name] = (path, model)
  return out


def _load(path, dtype="float32"):
  import jax.numpy as jnp

  import smollm3_jax

  return smollm3_jax.from_pretrained(path, dtype=getattr(jnp, dtype))


# --------------------------------------------------------------------------------------------
# Child process (8 fake devices): one step on one device and on meshes
# --------------------------------------------------------------------------------------------
def _child(ckpt: str) -> dict:
  import jax

  from smollm3_jax.nn import sharding
  from smollm3_jax.training import train

  tokens, mask = _random_batch(0, rows=16, length=32, lengths=(32, 30, 25, 20, 32, 12, 9, 31) * 2)
  # eps = 1 keeps Adam's update smooth in the gradient (see the accumulation test), so that a
  # difference in the step shows as a difference in the update.
  optim = train.OptimConfig(
    learning_rate=1.0, warmup_steps=0, total_steps=10, weight_decay=0.1, eps=1.0, accumulation=2
  )
  out = {"devices": jax.device_count()}
  results = {}
  for mesh in ("1,1", "2,4"):  # data and model axes both split
    model = _load(ckpt)
    if mesh == "1,1":
      initial = {k: np.asarray(v) for k, v in train.ModelDef(model).params(model).items()}
    trainer = train.Trainer(model, optim, unlikelihood_alpha=0.3, mesh=sharding.make_mesh(*map(int, mesh.split(","))))
    params = trainer.params(model)
    opt = trainer.init_opt_state(params)
    losses = []
    for half in (slice(0, 8), slice(8, 16), slice(0, 8), slice(8, 16)):  # two updates of 2 micro-batches
      params, opt, m = trainer.step(params, opt, trainer.place_batch(tokens[half], mask[half]))
      losses.append(float(m["loss"]))
    results[mesh] = dict(params={k: np.asarray(v) for k, v in params.items()}, losses=losses)
    if mesh == "2,4":
      q = "layers.0.self_attn.q_proj.kernel"
      mu = opt.inner_opt_state[1][0].mu[q]  # MultiSteps -> chain(clip, adamw) -> adam state
      out["specs"] = dict(
        param=list(params[q].sharding.spec),
        mu=list(mu.sharding.spec),
        mu_dtype=str(mu.dtype),
        acc=list(opt.acc_grads[q].sharding.spec),
        embed=list(params["embed_tokens.embedding"].sharding.spec),
        count=list(opt.mini_step.sharding.spec),
        batch=list(trainer.place_batch(tokens[:8], mask[:8]).tokens.sharding.spec),
      )
  ref = results["1,1"]
  for mesh in ("2,4",):
    got = results[mesh]
    out[mesh] = dict(
      losses=got["losses"],
      ref_losses=ref["losses"],
      # the difference of the parameters relative to how far the one-device steps moved them
      max_rel=max(
        float(np.max(np.abs(got["params"][k] - ref["params"][k]))) / float(np.max(np.abs(ref["params"][k] - v)))
        for k, v in initial.items()
      ),
      changed=min(float(np.max(np.abs(ref["params"][k] - v))) for k, v in initial.items()),
    )
  try:
    trainer.place_batch(tokens[:3], mask[:3])
  except ValueError as e:
    out["uneven"] = str(e)
  return out


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  print("RESULT " + json.dumps(_child(sys.argv[1])))
  sys.exit(0)


# --------------------------------------------------------------------------------------------
# The loss and its gradients against transformers
# --------------------------------------------------------------------------------------------
def _torch_loss_and_grads(hf_model, tokens, mask):
  """The same masked next-token cross-entropy, with torch autograd on transformers' model."""
  import torch

  ids = torch.tensor(tokens, dtype=torch.long)
  hf_model.zero_grad(set_to_none=True)
  logits = hf_model(input_ids=ids).logits.float()
  logp = torch.log_softmax(logits[:, :-1], dim=-1)
  targets = ids[:, 1:]
  w = torch.tensor(mask[:, 1:], dtype=torch.float32)
  nll = -logp.gather(-1, targets[..., None])[..., 0]
  loss = (nll * w).sum() / w.sum()
  loss.backward()
  grads = {n: p.grad.detach().numpy().copy() for n, p in hf_model.named_parameters()}
  hf_model.zero_grad(set_to_none=True)
  return float(loss.detach()), grads


@pytest.mark.parametrize("variant", ["tied", "two"])
def test_loss_and_gradients_equal_transformers(small, variant):
  import jax

  from smollm3_jax.checkpoints.mapping import hf_to_param
  from smollm3_jax.training import train

  path, hf_model = small[variant]
  model = _load(path)
  defn = train.ModelDef(model)
  tokens, mask = _random_batch(1)
  batch = train.Batch(tokens=tokens, loss_mask=mask)
  (loss, metrics), grads = jax.jit(jax.value_and_grad(lambda p: train.batch_loss(defn.merge(p), batch), has_aux=True))(
    defn.params(model)
  )
  ref_loss, ref_grads = _torch_loss_and_grads(hf_model, tokens, mask)

  assert abs(float(loss) - ref_loss) <= 1e-4 * abs(ref_loss)
  assert int(metrics["tokens"]) == int(mask[:, 1:].sum())
  # Relative to each tensor's largest reference gradient, floored at 1e-3 of the model's largest: the
  # key bias has a true gradient of 0 on a NoPE layer (softmax cancels a shift common to all keys) and
  # near 0 with RoPE, so both sides hold mostly rounding noise there.
  scale = max(np.max(np.abs(g)) for g in ref_grads.values())
  checked = 0
  for name, g_ref in ref_grads.items():
    path, transpose = hf_to_param(name)
    g = np.asarray(grads[train.param_key(path)])
    g = g.T if transpose else g
    rel = np.max(np.abs(g - g_ref)) / max(np.max(np.abs(g_ref)), 1e-3 * scale)
    assert rel <= 1e-4, (name, rel)
    checked += 1
  assert checked == len(grads)  # every parameter has a reference gradient


# --------------------------------------------------------------------------------------------
# Unlikelihood: a direct numpy implementation of Welleck et al. (2019), token level
# --------------------------------------------------------------------------------------------
def _numpy_unlikelihood(logits, tokens):
  """-sum_{c in C_t} log(1 - p(c | x_<t)), C_t = {x_1..x_{t-1}} \\ {x_t}, at every target t >= 1;
  returned at the predicting position t - 1 (0 at the last position, which predicts nothing)."""
  z = logits.astype(np.float64)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  b, t = tokens.shape
  out = np.zeros((b, t))
  for r in range(b):
    for s in range(1, t):
      cands = set(tokens[r, :s].tolist()) - {int(tokens[r, s])}
      out[r, s - 1] = -sum(np.log(max(1.0 - p[r, s - 1, c], 1e-5)) for c in cands)
  return out


def test_unlikelihood_equals_numpy_formula():
  import jax.numpy as jnp

  from smollm3_jax.training import train

  rng = np.random.default_rng(3)
  vocab = 11
  tokens = rng.integers(0, vocab, (3, 16)).astype(np.int32)  # small vocabulary: many repeats
  tokens[0, :8] = 4  # one token over and over: its probability is a large candidate
  logits = (3 * rng.standard_normal((3, 16, vocab))).astype(np.float32)
  logits[0, 8:, 4] = 20.0  # p(4) ~ 1 after the run of 4s: 1 - p falls below the clamp
  tokens[0, 8:] = np.where(tokens[0, 8:] == 4, 5, tokens[0, 8:])
  ref = _numpy_unlikelihood(logits, tokens)
  z = logits.astype(np.float64)
  logp = (z - np.log(np.exp(z).sum(-1, keepdims=True))).astype(np.float32)  # exact, then rounded once
  targets, weights = train.shift_targets(jnp.asarray(tokens), jnp.ones(tokens.shape, bool))
  got = np.asarray(train.unlikelihood(jnp.asarray(logp), jnp.asarray(tokens), targets))
  np.testing.assert_allclose(got * np.asarray(weights), ref, rtol=1e-5, atol=1e-5)
  assert ref[0, 3] == 0 and ref[0, 9] > -np.log(1e-5)  # 4 is the target; then the clamp is reached

  # In the loss: (sum of CE + alpha * sum of UL over the targets) / targets.
  mask = rng.random(tokens.shape) < 0.7
  alpha = 0.7
  loss, m = train.batch_loss(
    lambda t: (jnp.asarray(logits), None), train.Batch(tokens=jnp.asarray(tokens), loss_mask=jnp.asarray(mask)), alpha
  )
  w = np.zeros(tokens.shape)
  w[:, :-1] = mask[:, 1:]
  lp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  ce = np.zeros(tokens.shape)
  ce[:, :-1] = -np.take_along_axis(lp[:, :-1], tokens[:, 1:, None], -1)[..., 0]
  expected = ((ce * w).sum() + alpha * (ref * w).sum()) / w.sum()
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(m["ul"]) == pytest.approx((ref * w).sum() / w.sum(), rel=1e-5)


# --------------------------------------------------------------------------------------------
# The chat loss mask
# --------------------------------------------------------------------------------------------
CHAT = [
  {"role": "user", "content": "What is 2 + 3?"},
  {"role": "assistant", "content": "<think>\n2 + 3 = 5.\n</think>\nIt is 5."},
  {"role": "user", "content": "And 2 + 4?"},
  {"role": "assistant", "content": "6."},
]


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_loss_mask_covers_the_assistant_turns(smollm3_template_tokenizer, enable_thinking):
  from smollm3_jax.training import data as train_data

  tok = smollm3_template_tokenizer
  for train_thinking, expected in [
    (True, "<think>\n2 + 3 = 5.\n</think>\nIt is 5.<|im_end|>\n6.<|im_end|>\n"),
    (False, "It is 5.<|im_end|>\n6.<|im_end|>\n"),
  ]:
    ex = train_data.encode_conversation(tok, CHAT, enable_thinking=enable_thinking, train_thinking=train_thinking)
    assert tok.decode(ex.tokens[ex.loss_mask]) == expected
    # The tokens are the rendering's, and the prompt side (headers, the no-think empty block) is context.
    text = tok.apply_chat_template(CHAT, enable_thinking=enable_thinking)
    assert tok.decode(ex.tokens) == text
    runs = np.flatnonzero(np.diff(ex.loss_mask.astype(int)) == 1) + 1
    for start in runs:
      assert tok.decode(ex.tokens[:start]).endswith(
        "<|im_start|>assistant\n"
        + ("" if enable_thinking else "<think>\n\n</think>\n")
        + ("" if train_thinking or start == runs[-1] else "<think>\n2 + 3 = 5.\n</think>\n")
      )


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_loss_mask_is_transformers_assistant_mask_less_the_generation_prompt(
  smollm3_template_tokenizer, pinned_transformers_clock, tmp_path, enable_thinking
):
  """transformers' ``return_assistant_tokens_mask`` marks the template's {% generation %} blocks, which
  include the turn's header; ours is the same tokens less what the generation prompt already holds."""
  from transformers import PreTrainedTokenizerFast

  from smollm3_jax.training import data as train_data

  tok = smollm3_template_tokenizer
  tok.save_pretrained(tmp_path)
  hf = PreTrainedTokenizerFast.from_pretrained(str(tmp_path))
  out = hf.apply_chat_template(
    CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, enable_thinking=enable_thinking
  )
  ex = train_data.encode_conversation(tok, CHAT, enable_thinking=enable_thinking)
  assert ex.tokens.tolist() == list(out["input_ids"])
  theirs = np.asarray(out["assistant_masks"], bool)
  assert theirs[ex.loss_mask].all()
  header = "<|im_start|>assistant\n" + ("" if enable_thinking else "<think>\n\n</think>\n")
  assert hf.decode(ex.tokens[theirs & ~ex.loss_mask]) == header * 2


def test_data_errors_name_the_line(tmp_path):
  from smollm3_jax.training import data as train_data

  path = tmp_path / "bad.jsonl"
  good = json.dumps({"messages": CHAT})
  for line, message in [
    ("{not json", "bad.jsonl:2: not valid JSON"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}), "no assistant message"),
    (json.dumps({"messages": CHAT, "enable_thinking": "yes"}), "enable_thinking must be"),
    (json.dumps({"messages": [{"role": "robot", "content": "x"}]}), "role must be one of"),
  ]:
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
      train_data.load_conversations(path)


def test_batch_order_depends_only_on_seed_and_step():
  from smollm3_jax.training import data as train_data

  a = [train_data.batch_indices(10, 4, 7, s).tolist() for s in range(6)]
  assert a == [train_data.batch_indices(10, 4, 7, s).tolist() for s in range(6)]
  assert a != [train_data.batch_indices(10, 4, 8, s).tolist() for s in range(6)]
  flat = sum(a, [])
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # epochs


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------
def test_fifty_steps_halve_the_training_loss(small):
  from smollm3_jax.training import train

  model = _load(small["two"][0])
  tokens, mask = _random_batch(5, rows=4, length=32, lengths=(32, 28, 24, 32))
  mask[:, :8] = False  # a "prompt" that is context only
  trainer = train.Trainer(
    model, train.OptimConfig(learning_rate=3e-3, warmup_steps=5, total_steps=50, weight_decay=0.01)
  )
  params = trainer.params(model)
  opt = trainer.init_opt_state(params)
  batch = trainer.place_batch(tokens, mask)
  losses = []
  for _ in range(50):
    params, opt, m = trainer.step(params, opt, batch)
    losses.append(float(m["loss"]))
  assert losses[-1] <= 0.5 * losses[0], (losses[0], losses[-1])
  # The evaluation program agrees with the training loss on the same parameters.
  sums = trainer.eval_sums(params, batch)
  _, _, m = trainer.step(params, opt, batch)
  assert float(sums["ce"]) / float(sums["tokens"]) == pytest.approx(float(m["ce"]), rel=1e-5)


def test_accumulation_equals_one_big_batch_and_bf16_keeps_f32_state(small):
  import jax
  import jax.numpy as jnp

  from smollm3_jax.training import train

  path = small["two"][0]
  tokens, mask = _random_batch(6, rows=4, length=16, lengths=(16, 16, 16, 16))
  mask[:] = True  # equal target counts per micro-batch: the mean of the two means is the batch mean
  out = {}
  initial = np.asarray(_load(path).embed_tokens.embedding[...])
  for accum, halves in ((1, [slice(0, 4)]), (2, [slice(0, 2), slice(2, 4)])):
    model = _load(path)
    # eps = 1: Adam's first update g / (|g| + eps) is smooth in g (with a tiny eps it is sign(g), and
    # the rounding of a near-zero gradient would flip whole updates).
    trainer = train.Trainer(
      model, train.OptimConfig(learning_rate=1.0, warmup_steps=0, total_steps=4, eps=1.0, accumulation=accum)
    )
    params = trainer.params(model)
    opt = trainer.init_opt_state(params)
    for h in halves:
      params, opt, _ = trainer.step(params, opt, trainer.place_batch(tokens[h], mask[h]))
    out[accum] = params
  for k in out[1]:
    np.testing.assert_allclose(np.asarray(out[2][k]), np.asarray(out[1][k]), rtol=0, atol=1e-6)
  assert np.max(np.abs(np.asarray(out[1]["embed_tokens.embedding"]) - initial)) > 1e-3  # it moved

  model = _load(path, "bfloat16")
  trainer = train.Trainer(model, train.OptimConfig(learning_rate=1e-2, warmup_steps=0, total_steps=4))
  params = trainer.params(model)
  # The step's output types, traced (not compiled): bfloat16 parameters, float32 optimiser state.
  params, opt, _ = jax.eval_shape(
    trainer.step, params, trainer.init_opt_state(params), trainer.place_batch(tokens, mask)
  )
  assert {str(v.dtype) for v in params.values()} == {"bfloat16"}
  adam = opt[1][0]  # chain(clip, adamw) -> adamw's scale_by_adam state
  assert {str(v.dtype) for v in adam.mu.values()} == {"float32"} == {str(v.dtype) for v in adam.nu.values()}
  assert adam.mu["norm.scale"].dtype == jnp.float32


def test_bad_settings_are_refused_before_compiling(small):
  from smollm3_jax.training import finetune, train

  with pytest.raises(ValueError, match="warmup_steps"):
    train.OptimConfig(warmup_steps=20, total_steps=10)
  with pytest.raises(ValueError, match="unknown fields"):
    train.OptimConfig.from_mapping({"learning_rat": 1e-3})
  model = _load(small["two"][0])
  with pytest.raises(ValueError, match="unlikelihood_alpha"):
    train.Trainer(model, train.OptimConfig(), unlikelihood_alpha=-1)
  trainer = train.Trainer(model, train.OptimConfig())
  with pytest.raises(ValueError, match="token ids must lie"):
    trainer.place_batch(np.full((1, 4), 512), np.ones((1, 4), bool))
  cfg = _finetune_config("unused")
  for field, value, message in [
    ("steps", 0, "steps must be"),
    ("unlikelihood_alpha", -0.5, "unlikelihood_alpha"),
    ("data.path", "/nonexistent.jsonl", "data.path"),
    ("optim.b1", 1.5, "b1"),
    ("mesh", "pipe=2", "unknown axis"),
  ]:
    plain = finetune.to_plain(cfg)
    node = plain
    *parents, leaf = field.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
    with pytest.raises(ValueError, match=message):
      finetune.validate_config(plain)


# --------------------------------------------------------------------------------------------
# The run: kill and resume, export, sweep
# --------------------------------------------------------------------------------------------
def _finetune_config(checkpoint, **changes):
  import importlib.util

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location("finetune_config", os.path.join(root, "configs", "finetune.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("tiny")
  cfg.model.checkpoint = checkpoint
  cfg.model.tokenizer = ""
  from _helpers import override

  return override(cfg, changes)


@pytest.fixture(scope="module")
def chat_checkpoint(tmp_path_factory, make_hf_model):
  """A tiny random SmolLM3 (2 layers) with the demo tokenizer's vocabulary, saved with that tokenizer."""
  import smollm3_jax

  path = str(tmp_path_factory.mktemp("ft_ckpt"))
  tok = smollm3_jax.Tokenizer.from_pretrained("demo")
  make_hf_model(
    seed=4,
    vocab_size=tok.vocab_size,
    num_hidden_layers=2,
    tie_word_embeddings=True,
    pad_token_id=tok.pad_token_id,
    eos_token_id=tok.eos_token_id,
  ).save_pretrained(path)
  tok.save_pretrained(path)
  return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, chat_checkpoint):
  """An uninterrupted run of 4 steps, and a run stopped after 3 (checkpoints at 2 and 4) then resumed."""
  from smollm3_jax.training import finetune

  cfg = _finetune_config(chat_checkpoint, unlikelihood_alpha=0.5, accumulation=2)
  whole_dir, killed_dir = (str(tmp_path_factory.mktemp(n)) for n in ("whole", "killed"))
  whole = finetune.run(cfg, whole_dir)
  stopped = finetune.run(cfg, killed_dir, stop_after=3)
  resumed = finetune.run(cfg, killed_dir)
  return dict(cfg=cfg, whole=whole, stopped=stopped, resumed=resumed)


def test_killed_run_resumes_to_the_same_parameters_bitwise(runs):
  whole, stopped, resumed = runs["whole"], runs["stopped"], runs["resumed"]
  assert stopped.steps == 3 and stopped.export is None and stopped.resumed_from is None
  assert resumed.resumed_from == 2 and resumed.steps == 4 and whole.steps == 4
  for k, v in whole.params.items():
    assert np.array_equal(np.asarray(resumed.params[k]), np.asarray(v)), k  # bitwise, on CPU
  # The resumed run logged the steps after its checkpoint again, once each.
  lines = [json.loads(l) for l in open(os.path.join(resumed.workdir, "metrics.jsonl"))]
  assert [l["step"] for l in lines if "loss" in l] == [1, 2, 3, 4]
  assert [l["loss"] for l in lines if "loss" in l] == [
    l["loss"] for l in map(json.loads, open(os.path.join(whole.workdir, "metrics.jsonl"))) if "loss" in l
  ]
  assert all(l["ul"] > 0 for l in lines if "loss" in l)
  assert [l["step"] for l in lines if "eval_loss" in l] == [0, 2, 4]  # the baseline, every 2, the end
  assert whole.eval_loss[0][0] == 0 and whole.eval_loss[-1][1] < whole.eval_loss[0][1]


def test_resume_with_another_config_is_refused(runs):
  from smollm3_jax.training import finetune

  cfg = runs["cfg"].copy_and_resolve_references()
  cfg.optim.learning_rate = 0.5
  with pytest.raises(ValueError, match=r"different config \(optim.learning_rate: 0.001 -> 0.5\)"):
    finetune.run(cfg, runs["whole"].workdir)


def test_export_loads_generates_and_sweeps(runs, tmp_path):
  from _helpers import tiny_sweep_config

  import smollm3_jax
  from smollm3_jax import sweep
  from smollm3_jax.training import train

  export = runs["whole"].export
  model = smollm3_jax.from_pretrained(export)
  tok = smollm3_jax.Tokenizer.from_pretrained(export)
  loaded = train.ModelDef(model).params(model)
  assert loaded.keys() == runs["whole"].params.keys()
  assert all(np.array_equal(np.asarray(loaded[k]), np.asarray(v)) for k, v in runs["whole"].params.items())
  result = smollm3_jax.generate(model, tok, ["What is 2 + 2?"], temperature=0.0, max_new_tokens=3)
  assert result[0].stop_reason in ("eos", "max_tokens") and len(result[0].token_ids) <= 3
  cfg = tiny_sweep_config(
    "",
    **{
      "model.checkpoint": export,
      "model.tokenizer": "",
      "prompts.limit": 1,
      "sweep.temperature": (0.0,),
      "sweep.repetition_penalty": (1.0,),
      "sweep.thinking": (False,),
      "max_new_tokens": 2,
      "batch_size": 1,
      "plots": False,
    },
  )
  outcome = sweep.run_sweep(cfg, str(tmp_path / "sweep"))
  assert outcome.total_rows == 1 and outcome.new_rows == 1


# --------------------------------------------------------------------------------------------
# 8 fake devices
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multi(small):
  return run_multidevice_child(__file__, small["two"][0], timeout=600)


def test_sharded_step_equals_one_device(multi):
  assert multi["devices"] == 8
  got = multi["2,4"]
  assert got["changed"] > 1e-3  # the steps moved every parameter
  assert got["max_rel"] <= 1e-5, got["max_rel"]
  np.testing.assert_allclose(got["losses"], got["ref_losses"], rtol=1e-5)


def test_optimizer_state_is_sharded_like_its_parameters(multi):
  s = multi["specs"]
  assert s["param"] == s["mu"] == s["acc"] == [None, "model"]  # heads on the model axis
  assert s["embed"] == ["model", None] and s["mu_dtype"] == "float32" and s["count"] == []
  assert s["batch"] == ["data", None]  # rows split over the data axis
  assert "does not divide the mesh's data axis" in multi["uneven"]


def test_script_refuses_a_bad_config_before_loading(tmp_path):
  import subprocess

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for override, message in [
    ("--config.optim.learning_rat=1e-3", 'Did you mean "learning_rate"'),
    ("--config.steps=0", "steps must be an integer >= 1"),
  ]:
    proc = subprocess.run(
      [
        sys.executable,
        os.path.join(root, "experiments", "finetune.py"),
        "--config=" + os.path.join(root, "configs", "finetune.py") + ":tiny",
        f"--workdir={tmp_path / 'wd'}",
        override,
      ],
      capture_output=True,
      text=True,
      timeout=120,
      cwd=root,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "wd")


def test_rerunning_a_finished_run_changes_nothing(runs):
  from smollm3_jax.training import finetune

  whole = runs["whole"]
  metrics = open(os.path.join(whole.workdir, "metrics.jsonl")).read()
  again = finetune.run(runs["cfg"], whole.workdir)
  assert again.resumed_from == 4 and again.steps == 4 and again.train_loss == [] and again.eval_loss == []
  assert open(os.path.join(whole.workdir, "metrics.jsonl")).read() == metrics
  assert all(np.array_equal(np.asarray(again.params[k]), np.asarray(v)) for k, v in whole.params.items())


def _metric_keys(workdir):
  """(step, a training line?) of each line of metrics.jsonl, in file order."""
  return [(l["step"], "loss" in l) for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl")))]


def test_every_resume_logs_each_metrics_line_once(runs, tmp_path, monkeypatch):
  """Stopped before the first checkpoint (the step-0 baseline once logged), then killed between the last
  evaluation and the last checkpoint, then resumed: each metrics line once, the uninterrupted parameters."""
  from smollm3_jax.training import finetune

  cfg, whole = runs["cfg"].copy_and_resolve_references(), runs["whole"]
  cfg.export = False  # (a field that may change on resume)
  workdir = str(tmp_path / "wd")
  finetune.run(cfg, workdir, stop_after=1)  # no checkpoint yet (the first is at step 2): starts over
  assert _metric_keys(workdir) == [(0, False), (1, True)]
  log = finetune._append_metrics

  def killed_at_the_last_evaluation(path, record):
    if record["step"] == cfg.steps and "eval_loss" in record:
      raise KeyboardInterrupt  # before its line: a resume must log it
    log(path, record)

  monkeypatch.setattr(finetune, "_append_metrics", killed_at_the_last_evaluation)
  with pytest.raises(KeyboardInterrupt):
    finetune.run(cfg, workdir)
  monkeypatch.undo()
  out = finetune.run(cfg, workdir)
  assert out.resumed_from == 2 and out.steps == 4
  assert (
    _metric_keys(workdir)
    == _metric_keys(whole.workdir)
    == [(0, False), (1, True), (2, True), (2, False), (3, True), (4, True), (4, False)]
  )
  assert all(np.array_equal(np.asarray(out.params[k]), np.asarray(v)) for k, v in whole.params.items())


@pytest.mark.parametrize("damage", ["cut", "state_deleted"])
def test_a_damaged_checkpoint_is_refused_naming_its_step(runs, tmp_path, capfd, damage):
  """The newest checkpoint's array files cut in half, or its state deleted: a short ValueError naming the step
  and its directory (not pages of TensorStore error, a KeyError, or "Event loop is closed" tracebacks); deleting
  the step as it says resumes from the one before: the uninterrupted run's parameters, each metrics line once."""
  import shutil

  from smollm3_jax.training import finetune

  cfg, whole = runs["cfg"].copy_and_resolve_references(), runs["whole"]
  cfg.export = False
  workdir = tmp_path / "wd"
  shutil.copytree(runs["resumed"].workdir, workdir)
  step_dir = workdir / "checkpoints" / "4"
  if damage == "cut":
    arrays = [
      p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d" and p.stat().st_size > 100
    ]
    assert arrays
    for p in arrays:
      os.truncate(p, p.stat().st_size // 2)
  else:
    shutil.rmtree(step_dir / "state")
  capfd.readouterr()
  with pytest.raises(ValueError) as e:
    finetune.run(cfg, str(workdir))
  message = str(e.value)
  assert message.startswith(f"{step_dir}: checkpoint step 4 is damaged") and f"Delete {step_dir}" in message
  assert len(message) < 1000, message
  assert "Event loop is closed" not in capfd.readouterr().err
  if damage == "cut":
    shutil.rmtree(step_dir)
    out = finetune.run(cfg, str(workdir))
    assert out.resumed_from == 2 and _metric_keys(workdir) == _metric_keys(whole.workdir)
    assert all(np.array_equal(np.asarray(out.params[k]), np.asarray(v)) for k, v in whole.params.items())
