"""The server's request checks for the sampling settings and token limits, called directly (no
server, no model): each out-of-range value is refused naming its field, each edge value accepted."""

from __future__ import annotations

import pytest

from smollm3_jax.serving.protocol import RequestError, parse_request

DEFAULTS = dict(thinking=False, temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0, seed=0)
MESSAGES = [{"role": "user", "content": "hi"}]


def _parse(**fields):
  return parse_request({"messages": MESSAGES, **fields}, DEFAULTS)


@pytest.mark.parametrize(
  "field, value, needle",
  [
    ("top_k", -2, "'top_k' must be >= -1"),
    ("top_k", 2.5, "'top_k' must be an integer"),
    ("top_k", "40", "'top_k' must be an integer"),
    ("min_p", -0.01, "'min_p' must be >= 0"),
    ("min_p", 1.01, "'min_p' must be <= 1"),
    ("repetition_penalty", 0, "'repetition_penalty' must be > 0"),
    ("repetition_penalty", -1.0, "'repetition_penalty' must be > 0"),
    ("repetition_penalty", 10.5, "'repetition_penalty' must be <= 10"),
    ("max_completion_tokens", 0, "'max_completion_tokens' must be >= 1"),
    ("max_completion_tokens", 2.5, "'max_completion_tokens' must be an integer"),
    ("max_completion_tokens", True, "'max_completion_tokens' must be an integer"),
  ],
)
def test_out_of_range_settings_are_refused_naming_the_field(field, value, needle):
  with pytest.raises(RequestError) as e:
    _parse(**{field: value})
  assert needle in e.value.message and e.value.param == field and e.value.status == 400


def test_edge_values_are_accepted():
  req = _parse(top_k=-1, min_p=1.0, repetition_penalty=10.0, max_completion_tokens=1)
  assert req.sampling["top_k"] == 0  # vLLM's -1 (off) is our 0
  assert (req.sampling["min_p"], req.sampling["repetition_penalty"], req.max_tokens) == (1.0, 10.0, 1)
  req = _parse(top_k=40, min_p=0.0, repetition_penalty=0.5, max_completion_tokens=7.0)
  assert (req.sampling["top_k"], req.sampling["repetition_penalty"], req.max_tokens) == (40, 0.5, 7)
  assert isinstance(req.max_tokens, int)
  assert _parse(max_tokens=5, max_completion_tokens=5).max_tokens == 5  # the same limit twice is fine
  assert _parse().sampling == {k: DEFAULTS[k] for k in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")}
