"""The user API: :func:`generate`, :func:`stream` and their results, and prompt rendering.

    result = smollm3_jax.generate(model, tok, ["Hello!"], temperature=0.6, top_p=0.95)
    for piece in smollm3_jax.stream(model, tok, "Tell me a story."): ...

Every argument is checked here, on the host, before anything compiles; unset sampling arguments
take the checkpoint's defaults (:mod:`smollm3_jax.generation.defaults`). The work runs on the cached
:class:`~smollm3_jax.generation.engine.Engine` of the model (:func:`~smollm3_jax.generation.engine.get_engine`).

Imports the engine, the decode constants, generation defaults, thinking, validation and sampling;
the tokenizer is passed in (never imported at module level), and nothing here loads checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterator

import numpy as np

from smollm3_jax.generation import sampling
from smollm3_jax.utils import validation
from smollm3_jax.generation.decode import EOS, MAX_STOP_IDS, STOP, STOP_REASONS
from smollm3_jax.generation.engine import CHUNK_STEPS, MAX_TOP_LOGPROBS, Engine, Request, get_engine
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.text.thinking import VisibleText, prompt_opens_thinking, split_thinking

@dataclasses.dataclass
class TokenLogprobs:
  """Per generated token, aligned with ``Completion.token_ids`` (arrays [T], the alternatives
  [T, K]); log-probabilities in nats. ``logprob``: log-softmax of the model's raw logits at the
  token; ``processed_logprob``: under the distribution it was sampled from (after the processors,
  temperature and filters; greedy rows: the processed logits), as ``transformers``'
  ``compute_transition_scores`` on ``output_scores``; ``entropy`` / ``processed_entropy`` of the two
  distributions; ``rank``: 1 + the tokens with a higher raw logit; ``top_ids`` / ``top_logprobs``: the
  K most likely raw tokens (``top_logprobs=K``)."""

  logprob: np.ndarray
  processed_logprob: np.ndarray
  entropy: np.ndarray
  processed_entropy: np.ndarray
  rank: np.ndarray
  top_ids: np.ndarray
  top_logprobs: np.ndarray

  @classmethod
  def of(cls, record: dict, n: int) -> "TokenLogprobs":
    return cls(**{k: np.asarray(v)[:n] for k, v in record.items()})


@dataclasses.dataclass
class Completion:
  """One prompt's generation. ``token_ids`` include the stop token when one ended the row;
  ``logprobs`` (with ``logprobs=True``) holds per-token figures aligned with them."""

  prompt: str
  prompt_token_ids: list[int]
  token_ids: list[int]
  text: str
  thinking: str
  answer: str
  stop_reason: str
  settings: dict[str, Any] = dataclasses.field(default_factory=dict)
  logprobs: TokenLogprobs | None = None
  score: float | None = None  # beam search: the hypothesis' score (transformers' sequences_scores)


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
  batch_size: int = 0          # slots of the pool
  cache_length: int = 0        # cache slots per row
  decode_steps: int = 0
  prefilled_prompts: int = 0     # prompts run through prefill (repeats share one)
  slot_utilization: float = 0.0  # generated tokens / (slots x decode steps)
  queue_seconds: float = 0.0     # mean wait of a row for a slot
  max_queue_seconds: float = 0.0

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
                   vocab_size: int | None = None, split_special_tokens: bool = False
                   ) -> tuple[list[str], list[list[int]]]:
  """Prompt texts and ids. A prompt is a string (one user message when ``chat``), a message list,
  or a sequence of token ids (used as is, each checked to lie in ``[0, vocab_size)``; default the
  tokenizer's vocabulary). ``date``: the day the chat template sees; ``split_special_tokens``:
  special-token text in the messages stays text (see ``Tokenizer.apply_chat_template``; raw
  ``chat=False`` prompts are then encoded all as text)."""
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
      render = dict(add_generation_prompt=True, enable_thinking=bool(thinking[i]), date=date)
      text = tokenizer.apply_chat_template(messages, tokenize=False, **render)
      ids.append(tokenizer.apply_chat_template(messages, tokenize=True, split_special_tokens=True, **render)
                 if split_special_tokens else tokenizer.encode(text))
    else:
      if not isinstance(p, str):
        raise ValueError(f"prompt {i}: raw (chat=False) prompts must be strings or token ids")
      text = p
      ids.append(tokenizer.encode(text, split_special_tokens=split_special_tokens))
    texts.append(text)
  return texts, ids


def _plain_number(v):
  """A Python int / float for a setting as the caller gave it (numpy scalars unwrapped)."""
  return v.item() if hasattr(v, "item") else v


def _is_messages(p) -> bool:
  return isinstance(p, (list, tuple)) and len(p) > 0 and isinstance(p[0], dict)


def _is_ids(p) -> bool:
  return (isinstance(p, np.ndarray) and p.ndim == 1) or (
      isinstance(p, (list, tuple)) and len(p) > 0 and isinstance(p[0], (int, np.integer)))


def _finish(tokenizer, requests, texts, prompt_ids, stop_ids, settings, stop=()) -> list[Completion]:
  """Completions of finished requests (``tag`` = the row's index into texts/prompt_ids/settings)."""
  out = []
  for r in requests:
    i = r.tag
    ids = list(r.token_ids)
    body = ids[:-1] if ids and r.reason == EOS and ids[-1] in stop_ids else ids
    text = tokenizer.decode(body) if tokenizer is not None else ""
    if r.reason == STOP:  # cut the stop string (and anything after it) from the text
      text = _cut_stop(text, stop)
    thinking, answer = (split_thinking(text, inside=prompt_opens_thinking(texts[i])) if tokenizer is not None
                        else ("", ""))
    out.append(Completion(prompt=texts[i], prompt_token_ids=list(prompt_ids[i]), token_ids=ids, text=text,
                          thinking=thinking, answer=answer, stop_reason=STOP_REASONS[r.reason],
                          settings={k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in settings.items()},
                          logprobs=TokenLogprobs.of(r.record, len(ids)) if r.record is not None else None))
  return out


MAX_STOP_STRINGS = 4  # stop strings per call (OpenAI's limit)


def _check_stop(stop) -> tuple[str, ...]:
  if stop is None:
    return ()
  if isinstance(stop, str):
    stop = (stop,)
  if not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) and x for x in stop):
    raise ValueError(f"stop: a non-empty string or a list of them, got {stop!r}")
  if len(stop) > MAX_STOP_STRINGS:
    raise ValueError(f"stop: at most {MAX_STOP_STRINGS} strings, got {len(stop)}")
  return tuple(stop)


