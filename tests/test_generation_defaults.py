"""Generation defaults: a checkpoint's generation_config.json read as transformers reads it, the
table for checkpoints without one, and the same defaults (and thinking default) in generate,
stream, the chat session and the server."""

from __future__ import annotations

import json
import os
import types
import warnings

import pytest

import smollm3_jax
from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.serving import chat, server
from smollm3_jax.text.chat_template import render_chat_template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE_PATH = os.path.join(ROOT, "tests", "data", "smollm3_chat_template.jinja")

# generation_config.json contents, as checkpoints ship them (the first is what save_pretrained of a
# transformers model without generation settings writes; the second is SmolLM3-3B's recommendation).
CONFIGS = [
  {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
  {"do_sample": True, "temperature": 0.6, "top_p": 0.95},
  {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 0.8, "repetition_penalty": 1.05, "max_new_tokens": 300},
  {"do_sample": True},
  {"do_sample": True, "top_k": 0, "min_p": 0.1},
  {"do_sample": False, "temperature": 0.9, "top_p": 0.5, "repetition_penalty": 1.3},
  {"temperature": 0.9, "max_new_tokens": 64},
]


def _processors(gc) -> list[tuple]:
  """The logits processors transformers' generate builds for a GenerationConfig (after filling its
  unset fields with the library defaults, as generate does), as (name, parameter) pairs."""
  from transformers import GenerationConfig
  from transformers.generation.utils import GenerationMixin

  gc.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
  holder = object.__new__(type("_Holder", (GenerationMixin,), {}))
  holder.config = types.SimpleNamespace(is_encoder_decoder=False)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    procs = GenerationMixin._get_logits_processor(holder, generation_config=gc, input_ids_seq_length=4, device="cpu")
  params = ("temperature", "top_k", "top_p", "min_p", "penalty")
  return [(type(p).__name__, {k: float(getattr(p, k)) for k in params if hasattr(p, k)}) for p in procs]


def _ours_as_transformers(d: generation_defaults.GenerationDefaults):
  """A GenerationConfig that asks transformers for exactly our settings (temperature 0 = greedy)."""
  from transformers import GenerationConfig

  if d.temperature == 0:
    return GenerationConfig(do_sample=False, repetition_penalty=d.repetition_penalty)
  return GenerationConfig(
    do_sample=True,
    temperature=d.temperature,
    top_k=d.top_k,
    top_p=d.top_p,
    min_p=d.min_p or None,
    repetition_penalty=d.repetition_penalty,
  )


@pytest.mark.parametrize("config", CONFIGS, ids=[str(i) for i in range(len(CONFIGS))])
def test_generation_config_is_read_as_transformers_reads_it(config):
  from transformers import GenerationConfig

  ours = generation_defaults.from_generation_config(config)
  theirs = GenerationConfig(**config)
  assert _processors(_ours_as_transformers(ours)) == _processors(theirs)
  assert ours.max_new_tokens == config.get("max_new_tokens", generation_defaults.MAX_NEW_TOKENS)
  if not config.get("do_sample"):  # greedy whatever the sampling fields say
    assert (ours.temperature, ours.top_k, ours.top_p, ours.min_p) == (0.0, 0, 1.0, 0.0)


def test_values_are_kept_as_written_and_bad_files_are_named(tmp_path):
  d = generation_defaults.from_generation_config({"do_sample": True, "temperature": 0.7, "top_p": 0.9})
  assert repr(d.temperature) == "0.7" and d.top_k == 50  # transformers' top_k default when sampling
  path = tmp_path / "generation_config.json"
  for bad, needle in [
    ({"do_sample": True, "temperature": 0}, "temperature"),
    ({"do_sample": "yes"}, "do_sample"),
    ({"do_sample": True, "top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"repetition_penalty": "x"}, "repetition_penalty"),
  ]:
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=needle) as info:
      generation_defaults.for_checkpoint(str(tmp_path))
    assert str(path) in str(info.value)
  path.write_text("{not json")
  with pytest.raises(ValueError, match="could not read"):
    generation_defaults.for_checkpoint(str(tmp_path))


def test_sources(hf_checkpoints, demo_tokenizer):
  # The demo GGUF has no generation_config.json: the table. No tokenizer: greedy.
  assert generation_defaults.for_tokenizer(demo_tokenizer) == generation_defaults.table_defaults()
  assert generation_defaults.for_tokenizer(None).as_dict() == dict(
    generation_defaults.GREEDY, max_new_tokens=generation_defaults.MAX_NEW_TOKENS
  )
  # A tiny transformers checkpoint saved with save_pretrained: its file names no do_sample, so greedy
  # (what the existing tests that leave the settings out rely on).
  path = hf_checkpoints("tied").path
  d = generation_defaults.for_checkpoint(path)
  assert d.source == os.path.join(path, "generation_config.json")
  assert {k: d.as_dict()[k] for k in generation_defaults.GREEDY} == generation_defaults.GREEDY
  table = generation_defaults.TABLE
  assert set(table) == set(generation_defaults.FIELDS) and all(why for _, why in table.values())


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer():
  return chat.load_chat_model("tiny", tiny_context=256)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, tiny_model_and_tokenizer):
  """A tokenizer directory whose generation_config.json asks for sampling settings."""
  _, tok = tiny_model_and_tokenizer
  directory = tmp_path_factory.mktemp("with_generation_config")
  tok.save_pretrained(directory)
  path = directory / "generation_config.json"
  config = json.loads(path.read_text())
  config.update(do_sample=True, temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.05, max_new_tokens=5)
  path.write_text(json.dumps(config))
  return str(directory)


FILE_SETTINGS = dict(temperature=0.7, top_k=20, top_p=0.8, min_p=0.0, repetition_penalty=1.05)


def test_generate_stream_chat_and_server_take_the_checkpoints_defaults(tiny_model_and_tokenizer, checkpoint_dir):
  model, _ = tiny_model_and_tokenizer
  tok = smollm3_jax.Tokenizer.from_pretrained(checkpoint_dir)
  messages = [{"role": "user", "content": "Hello"}]
  unset = smollm3_jax.generate(model, tok, [messages], seed=3)[0]
  explicit = smollm3_jax.generate(model, tok, [messages], seed=3, thinking=True, max_new_tokens=5, **FILE_SETTINGS)[0]
  assert {k: unset.settings[k] for k in FILE_SETTINGS} == FILE_SETTINGS  # as written in the file
  assert unset.token_ids == explicit.token_ids and len(unset.token_ids) <= 5
  assert unset.settings["thinking"] is True
  streamed = smollm3_jax.stream(model, tok, messages, seed=3)
  assert "".join(streamed) == unset.text
  assert streamed.result.completions[0].settings == unset.settings

  session = chat.ChatSession(model, tok, seed=3)
  assert session.sampling == FILE_SETTINGS and session.max_new_tokens == 5 and session.thinking is True
  reply = session.ask("Hello")
  list(reply)
  assert reply.answer == unset.answer

  defaults = server.create_app(model, tok).state.server.defaults
  assert {k: defaults[k] for k in FILE_SETTINGS} == FILE_SETTINGS
  assert defaults["max_tokens"] == 5 and defaults["thinking"] is True
  # Explicit arguments still win.
  assert chat.ChatSession(model, tok, temperature=0.0).sampling["temperature"] == 0.0


def test_one_thinking_default_the_templates(tiny_model_and_tokenizer):
  """SmolLM3's template, rendered without enable_thinking, thinks; generate, stream, the chat and
  the server default to the same."""
  model, tok = tiny_model_and_tokenizer
  with open(TEMPLATE_PATH, encoding="utf-8") as f:
    template = f.read()
  messages = [{"role": "user", "content": "Hi"}]
  own_default = render_chat_template(template, messages, add_generation_prompt=True, date="2025-06-15")
  on = render_chat_template(template, messages, add_generation_prompt=True, enable_thinking=True, date="2025-06-15")
  assert own_default == on and generation_defaults.THINKING is True
  assert smollm3_jax.generate(model, tok, ["Hi"], max_new_tokens=1)[0].settings["thinking"] is True
  assert chat.ChatSession(model, tok).thinking is True
  app = server.create_app(model, tok)
  assert app.state.server.defaults["thinking"] is True
  from starlette.testclient import TestClient

  with TestClient(app) as client:  # the page's thinking checkbox starts from the server's default
    assert '"thinking": true' in client.get("/").text


def test_settings_are_echoed_as_given(tiny_model_and_tokenizer):
  model, tok = tiny_model_and_tokenizer
  c = smollm3_jax.generate(model, tok, ["Hi"], temperature=0.7, top_p=0.9, repetition_penalty=1.1, max_new_tokens=2)[0]
  assert (repr(c.settings["temperature"]), repr(c.settings["top_p"]), repr(c.settings["repetition_penalty"])) == (
    "0.7",
    "0.9",
    "1.1",
  )


def test_unknown_keyword_arguments_are_refused(tiny_model_and_tokenizer):
  model, tok = tiny_model_and_tokenizer
  with pytest.raises(TypeError, match="typicl_p"):  # (typical_p is a setting; a misspelling is not)
    smollm3_jax.generate(model, tok, ["Hi"], typicl_p=0.9)
  with pytest.raises(TypeError, match="typicl_p"):
    smollm3_jax.stream(model, tok, "Hi", typicl_p=0.9)
  with pytest.raises(TypeError, match="temprature"):
    chat.ChatSession(model, tok, temprature=0.5)
  with pytest.raises(TypeError, match="temprature"):
    server.create_app(model, tok, temprature=0.5)


def test_hub_id_reads_the_cached_file_without_network(tmp_path, monkeypatch):
  """A tokenizer loaded from a hub id knows only the id: its generation_config.json comes from the
  local Hugging Face cache (the tokenizer's download fetched it); nothing is downloaded."""
  from huggingface_hub import constants

  commit = "0" * 40
  repo = tmp_path / "models--org--tiny-chat"
  (repo / "refs").mkdir(parents=True)
  (repo / "refs" / "main").write_text(commit)
  snapshot = repo / "snapshots" / commit
  snapshot.mkdir(parents=True)
  (snapshot / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.3}))
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  tok = types.SimpleNamespace(name_or_path="org/tiny-chat")
  d = generation_defaults.for_tokenizer(tok)
  assert (d.temperature, d.top_k, d.source) == (0.3, 50, str(snapshot / "generation_config.json"))
  # Not in the cache: the table (as for a checkpoint without the file).
  assert generation_defaults.for_tokenizer(types.SimpleNamespace(name_or_path="org/absent")).source == "table"
