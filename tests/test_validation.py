"""Bad input to generate / stream fails at the door: a ValueError naming it, before any compile."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import smollm3_jax
from smollm3_jax.generation.engine import COMPILE_COUNTS
from smollm3_jax.nn import config as C
from smollm3_jax.utils import validation


@pytest.fixture(scope="module")
def tok():
  return smollm3_jax.Tokenizer.from_pretrained("demo")


@pytest.fixture(scope="module")
def model(tok):
  return smollm3_jax.SmolLM3(C.tiny(vocab_size=tok.vocab_size), dtype=jnp.float32, rngs=nnx.Rngs(0))


BAD = {
  # token ids outside [0, vocab): NaN logits and a fake eos before; -1 / 2**31 an OverflowError
  "id >= vocab": (dict(prompts=[[5, 49152]]), r"prompt 0\[1\] = 49152 is not a token id"),
  "id -1": (dict(prompts=[[-1, 5]]), r"prompt 0\[0\] = -1 is not a token id"),
  "id 2**31": (dict(prompts=[[2**31]]), "is not a token id"),
  "id 2**70": (dict(prompts=[[2**70]]), "is not a token id"),
  "id a float": (dict(prompts=[[5, 2.5]]), r"prompt 0\[1\] must be an integer"),
  # thinking must be a bool ("no" / "false" turned thinking on)
  "thinking 'no'": (dict(thinking="no"), "thinking must be True or False"),
  "thinking 'false' per row": (dict(prompts=["a", "b"], thinking=[True, "false"]), r"thinking\[1\]"),
  # counts: not truncated or wrapped
  "max_new_tokens 2.7": (dict(max_new_tokens=2.7), "max_new_tokens must be an integer"),
  "max_new_tokens 10**20": (dict(max_new_tokens=10**20), "max_new_tokens must be an integer in"),
  "max_new_tokens 0": (dict(max_new_tokens=0), "max_new_tokens must be an integer in"),
  "seed 1.5": (dict(seed=1.5), "seed must be an integer"),
  "seed 'abc'": (dict(seed="abc"), "seed must be an integer"),
  "seed None": (dict(seed=None), "seed must be an integer"),
  "seed 2**32": (dict(seed=2**32), "seed must be an integer in"),
  "seed -1 per row": (dict(prompts=["a", "b"], seed=[1, -1]), r"seed\[1\]"),
  "newline_limit -4": (dict(newline_limit=-4), "newline_limit"),
  "stop id beyond int32": (dict(stop_ids=[2**40]), r"stop_ids\[0\]"),
  "stop id -1": (dict(stop_ids=[2, -1]), r"stop_ids\[1\]"),
  # context_length 0 was silently the model's maximum
  "context_length 0": (dict(context_length=0), "context_length must be an integer in"),
  "context_length 2.5": (dict(context_length=2.5), "context_length must be an integer"),
  "temperature overflows f32": (dict(temperature=1e39), "too large for float32"),
  # message lists: a jinja TypeError / UndefinedError from inside the template before
  "no role": (dict(prompts=[[{"content": "x"}]]), r"prompt 0: messages\[0\] has no 'role'"),
  "no content": (dict(prompts=[[{"role": "user"}]]), r"messages\[0\] has no 'content'"),
  "content an int": (dict(prompts=[[{"role": "user", "content": 3}]]), "content must be a string"),
  "unknown role": (dict(prompts=[[{"role": "robot", "content": "x"}]]), "role must be one of"),
  # an empty prompt list: the error talked about `batch`
  "no prompts": (dict(prompts=[]), "need at least one prompt"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_before_compiling(model, tok, case):
  kwargs, message = BAD[case]
  kwargs = {"prompts": ["Hi"], "max_new_tokens": 2, **kwargs}
  before = dict(COMPILE_COUNTS)
  with pytest.raises(ValueError, match=message):
    smollm3_jax.generate(model, tok, **kwargs)
  prompts = kwargs.pop("prompts")
  if len(prompts) == 1:  # stream() takes one prompt and the same keyword arguments
    with pytest.raises(ValueError, match=message):
      smollm3_jax.stream(model, tok, prompts[0], **kwargs)
  assert dict(COMPILE_COUNTS) == before


def test_good_values_in_every_accepted_form(model, tok):
  res = smollm3_jax.generate(
    model,
    tok,
    [[5, 6, np.int64(7)], np.asarray([8, 9])],
    thinking=np.bool_(False),
    max_new_tokens=np.int32(2),
    seed=[0, 2**32 - 1],
    stop_ids=[2],
    context_length=64,
    temperature=[0.7, 0.0],
  )
  assert len(res) == 2 and all(1 <= len(c.token_ids) <= 2 for c in res)
  # settings echoed as given, not as their float32 values
  assert res[0].settings["temperature"] == 0.7 and res[0].settings["thinking"] is False
  assert res[1].settings["seed"] == 2**32 - 1


def test_checkers_directly():
  assert validation.as_count("n", 3.0) == 3
  assert validation.as_counts("n", [1, 2], 2).tolist() == [1, 2]
  with pytest.raises(ValueError, match=r"n: expected a scalar or 3 values"):
    validation.as_counts("n", [1, 2], 3)
  with pytest.raises(ValueError, match="must be True or False"):
    validation.as_bool("flag", 1)
  assert validation.check_messages(
    [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "name": "x"}]
  ) == [{"role": "user", "content": "ab", "name": "x"}]


def test_is_ids_is_the_one_test_for_token_id_prompts(tok):
  """``validation.is_ids``: one sequence meant as token ids (a 1-D array, or a non-empty list/tuple whose
  first item is an int: a bad later item is then named by check_token_ids); the renderer that generate,
  scoring and the sweep share treats exactly those as one ids prompt."""
  from smollm3_jax.text.prompts import render_prompts

  for ids in ([5, 6], (5,), [np.int64(5), 6], np.asarray([5, 6]), np.asarray([], np.int32)):
    assert validation.is_ids(ids), ids
  for other in ([], "56", [[5, 6]], [5.0, 6], [True, 1], np.asarray([[5, 6]]), [{"role": "user"}], None):
    assert not validation.is_ids(other), other
  _, one = render_prompts(tok, [5, 6])  # one prompt of two ids, not two prompts
  _, two = render_prompts(tok, [[5, 6], np.asarray([7])])
  assert one == [[5, 6]] and two == [[5, 6], [7]]