def _cut_stop(text: str, stop) -> str:
  hits = [text.find(x) for x in stop if x in text]
  return text[:min(hits)] if hits else text


def _stop_string_hit(tokenizer, ids: list[int], stop, checked: int) -> int | None:
  """The smallest k > checked with a stop string in the text of ids[:k] (the token that completes
  it ends the row, as ``transformers``' stop strings), else None."""
  longest = max(len(x) for x in stop)
  for k in range(checked + 1, len(ids) + 1):
    # The stop string ends within token k-1: decoding a tail of a few tokens is enough.
    tail = tokenizer.decode(ids[max(0, k - longest - 4):k])
    if any(x in tail for x in stop):
      return k
  return None


def cut_at_stop_string(pool, tokenizer, row, stop, checked: int) -> None:
  """Ends ``row`` (a pool Request) at the first token whose text completes a stop string, checking the
  tokens after the first ``checked``: its tokens cut there, its slot freed, its reason "stop"."""
  k = _stop_string_hit(tokenizer, row.token_ids, stop, checked)
  if k is not None:
    row.token_ids = row.token_ids[:k]
    if not row.done:
      pool.cancel(row, STOP)
    row.reason, row.done = STOP, True


@dataclasses.dataclass
class _Call:
  """A checked generate/stream call: its rows as pool requests, and how to build the results."""

  engine: Engine
  requests: list
  texts: list
  prompt_ids: list
  stop_ids: tuple
  settings: dict
  slots: int
  length: int
  context: int | None
  newline_guard: bool
  stop: tuple = ()
  logprobs: bool = False
  top_logprobs: int = 0

  def pool(self, chunk_steps: int = CHUNK_STEPS):
    pool = self.engine.pool(self.slots, self.length, stop_ids=self.stop_ids, context_length=self.context,
                            newline_guard=self.newline_guard, chunk_steps=chunk_steps, logprobs=self.logprobs,
                            top_logprobs=self.top_logprobs, shrink=True)
    pool.submit(self.requests)
    return pool


