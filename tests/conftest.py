"""Shared, session-scoped fixtures: tiny random transformers SmolLM3 checkpoints saved to disk."""

from __future__ import annotations

import dataclasses
import math

import pytest

TINY = dict(
  vocab_size=512,
  hidden_size=64,
  intermediate_size=128,
  num_hidden_layers=8,
  num_attention_heads=8,
  num_key_value_heads=2,
  head_dim=16,
  max_position_embeddings=512,
  rms_norm_eps=1e-6,
  no_rope_layer_interval=4,
  bos_token_id=1,
  eos_token_id=2,
  pad_token_id=0,
  rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
  """Scripts the tests run (subprocesses inherit the environment) keep their start-up caches here,
  not in the user's ~/.cache."""
  import os

  old = os.environ.get("SMOLLM3_JAX_CACHE_DIR")
  os.environ["SMOLLM3_JAX_CACHE_DIR"] = str(tmp_path_factory.mktemp("smollm3_jax_cache"))
  yield os.environ["SMOLLM3_JAX_CACHE_DIR"]
  if old is None:
    os.environ.pop("SMOLLM3_JAX_CACHE_DIR", None)
  else:
    os.environ["SMOLLM3_JAX_CACHE_DIR"] = old


# The day every chat template sees in the tests (SmolLM3's writes it into the prompt): a fixed date,
# so what a test renders and generates is the same on any day. Tests of the date itself pass their own.
PINNED_CHAT_DATE = "2025-06-15"


@pytest.fixture(scope="session", autouse=True)
def _pinned_chat_date():
  """Pins the chat templates' date for the whole session, subprocesses included (environment)."""
  import os

  from smollm3_jax.text.chat_format import DATE_ENV

  old = os.environ.get(DATE_ENV)
  os.environ[DATE_ENV] = PINNED_CHAT_DATE
  yield PINNED_CHAT_DATE
  if old is None:
    os.environ.pop(DATE_ENV, None)
  else:
    os.environ[DATE_ENV] = old


@pytest.fixture
def pinned_transformers_clock(monkeypatch, _pinned_chat_date):
  """Makes transformers' chat templates see the pinned date too (its ``strftime_now`` reads
  ``datetime.now()`` of its own module), so their renderings can be compared with ours."""
  import datetime

  from transformers.utils import chat_template_utils

  pinned = datetime.datetime.fromisoformat(_pinned_chat_date)

  class PinnedDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
      return pinned

  monkeypatch.setattr(chat_template_utils, "datetime", PinnedDatetime)
  return pinned


@pytest.fixture
def clock(monkeypatch):
  """Sets the system clock the chat templates read when no date is pinned (the suite's pin is
  removed for the test): ``clock("2031-02-03")`` makes "today" that day."""
  import datetime
  import types

  from smollm3_jax.text import chat_format

  monkeypatch.delenv(chat_format.DATE_ENV, raising=False)

  def set_day(day: str):
    moment = datetime.datetime.fromisoformat(day + "T13:45:00")

    class Fake(datetime.datetime):
      @classmethod
      def now(cls, tz=None):
        return moment

    monkeypatch.setattr(chat_format, "datetime", types.SimpleNamespace(datetime=Fake, date=datetime.date))

  return set_day


@pytest.fixture(scope="session")
def smollm3_template_tokenizer():
  """The demo tokenizer with SmolLM3's own chat template (thinking mode, the date in the prompt)."""
  import copy
  import os

  import smollm3_jax

  t = copy.copy(smollm3_jax.Tokenizer.from_pretrained("demo"))
  with open(os.path.join(os.path.dirname(__file__), "data", "smollm3_chat_template.jinja")) as f:
    t.chat_template = f.read()
  return t


@dataclasses.dataclass
class HFCheckpoint:
  """A saved tiny checkpoint: its directory and the transformers model (f32, eval mode)."""

  path: str
  model: object  # transformers.SmolLM3ForCausalLM

  @property
  def config(self):
    return self.model.config


def make_hf_model(seed: int = 0, **overrides):
  """A random transformers SmolLM3ForCausalLM with O(1) activations (HF's std-0.02 init would make
  every logit ~0 and hide errors): linear weights ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1^2)."""
  import torch
  import transformers

  cfg = transformers.SmolLM3Config(**{**TINY, **overrides})
  torch.manual_seed(seed)
  model = transformers.SmolLM3ForCausalLM(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("norm.weight"):
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith("bias"):
        p.copy_(0.1 * torch.randn_like(p))
      elif "embed_tokens" in name:
        p.normal_(0.0, 1.0)
      else:
        p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]))
  return model


@pytest.fixture(scope="session", name="make_hf_model")
def make_hf_model_fixture():
  """:func:`make_hf_model` as a fixture (for tests that build their own shapes)."""
  return make_hf_model


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
  """Factory ``get(name) -> HFCheckpoint``; each variant is built and saved once per session.

  Variants: "tied", "untied" (separate lm_head, attention and MLP biases), "yarn" (rope_type yarn,
  factor 2, original_max_position_embeddings 256), "sharded" (the tied weights in several files).
  """
  cache: dict[str, HFCheckpoint] = {}
  variants = {
    "tied": dict(seed=0, tie_word_embeddings=True),
    "untied": dict(seed=1, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "yarn": dict(
      seed=2,
      tie_word_embeddings=True,
      rope_parameters={
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 2.0,
        "original_max_position_embeddings": 256,
      },
    ),
  }

  def get(name: str) -> HFCheckpoint:
    if name not in cache:
      path = str(tmp_path_factory.mktemp(f"hf_{name}"))
      if name == "sharded":
        model = get("tied").model
        model.save_pretrained(path, max_shard_size="100KB")
      else:
        model = make_hf_model(**variants[name])
        model.save_pretrained(path)
      cache[name] = HFCheckpoint(path, model)
    return cache[name]

  return get


# --------------------------------------------------------------------------------------------
# The bundled demo checkpoint, loaded once per session (ours and transformers' GGUF loader)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def demo_model():
  import jax.numpy as jnp

  import smollm3_jax

  return smollm3_jax.from_pretrained("demo", dtype=jnp.float32)


@pytest.fixture(scope="session")
def demo_tokenizer():
  import smollm3_jax

  return smollm3_jax.Tokenizer.from_pretrained("demo")


@pytest.fixture(scope="session")
def demo_hf_model():
  """transformers' own GGUF loading of the demo file (f32, eval): the numerical reference."""
  import os

  import torch
  from transformers import AutoModelForCausalLM

  from smollm3_jax.checkpoints.demo import demo_gguf_path

  directory, name = os.path.split(demo_gguf_path())
  return AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
