"""Beam search with ``transformers``' meaning (``generate(num_beams=K, do_sample=False)``), in one
compiled ``jax.lax.while_loop``.

Each prompt's K beams are K rows of the batch ([B * K] rows). Per step, as ``GenerationMixin._beam_search``:

1. every beam's log-softmax plus its running score; the top ``2K`` (``max(2, 1 + #stop ids) x K``)
   continuations of each prompt over all its beams x the vocabulary;
2. a continuation *hits* when its token is a stop id or the budget is reached; the K best that do
   not hit are the next running beams (the cache rows are reordered by their source beam);
3. of the first K continuations, those that hit are scored ``sum log-prob / length ** length_penalty``
   (length = generated tokens) and merged into a fixed-size buffer of the K best finished hypotheses;
4. a prompt is done when no running beam can beat its worst finished one (transformers' heuristic:
   ``early_stopping=False`` assumes the current length, ``"never"`` the budget when
   ``length_penalty > 0``), when all K are finished and ``early_stopping=True``, or when every
   continuation hit. A done prompt's finished buffer is frozen; the loop ends when all are done or
   the budget is spent.

The logits processors of :mod:`smollm3_jax.generation.sampling` (``logit_bias``, ``repetition_penalty``, the
OpenAI penalties, ``no_repeat_ngram_size``, ``min_new_tokens``; per prompt, traced) act on each beam's
log-probabilities before the scores are added, as transformers' ``logits_processor`` does; the
sampling warpers do not apply (``do_sample=False``). Prompts are right-padded to a length bucket and each row's tokens sit at its cache slots
(:mod:`smollm3_jax.nn.kv_cache`). Static (recompile): number of prompts, prompt bucket, cache length,
``num_beams``, ``max_new_tokens`` and the number of stop ids; ``length_penalty`` and
``early_stopping`` are traced.

Imports sampling, the cache, its buckets and validation only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.generation import sampling
from smollm3_jax.generation.stop import check_stop_ids
from smollm3_jax.nn.kv_cache import KVCache
from smollm3_jax.utils import distributed, validation
from smollm3_jax.utils.buckets import bucket_length

_NEG = -1.0e9  # transformers' "impossible" score
# The settings that act in beam search (do_sample=False: the logits processors, not the warpers).
PROCESSORS = (
  "logit_bias",
  "repetition_penalty",
  "frequency_penalty",
  "presence_penalty",
  "no_repeat_ngram_size",
  "min_new_tokens",
)


@dataclasses.dataclass
class BeamResult:
  """What :func:`beam_search` returns, per prompt (best first).

  sequences: the best hypothesis' generated tokens (a final stop id included, as transformers);
  scores: its score (transformers' ``sequences_scores``); beams / beam_scores: the
  ``num_return_sequences`` best hypotheses and their scores; texts: the best hypotheses decoded
  without a final stop id (None without a tokenizer)."""

  sequences: list[list[int]]
  scores: list[float]
  beams: list[list[list[int]]]
  beam_scores: list[list[float]]
  texts: list[str] | None = None
  compile_seconds: float = 0.0  # compiling the search program (0 when this process compiled it before)
  run_seconds: float = 0.0  # running it: prompt prefill and every search step (one program)
  cache_length: int = 0  # cache slots per beam
  steps: int = 0  # search steps run (the longest returned hypothesis)
  stop_ids: tuple = ()  # the ids that finished a hypothesis (the defaults when none were given)


@flax.struct.dataclass
class _Carry:
  cache: KVCache
  logits: jax.Array  # [B*K, V] f32 next-token logits of the running beams
  t: jax.Array  # [] int32 tokens generated so far
  run_seq: jax.Array  # [B, K, N] int32 running beams' tokens
  run_score: jax.Array  # [B, K] f32 sum of log-probs
  fin_seq: jax.Array  # [B, K, N] int32 finished hypotheses (best first)
  fin_score: jax.Array  # [B, K] f32 length-penalised scores
  fin_len: jax.Array  # [B, K] int32 generated tokens of each finished hypothesis
  fin_done: jax.Array  # [B, K] bool the slot holds a finished hypothesis (is_sent_finished)
  improvable: jax.Array  # [B] bool transformers' is_early_stop_heuristic_unsatisfied
  done: jax.Array  # [B] bool
  context: sampling.TokenContext  # [B*K] rows: what the processors know of each beam's text


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
  """x [B, M, ...] -> [B, J, ...] rows idx [B, J] of axis 1."""
  return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


def _search(
  graphdef,
  state,
  tokens,
  lengths,
  stop_ids,
  length_penalty,
  early_stopping,
  params,
  *,
  num_beams: int,
  keep: int,
  max_new: int,
  cache_length: int,
):
  """The compiled search: tokens [B, P] right-padded prompts, lengths [B], stop_ids [M], and the
  traced scalars length_penalty and early_stopping (0 False, 1 True, 2 "never") -> the finished
  hypotheses [B, K, N], their scores [B, K] and lengths [B, K], best first."""
  model = nnx.merge(graphdef, state)
  b, _ = tokens.shape
  k, n = num_beams, max_new
  lp = length_penalty.astype(jnp.float32)
  cache = KVCache.init(model.config, b, cache_length, model.dtype)
  hidden, cache = model.hidden_states(tokens, None, cache)
  last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
  logits = model.logits(last).astype(jnp.float32)
  rows = jnp.repeat(jnp.arange(b), k)  # every beam of a prompt starts from its prompt
  take = lambda x: jnp.take(x, rows, axis=0)
  cache = cache.replace(k=tuple(map(take, cache.k)), v=tuple(map(take, cache.v)), lengths=take(lengths))
  p = tokens.shape[1]
  context = sampling.observe(
    sampling.init_context(b, logits.shape[-1], cache_length),
    tokens,
    jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), tokens.shape),
    jnp.arange(p)[None, :] < lengths[:, None],
    generated=False,
  )
  context = jax.tree_util.tree_map(take, context)
  params = params.take(rows)  # greedy: only the processors act
  top_mask = jnp.arange(keep) < k  # only the first K continuations may finish

  def body(c: _Carry) -> _Carry:
    v = c.logits.shape[-1]
    logp = sampling.process_logits(
      jax.nn.log_softmax(c.logits, axis=-1),
      c.context,
      params,
      num_generated=jnp.broadcast_to(c.t, (b * k,)),
      stop_ids=stop_ids,
    )
    scores = logp.reshape(b, k, v) + c.run_score[:, :, None]
    top_lp, top_idx = jax.lax.top_k(scores.reshape(b, k * v), keep)  # [B, keep], best first
    src, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    at_t = jnp.arange(n) == c.t
    cand_seq = jnp.where(at_t, tok[:, :, None], _gather(c.run_seq, src))  # [B, keep, N]
    hits = jnp.any(tok[:, :, None] == stop_ids, -1) | (c.t + 1 >= n)

    # The K best continuations that go on.
    run_lp = top_lp + hits.astype(jnp.float32) * _NEG
    nxt = jax.lax.top_k(run_lp, k)[1]
    run_seq, run_score = _gather(cand_seq, nxt), _gather(run_lp, nxt)
    src, tok_next = _gather(src, nxt), _gather(tok, nxt)

    # Finished hypotheses: merge the first K continuations that hit into the K best so far.
    just = hits & top_mask[None, :]
    cand = top_lp / jnp.float32(c.t + 1) ** lp
    full = jnp.all(c.fin_done, -1, keepdims=True) & (early_stopping == 1)
    cand = cand + full.astype(jnp.float32) * _NEG
    cand = cand + (~c.improvable)[:, None].astype(jnp.float32) * _NEG
    cand = cand + (~just).astype(jnp.float32) * _NEG
    merged_score = jnp.concatenate([c.fin_score, cand], 1)
    best = jax.lax.top_k(merged_score, k)[1]
    pick = lambda old, new: _gather(jnp.concatenate([old, new], 1), best)
    fin_seq = pick(c.fin_seq, cand_seq)
    fin_score = _gather(merged_score, best)
    fin_len = pick(c.fin_len, jnp.full((b, keep), c.t + 1, jnp.int32))
    fin_done = pick(c.fin_done, just)
    frozen = c.done[:, None]
    fin_seq = jnp.where(frozen[:, :, None], c.fin_seq, fin_seq)
    fin_score, fin_len, fin_done = (
      jnp.where(frozen, old, new)
      for old, new in ((c.fin_score, fin_score), (c.fin_len, fin_len), (c.fin_done, fin_done))
    )

    # Reorder the cache rows by source beam, then run the chosen tokens.
    order = (jnp.arange(b)[:, None] * k + src).reshape(-1)
    reorder = lambda x: jnp.take(x, order, axis=0)
    cache = c.cache.replace(k=tuple(map(reorder, c.cache.k)), v=tuple(map(reorder, c.cache.v)))
    context = jax.tree_util.tree_map(reorder, c.context)
    context = sampling.observe(
      context, tok_next.reshape(-1, 1), cache.lengths[:, None], jnp.ones((b * k, 1), bool), generated=True
    )
    hidden, cache = model.hidden_states(tok_next.reshape(-1, 1), None, cache)
    logits = model.logits(hidden[:, 0]).astype(jnp.float32)

    # Stop rules (transformers' _check_early_stop_heuristic / _beam_search_has_unfinished_sequences).
    length = jnp.where((early_stopping == 2) & (lp > 0), jnp.float32(n), jnp.float32(c.t + 1))
    best_running = run_score[:, :1] / length**lp
    worst = jnp.where(fin_done, jnp.min(fin_score, -1, keepdims=True), _NEG)
    improvable = c.improvable & jnp.any(best_running > worst, -1)
    open_beam = ~(jnp.all(fin_done, -1) & (early_stopping == 1))
    go_on = ~jnp.all(hits, -1)
    done = c.done | ~(improvable & open_beam & go_on)
    return _Carry(
      cache=cache,
      logits=logits,
      t=c.t + 1,
      run_seq=run_seq,
      run_score=run_score,
      fin_seq=fin_seq,
      fin_score=fin_score,
      fin_len=fin_len,
      fin_done=fin_done,
      improvable=improvable,
      done=done,
      context=context,
    )

  start = _Carry(
    cache=cache,
    logits=take(logits),
    t=jnp.zeros((), jnp.int32),
    run_seq=jnp.full((b, k, n), -1, jnp.int32),
    run_score=jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, _NEG).astype(jnp.float32), (b, 1)),
    fin_seq=jnp.full((b, k, n), -1, jnp.int32),
    fin_score=jnp.full((b, k), _NEG, jnp.float32),
    fin_len=jnp.zeros((b, k), jnp.int32),
    fin_done=jnp.zeros((b, k), bool),
    improvable=jnp.ones((b,), bool),
    done=jnp.zeros((b,), bool),
    context=context,
  )
  end = jax.lax.while_loop(lambda c: (c.t < n) & ~jnp.all(c.done), body, start)
  return end.fin_seq, end.fin_score, end.fin_len


_search_jit = jax.jit(_search, static_argnums=(0,), static_argnames=("num_beams", "keep", "max_new", "cache_length"))
_COMPILED: dict[tuple, Any] = {}  # (shapes and static values) -> executable, so compile and run time apart


def _compiled_search(graphdef, *args, **static):
  """The search program for these argument shapes, compiled once per process; (executable, seconds)."""
  leaves, treedef = jax.tree.flatten(args)
  key = (graphdef, treedef, tuple((x.shape, str(x.dtype)) for x in leaves), tuple(sorted(static.items())))
  exe = _COMPILED.get(key)
  if exe is not None:
    return exe, 0.0
  t0 = time.perf_counter()
  exe = _search_jit.lower(graphdef, *args, **static).compile()
  _COMPILED[key] = exe
  return exe, time.perf_counter() - t0


def beam_search(
  model,
  tokenizer,
  prompt_ids: Sequence[Sequence[int]],
  *,
  num_beams: int,
  length_penalty: float = 1.0,
  early_stopping: bool | str = False,
  max_new_tokens: int,
  stop_ids: Sequence[int] | None = None,
  num_return_sequences: int = 1,
  **settings,
) -> BeamResult:
  """Beam search over token-id prompts, as ``transformers`` ``generate(num_beams=..., do_sample=False)``.

  model: a :class:`smollm3_jax.SmolLM3`; tokenizer: decodes the best sequences into ``texts`` (None:
  no texts) and gives the default stop ids; prompt_ids: one non-empty list of ids per prompt (all
  searched in one program); num_beams >= 1; length_penalty: exponent of the length a finished
  hypothesis' summed log-probability is divided by (> 0 favours longer ones); early_stopping: False
  (transformers' heuristic), True (stop when num_beams hypotheses are finished) or "never";
  max_new_tokens >= 1; stop_ids: the ids that finish a hypothesis (default: the tokenizer's stop ids,
  else the model config's eos ids); num_return_sequences <= num_beams hypotheses are returned per
  prompt (best first). ``settings``: the logits processors of :data:`PROCESSORS` (names of
  :data:`smollm3_jax.generation.sampling.SETTINGS`; a scalar or one value per prompt). Every argument is checked
  before anything compiles (ValueError naming it).
  """
  cfg = model.config
  vocab = cfg.vocab_size
  num_beams = validation.as_count("num_beams", num_beams, low=1)
  max_new = validation.as_count("max_new_tokens", max_new_tokens, low=1)
  num_return = validation.as_count("num_return_sequences", num_return_sequences, low=1)
  if num_return > num_beams:
    raise ValueError(f"`num_return_sequences` ({num_return}) must be <= `num_beams` ({num_beams})")
  if (
    isinstance(length_penalty, bool)
    or not isinstance(length_penalty, (int, float, np.integer, np.floating))
    or not math.isfinite(length_penalty)
  ):
    raise ValueError(f"`length_penalty` must be a finite number, got {length_penalty!r}")
  if not any(early_stopping is v for v in (False, True)) and early_stopping != "never":
    raise ValueError(f"`early_stopping` must be False, True or 'never', got {early_stopping!r}")
  if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence) or not prompt_ids:
    raise ValueError("`prompt_ids` must be a non-empty list of token-id lists")
  prompts = []
  for i, ids in enumerate(prompt_ids):
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence) or not ids:
      raise ValueError(f"`prompt_ids[{i}]` must be a non-empty list of token ids, got {ids!r}")
    prompts.append(validation.check_token_ids(f"prompt_ids[{i}]", list(ids), vocab))
  stop_ids = check_stop_ids(stop_ids, tokenizer, cfg)
  longest = max(map(len, prompts))
  if longest + max_new > cfg.max_position_embeddings:
    raise ValueError(
      f"the longest prompt ({longest} tokens) plus max_new_tokens ({max_new}) exceeds the "
      f"model's context ({cfg.max_position_embeddings} positions)"
    )
  for name, value in settings.items():
    if (
      name in sampling.SETTINGS
      and name not in PROCESSORS
      and value is not None
      and np.any(np.asarray(value) != sampling.SETTINGS[name].off)
    ):
      raise ValueError(f"`{name}` does not apply to beam search (do_sample=False); processors: {PROCESSORS}")
  params = sampling.SamplingParams.make(
    len(prompts),
    vocab_size=vocab,
    **{k: v for k, v in settings.items() if k not in sampling.SETTINGS or k in PROCESSORS},
  )
  keep = max(2, 1 + len(stop_ids)) * num_beams
  if keep > num_beams * vocab:
    raise ValueError(f"`num_beams` ({num_beams}) is too large for a vocabulary of {vocab}")

  p = bucket_length(longest)
  tokens = np.zeros((len(prompts), p), np.int32)
  for i, ids in enumerate(prompts):
    tokens[i, : len(ids)] = ids
  lengths = np.asarray([len(ids) for ids in prompts], np.int32)
  graphdef, state = nnx.split(model)
  cache_length = bucket_length(p + max_new)
  args = (
    state,
    jnp.asarray(tokens),
    jnp.asarray(lengths),
    jnp.asarray(stop_ids or (-1,), jnp.int32),
    jnp.float32(length_penalty),
    jnp.int32(2 if early_stopping == "never" else int(early_stopping)),
    params,
  )
  exe, compile_seconds = _compiled_search(
    graphdef, *args, num_beams=num_beams, keep=keep, max_new=max_new, cache_length=cache_length
  )
  t0 = time.perf_counter()
  seq, score, length = distributed.fetch(exe(*args))
  run_seconds = time.perf_counter() - t0
  beams = [[seq[i, j, : length[i, j]].tolist() for j in range(num_return)] for i in range(len(prompts))]
  beam_scores = [[float(score[i, j]) for j in range(num_return)] for i in range(len(prompts))]
  texts = None
  if tokenizer is not None:
    strip = lambda ids: ids[:-1] if ids and ids[-1] in stop_ids else ids
    texts = [tokenizer.decode(strip(b[0])) for b in beams]
  return BeamResult(
    sequences=[b[0] for b in beams],
    scores=[s[0] for s in beam_scores],
    beams=beams,
    beam_scores=beam_scores,
    texts=texts,
    compile_seconds=compile_seconds,
    run_seconds=run_seconds,
    cache_length=cache_length,
    steps=int(np.max(length)),
    stop_ids=stop_ids,
  )