def _setup(model, tokenizer, prompts, *, chat, thinking, max_new_tokens, seed, newline_limit, stop_ids,
           context_length, engine, share_prefill=True, mesh=None, date=None, num_return_sequences=1, slots=None,
           stop=None, cache_length=None, logprobs=False, top_logprobs=0, split_special_tokens=False,
           **sampling_settings) -> _Call:
  """Checks every argument (before any compile), renders the prompts and makes one request per row."""
  vocab = model.config.vocab_size
  texts, prompt_ids = render_prompts(tokenizer, prompts, chat=chat, thinking=thinking, date=date,
                                     vocab_size=vocab, split_special_tokens=split_special_tokens)
  repeats = validation.as_count("num_return_sequences", num_return_sequences, low=1)
  n_prompts = len(prompt_ids)
  for i, ids in enumerate(prompt_ids):  # a tokenizer's added tokens may lie beyond the model's
    prompt_ids[i] = validation.check_token_ids(f"prompt {i}", ids, vocab)
  per_prompt = lambda x: x if repeats == 1 else [v for v in x for _ in range(repeats)]
  thinking = validation.as_bools("thinking", thinking, n_prompts)
  texts, prompt_ids, thinking = per_prompt(texts), per_prompt(prompt_ids), per_prompt(list(thinking))
  n = len(prompt_ids)
  expand = lambda name, value: per_prompt(validation.per_row(name, value, n_prompts))
  max_new = validation.as_counts("max_new_tokens", expand("max_new_tokens", max_new_tokens), n, low=1)
  nl = validation.as_counts("newline_limit", expand("newline_limit", 0 if newline_limit is None else newline_limit), n)
  cfg = model.config
  context = None
  if context_length is not None:
    context = validation.as_count("context_length", context_length, low=2, high=cfg.max_position_embeddings)
  unknown = sorted(set(sampling_settings) - set(sampling.SETTINGS))
  if unknown:
    raise TypeError(f"unknown sampling setting(s): {', '.join(unknown)} (known: {', '.join(sampling.SETTINGS)})")
  given = {k: v for k, v in sampling_settings.items() if v is not None}
  rows = {k: (expand(k, v) if not isinstance(v, dict) else v) for k, v in given.items()}
  sampling.SamplingParams.make(n, vocab_size=vocab, **rows)  # checks every value (ValueError naming it)
  seeds = row_seeds(seed, n)
  if stop_ids is None:
    stop_ids = tuple(tokenizer.stop_token_ids) if tokenizer is not None else tuple(cfg.eos_token_id)
  if isinstance(stop_ids, (int, np.integer)):
    stop_ids = (stop_ids,)
  stop_ids = tuple(validation.check_token_ids("stop_ids", list(stop_ids), vocab))
  if len(stop_ids) > MAX_STOP_IDS:
    raise ValueError(f"stop_ids: at most {MAX_STOP_IDS} stop ids, got {len(stop_ids)}")
  stop = _check_stop(stop)
  if stop and tokenizer is None:
    raise ValueError("stop: stop strings need a tokenizer")
  limit = context or cfg.max_position_embeddings
  for i, p in enumerate(prompt_ids):
    if len(p) >= limit:
      raise ValueError(f"prompt {i} has {len(p)} tokens, which does not fit the context of {limit} tokens "
                       f"(it needs room for at least one new token)")
  if slots is not None:
    slots = validation.as_count("slots", slots, low=1)
  logprobs = validation.as_bool("logprobs", logprobs)
  top_logprobs = validation.as_count("top_logprobs", top_logprobs, low=0, high=MAX_TOP_LOGPROBS)
  engine = engine or get_engine(model, tokenizer, mesh=mesh)
  engine.sync()
  share = 0 if share_prefill else None
  requests = []
  for i in range(n):
    row = {k: (v[i] if isinstance(v, list) else v) for k, v in rows.items()}
    requests.append(Request(prompt=prompt_ids[i], settings=row, seed=int(seeds[i]), max_new=int(max_new[i]),
                            newline_limit=int(nl[i]), share=share, tag=i))
  need = max(len(p) + min(int(m), limit - len(p)) - 1 for p, m in zip(prompt_ids, max_new))
  if cache_length is not None:  # a fixed pool length (a chat session's: one program set for every turn)
    cache_length = validation.as_count("cache_length", cache_length, low=1)
    if cache_length < need:
      raise ValueError(f"cache_length {cache_length} is too short: the prompts and max_new_tokens need {need} slots")
    need = cache_length
  # Settings echoed as given (0.7, not its float32 value 0.699999988079071).
  settings = {name: [_plain_number(v) for v in expand(name, given.get(name, sampling.SETTINGS[name].off))]
              for name in _ECHOED}
  settings.update({k: [_plain_number(v) for v in expand(k, val)] for k, val in given.items()
                   if k not in _ECHOED and not isinstance(val, dict)})
  settings.update(seed=seeds, thinking=thinking)
  return _Call(engine=engine, requests=requests, texts=texts, prompt_ids=prompt_ids, stop_ids=stop_ids,
               settings=settings, slots=engine.slots_for(min(n, slots or n)), length=engine.cache_length_for(need),
               context=context, newline_guard=bool(nl.any()), stop=stop, logprobs=logprobs or top_logprobs > 0,
               top_logprobs=top_logprobs)


