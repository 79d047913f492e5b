"""Teacher-forced scoring: the log-probability of given continuations, and the perplexity of long texts.

    scores = smollm3_jax.score(model, tok, ["The capital of France is"], [" Paris."])
    scores[0].logprobs, scores[0].log_likelihood, scores[0].is_greedy
    doc = smollm3_jax.score_rolling(model, tok, long_text, window=1024)[0]
    doc.log_likelihood, doc.num_tokens, doc.perplexity

A pair (prompt, continuation) runs as one sequence ``prompt + continuation[:-1]``; position t's
logits score token t + 1. Requests are sorted by length and run in batches padded to a batch bucket
(``buckets.DEFAULT_BATCH_BUCKETS``) and a length bucket (``buckets.bucket_length`` over
:data:`BUCKETS`): one compiled
program per (batch, length) shape, whatever the texts. Inside the program the sequence runs in
chunks of :data:`CHUNK` positions through a KV cache (attention memory and the ``[B, chunk, vocab]``
logits stay bounded for long windows), and only each position's target log-probability
(log-softmax in f32) and argmax leave it.

The rolling mode splits a text into windows exactly as ``lm-eval``'s ``loglikelihood_rolling``
(``lm_eval.utils.get_rolling_token_windows`` then ``make_disjoint_window``): every token is
predicted once, the first from a prefix token (BOS, else EOS), each later window conditioning on at
least ``context_len`` tokens before it.

Imports the model, the cache, the shape buckets, validation and the prompt rendering of :mod:`smollm3_jax.text.prompts`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from smollm3_jax.nn.kv_cache import KVCache
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.text.prompts import render_prompts
from smollm3_jax.utils import validation
from smollm3_jax.utils.buckets import DEFAULT_BATCH_BUCKETS, DEFAULT_BUCKETS, bucket_length

CHUNK = 256  # positions per pass through the model inside the scoring program
# Length buckets: the cache's, plus two short ones (multiple-choice requests are often ~10-30 tokens,
# and padding them to 64 quadrupled the work).
BUCKETS = (16, 32, *DEFAULT_BUCKETS)
# Traces of the scoring program by name (one per compiled shape: tests read it).
TRACE_COUNTS: collections.Counter = collections.Counter()


@dataclasses.dataclass
class Score:
  """One continuation scored given its prompt.

  ``logprobs`` [len(token_ids)] float32: log p(token_t | prompt, token_<t) under the model (the
  log-softmax of its logits, no sampling processors); ``log_likelihood`` their sum; ``is_greedy``:
  every token is the argmax of its distribution (greedy decoding would have produced the
  continuation); ``greedy_token_ids``: those argmaxes.
  """

  prompt: str
  prompt_token_ids: list[int]
  token_ids: list[int]
  logprobs: np.ndarray
  log_likelihood: float
  is_greedy: bool
  greedy_token_ids: list[int]


@dataclasses.dataclass
class RollingScore:
  """A whole text scored through rolling windows: ``log_likelihood`` (natural log, summed over the
  ``num_tokens`` tokens, each predicted once), ``perplexity`` = exp(-log_likelihood / num_tokens),
  the per-token ``logprobs`` [num_tokens] and the number of windows it took."""

  token_ids: list[int]
  logprobs: np.ndarray
  log_likelihood: float
  num_tokens: int
  perplexity: float
  num_windows: int


# --------------------------------------------------------------------------------------------
# The compiled program
# --------------------------------------------------------------------------------------------
def _score_program(graphdef, state, tokens, targets):
  """tokens, targets [B, L] int32 (targets[b, t] is the token after tokens[b, t]) -> (log p of each
  target [B, L] f32, argmax [B, L] int32). Runs the sequence in chunks of min(L, CHUNK) positions
  through a KV cache of L slots."""
  TRACE_COUNTS["score"] += 1  # a trace-time side effect: counts compiled shapes, not calls
  model = nnx.merge(graphdef, state)
  b, length = tokens.shape
  c = min(length, CHUNK)
  n = length // c  # lengths are buckets: below CHUNK one pass, beyond it multiples of CHUNK

  def body(cache, xs):
    tok, tgt = xs  # [B, c]
    hidden, cache = model.hidden_states(tok, None, cache)
    logits = model.logits(hidden).astype(jnp.float32)  # [B, c, V]
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    return cache, (picked - lse, jnp.argmax(logits, axis=-1).astype(jnp.int32))

  cache = KVCache.init(model.config, b, length, model.dtype)
  split = lambda x: x.reshape(b, n, c).transpose(1, 0, 2)
  _, (logp, argmax) = jax.lax.scan(body, cache, (split(tokens), split(targets)))
  merge = lambda x: x.transpose(1, 0, 2).reshape(b, length)
  return merge(logp), merge(argmax)


_score_jit = jax.jit(_score_program, static_argnums=(0,))


def _batches(order: Sequence[int], size: int) -> Iterator[list[int]]:
  for i in range(0, len(order), size):
    yield list(order[i : i + size])


def score_token_ids(
  model: SmolLM3,
  pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
  *,
  batch_size: int = 8,
  progress: bool = False,
  desc: str = "scoring",
) -> list[tuple[np.ndarray, np.ndarray]]:
  """(log-probabilities [n_i] f32, argmax ids [n_i]) of each continuation in ``pairs`` of
  (prompt ids, continuation ids), both non-empty and already checked; the work of :func:`score`.
  Longest first in batches of ``batch_size``, each padded to a batch and a length bucket."""
  graphdef, state = nnx.split(model)
  pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
  totals = [len(p) + len(c) - 1 for p, c in pairs]  # model inputs: prompt + continuation[:-1]
  order = sorted(range(len(pairs)), key=lambda i: -totals[i])
  out: list = [None] * len(pairs)
  from tqdm.auto import tqdm

  with tqdm(total=len(pairs), desc=desc, unit="seq", disable=not progress, dynamic_ncols=True) as bar:
    for idx in _batches(order, batch_size):
      rows = next((b for b in DEFAULT_BATCH_BUCKETS if b >= len(idx)), len(idx))
      length = bucket_length(max(totals[i] for i in idx), BUCKETS)
      tokens = np.full((rows, length), pad, np.int32)
      targets = np.zeros((rows, length), np.int32)
      for r, i in enumerate(idx):
        seq = list(pairs[i][0]) + list(pairs[i][1])
        tokens[r, : len(seq) - 1] = seq[:-1]
        targets[r, : len(seq) - 1] = seq[1:]
      logp, argmax = jax.device_get(_score_jit(graphdef, state, jnp.asarray(tokens), jnp.asarray(targets)))
      for r, i in enumerate(idx):
        start, end = len(pairs[i][0]) - 1, totals[i]  # positions that predict the continuation
        out[i] = (np.asarray(logp[r, start:end], np.float32), np.asarray(argmax[r, start:end], np.int64))
      bar.update(len(idx))
  return out


# --------------------------------------------------------------------------------------------
# Input checks (all before anything compiles)
# --------------------------------------------------------------------------------------------
def _continuation_ids(tokenizer, continuations, n: int, vocab: int) -> list[list[int]]:
  if isinstance(continuations, str) or validation.is_ids(continuations):
    continuations = [continuations]
  if not isinstance(continuations, (list, tuple)):
    raise ValueError(
      f"continuations must be a string, token ids or a list of those, got {type(continuations).__name__}"
    )
  if len(continuations) != n:
    raise ValueError(f"continuations: expected one per prompt ({n}), got {len(continuations)}")
  return [_text_ids(tokenizer, c, f"continuation {i}", vocab) for i, c in enumerate(continuations)]


def _text_ids(tokenizer, x, name: str, vocab: int) -> list[int]:
  """Token ids of one text (encoded) or id list (checked); ValueError naming ``name`` otherwise."""
  if isinstance(x, str):
    if tokenizer is None:
      raise ValueError(f"{name}: a tokenizer is needed for text (or pass token ids)")
    ids = tokenizer.encode(x)
  elif validation.is_ids(x) or (isinstance(x, (list, tuple, np.ndarray)) and len(x) == 0):
    ids = list(x)
  else:
    raise ValueError(f"{name} must be a string or token ids, got {type(x).__name__}")
  if not ids:
    raise ValueError(f"{name} is empty: nothing to score")
  return validation.check_token_ids(name, ids, vocab)


def _check_fits(model: SmolLM3, prompt_ids, continuation_ids) -> None:
  limit = model.config.max_position_embeddings
  for i, (p, c) in enumerate(zip(prompt_ids, continuation_ids)):
    if len(p) + len(c) - 1 > limit:
      raise ValueError(
        f"prompt {i} ({len(p)} tokens) with its continuation ({len(c)} tokens) needs "
        f"{len(p) + len(c) - 1} positions; the model has {limit} (score_rolling scores "
        "long texts in windows)"
      )


def score(
  model: SmolLM3,
  tokenizer,
  prompts,
  continuations,
  *,
  chat: bool = False,
  thinking=False,
  date=None,
  batch_size: int = 8,
  progress: bool = False,
) -> list[Score]:
  """Log-probabilities of each continuation given its prompt (teacher-forced).

  ``prompts``: strings, token id lists or (``chat=True``) message lists, as
  :func:`smollm3_jax.text.prompts.render_prompts` takes them: with ``chat`` a prompt is rendered with the
  chat template and its generation prompt (``thinking``: the template's ``enable_thinking``, per
  prompt or one value, default off: SmolLM3's template then closes an empty think block in the
  prompt, so the continuation is scored as the answer itself; ``date``: the day it writes), so a
  continuation is scored as the assistant's reply; without, text is encoded as is (no BOS added). ``continuations``: one per prompt, a
  string (encoded on its own: tokens do not merge across the boundary; pass ids for any other
  split) or token ids. Returns one :class:`Score` per pair, in order. ``batch_size``: rows per
  compiled call. Every argument is checked before anything compiles (ValueError naming it).
  """
  batch_size = validation.as_count("batch_size", batch_size, low=1)
  vocab = model.config.vocab_size
  texts, prompt_ids = render_prompts(tokenizer, prompts, chat=chat, thinking=thinking, date=date, vocab_size=vocab)
  for i, ids in enumerate(prompt_ids):
    prompt_ids[i] = validation.check_token_ids(f"prompt {i}", ids, vocab)
  cont_ids = _continuation_ids(tokenizer, continuations, len(prompt_ids), vocab)
  _check_fits(model, prompt_ids, cont_ids)
  scored = score_token_ids(model, list(zip(prompt_ids, cont_ids)), batch_size=batch_size, progress=progress)
  return [
    Score(
      prompt=t,
      prompt_token_ids=p,
      token_ids=c,
      logprobs=lp,
      log_likelihood=float(lp.sum()),
      is_greedy=bool(np.array_equal(am, c)),
      greedy_token_ids=am.tolist(),
    )
    for t, p, c, (lp, am) in zip(texts, prompt_ids, cont_ids, scored)
  ]


# --------------------------------------------------------------------------------------------
# Rolling windows (lm-eval's loglikelihood_rolling)
# --------------------------------------------------------------------------------------------
def rolling_windows(
  token_ids: Sequence[int], prefix_token: int, window: int, context_len: int = 1
) -> list[tuple[list[int], list[int]]]:
  """(context, predicted) pairs covering ``token_ids``, each predicted token once: lm-eval's
  ``get_rolling_token_windows`` (``max_seq_len=window``) followed by ``make_disjoint_window``. The
  first window predicts the first ``window`` tokens from ``[prefix_token] + tokens``; each later one
  predicts up to ``window - context_len + 1`` tokens, conditioning on the ``window`` tokens before
  its last one (at least ``context_len`` of context)."""
  if not 1 <= context_len <= window:
    raise ValueError(f"context_len must be in [1, window={window}], got {context_len}")
  tokens = list(token_ids)
  if not tokens:
    return []
  pred_len = window - context_len + 1
  first = min(window, len(tokens))
  pairs = [([prefix_token] + tokens[: first - 1], tokens[:first])]
  done = first
  while done < len(tokens):
    n = min(len(tokens) - done, pred_len)
    end = done + n
    inputs = tokens[max(end - window - 1, 0) : end - 1]
    pairs.append((inputs, tokens[end - n : end]))
    done = end
  return [(a[: len(a) - (len(b) - 1)], b) for a, b in pairs]  # make_disjoint_window


def score_rolling(
  model: SmolLM3,
  tokenizer,
  texts,
  *,
  window: int | None = None,
  context_len: int = 1,
  prefix_token_id: int | None = None,
  batch_size: int = 8,
  progress: bool = False,
) -> list[RollingScore]:
  """Log-likelihood and perplexity of whole texts, in windows of at most ``window`` tokens (default:
  the model's ``max_position_embeddings``) as lm-eval's ``loglikelihood_rolling`` cuts them.

  ``texts``: a string (encoded without BOS), token ids, or a list of those. ``context_len``: the
  least context each window after the first keeps from the text before it (lm-eval's hf model uses
  1: disjoint windows). ``prefix_token_id``: what the first token is predicted from (default the
  tokenizer's BOS, else its EOS, else the model config's BOS). Windows of all texts are batched
  together. Returns one :class:`RollingScore` per text.
  """
  batch_size = validation.as_count("batch_size", batch_size, low=1)
  cfg = model.config
  limit = cfg.max_position_embeddings
  window = limit if window is None else validation.as_count("window", window, low=1, high=limit)
  context_len = validation.as_count("context_len", context_len, low=1, high=window)
  if prefix_token_id is None:
    candidates = ([tokenizer.bos_token_id, tokenizer.eos_token_id] if tokenizer is not None else []) + [
      cfg.bos_token_id
    ]
    prefix_token_id = next((t for t in candidates if t is not None), None)
    if prefix_token_id is None:
      raise ValueError("prefix_token_id: the tokenizer and the model name no BOS/EOS; pass one")
  prefix_token_id = validation.check_token_ids("prefix_token_id", [prefix_token_id], cfg.vocab_size)[0]
  if isinstance(texts, str) or validation.is_ids(texts):
    texts = [texts]
  if not isinstance(texts, (list, tuple)) or not texts:
    raise ValueError("texts must be a string, token ids or a non-empty list of those")
  docs = [_text_ids(tokenizer, t, f"text {i}", cfg.vocab_size) for i, t in enumerate(texts)]
  windows = [rolling_windows(ids, prefix_token_id, window, context_len) for ids in docs]
  flat = [w for ws in windows for w in ws]
  scored = iter(score_token_ids(model, flat, batch_size=batch_size, progress=progress, desc="rolling windows"))
  out = []
  for ids, ws in zip(docs, windows):
    logprobs = np.concatenate([next(scored)[0] for _ in ws])
    total = float(logprobs.sum())
    out.append(
      RollingScore(
        token_ids=ids,
        logprobs=logprobs,
        log_likelihood=total,
        num_tokens=len(ids),
        perplexity=math.exp(-total / len(ids)),
        num_windows=len(ws),
      )
    )
  return out
