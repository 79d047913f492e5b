"""What a generation returns: :class:`Completion` per row (text, thinking, answer, stop reason,
settings, log-probabilities), :class:`GenerationStats` per call, and :func:`completion_of`, which
turns a finished pool row into its Completion (the one place a row's text is cut and split).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from smollm3_jax.generation.decode import EOS, STOP, STOP_REASONS
from smollm3_jax.generation.stop import cut_stop
from smollm3_jax.text.thinking import prompt_opens_thinking, split_thinking


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
  batch_size: int = 0  # slots of the pool
  cache_length: int = 0  # cache slots per row
  decode_steps: int = 0
  prefilled_prompts: int = 0  # prompts run through prefill (repeats share one)
  slot_utilization: float = 0.0  # generated tokens / (slots x decode steps)
  queue_seconds: float = 0.0  # mean wait of a row for a slot
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


def completion_of(
  tokenizer, request, prompt_text: str, stop_ids: Sequence[int], stop: Sequence[str] = (), settings: dict | None = None
) -> Completion:
  """The Completion of a finished pool row (:class:`~smollm3_jax.generation.engine.Request`): its
  final stop token left out of the text (kept in ``token_ids``), a stop string and what follows it
  cut (reason "stop"), the text split into thinking and answer. Without a tokenizer the texts are
  empty."""
  ids = list(request.token_ids)
  body = ids[:-1] if ids and request.reason == EOS and ids[-1] in stop_ids else ids
  text = tokenizer.decode(body) if tokenizer is not None else ""
  if request.reason == STOP:  # cut the stop string (and anything after it) from the text
    text = cut_stop(text, stop)
  thinking, answer = (
    split_thinking(text, inside=prompt_opens_thinking(prompt_text)) if tokenizer is not None else ("", "")
  )
  record = request.record
  return Completion(
    prompt=prompt_text,
    prompt_token_ids=[int(t) for t in request.prompt],
    token_ids=ids,
    text=text,
    thinking=thinking,
    answer=answer,
    stop_reason=STOP_REASONS[request.reason],
    settings=dict(settings or {}),
    logprobs=TokenLogprobs.of(record, len(ids)) if record is not None else None,
  )


def row_stats(request, pool, since: float) -> GenerationStats:
  """One pool row's own timings (a server choice): admission -> first token (its prompt's prefill
  and insert, shared with rows admitted in the same round), first token -> finished (decoding);
  ``since``: when its request arrived (perf_counter seconds)."""
  admitted = request.admitted or since
  first = request.first_token or admitted
  decode = max(0.0, (request.finished or time.perf_counter()) - first)
  n = len(request.token_ids)
  return GenerationStats(
    prompt_tokens=len(request.prompt),
    generated_tokens=n,
    prefill_seconds=max(0.0, first - admitted),
    time_to_first_token=(request.first_token - since) if request.first_token else 0.0,
    decode_seconds=decode,
    decode_tokens_per_second=n / decode if decode > 0 else 0.0,
    batch_size=pool.slots,
    cache_length=pool.length,
    slot_utilization=pool.utilization(),
    queue_seconds=request.queue_seconds,
    max_queue_seconds=request.queue_seconds,
  )