# Settings every Completion echoes (the rest only when given).
_ECHOED = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _stats(call: _Call, pool, t_call: float) -> GenerationStats:
  reqs = call.requests
  st = pool.stats
  gen = sum(len(r.token_ids) for r in reqs)
  dt = st["decode_seconds"]
  firsts = [r.first_token for r in reqs if r.first_token is not None]
  return GenerationStats(
      prompt_tokens=int(sum(len(p) for p in call.prompt_ids)), generated_tokens=gen,
      compile_seconds=st["compile_seconds"], prefill_seconds=st["prefill_seconds"] + st["insert_seconds"],
      time_to_first_token=(min(firsts) - t_call) if firsts else 0.0, decode_seconds=dt,
      decode_tokens_per_second=gen / dt if dt > 0 else 0.0, batch_size=pool.slots, cache_length=pool.length,
      slot_utilization=pool.utilization(), decode_steps=int(st["decode_steps"]),
      prefilled_prompts=int(st["prefilled_prompts"]),
      queue_seconds=float(np.mean([r.queue_seconds for r in reqs])),
      max_queue_seconds=float(max(r.queue_seconds for r in reqs)))


def _steps(call: _Call, pool) -> Iterator[list]:
  """Steps the pool until every request of the call finished, cutting rows at stop strings;
  yields each step's changed requests."""
  checked = {}
  while not pool.idle:
    changed = pool.step()
    if call.stop:
      for r in changed:
        if r.done and r.cancelled:
          continue
        seen, checked[r.tag] = checked.get(r.tag, 0), len(r.token_ids)
        cut_at_stop_string(pool, call.engine.tokenizer, r, call.stop, seen)
    yield changed


