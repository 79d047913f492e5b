"""The user API: :func:`generate` and :func:`stream`.

    result = smollm3_jax.generate(model, tok, ["Hello!"], temperature=0.6, top_p=0.95)
    for piece in smollm3_jax.stream(model, tok, "Tell me a story."): ...

Every argument is checked here, on the host, before anything compiles; unset sampling arguments
take the checkpoint's defaults (:mod:`smollm3_jax.generation.defaults`). The work runs on the cached
:class:`~smollm3_jax.generation.engine.Engine` of the model (:func:`~smollm3_jax.generation.engine.get_engine`).

Rows run through the :class:`~smollm3_jax.generation.runner.Runner`; ``num_beams > 1`` runs beam
search (:mod:`smollm3_jax.generation.beam`). The tokenizer is passed in, and nothing here loads
checkpoints.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import numpy as np

from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.generation import sampling
from smollm3_jax.generation.beam import beam_search
from smollm3_jax.generation.engine import CHUNK_STEPS, MAX_TOP_LOGPROBS, Engine, Request, check_settings, get_engine
from smollm3_jax.generation.results import Completion, GenerationResult, GenerationStats, TokenLogprobs
from smollm3_jax.generation.runner import Row, Runner
from smollm3_jax.generation.settings import row_seeds
from smollm3_jax.generation.stop import check_stop, check_stop_ids
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.text.prompts import render_prompts
from smollm3_jax.text.thinking import VisibleText, prompt_opens_thinking, split_thinking
from smollm3_jax.utils import validation

__all__ = [
  "generate",
  "stream",
  "Stream",
  "Completion",
  "GenerationResult",
  "GenerationStats",
  "TokenLogprobs",
  "render_prompts",
  "row_seeds",
]


def _plain_number(v):
  """A Python int / float for a setting as the caller gave it (numpy scalars unwrapped)."""
  return v.item() if hasattr(v, "item") else v


@dataclasses.dataclass
class _Call:
  """A checked generate/stream call: its rows, and the pool they run in."""

  engine: Engine
  rows: list[Row]
  prompt_ids: list
  stop_ids: tuple
  slots: int
  length: int
  context: int | None
  newline_guard: bool
  stop: tuple = ()
  logprobs: bool = False
  top_logprobs: int = 0

  def runner(self, chunk_steps: int = CHUNK_STEPS, incremental: bool = False) -> Runner:
    """A runner over a fresh pool with every row of the call submitted (settings checked there)."""
    pool = self.engine.pool(
      self.slots,
      self.length,
      stop_ids=self.stop_ids,
      context_length=self.context,
      newline_guard=self.newline_guard,
      chunk_steps=chunk_steps,
      logprobs=self.logprobs,
      top_logprobs=self.top_logprobs,
      shrink=True,
    )
    runner = Runner(pool, self.engine.tokenizer, incremental=incremental)
    runner.submit(self.rows, settings_checked=True)
    return runner


def _setup(
  model,
  tokenizer,
  prompts,
  *,
  chat,
  thinking,
  max_new_tokens,
  seed,
  newline_limit,
  stop_ids,
  context_length,
  engine,
  share_prefill=True,
  mesh=None,
  date=None,
  num_return_sequences=1,
  slots=None,
  stop=None,
  cache_length=None,
  logprobs=False,
  top_logprobs=0,
  split_special_tokens=False,
  **sampling_settings,
) -> _Call:
  """Checks every argument (before any compile), renders the prompts and makes one request per row."""
  vocab = model.config.vocab_size
  texts, prompt_ids = render_prompts(
    tokenizer,
    prompts,
    chat=chat,
    thinking=thinking,
    date=date,
    vocab_size=vocab,
    split_special_tokens=split_special_tokens,
  )
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
  seeds = row_seeds(seed, n)
  stop_ids = check_stop_ids(stop_ids, tokenizer, cfg)
  stop = check_stop(stop)
  if stop and tokenizer is None:
    raise ValueError("stop: stop strings need a tokenizer")
  limit = context or cfg.max_position_embeddings
  for i, p in enumerate(prompt_ids):
    if len(p) >= limit:
      raise ValueError(
        f"prompt {i} has {len(p)} tokens, which does not fit the context of {limit} tokens "
        f"(it needs room for at least one new token)"
      )
  if slots is not None:
    slots = validation.as_count("slots", slots, low=1)
  logprobs = validation.as_bool("logprobs", logprobs)
  top_logprobs = validation.as_count("top_logprobs", top_logprobs, low=0, high=MAX_TOP_LOGPROBS)
  engine = engine or get_engine(model, tokenizer, mesh=mesh)
  engine.sync()
  share = 0 if validation.as_bool("share_prefill", share_prefill) else None
  requests = []
  for i in range(n):
    row = {k: (v[i] if isinstance(v, list) else v) for k, v in rows.items()}
    requests.append(
      Request(
        prompt=prompt_ids[i],
        settings=row,
        seed=int(seeds[i]),
        max_new=int(max_new[i]),
        newline_limit=int(nl[i]),
        share=share,
      )
    )
  check_settings(requests, vocab)  # (before the pool is built: nothing allocated or compiled for bad settings)
  need = max(len(p) + min(int(m), limit - len(p)) - 1 for p, m in zip(prompt_ids, max_new))
  if cache_length is not None:  # a fixed pool length (a chat session's: one program set for every turn)
    cache_length = validation.as_count("cache_length", cache_length, low=1)
    if cache_length < need:
      raise ValueError(f"cache_length {cache_length} is too short: the prompts and max_new_tokens need {need} slots")
    need = cache_length
  # Settings echoed as given (0.7, not its float32 value 0.699999988079071).
  settings = {
    name: [_plain_number(v) for v in expand(name, given.get(name, sampling.SETTINGS[name].off))] for name in _ECHOED
  }
  settings.update(
    {
      k: [_plain_number(v) for v in expand(k, val)]
      for k, val in given.items()
      if k not in _ECHOED and not isinstance(val, dict)
    }
  )
  settings.update(seed=seeds, thinking=thinking)
  echo = lambda i: {k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in settings.items()}
  call_rows = [Row(request=r, prompt_text=texts[i], stop=stop, settings=echo(i)) for i, r in enumerate(requests)]
  return _Call(
    engine=engine,
    rows=call_rows,
    prompt_ids=prompt_ids,
    stop_ids=stop_ids,
    slots=engine.slots_for(min(n, slots or n)),
    length=engine.cache_length_for(need),
    context=context,
    newline_guard=bool(nl.any()),
    stop=stop,
    logprobs=logprobs or top_logprobs > 0,
    top_logprobs=top_logprobs,
  )


# Settings every Completion echoes (the rest only when given).
_ECHOED = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _stats(call: _Call, pool, t_call: float) -> GenerationStats:
  reqs = [row.request for row in call.rows]
  st = pool.stats
  gen = sum(len(r.token_ids) for r in reqs)
  dt = st["decode_seconds"]
  firsts = [r.first_token for r in reqs if r.first_token is not None]
  return GenerationStats(
    prompt_tokens=int(sum(len(p) for p in call.prompt_ids)),
    generated_tokens=gen,
    compile_seconds=st["compile_seconds"],
    prefill_seconds=st["prefill_seconds"] + st["insert_seconds"],
    time_to_first_token=(min(firsts) - t_call) if firsts else 0.0,
    decode_seconds=dt,
    decode_tokens_per_second=gen / dt if dt > 0 else 0.0,
    batch_size=pool.slots,
    cache_length=pool.length,
    slot_utilization=pool.utilization(),
    decode_steps=int(st["decode_steps"]),
    prefilled_prompts=int(st["prefilled_prompts"]),
    queue_seconds=float(np.mean([r.queue_seconds for r in reqs])),
    max_queue_seconds=float(max(r.queue_seconds for r in reqs)),
  )


def generate(
  model: SmolLM3,
  tokenizer,
  prompts,
  *,
  chat: bool = True,
  thinking=None,
  temperature=None,
  top_k=None,
  top_p=None,
  min_p=None,
  repetition_penalty=None,
  max_new_tokens=None,
  seed=0,
  newline_limit=None,
  stop_ids=None,
  stop=None,
  context_length: int | None = None,
  engine: Engine | None = None,
  mesh=None,
  share_prefill: bool = True,
  date=None,
  num_return_sequences: int = 1,
  slots: int | None = None,
  cache_length: int | None = None,
  progress: bool = False,
  logprobs: bool = False,
  top_logprobs: int = 0,
  num_beams: int = 1,
  length_penalty: float = 1.0,
  early_stopping=False,
  split_special_tokens: bool = False,
  **sampling_settings,
) -> GenerationResult:
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
  if validation.as_count("num_beams", num_beams, low=1) > 1:
    # What the slot engine does and beam search does not: refused by name, never dropped in silence.
    unsupported = dict(
      stop=stop not in (None, (), []),
      logprobs=bool(logprobs),
      top_logprobs=top_logprobs != 0,
      newline_limit=newline_limit not in (None, 0),
    )
    named = [k for k, v in unsupported.items() if v]
    if named:
      raise ValueError(
        f"beam search does not support {', '.join(named)}: leave {'them' if len(named) > 1 else 'it'} "
        f"unset with num_beams > 1 (or decode with num_beams=1)"
      )
    return _beam_generate(
      model,
      tokenizer,
      prompts,
      chat=chat,
      thinking=thinking,
      max_new_tokens=max_new_tokens,
      num_beams=num_beams,
      length_penalty=length_penalty,
      early_stopping=early_stopping,
      num_return_sequences=num_return_sequences,
      stop_ids=stop_ids,
      date=date,
      context_length=context_length,
      split_special_tokens=split_special_tokens,
      sampled=dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p),
      repetition_penalty=repetition_penalty,
      **sampling_settings,
    )
  filled = generation_defaults.for_tokenizer(tokenizer).fill(
    thinking=thinking,
    temperature=temperature,
    top_k=top_k,
    top_p=top_p,
    min_p=min_p,
    repetition_penalty=repetition_penalty,
    max_new_tokens=max_new_tokens,
  )
  progress = validation.as_bool("progress", progress)
  t_call = time.perf_counter()
  call = _setup(
    model,
    tokenizer,
    prompts,
    chat=chat,
    **filled,
    seed=seed,
    newline_limit=newline_limit,
    stop_ids=stop_ids,
    context_length=context_length,
    engine=engine,
    mesh=mesh,
    share_prefill=share_prefill,
    date=date,
    num_return_sequences=num_return_sequences,
    slots=slots,
    stop=stop,
    cache_length=cache_length,
    logprobs=logprobs,
    top_logprobs=top_logprobs,
    split_special_tokens=split_special_tokens,
    **sampling_settings,
  )
  runner = call.runner()
  bar = None
  if progress:
    from tqdm.auto import tqdm  # (lazy: tqdm picks its notebook or terminal bar when first used)

    bar = tqdm(total=len(call.rows), unit="row", desc="generate", dynamic_ncols=True)
  for events in runner.run():
    if bar is not None:
      bar.update(sum(e.done for e in events))
  if bar is not None:
    bar.close()
  return GenerationResult([row.completion for row in call.rows], _stats(call, runner.pool, t_call))


def _beam_generate(
  model,
  tokenizer,
  prompts,
  *,
  chat,
  thinking,
  max_new_tokens,
  num_beams,
  length_penalty,
  early_stopping,
  num_return_sequences,
  stop_ids,
  date,
  sampled,
  context_length,
  split_special_tokens,
  **processors,
) -> GenerationResult:
  """generate() with num_beams > 1: beam search over the rendered prompts. ``context_length``: the
  positions a hypothesis may fill (prompt + max_new_tokens must fit: refused otherwise)."""
  given = {k: v for k, v in sampled.items() if v is not None and v != sampling.SETTINGS[k].off}
  if given:
    raise ValueError(f"beam search is not sampled: {', '.join(given)} cannot be used with num_beams > 1")
  defaults = generation_defaults.for_tokenizer(tokenizer)
  thinking = defaults.thinking if thinking is None else thinking
  max_new = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
  texts, ids = render_prompts(
    tokenizer,
    prompts,
    chat=chat,
    thinking=thinking,
    date=date,
    vocab_size=model.config.vocab_size,
    split_special_tokens=split_special_tokens,
  )
  processors = {k: v for k, v in processors.items() if v is not None}
  if context_length is not None:
    limit = validation.as_count("context_length", context_length, low=2)
    need = max(map(len, ids)) + validation.as_count("max_new_tokens", max_new, low=1)
    if need > limit:
      raise ValueError(
        f"context_length {limit} is too short for beam search: the longest prompt and "
        f"max_new_tokens need {need} positions (beam hypotheses are not cut at the context)"
      )
  t0 = time.perf_counter()
  res = beam_search(
    model,
    tokenizer,
    ids,
    num_beams=num_beams,
    length_penalty=length_penalty,
    early_stopping=early_stopping,
    max_new_tokens=max_new,
    stop_ids=stop_ids,
    num_return_sequences=num_return_sequences,
    **processors,
  )
  wall = time.perf_counter() - t0
  stops = set(res.stop_ids)
  out = []
  settings = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping, **processors)
  for i, (beams, scores) in enumerate(zip(res.beams, res.beam_scores)):
    for seq, score in zip(beams, scores):
      ended = bool(seq) and seq[-1] in stops
      body = seq[:-1] if ended else seq
      text = tokenizer.decode(body) if tokenizer is not None else ""
      thought, answer = (
        split_thinking(text, inside=prompt_opens_thinking(texts[i])) if tokenizer is not None else ("", "")
      )
      out.append(
        Completion(
          prompt=texts[i],
          prompt_token_ids=list(ids[i]),
          token_ids=list(seq),
          text=text,
          thinking=thought,
          answer=answer,
          stop_reason="eos" if ended else "max_tokens",
          settings=dict(settings, thinking=thinking),
          score=float(score),
        )
      )
  gen = sum(len(c.token_ids) for c in out)
  # One program prefills the prompts and runs the search, and returns whole hypotheses: its run time
  # is the decode time, the first tokens arrive with the last (compile included), and the rate counts
  # the tokens returned.
  stats = GenerationStats(
    prompt_tokens=sum(map(len, ids)),
    generated_tokens=gen,
    compile_seconds=res.compile_seconds,
    time_to_first_token=wall,
    decode_seconds=res.run_seconds,
    decode_tokens_per_second=gen / res.run_seconds if res.run_seconds > 0 else 0.0,
    batch_size=len(ids) * num_beams,
    cache_length=res.cache_length,
    decode_steps=res.steps,
    prefilled_prompts=len(ids),
    slot_utilization=0.0,
  )
  return GenerationResult(out, stats)


class Stream:
  """Iterates over text pieces of one prompt's completion as it decodes; ``.result`` afterwards.

  Runs the decode program in chunks of ``chunk_steps`` tokens.
  """

  def __init__(self, model, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4, **kwargs):
    unknown = sorted(set(kwargs) - set(_DEFAULTS) - set(sampling.SETTINGS))
    if unknown:
      raise TypeError(f"stream() got unexpected keyword argument(s): {', '.join(unknown)}")
    validation.as_count("chunk_steps", chunk_steps, low=1)
    hide_thinking = validation.as_bool("hide_thinking", hide_thinking)
    if not (isinstance(prompt, str) or validation.is_messages(prompt) or validation.is_ids(prompt)):
      raise ValueError("stream() takes one prompt: a string, a message list or token ids")
    args = {**_DEFAULTS, **kwargs}
    args.update(
      generation_defaults.for_tokenizer(tokenizer).fill(
        **{name: args[name] for name in (*generation_defaults.FIELDS, "thinking")}
      )
    )
    self._t_call = time.perf_counter()
    self._call = _setup(model, tokenizer, [prompt], **args)
    self._runner = self._call.runner(chunk_steps, incremental=True)  # (the settings are checked here)
    self._hide = hide_thinking
    self.result: GenerationResult | None = None
    self.cancelled = False

  def cancel(self):
    """Stops decoding after the current chunk (the result then holds what was decoded)."""
    self.cancelled = True

  def __iter__(self) -> Iterator[str]:
    call, runner = self._call, self._runner
    (row,) = call.rows
    shown = VisibleText(self._hide, inside=prompt_opens_thinking(row.prompt_text))
    for events in runner.run():
      for e in events:
        out = shown.feed(e.text, final=e.done)
        if out:
          yield out
      if self.cancelled:
        runner.cancel(row)  # the next step frees its slot and ends it
    self.result = GenerationResult([row.completion], _stats(call, runner.pool, self._t_call))


# stream()'s keyword arguments and their defaults (None: the checkpoint's, as in generate()).
_DEFAULTS = dict(
  chat=True,
  thinking=None,
  temperature=None,
  top_k=None,
  top_p=None,
  min_p=None,
  repetition_penalty=None,
  max_new_tokens=None,
  seed=0,
  newline_limit=None,
  stop_ids=None,
  stop=None,
  context_length=None,
  engine=None,
  mesh=None,
  share_prefill=True,
  date=None,
  cache_length=None,
  logprobs=False,
  top_logprobs=0,
  split_special_tokens=False,
)


def stream(model: SmolLM3, tokenizer, prompt, *, hide_thinking: bool = False, chunk_steps: int = 4, **kwargs) -> Stream:
  """Streams one prompt's completion as text pieces (same arguments as :func:`generate`).

  s = stream(model, tok, "Tell me a story.")
  for piece in s: print(piece, end="")
  s.result          # after the loop: the GenerationResult, as generate() returns it (stats included)
  """
  return Stream(model, tokenizer, prompt, hide_thinking=hide_thinking, chunk_steps=chunk_steps, **kwargs)
