"""The user API: :func:`generate`, :func:`stream` and their results, and prompt rendering.

    result = smollm3_jax.generate(model, tok, ["Hello!"], temperature=0.6, top_p=0.95)
    for piece in smollm3_jax.stream(model, tok, "Tell me a story."): ...

Every argument is checked here, on the host, before anything compiles; unset sampling arguments
take the checkpoint's defaults (:mod:`smollm3_jax.generation_defaults`). The work runs on the cached
:class:`~smollm3_jax.engine.Engine` of the model (:func:`~smollm3_jax.engine.get_engine`).

Imports the engine, the decode constants, generation defaults, thinking, validation and sampling;
the tokenizer is passed in (never imported at module level), and nothing here loads checkpoints.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from smollm3_jax import sampling, validation
from smollm3_jax.decode import EOS, STOP_REASONS, DecodeState
from smollm3_jax.engine import Engine, get_engine
from smollm3_jax.model import SmolLM3
from smollm3_jax.thinking import VisibleText, prompt_opens_thinking, split_thinking

@dataclasses.dataclass
class Completion:
  """One prompt's generation. ``token_ids`` include the stop token when one ended the row."""

  prompt: str
  prompt_token_ids: list[int]
  token_ids: list[int]
  text: str
  thinking: str
  answer: str
  stop_reason: str
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class GenerationStats:
  """Timings of one call, in seconds; throughput in tokens per second."""

  prompt_tokens: int = 0
  generated_tokens: int = 0
  compile_seconds: float = 0.0
  prefill_seconds: float = 0.0
  time_to_first_token: float = 0.0
  decode_seconds: float = 0.0
  decode_tokens_per_second: float = 0.0
  batch_size: int = 0
  prompt_bucket: int = 0
  cache_length: int = 0

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@dataclasses.dataclass
class GenerationResult:
  completions: list[Completion]
  stats: GenerationStats

  def __iter__(self):
    return iter(self.completions)

  def __len__(self):
    return len(self.completions)

  def __getitem__(self, i):
    return self.completions[i]


def row_seeds(seed, n: int) -> np.ndarray:
  """Per-row seeds [n] uint32: given per row, or derived from a base seed and the row's index.
  Seeds are integers in [0, 2**32 - 1] (ValueError otherwise: never truncated or wrapped)."""
  if isinstance(seed, (list, tuple, np.ndarray)) and np.ndim(seed) == 1:
    return validation.as_seeds("seed", seed, n).astype(np.uint32)
  base = np.uint64(validation.as_count("seed", seed, low=0, high=validation.UINT32_MAX))
  idx = np.arange(n, dtype=np.uint64)
  mixed = (base * np.uint64(0x9E3779B1) + idx * np.uint64(0x85EBCA77) + np.uint64(0x165667B1))
  return (mixed & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def render_prompts(tokenizer, prompts, *, chat: bool = True, thinking=True, date=None,
                   vocab_size: int | None = None) -> tuple[list[str], list[list[int]]]:
  """Prompt texts and ids. A prompt is a string (one user message when ``chat``), a message list,
  or a sequence of token ids (used as is, each checked to lie in ``[0, vocab_size)``; default the
  tokenizer's vocabulary). ``date``: the day the chat template sees (see
  ``Tokenizer.apply_chat_template``)."""
  if isinstance(prompts, str) or _is_messages(prompts) or _is_ids(prompts):
    prompts = [prompts]
  if not isinstance(prompts, (list, tuple)):
    raise ValueError(f"prompts must be a string, a message list, token ids or a list of those, "
                     f"got {type(prompts).__name__}")
  prompts = list(prompts)
  if not prompts:
    raise ValueError("prompts: need at least one prompt, got an empty list")
  thinking = validation.as_bools("thinking", thinking, len(prompts))
  texts, ids = [], []
  for i, p in enumerate(prompts):
    if _is_ids(p) or (isinstance(p, (list, tuple, np.ndarray)) and len(p) == 0):
      if len(p) == 0:
        raise ValueError(f"prompt {i} is empty")
      limit = vocab_size or (tokenizer.vocab_size if tokenizer is not None else 2**31 - 1)
      ids.append(validation.check_token_ids(f"prompt {i}", p, limit))
      texts.append(tokenizer.decode(ids[-1]) if tokenizer is not None else "")
      continue
    if tokenizer is None:
      raise ValueError("a tokenizer is needed for text prompts (or pass token ids)")
    if isinstance(p, str) and not p.strip():
      raise ValueError(f"prompt {i} is empty (or only whitespace)")
    if chat:
      if isinstance(p, str):
        messages = [{"role": "user", "content": p}]
      else:
        try:
          messages = validation.check_messages(p)
        except ValueError as e:
          raise ValueError(f"prompt {i}: {e}") from None
      text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           enable_thinking=bool(thinking[i]), tokenize=False, date=date)
    else:
      if not isinstance(p, str):
        raise ValueError(f"prompt {i}: raw (chat=False) prompts must be strings or token ids")
      text = p
    texts.append(text)
    ids.append(tokenizer.encode(text))
  return texts, ids