def generate(model: SmolLM3, tokenizer, prompts, *, chat: bool = True, thinking=None,
             temperature=None, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
             max_new_tokens=None, seed=0, newline_limit=None, stop_ids=None, stop=None,
             context_length: int | None = None, engine: Engine | None = None, mesh=None,
             share_prefill: bool = True, date=None, num_return_sequences: int = 1, slots: int | None = None,
             cache_length: int | None = None, progress: bool = False, logprobs: bool = False,
             top_logprobs: int = 0, num_beams: int = 1, length_penalty: float = 1.0, early_stopping=False,
             split_special_tokens: bool = False, **sampling_settings) -> GenerationResult:
  """Generates one completion per prompt (``num_return_sequences`` per prompt: prompt-major).

  ``prompts``: a string, a list of strings, or message lists (``chat=True`` renders them with the
  chat template; ``thinking`` maps to its ``enable_thinking``). Every sampling argument, the seed,
  ``thinking``, ``max_new_tokens`` and ``newline_limit`` may be a scalar or one value per prompt.
  Sampling arguments, ``max_new_tokens`` and ``thinking`` left as None take the checkpoint's
  defaults (:func:`smollm3_jax.generation.defaults.for_tokenizer`: its generation_config.json, else
  the documented table; without a tokenizer, greedy; thinking on). ``temperature=0`` is greedy.
  More settings (``typical_p``, ``frequency_penalty``, ``logit_bias``, ...: see
  :data:`smollm3_jax.generation.sampling.SETTINGS`) are keyword arguments too, off unless given.
  ``newline_limit=N`` stops a row after N consecutive newline tokens; ``stop``: up to 4 strings
  that end a row (cut from its text; stop reason "stop").
  Rows run through a pool of ``slots`` slots (default: one per row): when there are more rows than
  slots, a row starts as soon as another finishes. A row's tokens do not depend on its slot, its
  neighbours or when it starts. Rows that repeat a prompt (``num_return_sequences``, a grid of
  settings) run its prefill once (``share_prefill``). ``cache_length`` fixes the cache slots per row
  (default: what the longest prompt and budget need, rounded to a bucket): calls with one value
  share one set of compiled programs. ``progress``: a tqdm bar of finished rows.
  ``logprobs=True`` records each token's log-probabilities, entropies and rank in the decode loop
  (``Completion.logprobs``, :class:`TokenLogprobs`); ``top_logprobs=K`` (up to 20) adds the K most
  likely alternatives. Off, they cost nothing.
  ``mesh`` (a Mesh or "data=D,model=M") shards the run; by default the model's own mesh, if any.
  ``date`` is the day the chat template sees (SmolLM3 writes it into the prompt): a date,
  "YYYY-MM-DD", or None for ``$SMOLLM3_JAX_CHAT_DATE`` when set, else today.
  Special-token text in a prompt (``<|im_end|>`` typed into a message) becomes the control token, as
  ``transformers`` encodes it; ``split_special_tokens=True`` keeps it text (the server's default).
  Every argument is checked before anything compiles (ValueError naming it).
  """
  from smollm3_jax.generation import defaults as generation_defaults

  if validation.as_count("num_beams", num_beams, low=1) > 1:
    # What the slot engine does and beam search does not: refused by name, never dropped in silence.
    unsupported = dict(stop=stop not in (None, (), []), logprobs=bool(logprobs), top_logprobs=top_logprobs != 0,
                       newline_limit=newline_limit not in (None, 0))
    named = [k for k, v in unsupported.items() if v]
    if named:
      raise ValueError(f"beam search does not support {', '.join(named)}: leave {'them' if len(named) > 1 else 'it'} "
                       f"unset with num_beams > 1 (or decode with num_beams=1)")
    return _beam_generate(model, tokenizer, prompts, chat=chat, thinking=thinking, max_new_tokens=max_new_tokens,
                          num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                          num_return_sequences=num_return_sequences, stop_ids=stop_ids, date=date,
                          context_length=context_length, split_special_tokens=split_special_tokens,
                          sampled=dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p),
                          repetition_penalty=repetition_penalty, **sampling_settings)
  filled = generation_defaults.for_tokenizer(tokenizer).fill(
      thinking=thinking, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
      repetition_penalty=repetition_penalty, max_new_tokens=max_new_tokens)
  t_call = time.perf_counter()
  call = _setup(model, tokenizer, prompts, chat=chat, **filled, seed=seed, newline_limit=newline_limit,
                stop_ids=stop_ids, context_length=context_length, engine=engine, mesh=mesh,
                share_prefill=share_prefill, date=date, num_return_sequences=num_return_sequences, slots=slots,
                stop=stop, cache_length=cache_length, logprobs=logprobs, top_logprobs=top_logprobs,
                split_special_tokens=split_special_tokens,
                **sampling_settings)
  pool = call.pool()
  bar = None
  if progress:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(call.requests), unit="row", desc="generate", dynamic_ncols=True)
  for changed in _steps(call, pool):
    if bar is not None:
      bar.update(sum(r.done for r in changed))
  if bar is not None:
    bar.close()
  return GenerationResult(_finish(tokenizer, call.requests, call.texts, call.prompt_ids, call.stop_ids,
                                  call.settings, call.stop), _stats(call, pool, t_call))


