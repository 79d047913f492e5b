"""An ``lm-evaluation-harness`` (0.4) model on this project's engine, registered as ``smollm3_jax``.

    import smollm3_jax.evaluation.lm_eval_model  # registers the model name with lm-eval
    lm_eval.simple_evaluate(model="smollm3_jax", model_args="pretrained=HuggingFaceTB/SmolLM3-3B",
                            tasks=["gsm8k_cot"], apply_chat_template=True)
    # or an object: SmolLM3JaxLM(model=model, tokenizer=tok, enable_thinking=False)

* ``loglikelihood`` and ``loglikelihood_rolling`` run on :mod:`smollm3_jax.evaluation.scoring` (batched,
  bucketed, one compiled program per shape). Contexts and continuations are tokenized as lm-eval's
  ``hf`` model does (:class:`lm_eval.api.model.TemplateLM`: the pair is encoded whole and split,
  trailing spaces of the context move to the continuation, an empty context scores from the
  prefix token), and a pair longer than ``max_length + 1`` loses tokens on the left, as in ``hf``.
* ``generate_until`` runs on :func:`smollm3_jax.generate` with token-id prompts (the context
  already holds the chat template when lm-eval applied it), one call per set of requests that share
  their ``gen_kwargs``, through ``batch_size`` slots of the engine's pool (continuous batching).
  Mapped ``gen_kwargs``: ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``,
  ``do_sample`` (false = greedy, temperature 0), ``max_gen_toks`` (and lm-eval's aliases),
  ``until``, and the engine's other settings (``typical_p``, ``epsilon_cutoff``,
  ``eta_cutoff``, ``no_repeat_ngram_size``, ``min_new_tokens``, ``frequency_penalty``,
  ``presence_penalty``, ``logit_bias``: off unless given); any other key is refused (ValueError
  naming it). The five classic settings left out take what ``hf`` takes (``transformers``'
  ``generate``): the checkpoint's generation_config.json when it has one, else ``transformers``'
  library defaults (no repetition penalty; ``top_k=50`` when sampling). A row stops at a stop id,
  ``max_gen_toks`` or (thinking off) the first of up to four ``until`` strings it completes; the
  ``until`` strings are then cut on the host from the decoded text (after the thinking part, with
  ``think_end_token``), as ``hf``'s post-processing does. With thinking on, rows decode on to the
  stop id or the budget (a stop string inside the thinking does not end the row, where ``hf``'s
  stopping criteria would).
  Each row samples with its own seed, a hash of ``seed``, the context and the repeat number: a
  request samples the same in any batch.
* The chat template (``apply_chat_template=True``, ``system_instruction``) renders with the
  tokenizer's own template, ``enable_thinking`` (model argument) and the pinned ``date``;
  ``add_generation_prompt=False`` (a task's ``gen_prefix``) continues the last message, as
  ``transformers``' ``continue_final_message``. With ``enable_thinking`` the answer is the text
  after ``think_end_token`` (default ``</think>``).

Needs the ``eval`` extra (``pip install -e '.[eval]'``); nothing in the core package imports this.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np

from smollm3_jax.evaluation import scoring
from smollm3_jax.generation import defaults as generation_defaults
from smollm3_jax.generation import sampling
from smollm3_jax.generation.api import generate
from smollm3_jax.loading import load_model_and_tokenizer
from smollm3_jax.nn.model import SmolLM3
from smollm3_jax.text.tokenizer import Tokenizer
from smollm3_jax.utils import validation
from smollm3_jax.utils.extras import needs

with needs("eval", "the lm-evaluation-harness model (smollm3_jax.evaluation.lm_eval_model)"):
  from lm_eval.api.model import TemplateLM
  from lm_eval.api.registry import register_model

log = logging.getLogger(__name__)

# The sampling settings whose unset value is transformers.generate's (the generation_config's);
# the engine's other settings (typical_p, epsilon_cutoff, eta_cutoff, no_repeat_ngram_size,
# min_new_tokens, frequency_penalty, presence_penalty, logit_bias) are off unless a request sets them.
CLASSIC = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
# gen_kwargs this model understands (lm-eval's token-budget aliases are folded into max_gen_toks first).
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", *CLASSIC, *(k for k in sampling.SETTINGS if k not in CLASSIC))
# What `transformers.generate` uses for a setting the checkpoint does not name (GenerationConfig).
TRANSFORMERS_UNSET = dict(temperature=1.0, top_k=50, top_p=1.0, min_p=0.0, repetition_penalty=1.0)
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's hf default


def _to_bool(name: str, value) -> bool | None:
  """lm-eval model_args arrive as strings ("True", "false"); None stays None."""
  if value is None or isinstance(value, bool):
    return value
  if isinstance(value, str) and value.lower() in ("true", "false"):
    return value.lower() == "true"
  raise ValueError(f"{name} must be true or false, got {value!r}")


def _row_seed(seed: int, context: str, repeat: int) -> int:
  digest = hashlib.sha256(f"{seed}\x00{repeat}\x00{context}".encode()).digest()
  return int.from_bytes(digest[:4], "little")


@register_model("smollm3_jax")
class SmolLM3JaxLM(TemplateLM):
  """lm-eval's ``LM`` interface on a SmolLM3 model of this project (module docstring).

  ``pretrained``: a checkpoint ("demo", a directory, a .gguf, an Orbax directory or a hub id), loaded
  with ``dtype`` / ``quantize`` / ``mesh`` through ``checkpoints.spec``; or pass ``model`` (a
  :class:`~smollm3_jax.nn.model.SmolLM3`) and ``tokenizer`` (a :class:`~smollm3_jax.text.tokenizer.Tokenizer`
  or a checkpoint to load one from). ``batch_size``: rows per compiled call. ``max_length``: the
  context (default the model's ``max_position_embeddings``). ``device`` and ``max_batch_size``
  (which lm-eval passes to every model) are ignored: JAX places the work on its default backend.
  """

  def __init__(
    self,
    pretrained: str | Any = "demo",
    *,
    model=None,
    tokenizer=None,
    batch_size: int | str = 8,
    max_length: int | None = None,
    max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
    dtype: str = "auto",
    quantize: str = "none",
    mesh: str = "",
    enable_thinking: bool | str | None = None,
    think_end_token: str | None = None,
    chat_template_args: dict | None = None,
    date: str | None = None,
    seed: int = 0,
    add_bos_token: bool | str | None = None,
    prefix_token_id: int | None = None,
    progress: bool = True,
    device: str | None = None,
    max_batch_size: int | None = None,
  ):
    super().__init__()

    if batch_size == "auto" or batch_size is None:
      batch_size = 8
    self.batch_size = validation.as_count("batch_size", int(batch_size), low=1)
    self._max_gen_toks = validation.as_count("max_gen_toks", int(max_gen_toks), low=1)
    self.seed = validation.as_count("seed", int(seed), low=0, high=validation.UINT32_MAX)
    self.enable_thinking = _to_bool("enable_thinking", enable_thinking)
    self.add_bos_token = _to_bool("add_bos_token", add_bos_token)
    self.progress = bool(_to_bool("progress", progress))
    self.date = date
    self.chat_template_args = dict(chat_template_args or {})
    if self.enable_thinking is not None:
      self.chat_template_args["enable_thinking"] = self.enable_thinking
    self.think_end_token = (
      think_end_token if think_end_token is not None else ("</think>" if self.enable_thinking else None)
    )
    if isinstance(pretrained, SmolLM3):
      model, pretrained = pretrained, None
    if model is None:
      if not isinstance(pretrained, str) or not pretrained:
        raise ValueError("pretrained must be a checkpoint ('demo', a directory, a .gguf, a hub id), or pass model=")
      model, loaded = load_model_and_tokenizer(
        {
          "checkpoint": pretrained,
          "tokenizer": tokenizer if isinstance(tokenizer, str) else "",
          "dtype": dtype,
          "quantize": quantize,
        },
        mesh,
      )
      tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else loaded
    elif not isinstance(model, SmolLM3):
      raise ValueError(f"model must be a smollm3_jax SmolLM3, got {type(model).__name__}")
    if isinstance(tokenizer, str):
      tokenizer = Tokenizer.from_pretrained(tokenizer)
    if not isinstance(tokenizer, Tokenizer):
      raise ValueError("tokenizer: pass a smollm3_jax Tokenizer or a checkpoint to load one from")
    self.model = model
    self.tokenizer = tokenizer
    limit = model.config.max_position_embeddings
    self._max_length = (
      limit if max_length is None else validation.as_count("max_length", int(max_length), low=2, high=limit)
    )
    self.custom_prefix_token_id = (
      None
      if prefix_token_id is None
      else validation.check_token_ids("prefix_token_id", [int(prefix_token_id)], model.config.vocab_size)[0]
    )
    self._unset = self._generation_defaults()

  # -- what TemplateLM needs ------------------------------------------------------------------
  @property
  def eot_token_id(self) -> int:
    return self.tokenizer.eos_token_id

  @property
  def prefix_token_id(self) -> int:
    if self.custom_prefix_token_id is not None:
      return self.custom_prefix_token_id
    return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id

  @property
  def max_length(self) -> int:
    return self._max_length

  @property
  def max_gen_toks(self) -> int:
    return self._max_gen_toks

  @property
  def tokenizer_name(self) -> str:
    return str(self.tokenizer.name_or_path or "smollm3_jax").replace("/", "__")

  def chat_template(self, chat_template: bool | str = False) -> str | None:
    if chat_template is False or chat_template is None:
      return None
    return self.tokenizer.chat_template or "smollm3_jax built-in SmolLM3 chat format"

  def tok_encode(
    self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None, **kwargs
  ) -> list[int]:
    """As ``hf``'s: the tokenizer's special tokens unless told otherwise or the text already starts
    with the prefix token."""
    if add_special_tokens is None:
      add_special_tokens = True if self.add_bos_token is None else self.add_bos_token
      prefix = self.tokenizer.decode([self.prefix_token_id])
      if prefix and string.startswith(prefix):
        add_special_tokens = False
    ids = self.tokenizer.encode(string, add_special_tokens=add_special_tokens)
    return ids[-left_truncate_len:] if left_truncate_len else ids

  def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
    return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

  # -- log-likelihoods --------------------------------------------------------------------------
  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:

    pairs = []
    for _, context_enc, continuation_enc in requests:
      if not continuation_enc or len(continuation_enc) > self.max_length:
        raise ValueError(
          f"a continuation of {len(continuation_enc)} tokens cannot be scored with max_length {self.max_length}"
        )
      seq = (list(context_enc) + list(continuation_enc))[-(self.max_length + 1) :]  # hf's left truncation
      pairs.append((seq[: len(seq) - len(continuation_enc)], list(continuation_enc)))
    scored = scoring.score_token_ids(
      self.model, pairs, batch_size=self.batch_size, progress=self.progress and not disable_tqdm, desc="loglikelihood"
    )
    out = []
    for (key, _, cont), (logprobs, argmax) in zip(requests, scored):
      answer = (float(logprobs.sum()), bool(np.array_equal(argmax, cont)))
      out.append(answer)
      if key is not None:
        self.cache_hook.add_partial("loglikelihood", key, answer)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:

    texts = [self.tok_encode(req.args[0]) for req in requests]
    if any(not t for t in texts):
      raise ValueError("loglikelihood_rolling: a document encodes to no tokens")
    scores = scoring.score_rolling(
      self.model,
      None,
      texts,
      window=self.max_length,
      context_len=1,
      prefix_token_id=self.prefix_token_id,
      batch_size=self.batch_size,
      progress=self.progress and not disable_tqdm,
    )
    out = []
    for req, s in zip(requests, scores):
      out.append(s.log_likelihood)
      self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), s.log_likelihood)
    return out

  # -- generation ---------------------------------------------------------------------------------
  def _generation_defaults(self) -> dict:
    """What an unset sampling setting means here: ``transformers.generate``'s reading of the
    checkpoint's generation_config.json, else its library defaults (see the module docstring)."""

    found = generation_defaults.for_tokenizer(self.tokenizer)
    if found.source in ("table", "transformers"):
      return dict(TRANSFORMERS_UNSET)
    values = {k: getattr(found, k) for k in generation_defaults.SAMPLING_FIELDS}
    if not values["temperature"]:  # the file says greedy: sampling (do_sample=True) uses transformers' 1.0
      values["temperature"] = TRANSFORMERS_UNSET["temperature"]
    return values

  def generation_settings(self, gen_kwargs: dict) -> dict:
    """``generate`` keyword arguments and the stop strings for one request's ``gen_kwargs``
    (ValueError names an unknown or bad key)."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    if not isinstance(gen_kwargs, dict):
      raise ValueError(f"gen_kwargs must be a dict, got {type(gen_kwargs).__name__}")
    kwargs = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
    unknown = sorted(set(kwargs) - set(GEN_KWARGS))
    if unknown:
      raise ValueError(
        f"gen_kwargs: {', '.join(unknown)} not supported by smollm3_jax (it maps {', '.join(GEN_KWARGS)})"
      )
    until = handle_stop_sequences(
      kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    )
    do_sample = _to_bool("do_sample", kwargs.pop("do_sample"))
    settings = {}
    if do_sample:
      if "temperature" in gen_kwargs and float(kwargs["temperature"]) == 0.0:
        raise ValueError("gen_kwargs: do_sample=True needs a temperature > 0 (temperature 0 is greedy)")
      settings["temperature"] = (
        float(kwargs["temperature"]) if "temperature" in gen_kwargs else self._unset["temperature"]
      )
    else:
      settings["temperature"] = 0.0
    for name in CLASSIC[1:]:
      value = kwargs.get(name)
      settings[name] = self._unset[name] if value is None else value
    settings.update({k: v for k, v in kwargs.items() if k in sampling.SETTINGS and k not in CLASSIC})
    sampling.validate_sampling_args(**settings, vocab_size=self.model.config.vocab_size)  # top_k=1.5 refused
    settings["top_k"] = int(settings["top_k"] or 0)  # a whole number (checked above); None = off
    settings["max_new_tokens"] = validation.as_count("max_gen_toks", kwargs["max_gen_toks"], low=1)
    if settings["max_new_tokens"] >= self.max_length:
      raise ValueError(
        f"gen_kwargs: max_gen_toks {settings['max_new_tokens']} leaves no room for the "
        f"context in max_length {self.max_length}"
      )
    # Up to 4 of the stop strings also end rows early in the engine (the first one completed ends the
    # row, as hf's stopping criteria); the cut itself is postprocess's. Not with thinking on: a stop
    # string inside the thinking would end the row there, and the answer is what `until` applies to.
    eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
    early = [] if self.think_end_token else [u for u in until if u and u != eos][:4]
    return {"settings": settings, "until": until, "stop": early or None}

  def postprocess(self, token_ids, until) -> str:
    """The text lm-eval scores: decoded without special tokens, the thinking part dropped (text
    after the last ``think_end_token``), cut at the first of each ``until`` string (as ``hf``)."""
    from lm_eval.models.utils import postprocess_generated_text

    return postprocess_generated_text(self.tok_decode(token_ids), stop=until, think_end_token=self.think_end_token)

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:

    args = [req.args for req in requests]
    groups: dict[str, list[int]] = {}
    for i, (_, gen_kwargs) in enumerate(args):
      groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
    plans = {key: self.generation_settings(args[idx[0]][1]) for key, idx in groups.items()}  # all checked first
    repeats: dict[str, int] = {}
    seeds = []
    for context, _ in args:  # lm-eval repeats a request `repeats` times: each repeat samples anew
      seeds.append(_row_seed(self.seed, context, repeats.get(context, 0)))
      repeats[context] = repeats.get(context, 0) + 1
    out: list[str | None] = [None] * len(args)
    for key, idx in groups.items():
      plan = plans[key]
      budget = self.max_length - plan["settings"]["max_new_tokens"]  # hf: room for the new tokens
      ids = [self.tok_encode(args[i][0], left_truncate_len=budget) for i in idx]
      # One call per group: its rows run through `batch_size` slots of the engine's pool, a row
      # starting as soon as another finishes (no batch waits for its longest row).
      result = generate(
        self.model,
        self.tokenizer,
        ids,
        seed=[seeds[i] for i in idx],
        thinking=False,
        stop=plan["stop"],
        slots=min(self.batch_size, len(idx)),
        progress=self.progress and not disable_tqdm,
        **plan["settings"],
      )
      for i, c in zip(idx, result.completions):
        out[i] = self.postprocess(c.token_ids, plan["until"])
        self.cache_hook.add_partial("generate_until", args[i], out[i])
    return out

  # -- chat ---------------------------------------------------------------------------------------
  def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """The chat rendered with the tokenizer's template, ``enable_thinking`` and ``date``;
    without a generation prompt the final (assistant) message is continued, not closed."""
    import jinja2

    messages = validation.check_messages(chat_history)
    kwargs = dict(self.chat_template_args)
    thinking = kwargs.pop("enable_thinking", True)

    def render(msgs):
      return self.tokenizer.apply_chat_template(
        msgs, add_generation_prompt=add_generation_prompt, enable_thinking=bool(thinking), date=self.date, **kwargs
      )

    try:
      text = render(messages)
    except jinja2.exceptions.TemplateError:  # as hf: a template that refuses the system role
      log.warning("the chat template failed; rendering again without the system message")
      messages = [m for m in messages if m["role"] != "system"]
      text = render(messages)
    if not add_generation_prompt:
      text = _continue_final_message(text, messages[-1]["content"])
    return text

  def get_model_info(self) -> dict:
    import jax

    return {
      "model_num_parameters": int(sum(x.size for x in jax.tree.leaves(_params(self.model)))),
      "model_dtype": str(np.dtype(self.model.dtype)),
      "checkpoint": str(self.tokenizer.name_or_path),
    }


def _params(model):
  from flax import nnx

  return nnx.state(model, nnx.Param)


def _continue_final_message(rendered: str, final: str) -> str:
  """``rendered`` cut right after the final message's content (transformers'
  ``continue_final_message``: the turn is left open for the model to continue)."""
  if not final.strip():
    return rendered
  at = rendered.rindex(final.strip())
  if rendered[at : at + len(final.lstrip())] == final.lstrip():
    return rendered[: at + len(final.lstrip())]
  return rendered[: at + len(final.strip())]