def _plain_number(v):
  """A Python int / float for a setting as the caller gave it (numpy scalars unwrapped)."""
  return v.item() if hasattr(v, "item") else v


def _is_messages(p) -> bool:
  return isinstance(p, (list, tuple)) and len(p) > 0 and isinstance(p[0], dict)


def _is_ids(p) -> bool:
  return (isinstance(p, np.ndarray) and p.ndim == 1) or (
      isinstance(p, (list, tuple)) and len(p) > 0 and isinstance(p[0], (int, np.integer)))


def _finish(tokenizer, engine_state: DecodeState, n, texts, prompt_ids, stop_ids, settings) -> list[Completion]:
  toks = np.asarray(engine_state.tokens)
  counts = np.asarray(engine_state.num_generated)
  reasons = np.asarray(engine_state.reason)
  out = []
  for i in range(n):
    ids = toks[i, :counts[i]].tolist()
    body = ids[:-1] if ids and reasons[i] == EOS and ids[-1] in stop_ids else ids
    text = tokenizer.decode(body) if tokenizer is not None else ""
    thinking, answer = (split_thinking(text, inside=prompt_opens_thinking(texts[i])) if tokenizer is not None
                        else ("", ""))
    out.append(Completion(prompt=texts[i], prompt_token_ids=list(prompt_ids[i]), token_ids=ids, text=text,
                          thinking=thinking, answer=answer, stop_reason=STOP_REASONS[reasons[i]],
                          settings={k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in settings.items()}))
  return out


def _setup(model, tokenizer, prompts, *, chat, thinking, temperature, top_k, top_p, min_p,
           repetition_penalty, max_new_tokens, seed, newline_limit, stop_ids, context_length, engine,
           share_prefill=False, mesh=None, date=None):
  """Checks every argument (before any compile), renders the prompts and prepares the batch."""
  vocab = model.config.vocab_size
  texts, prompt_ids = render_prompts(tokenizer, prompts, chat=chat, thinking=thinking, date=date,
                                     vocab_size=vocab)
  n = len(prompt_ids)
  for i, ids in enumerate(prompt_ids):  # a tokenizer's added tokens may lie beyond the model's
    prompt_ids[i] = validation.check_token_ids(f"prompt {i}", ids, vocab)
  max_new = validation.as_counts("max_new_tokens", max_new_tokens, n, low=1)
  nl = validation.as_counts("newline_limit", 0 if newline_limit is None else newline_limit, n)
  if context_length is not None:
    context_length = validation.as_count("context_length", context_length, low=2,
                                         high=model.config.max_position_embeddings)
  params = sampling.SamplingParams.make(n, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                        repetition_penalty=repetition_penalty)
  seeds = row_seeds(seed, n)
  if stop_ids is None:
    stop_ids = tuple(tokenizer.stop_token_ids) if tokenizer is not None else tuple(model.config.eos_token_id)
  if isinstance(stop_ids, (int, np.integer)):
    stop_ids = (stop_ids,)
  stop_ids = tuple(validation.check_token_ids("stop_ids", list(stop_ids), vocab))
  engine = engine or get_engine(model, tokenizer, mesh=mesh)
  engine.sync()
  n, args = engine.prepare(prompt_ids, params=params, seeds=seeds, max_new_tokens=max_new,
                           newline_limit=nl, stop_ids=stop_ids, context_length=context_length,
                           share_prefill=share_prefill)
  # Settings echoed as given (0.7, not its float32 value 0.699999988079071).
  given = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
               repetition_penalty=repetition_penalty)
  settings = {name: [_plain_number(v) for v in validation.per_row(name, value, n)]
              for name, value in given.items()}
  settings.update(seed=seeds, thinking=validation.as_bools("thinking", thinking, n))
  return engine, n, args, texts, prompt_ids, tuple(stop_ids), settings