def _beam_generate(model, tokenizer, prompts, *, chat, thinking, max_new_tokens, num_beams, length_penalty,
                   early_stopping, num_return_sequences, stop_ids, date, sampled, context_length,
                   split_special_tokens, **processors) -> GenerationResult:
  """generate() with num_beams > 1: beam search over the rendered prompts. ``context_length``: the
  positions a hypothesis may fill (prompt + max_new_tokens must fit: refused otherwise)."""
  from smollm3_jax.generation import defaults as generation_defaults
  from smollm3_jax.generation.beam import beam_search

  given = {k: v for k, v in sampled.items() if v is not None and v != sampling.SETTINGS[k].off}
  if given:
    raise ValueError(f"beam search is not sampled: {', '.join(given)} cannot be used with num_beams > 1")
  defaults = generation_defaults.for_tokenizer(tokenizer)
  thinking = defaults.thinking if thinking is None else thinking
  max_new = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
  texts, ids = render_prompts(tokenizer, prompts, chat=chat, thinking=thinking, date=date,
                              vocab_size=model.config.vocab_size, split_special_tokens=split_special_tokens)
  processors = {k: v for k, v in processors.items() if v is not None}
  if context_length is not None:
    limit = validation.as_count("context_length", context_length, low=2)
    need = max(map(len, ids)) + validation.as_count("max_new_tokens", max_new, low=1)
    if need > limit:
      raise ValueError(f"context_length {limit} is too short for beam search: the longest prompt and "
                       f"max_new_tokens need {need} positions (beam hypotheses are not cut at the context)")
  t0 = time.perf_counter()
  res = beam_search(model, tokenizer, ids, num_beams=num_beams, length_penalty=length_penalty,
                    early_stopping=early_stopping, max_new_tokens=max_new, stop_ids=stop_ids,
                    num_return_sequences=num_return_sequences, **processors)
  wall = time.perf_counter() - t0
  stops = set(stop_ids if stop_ids is not None else
              (tokenizer.stop_token_ids if tokenizer is not None else model.config.eos_token_id))
  out = []
  settings = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping, **processors)
  for i, (beams, scores) in enumerate(zip(res.beams, res.beam_scores)):
    for seq, score in zip(beams, scores):
      ended = bool(seq) and seq[-1] in stops
      body = seq[:-1] if ended else seq
      text = tokenizer.decode(body) if tokenizer is not None else ""
      thought, answer = (split_thinking(text, inside=prompt_opens_thinking(texts[i])) if tokenizer is not None
                         else ("", ""))
      out.append(Completion(prompt=texts[i], prompt_token_ids=list(ids[i]), token_ids=list(seq), text=text,
                            thinking=thought, answer=answer, stop_reason="eos" if ended else "max_tokens",
                            settings=dict(settings, thinking=thinking), score=float(score)))
  gen = sum(len(c.token_ids) for c in out)
  # One program prefills the prompts and runs the search, and returns whole hypotheses: its run time
  # is the decode time, the first tokens arrive with the last (compile included), and the rate counts
  # the tokens returned.
  stats = GenerationStats(prompt_tokens=sum(map(len, ids)), generated_tokens=gen, compile_seconds=res.compile_seconds,
                          time_to_first_token=wall, decode_seconds=res.run_seconds,
                          decode_tokens_per_second=gen / res.run_seconds if res.run_seconds > 0 else 0.0,
                          batch_size=len(ids) * num_beams, cache_length=res.cache_length, decode_steps=res.steps,
                          prefilled_prompts=len(ids), slot_utilization=0.0)
  return GenerationResult(out, stats)


