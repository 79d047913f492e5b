"""Tokenizer: the `tokenizers` library plus the checkpoint's special tokens, stop ids and chat template.

``Tokenizer.from_pretrained`` accepts a local Hugging Face directory, a hub id (only the tokenizer and
config JSON files are fetched, through the Hugging Face cache), a ``.gguf`` file, or "demo". Token ids
match ``transformers.AutoTokenizer`` on the same checkpoint, and ``apply_chat_template`` renders the
checkpoint's jinja template the way ``transformers`` does. Checkpoints without a template fall back to
the SmolLM3 format written in Python (``smollm3_jax.text.chat_format``).

Module-level imports: ``chat_format``, ``chat_template`` and ``thinking`` only; the GGUF tokenizer rebuild
and the demo path are imported when used, so importing the tokenizer never loads JAX or the model.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
from typing import Any, Iterable, Mapping, Sequence

import tokenizers
from tokenizers import processors

from smollm3_jax.checkpoints import demo
from smollm3_jax.text import chat_format, gguf_tokenizer
from smollm3_jax.text.chat_template import normalize_messages, render_chat_template
from smollm3_jax.text.thinking import THINK_END, THINK_START

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
MODEL_CONFIG_FILE = "config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_JSON_FILE = "chat_template.json"
# The only files a hub download fetches: never weights.
HUB_ALLOW_PATTERNS = (
  TOKENIZER_FILE,
  TOKENIZER_CONFIG_FILE,
  SPECIAL_TOKENS_MAP_FILE,
  GENERATION_CONFIG_FILE,
  MODEL_CONFIG_FILE,
  CHAT_TEMPLATE_FILE,
  CHAT_TEMPLATE_JSON_FILE,
)

# Tokens that end a turn or a document in the ChatML / Llama-3 families: stop tokens whenever present.
STOP_TOKEN_NAMES = ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>")
REPLACEMENT_CHAR = "\ufffd"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --------------------------------------------------------------------------------------------------
# small helpers


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
  return data


def _read_optional_json(directory: str, name: str) -> dict:
  path = os.path.join(directory, name)
  return _read_json(path) if os.path.isfile(path) else {}


def _token_content(value: Any) -> str | None:
  """A special token as tokenizer_config.json stores it: a string, an AddedToken dict, or null."""
  if value is None or isinstance(value, str):
    return value
  if isinstance(value, Mapping) and isinstance(value.get("content"), str):
    return value["content"]
  return None


def _id_list(value: Any) -> list[int]:
  if value is None:
    return []
  if isinstance(value, int) and not isinstance(value, bool):
    return [value]
  if isinstance(value, (list, tuple)):
    return [int(v) for v in value if isinstance(v, int) and not isinstance(v, bool)]
  return []


def _post_processor(
  bos: str | None, bos_id: int | None, add_bos: bool, eos: str | None, eos_id: int | None, add_eos: bool
) -> processors.PostProcessor:
  """BOS/EOS insertion for ``add_special_tokens=True``, built as transformers builds it."""
  add_bos = bool(add_bos and bos is not None and bos_id is not None)
  add_eos = bool(add_eos and eos is not None and eos_id is not None)
  single = f"{bos + ':0 ' if add_bos else ''}$A:0{' ' + eos + ':0' if add_eos else ''}"
  pair = f"{single}{' ' + bos + ':1' if add_bos else ''} $B:1{' ' + eos + ':1' if add_eos else ''}"
  special = ([(bos, bos_id)] if add_bos else []) + ([(eos, eos_id)] if add_eos else [])
  return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


# --------------------------------------------------------------------------------------------------
# the tokenizer


class Tokenizer:
  """A `tokenizers.Tokenizer` plus special tokens, stop ids and a chat template.

  Attributes: ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (eos when the checkpoint names no
  pad), ``stop_token_ids`` (tuple of ints), ``vocab_size`` (added tokens included), ``chat_template``
  (str or None), ``think_start_id`` / ``think_end_id`` (None when absent), and the token strings
  ``bos_token`` / ``eos_token`` / ``pad_token`` / ``unk_token``.
  """

  def __init__(
    self,
    backend: tokenizers.Tokenizer,
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    pad_token: str | None = None,
    unk_token: str | None = None,
    chat_template: str | None = None,
    bos_token_id: int | None = None,
    eos_token_ids: Iterable[int] = (),
    pad_token_id: int | None = None,
    name_or_path: str | None = None,
  ):
    """``*_token`` strings come from tokenizer_config.json; ``*_id``s from generation_config.json /
    config.json fill in tokens the tokenizer config leaves out. ``eos_token_ids`` lists every stop id
    the checkpoint declares (generation_config's ``eos_token_id``)."""
    if not isinstance(backend, tokenizers.Tokenizer):
      raise ValueError(f"backend must be a tokenizers.Tokenizer, got {type(backend).__name__}")
    self._backend = backend
    self.name_or_path = name_or_path
    # The strings the checkpoint names (what transformers hands a chat template), before any id fallback.
    self._named_tokens = {
      "bos_token": bos_token,
      "eos_token": eos_token,
      "unk_token": unk_token,
      "pad_token": pad_token,
    }
    self.chat_template = chat_template or None

    def lookup(token):
      return backend.token_to_id(token) if token is not None else None

    def name_of(token_id):
      return backend.id_to_token(token_id) if token_id is not None else None

    eos_token_ids = [int(i) for i in eos_token_ids]
    self.bos_token_id = lookup(bos_token)
    if self.bos_token_id is None and bos_token_id is not None:
      self.bos_token_id = int(bos_token_id)
    self.eos_token_id = lookup(eos_token)
    if self.eos_token_id is None and eos_token_ids:
      self.eos_token_id = eos_token_ids[0]
    self.pad_token_id = lookup(pad_token)
    if self.pad_token_id is None:
      self.pad_token_id = int(pad_token_id) if pad_token_id is not None else self.eos_token_id
    self.unk_token_id = lookup(unk_token)
    self.bos_token = name_of(self.bos_token_id)
    self.eos_token = name_of(self.eos_token_id)
    self.pad_token = name_of(self.pad_token_id)
    self.unk_token = name_of(self.unk_token_id)

    stops = list(eos_token_ids)
    if self.eos_token_id is not None:
      stops.append(self.eos_token_id)
    stops += [i for i in map(backend.token_to_id, STOP_TOKEN_NAMES) if i is not None]
    self.stop_token_ids: tuple[int, ...] = tuple(dict.fromkeys(stops))
    self.think_start_id = backend.token_to_id(THINK_START)
    self.think_end_id = backend.token_to_id(THINK_END)

  # ---- loading ------------------------------------------------------------------------------------

  @classmethod
  def from_pretrained(
    cls,
    checkpoint: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
    match_transformers: bool = True,
  ) -> "Tokenizer":
    """Loads from a local directory, a hub id, a ``.gguf`` file or "demo".

    Hub ids fetch only the tokenizer/config JSON files with ``huggingface_hub.snapshot_download``
    (its cache, ``HF_HUB_OFFLINE`` and ``local_files_only`` are honoured). ``match_transformers``
    only matters for GGUF files (see ``from_gguf``).
    """

    if demo.is_demo(checkpoint):
      return cls.from_gguf(demo.demo_gguf_path(), match_transformers=match_transformers)
    if not isinstance(checkpoint, (str, os.PathLike)):
      raise ValueError(f"checkpoint must be a path, a hub id or 'demo', got {type(checkpoint).__name__}")
    path = os.fspath(checkpoint)
    if path.lower().endswith(".gguf"):
      if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file not found: {path}")
      return cls.from_gguf(path, match_transformers=match_transformers)
    if os.path.isdir(path):
      return cls.from_directory(path)
    if os.path.exists(path):
      raise ValueError(f"checkpoint {path!r} is a file but not a .gguf; pass its directory instead")
    if not _HUB_ID.match(path) or path.count("/") > 1:
      raise FileNotFoundError(f"checkpoint directory not found: {path}")
    return cls.from_directory(
      _download(path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only), name_or_path=path
    )

  @classmethod
  def from_directory(cls, directory: str, name_or_path: str | None = None) -> "Tokenizer":
    """Loads a Hugging Face tokenizer directory (tokenizer.json required)."""
    tokenizer_file = os.path.join(directory, TOKENIZER_FILE)
    if not os.path.isfile(tokenizer_file):
      raise FileNotFoundError(
        f"tokenizer file not found: {tokenizer_file} (only fast tokenizers saved as {TOKENIZER_FILE} are supported)"
      )
    backend = tokenizers.Tokenizer.from_file(tokenizer_file)
    config = _read_optional_json(directory, TOKENIZER_CONFIG_FILE)
    special_map = _read_optional_json(directory, SPECIAL_TOKENS_MAP_FILE)
    generation = _read_optional_json(directory, GENERATION_CONFIG_FILE)
    model_config = _read_optional_json(directory, MODEL_CONFIG_FILE)

    def token(name):
      value = _token_content(config.get(name))
      return value if value is not None else _token_content(special_map.get(name))

    bos, eos = token("bos_token"), token("eos_token")
    # transformers rebuilds the post-processor when the config states add_bos/add_eos explicitly.
    if "add_bos_token" in config or "add_eos_token" in config or backend.post_processor is None:
      backend.post_processor = _post_processor(
        bos,
        backend.token_to_id(bos) if bos else None,
        config.get("add_bos_token", False),
        eos,
        backend.token_to_id(eos) if eos else None,
        config.get("add_eos_token", False),
      )

    def first_id(key):
      for source in (generation, model_config):
        ids = _id_list(source.get(key))
        if ids:
          return ids[0]
      return None

    eos_ids = _id_list(generation.get("eos_token_id")) or _id_list(model_config.get("eos_token_id"))
    return cls(
      backend,
      bos_token=bos,
      eos_token=eos,
      pad_token=token("pad_token"),
      unk_token=token("unk_token"),
      chat_template=_read_chat_template(directory, config),
      bos_token_id=first_id("bos_token_id"),
      eos_token_ids=eos_ids,
      pad_token_id=first_id("pad_token_id"),
      name_or_path=name_or_path or directory,
    )

  @classmethod
  def from_gguf(cls, path: str, match_transformers: bool = True) -> "Tokenizer":
    """Builds the byte-level BPE tokenizer a GGUF file describes (tokenizer.ggml.* metadata).

    With ``match_transformers`` (default) ids equal ``transformers.AutoTokenizer(..., gguf_file=)``;
    otherwise the "smollm" pre-tokenizer splits digits first, like llama.cpp and SmolLM2's
    tokenizer.json (they differ only on spaces before digits).
    """
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GGUF file not found: {path}")

    meta = gguf_tokenizer.read_metadata(path)
    backend = gguf_tokenizer.build_backend(meta, path, match_transformers)
    tokens = meta["tokens"]

    def name(key):
      token_id = meta.get(key)
      if token_id is None:
        return None
      if not 0 <= token_id < len(tokens):
        raise ValueError(f"{path}: tokenizer.ggml.{key} = {token_id} is outside the vocabulary")
      return backend.id_to_token(token_id)

    bos, eos = name("bos_token_id"), name("eos_token_id")
    backend.post_processor = _post_processor(
      bos,
      meta.get("bos_token_id"),
      meta.get("add_bos_token", False),
      eos,
      meta.get("eos_token_id"),
      meta.get("add_eos_token", False),
    )
    return cls(
      backend,
      bos_token=bos,
      eos_token=eos,
      pad_token=name("padding_token_id"),
      unk_token=name("unknown_token_id"),
      chat_template=meta.get("chat_template"),
      eos_token_ids=_id_list(meta.get("eos_token_id")),
      name_or_path=path,
    )

  # ---- saving -------------------------------------------------------------------------------------

  def save_pretrained(self, directory: str | os.PathLike) -> None:
    """Writes tokenizer.json, tokenizer_config.json and the token ids of generation_config.json
    (other fields of an existing generation_config.json are kept)."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    self._backend.save(os.path.join(directory, TOKENIZER_FILE))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **self._named_tokens, "clean_up_tokenization_spaces": False}
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    with open(os.path.join(directory, TOKENIZER_CONFIG_FILE), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, ensure_ascii=False)
    # A chat_template.jinja left by an earlier save would win over tokenizer_config.json on loading.
    jinja_path = os.path.join(directory, CHAT_TEMPLATE_FILE)
    if os.path.isfile(jinja_path):
      if self.chat_template is None:
        os.remove(jinja_path)
      else:
        with open(jinja_path, "w", encoding="utf-8") as f:
          f.write(self.chat_template)
    generation_path = os.path.join(directory, GENERATION_CONFIG_FILE)
    generation = _read_json(generation_path) if os.path.isfile(generation_path) else {}
    generation.update(
      bos_token_id=self.bos_token_id, eos_token_id=list(self.stop_token_ids), pad_token_id=self.pad_token_id
    )
    with open(generation_path, "w", encoding="utf-8") as f:
      json.dump(generation, f, indent=2)

  # ---- encoding -----------------------------------------------------------------------------------

  @property
  def backend(self) -> tokenizers.Tokenizer:
    return self._backend

  @property
  def vocab_size(self) -> int:
    return self._backend.get_vocab_size(with_added_tokens=True)

  def __len__(self) -> int:
    return self.vocab_size

  def token_to_id(self, token: str) -> int | None:
    return self._backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._backend.id_to_token(int(token_id))

  def encode(self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False) -> list[int]:
    """Token ids of ``text``; special tokens written in the text become their ids, unless
    ``split_special_tokens`` (then their text is encoded as text, as ``transformers``' option)."""
    if not isinstance(text, str):
      raise ValueError(f"text must be a str, got {type(text).__name__}")
    backend = self._text_backend() if split_special_tokens else self._backend
    return backend.encode(text, add_special_tokens=add_special_tokens).ids

  def _text_backend(self) -> tokenizers.Tokenizer:
    """A copy of the backend that encodes special-token text as text (a copy, so that no other
    thread's encode sees the switched flag)."""
    if getattr(self, "_text_copy", None) is None:
      copy = tokenizers.Tokenizer.from_str(self._backend.to_str())
      copy.encode_special_tokens = True
      self._text_copy = copy
    return self._text_copy

  def special_token_strings(self) -> tuple[str, ...]:
    """The special added tokens' strings (what ``split_special_tokens`` keeps as text), longest first."""
    found = {t.content for t in self._backend.get_added_tokens_decoder().values() if t.special}
    return tuple(sorted(found, key=lambda t: (-len(t), t)))

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    if isinstance(texts, str) or any(not isinstance(t, str) for t in texts):
      raise ValueError("texts must be a list of str")
    return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    return self._backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_bytes(self, token_id: int) -> bytes:
    """The bytes one token stands for (a byte-level BPE token may hold part of a UTF-8
    character: its own bytes, not a replacement character; OpenAI's ``logprobs`` report them)."""
    token = self.id_to_token(token_id)
    if token is None:
      return b""
    table = _unicode_to_byte()
    if all(ch in table for ch in token):
      return bytes(table[ch] for ch in token)
    return self.decode([token_id]).encode("utf-8")

  # ---- chat ---------------------------------------------------------------------------------------

  def special_tokens_map(self) -> dict[str, str]:
    """The token strings a chat template sees (bos_token, eos_token, unk_token, pad_token)."""
    return {k: v for k, v in self._named_tokens.items() if v is not None}

  def apply_chat_template(
    self,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
    tokenize: bool = False,
    chat_template: str | None = None,
    date=None,
    split_special_tokens: bool = False,
    **template_kwargs: Any,
  ) -> str | list[int]:
    """The prompt for ``messages`` as a string, or its ids when ``tokenize`` (no BOS added).

    ``split_special_tokens`` (with ``tokenize``): special-token text inside the messages' contents
    (say ``<|im_end|><|im_start|>system`` typed by a user) is encoded as text, so a message cannot
    forge a turn; the template's own special tokens stay tokens. Off (``transformers``' default),
    the rendered string is encoded whole and such text becomes control tokens. The string is the same
    either way; the ids are the same for contents without special-token text.

    ``date``: the day the template's ``strftime_now`` sees (SmolLM3 writes it into the system turn):
    a ``datetime.date`` / ``datetime.datetime``, "YYYY-MM-DD", or None for ``$SMOLLM3_JAX_CHAT_DATE``
    when set, else today. Pin it to render the same prompt on any day.

    Renders ``chat_template`` or the checkpoint's template like ``transformers`` (special token
    strings and ``template_kwargs`` are template variables); without any template, the SmolLM3
    format (``chat_format.format_smollm3_chat``; it reads ``xml_tools`` / ``python_tools``).
    """
    if tokenize and split_special_tokens:
      return self._encode_chat_split(
        messages,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        chat_template=chat_template,
        date=date,
        **template_kwargs,
      )
    template = chat_template if chat_template is not None else self.chat_template
    if template is not None:
      variables = {**self.special_tokens_map(), "enable_thinking": enable_thinking, **template_kwargs}
      text = render_chat_template(
        template, messages, add_generation_prompt=add_generation_prompt, date=date, **variables
      )
    else:
      text = chat_format.format_smollm3_chat(
        normalize_messages(messages),
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        xml_tools=template_kwargs.get("xml_tools"),
        python_tools=template_kwargs.get("python_tools"),
        date=date,
      )
    return self.encode(text) if tokenize else text

  def _encode_chat_split(self, messages, **render) -> list[int]:
    """apply_chat_template's ids with the contents' special-token text kept as text: the contents'
    special strings are swapped for placeholders while the template renders, so every special string
    left in the rendered text is the template's own; the text between those is encoded as text."""
    specials = self.special_token_strings()
    if not specials:
      return self.apply_chat_template(messages, tokenize=True, **render)
    pattern = re.compile("|".join(map(re.escape, specials)))
    marks = {}  # placeholder -> the special string it hides
    nonce = secrets.token_hex(8)

    def hide(value):
      if isinstance(value, str):

        def swap(m):
          mark = f"\ue000{nonce}:{len(marks)}\ue001"
          marks[mark] = m.group(0)
          return mark

        return pattern.sub(swap, value)
      if isinstance(value, Mapping):
        return {k: (v if k == "role" else hide(v)) for k, v in value.items()}
      if isinstance(value, (list, tuple)):
        return [hide(v) for v in value]
      return value

    text = self.apply_chat_template(hide(list(messages)), tokenize=False, **render)
    if not marks:
      return self.encode(text)
    unhide = re.compile("|".join(map(re.escape, marks)))
    ids, at = [], 0
    for m in list(pattern.finditer(text)) + [None]:
      piece = text[at : m.start() if m else len(text)]
      if piece:
        ids += self.encode(unhide.sub(lambda x: marks[x.group(0)], piece), split_special_tokens=True)
      if m:
        ids.append(self._backend.token_to_id(m.group(0)))
        at = m.end()
    return ids

  def __repr__(self) -> str:
    return f"Tokenizer({self.name_or_path!r}, vocab_size={self.vocab_size}, stop_token_ids={self.stop_token_ids})"


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
  """The inverse of byte-level BPE's byte -> printable character table (GPT-2's bytes_to_unicode)."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  chars = list(printable)
  extra = 0
  for b in range(256):
    if b not in printable:
      printable.append(b)
      chars.append(256 + extra)
      extra += 1
  return {chr(c): b for b, c in zip(printable, chars)}


class IncrementalDecoder:
  """Streams text token by token without ever emitting a broken multi-byte character.

  ``push(id)`` returns the newly printable text; ``flush()`` the rest. All pushes plus the flush equal
  ``tokenizer.decode(all_ids)``. Each push decodes only the tokens since the last clean point.
  """

  def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
    self._tokenizer = tokenizer
    self._skip = skip_special_tokens
    self.reset()

  def reset(self) -> None:
    self._ids: list[int] = []
    self._emitted: list[str] = []
    # ids[prefix:read] were already emitted; they are decoded again as context so that decoders that
    # treat a sequence's start specially (leading-space stripping) give the right text for the rest.
    self._prefix = 0
    self._read = 0

  @property
  def token_ids(self) -> list[int]:
    return list(self._ids)

  def push(self, token_id: int) -> str:
    self._ids.append(int(token_id))
    decode = functools.partial(self._tokenizer.decode, skip_special_tokens=self._skip)
    before = decode(self._ids[self._prefix : self._read])
    now = decode(self._ids[self._prefix :])
    # A trailing U+FFFD means the last token ended inside a UTF-8 character: wait for the rest.
    if len(now) > len(before) and not now.endswith(REPLACEMENT_CHAR) and now.startswith(before):
      new = now[len(before) :]
      self._prefix, self._read = self._read, len(self._ids)
      self._emitted.append(new)
      return new
    return ""

  def flush(self) -> str:
    """The text not yet returned (a truly incomplete character comes out as U+FFFD)."""
    full = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
    done = "".join(self._emitted)
    if full.startswith(done):
      rest = full[len(done) :]
    else:  # cannot happen with byte-level decoders; never emit text twice
      before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=self._skip)
      rest = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=self._skip)[len(before) :]
    self._emitted.append(rest)
    self._prefix = self._read = len(self._ids)
    return rest


# --------------------------------------------------------------------------------------------------
# loading helpers


def _read_chat_template(directory: str, config: Mapping[str, Any]) -> str | None:
  """chat_template.jinja, then chat_template.json, then tokenizer_config.json's "chat_template"."""
  path = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return f.read()
  template = _read_optional_json(directory, CHAT_TEMPLATE_JSON_FILE).get("chat_template")
  if template is None:
    template = config.get("chat_template")
  if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
    template = named.get("default")
  return template if isinstance(template, str) else None


def _download(repo_id: str, revision: str | None, cache_dir: str | None, local_files_only: bool) -> str:
  """The snapshot folder holding the tokenizer/config files of a hub repo (cache first)."""
  import huggingface_hub
  from huggingface_hub import constants, errors

  offline = (
    local_files_only
    or constants.is_offline_mode()
    or (os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"))
  )
  try:
    return huggingface_hub.snapshot_download(
      repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=list(HUB_ALLOW_PATTERNS), local_files_only=offline
    )
  except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
    cache = cache_dir or constants.HF_HUB_CACHE
    raise FileNotFoundError(
      f"the tokenizer of hub id {repo_id!r} is not in the Hugging Face cache ({cache}) and "
      f"{'downloads are disabled (HF_HUB_OFFLINE / local_files_only)' if offline else 'the hub is unreachable'}; "
      f"download it while online or pass a local directory (no directory {repo_id!r} exists "
      f"here either)"
    ) from e
  except errors.HfHubHTTPError as e:
    raise FileNotFoundError(f"could not fetch the tokenizer of hub id {repo_id!r}: {e}") from e


__all__ = ["Tokenizer", "IncrementalDecoder"]