def _stats(state: DecodeState, n, prompt_ids, timings) -> GenerationStats:
  gen = int(np.asarray(state.num_generated)[:n].sum())
  decode_tokens = max(gen - n, 0)  # the first token of each row comes from prefill
  dt = timings["decode_seconds"]
  return GenerationStats(
      prompt_tokens=int(sum(len(p) for p in prompt_ids)), generated_tokens=gen,
      compile_seconds=timings["compile_seconds"], prefill_seconds=timings["prefill_seconds"],
      time_to_first_token=timings["time_to_first_token"], decode_seconds=dt,
      decode_tokens_per_second=decode_tokens / dt if dt > 0 else 0.0,
      batch_size=int(state.tokens.shape[0]), prompt_bucket=int(state.cache.length - state.tokens.shape[1] + 1),
      cache_length=int(state.cache.length))


def generate(model: SmolLM3, tokenizer, prompts, *, chat: bool = True, thinking=None,
             temperature=None, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
             max_new_tokens=None, seed=0, newline_limit=None, stop_ids=None,
             context_length: int | None = None, engine: Engine | None = None, mesh=None,
             share_prefill: bool = False, date=None) -> GenerationResult:
  """Generates one completion per prompt.

  ``prompts``: a string, a list of strings, or message lists (``chat=True`` renders them with the
  chat template; ``thinking`` maps to its ``enable_thinking``). Every sampling argument, the seed,
  ``thinking``, ``max_new_tokens`` and ``newline_limit`` may be a scalar or one value per prompt.
  Sampling arguments, ``max_new_tokens`` and ``thinking`` left as None take the checkpoint's
  defaults (:func:`smollm3_jax.generation_defaults.for_tokenizer`: its generation_config.json, else
  the documented table; without a tokenizer, greedy; thinking on). ``temperature=0`` is greedy. ``newline_limit=N`` stops a row after N consecutive newline tokens.
  ``mesh`` (a Mesh or "data=D,model=M") shards the run; by default the model's own mesh, if any.
  ``share_prefill=True`` runs each distinct prompt through prefill once and shares its cache among
  the rows that repeat it (a grid of settings over a few prompts); the number of distinct prompts
  then sets the prefill program's batch bucket, so it may compile once per such bucket.
  ``date`` is the day the chat template sees (SmolLM3 writes it into the prompt): a date,
  "YYYY-MM-DD", or None for ``$SMOLLM3_JAX_CHAT_DATE`` when set, else today.
  Every argument is checked before anything compiles (ValueError naming it).
  """
  from smollm3_jax import generation_defaults

  filled = generation_defaults.for_tokenizer(tokenizer).fill(
      thinking=thinking, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
      repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
  engine, n, args, texts, prompt_ids, stop_ids, settings = _setup(
      model, tokenizer, prompts, chat=chat, **filled, seed=seed, newline_limit=newline_limit,
      stop_ids=stop_ids, context_length=context_length, engine=engine, mesh=mesh,
      share_prefill=share_prefill, date=date)
  state = timings = None
  for state, timings in engine.run(n, args):
    pass
  return GenerationResult(_finish(tokenizer, state, n, texts, prompt_ids, stop_ids, settings),
                          _stats(state, n, prompt_ids, timings))


class Stream:
  """Iterates over text pieces of one prompt's completion as it decodes; ``.result`` afterwards.

  Runs the same compiled decode program in chunks of ``chunk_steps`` tokens.
  """

  def __init__(self, model, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4, **kwargs):
    from smollm3_jax import generation_defaults
    from smollm3_jax.tokenizer import IncrementalDecoder

    unknown = sorted(set(kwargs) - set(_DEFAULTS))
    if unknown:
      raise TypeError(f"stream() got unexpected keyword argument(s): {', '.join(unknown)}")
    validation.as_count("chunk_steps", chunk_steps, low=1)
    if not (isinstance(prompt, str) or _is_messages(prompt) or _is_ids(prompt)):
      raise ValueError("stream() takes one prompt: a string, a message list or token ids")
    args = {**_DEFAULTS, **kwargs}
    args.update(generation_defaults.for_tokenizer(tokenizer).fill(
        **{name: args[name] for name in (*generation_defaults.FIELDS, "thinking")}))
    self._setup = _setup(model, tokenizer, [prompt], **args)
    self._tokenizer = tokenizer
    self._decoder = IncrementalDecoder(tokenizer)
    self._hide = hide_thinking
    self._chunk = chunk_steps
    self.result: GenerationResult | None = None
    self.cancelled = False

  def cancel(self):
    """Stops decoding after the current chunk (the result then holds what was decoded)."""
    self.cancelled = True

  def __iter__(self) -> Iterator[str]:
    engine, n, args, texts, prompt_ids, stop_ids, settings = self._setup
    fed = 0
    shown = VisibleText(self._hide, inside=prompt_opens_thinking(texts[0]))
    state = timings = None
    for state, timings in engine.run(n, args, chunk_steps=self._chunk):
      count = int(np.asarray(state.num_generated)[0])
      ids = np.asarray(state.tokens)[0, fed:count].tolist()
      finished = bool(np.asarray(state.done)[0])
      if finished and int(np.asarray(state.reason)[0]) == EOS and ids and ids[-1] in stop_ids:
        ids = ids[:-1]
      fed = count
      piece = "".join(self._decoder.push(t) for t in ids)
      out = shown.feed(piece)
      if out:
        yield out
      if self.cancelled:
        break
    tail = shown.feed(self._decoder.flush(), final=True)
    if tail:
      yield tail
    self.result = GenerationResult(_finish(self._tokenizer, state, n, texts, prompt_ids, stop_ids, settings),
                                   _stats(state, n, prompt_ids, timings))


# stream()'s keyword arguments and their defaults (None: the checkpoint's, as in generate()).
_DEFAULTS = dict(chat=True, thinking=None, temperature=None, top_k=None, top_p=None, min_p=None,
                 repetition_penalty=None, max_new_tokens=None, seed=0, newline_limit=None, stop_ids=None,
                 context_length=None, engine=None, mesh=None, share_prefill=False, date=None)


def stream(model: SmolLM3, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4,
           **kwargs) -> Stream:
  """Streams one prompt's completion as text pieces (same arguments as :func:`generate`).

      s = stream(model, tok, "Tell me a story.")
      for piece in s: print(piece, end="")
      s.result          # after the loop: the GenerationResult, as generate() returns it (stats included)
  """
  return Stream(model, tokenizer, prompt, hide_thinking=hide_thinking, chunk_steps=chunk_steps, **kwargs)