class Stream:
  """Iterates over text pieces of one prompt's completion as it decodes; ``.result`` afterwards.

  Runs the decode program in chunks of ``chunk_steps`` tokens.
  """

  def __init__(self, model, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4, **kwargs):
    from smollm3_jax.generation import defaults as generation_defaults
    from smollm3_jax.text.tokenizer import IncrementalDecoder

    unknown = sorted(set(kwargs) - set(_DEFAULTS) - set(sampling.SETTINGS))
    if unknown:
      raise TypeError(f"stream() got unexpected keyword argument(s): {', '.join(unknown)}")
    validation.as_count("chunk_steps", chunk_steps, low=1)
    if not (isinstance(prompt, str) or _is_messages(prompt) or _is_ids(prompt)):
      raise ValueError("stream() takes one prompt: a string, a message list or token ids")
    args = {**_DEFAULTS, **kwargs}
    args.update(generation_defaults.for_tokenizer(tokenizer).fill(
        **{name: args[name] for name in (*generation_defaults.FIELDS, "thinking")}))
    self._t_call = time.perf_counter()
    self._call = _setup(model, tokenizer, [prompt], **args)
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
    call = self._call
    r = call.requests[0]
    pool = call.pool(self._chunk)
    shown = VisibleText(self._hide, inside=prompt_opens_thinking(call.texts[0]))
    fed = 0
    # With stop strings the text shows once the row ended (a stop string may still cut it).
    hold = bool(call.stop)
    for changed in _steps(call, pool):
      if self.cancelled and not r.done:
        pool.cancel(r)
        pool.step()  # frees the slot
      if r not in changed or (hold and not r.done):
        if self.cancelled:
          break
        continue
      ids = r.token_ids[fed:]
      if r.done and r.reason == EOS and ids and ids[-1] in call.stop_ids:
        ids = ids[:-1]
      fed = len(r.token_ids)
      piece = "".join(self._decoder.push(t) for t in ids)
      if hold:  # the whole text at once: cut at the stop string
        piece = _cut_stop(piece + self._decoder.flush(), call.stop) if r.reason == STOP else piece
      out = shown.feed(piece)
      if out:
        yield out
      if self.cancelled:
        break
    tail = shown.feed(self._decoder.flush(), final=True)
    if tail:
      yield tail
    self.result = GenerationResult(_finish(self._tokenizer, call.requests, call.texts, call.prompt_ids,
                                           call.stop_ids, call.settings, call.stop),
                                   _stats(call, pool, self._t_call))


# stream()'s keyword arguments and their defaults (None: the checkpoint's, as in generate()).
_DEFAULTS = dict(chat=True, thinking=None, temperature=None, top_k=None, top_p=None, min_p=None,
                 repetition_penalty=None, max_new_tokens=None, seed=0, newline_limit=None, stop_ids=None,
                 stop=None, context_length=None, engine=None, mesh=None, share_prefill=True, date=None,
                 cache_length=None, logprobs=False, top_logprobs=0, split_special_tokens=False)


def stream(model: SmolLM3, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4,
           **kwargs) -> Stream:
  """Streams one prompt's completion as text pieces (same arguments as :func:`generate`).

      s = stream(model, tok, "Tell me a story.")
      for piece in s: print(piece, end="")
      s.result          # after the loop: the GenerationResult, as generate() returns it (stats included)
  """
  return Stream(model, tokenizer, prompt, hide_thinking=hide_thinking, chunk_steps=chunk_steps, **kwargs)
