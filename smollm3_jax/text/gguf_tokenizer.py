"""The tokenizer a GGUF file describes, rebuilt as a ``tokenizers`` byte-level BPE (next to the GGUF
weight loader, whose parsed header it shares): vocabulary, merges, the pre-tokenizer split named by
``tokenizer.ggml.pre`` and the special tokens, as ``transformers``' GGUF loader builds them.
``Tokenizer.from_gguf`` adds the special-token ids and the chat template.
"""

from __future__ import annotations

from typing import Any, Mapping

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

from smollm3_jax.checkpoints.gguf import read_header

# GGUF token types (llama.cpp's llama_token_type).
_GGUF_TOKEN_CONTROL = 3
_GGUF_TOKEN_USER_DEFINED = 4

# Pre-tokenizer split patterns for `tokenizer.ggml.pre`; names not listed (gpt2, smollm, ...) get the
# GPT-2 byte-level regex, as transformers' GGUF loader does (we match its ids).
_LLAMA3_PATTERN = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
  r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# llama.cpp's "smollm" (and SmolLM2's own tokenizer.json) first splits digits one by one, which
# changes how a run of spaces before a digit is cut ("x  1": x ĠĠ 1, transformers: x Ġ Ġ 1).
# transformers' GGUF loader ignores that; ``match_transformers=False`` restores it.
GGUF_DIGIT_SPLIT_PRES = ("smollm",)
GGUF_SPLIT_PATTERNS = {
  "llama-bpe": _LLAMA3_PATTERN,
  "llama3": _LLAMA3_PATTERN,
  "llama-v3": _LLAMA3_PATTERN,
  "smaug-bpe": _LLAMA3_PATTERN,
  "dbrx": _LLAMA3_PATTERN,
  "falcon3": _LLAMA3_PATTERN,
  "pixtral": _LLAMA3_PATTERN,
  "qwen2": _QWEN2_PATTERN,
  "deepseek-r1-qwen": _QWEN2_PATTERN,
}


def _byte_alphabet() -> dict[int, str]:
  """GPT-2's byte -> printable character map used by byte-level BPE vocabularies."""
  printable = (
    list(range(ord("!"), ord("~") + 1))
    + list(range(ord("\xa1"), ord("\xac") + 1))
    + list(range(ord("\xae"), ord("\xff") + 1))
  )
  mapping = {b: chr(b) for b in printable}
  extra = 0
  for b in range(256):
    if b not in mapping:
      mapping[b] = chr(256 + extra)
      extra += 1
  return mapping


def read_metadata(path: str) -> dict[str, Any]:
  """The tokenizer.* metadata of a GGUF file, keys without the "tokenizer.ggml." prefix. The
  header is shared with the model loader (parsed once per file version, or read from the on-disk
  GGUF header index)."""
  value = read_header(path).fields.get
  meta: dict[str, Any] = {}
  for key in (
    "model",
    "pre",
    "tokens",
    "merges",
    "token_type",
    "bos_token_id",
    "eos_token_id",
    "padding_token_id",
    "unknown_token_id",
    "add_bos_token",
    "add_eos_token",
  ):
    v = value(f"tokenizer.ggml.{key}")
    if v is not None:
      meta[key] = v
  template = value("tokenizer.chat_template")
  if template is not None:
    meta["chat_template"] = template
  if "tokens" not in meta:
    raise ValueError(f"{path} has no tokenizer (metadata tokenizer.ggml.tokens is missing)")
  return meta


def build_backend(meta: Mapping[str, Any], path: str, match_transformers: bool = True) -> tokenizers.Tokenizer:
  """Byte-level BPE from GGUF vocab/merges, split like `tokenizer.ggml.pre`, special tokens added."""
  model_type = meta.get("model")
  if model_type != "gpt2":
    raise ValueError(
      f"{path}: tokenizer.ggml.model = {model_type!r}; only byte-level BPE ('gpt2') GGUF tokenizers are supported"
    )
  if "merges" not in meta:
    raise ValueError(f"{path}: tokenizer.ggml.merges is missing")
  byte_chars = _byte_alphabet()
  alphabet = set(byte_chars.values())

  def spelled(token: str) -> str:
    # Tokens stored as raw text (not in the byte alphabet) are respelled byte by byte.
    if set(token) <= alphabet:
      return token
    return "".join(byte_chars[b] for b in token.encode("utf-8"))

  tokens = [spelled(t) for t in meta["tokens"]]
  vocab = {t: i for i, t in enumerate(tokens)}
  merges = []
  for m in meta["merges"]:
    pair = m.split(" ")
    if len(pair) != 2:
      raise ValueError(f"{path}: malformed merge {m!r} in tokenizer.ggml.merges")
    merges.append((pair[0], pair[1]))
  backend = tokenizers.Tokenizer(
    models.BPE(
      vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
  )
  pattern = GGUF_SPLIT_PATTERNS.get(meta.get("pre"))
  if pattern is None:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if not match_transformers and meta.get("pre") in GGUF_DIGIT_SPLIT_PRES:
      byte_level = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    backend.pre_tokenizer = byte_level
  else:
    backend.pre_tokenizer = pre_tokenizers.Sequence(
      [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
      ]
    )
  backend.decoder = decoders.ByteLevel()

  types = list(meta.get("token_type") or ())
  raw = meta["tokens"]
  # Control tokens become special added tokens (matched whole, skippable); a "control" token outside
  # the byte alphabet is a converter mislabel and is left alone, as transformers does.
  control = [
    AddedToken(t, special=True, normalized=False)
    for t, kind in zip(raw, types)
    if kind == _GGUF_TOKEN_CONTROL and set(t) <= alphabet
  ]
  if control:
    backend.add_special_tokens(control)
  user_defined = [
    AddedToken(t, special=False, normalized=False)
    for t, kind in zip(raw, types)
    if kind == _GGUF_TOKEN_USER_DEFINED and t in vocab
  ]
  if user_defined:
    backend.add_tokens(user_defined)
  return backend
