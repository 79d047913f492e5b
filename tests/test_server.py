"""The OpenAI-style API on a tiny random model: same text as generate, queueing, errors, disconnects.

A real uvicorn server runs on a free loopback port in a background thread; every request keeps the
prompt under 64 tokens and max_tokens <= 24 so all of them share one compiled shape bucket.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from _helpers import SlowTokenizer

import smollm3_jax
from smollm3_jax import chat, server

MAX_TOKENS = 24


def _messages(text: str) -> list[dict]:
  return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def model_and_tokenizer():
  return chat.load_chat_model("tiny", tiny_context=512)


@pytest.fixture(scope="module")
def app(model_and_tokenizer):
  model, tok = model_and_tokenizer
  app = server.create_app(model, tok, model_name="tiny", temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS,
                          chunk_steps=2, seed=0)
  server.warmup(app)
  return app


@pytest.fixture(scope="module")
def base_url(app):
  with server.BackgroundServer(app) as srv:
    yield srv.url


def _expected(model_and_tokenizer, messages, **settings):
  model, tok = model_and_tokenizer
  kwargs = dict(temperature=0.0, top_p=1.0, max_new_tokens=MAX_TOKENS, seed=0, thinking=True)
  kwargs.update(settings)
  return smollm3_jax.generate(model, tok, [messages], **kwargs).completions[0]


def _body(messages, *, temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=0, stream=False, **extra):
  return dict(messages=messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
              stream=stream, **extra)


def _read_sse(lines) -> tuple[str, str, list[dict], str | None]:
  """(content, reasoning, events, finish_reason) from SSE lines; checks the [DONE] terminator."""
  content, reasoning, events, finish, done = [], [], [], None, False
  for line in lines:
    if not line.startswith("data: "):
      assert line == "", f"unexpected SSE line {line!r}"
      continue
    data = line[len("data: "):]
    if data == "[DONE]":
      done = True
      continue
    event = json.loads(data)
    events.append(event)
    for choice in event["choices"]:
      delta = choice["delta"]
      content.append(delta.get("content") or "")
      reasoning.append(delta.get("reasoning_content") or "")
      finish = choice["finish_reason"] or finish
  assert done, "the stream did not end with [DONE]"
  return "".join(content), "".join(reasoning), events, finish


def _stream_request(client: httpx.Client, body: dict):
  with client.stream("POST", "/v1/chat/completions", json=body) as r:
    assert r.status_code == 200, r.read()
    assert r.headers["content-type"].startswith("text/event-stream")
    return _read_sse(list(r.iter_lines()))


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=0.9, top_p=0.8, seed=1234)],
                         ids=["greedy", "sampled"])
def test_streaming_and_non_streaming_match_generate(base_url, model_and_tokenizer, settings):
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a color."},
              {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another one?"}]
  want = _expected(model_and_tokenizer, messages, temperature=settings["temperature"],
                   top_p=settings.get("top_p", 1.0), seed=settings.get("seed", 0))
  assert want.text  # the comparison is about real text
  with httpx.Client(base_url=base_url, timeout=120) as client:
    r = client.post("/v1/chat/completions", json=_body(messages, **settings))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["model"] == "tiny"
    message = out["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert message["content"] == want.answer
    assert message.get("reasoning_content", "") == want.thinking
    assert out["choices"][0]["finish_reason"] == ("stop" if want.stop_reason == "eos" else "length")
    assert out["usage"] == {"prompt_tokens": len(want.prompt_token_ids), "completion_tokens": len(want.token_ids),
                            "total_tokens": len(want.prompt_token_ids) + len(want.token_ids)}
    assert out["timings"]["predicted_n"] == len(want.token_ids)

    content, reasoning, events, finish = _stream_request(client, _body(messages, stream=True, **settings))
    assert content == want.answer
    assert reasoning == want.thinking
    assert finish == out["choices"][0]["finish_reason"]
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert len([e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]) > 1  # streamed
    assert events[-1]["choices"] == [] and events[-1]["usage"] == out["usage"]  # the final usage record
    assert all(e["object"] == "chat.completion.chunk" and e["id"] == events[0]["id"] for e in events)


def test_concurrent_requests_each_get_their_own_text(base_url, model_and_tokenizer, app):
  prompts = ["What is two plus two?", "Tell me a joke.", "Hi!", "Translate 'cat' to French.",
             "Why is the sky blue?", "Count to three."]
  settings = [dict(temperature=0.0, seed=0), dict(temperature=1.0, top_p=0.9, seed=5),
              dict(temperature=0.7, seed=11), dict(temperature=0.0, seed=3), dict(temperature=1.2, seed=8),
              dict(temperature=0.5, top_p=0.5, seed=2)]
  wants = [_expected(model_and_tokenizer, _messages(p), **s).answer for p, s in zip(prompts, settings)]

  async def one(client, i):
    body = _body(_messages(prompts[i]), stream=bool(i % 2), **settings[i])
    if body["stream"]:
      async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return _read_sse([line async for line in r.aiter_lines()])[0]
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]

  async def main():
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
      return await asyncio.gather(*(one(client, i) for i in range(len(prompts))))

  done_before = len(app.state.worker.history)
  got = asyncio.run(main())
  assert got == wants
  jobs = app.state.worker.history[done_before:]
  assert len(jobs) == len(prompts) and all(j.outcome == "done" for j in jobs)
  # One at a time: no two generations overlapped.
  spans = sorted((j.started, j.finished) for j in jobs)
  assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


BAD_REQUESTS = [
    ("malformed json", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", b"[1, 2]", 400, "JSON object"),
    ("no messages", {"temperature": 0}, 400, "'messages' is required"),
    ("empty messages", {"messages": []}, 400, "non-empty list"),
    ("unknown role", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "got 'robot'"),
    ("content not a string", {"messages": [{"role": "user", "content": 5}]}, 400, "content must be a string"),
    ("message not an object", {"messages": ["hi"]}, 400, "messages[0] must be an object"),
    ("temperature too high", {"messages": _messages("hi"), "temperature": 2.5}, 400, "'temperature' must be <= 2"),
    ("temperature negative", {"messages": _messages("hi"), "temperature": -0.1}, 400, "'temperature' must be >= 0"),
    ("temperature a string", {"messages": _messages("hi"), "temperature": "hot"}, 400, "'temperature' must be a number"),
    ("top_p zero", {"messages": _messages("hi"), "top_p": 0}, 400, "'top_p' must be > 0"),
    ("top_p above one", {"messages": _messages("hi"), "top_p": 1.5}, 400, "'top_p' must be <= 1"),
    ("max_tokens zero", {"messages": _messages("hi"), "max_tokens": 0}, 400, "'max_tokens' must be >= 1"),
    ("max_tokens fraction", {"messages": _messages("hi"), "max_tokens": 2.5}, 400, "'max_tokens' must be an integer"),
    ("max_tokens past context", {"messages": _messages("hi"), "max_tokens": 5000}, 400, "at most"),
    ("seed not an int", {"messages": _messages("hi"), "seed": "abc"}, 400, "'seed' must be an integer"),
    ("stream not a bool", {"messages": _messages("hi"), "stream": "yes"}, 400, "'stream' must be true or false"),
    ("thinking not a bool", {"messages": _messages("hi"), "chat_template_kwargs": {"enable_thinking": "on"}}, 400,
     "enable_thinking"),
    ("n above one", {"messages": _messages("hi"), "n": 2}, 400, "'n'"),
    ("prompt over the context", {"messages": _messages("hello " * 700)}, 400, "the context is 512 tokens"),
]


@pytest.mark.parametrize("name,body,status,needle", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_gets_4xx_then_server_keeps_serving(base_url, model_and_tokenizer, name, body, status, needle):
  with httpx.Client(base_url=base_url, timeout=120) as client:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert error["type"] == "invalid_request_error"
    # The next good request succeeds.
    r = client.post("/v1/chat/completions", json=_body(_messages("Still there?"), max_tokens=3))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def test_other_routes(base_url):
  with httpx.Client(base_url=base_url, timeout=30) as client:
    assert client.get("/health").json()["status"] == "ok"
    models = client.get("/v1/models").json()
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 512
    r = client.get("/no/such/page")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert client.get("/v1/chat/completions").status_code == 405
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '"model": "tiny"' in page.text and 'id="stop"' in page.text


def _wait_for(predicate, timeout=30.0):
  deadline = time.monotonic() + timeout
  while not predicate():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.02)


def test_client_disconnect_stops_generation(model_and_tokenizer):
  model, tok = model_and_tokenizer
  slow = server.create_app(model, SlowTokenizer(tok, 0.05), temperature=0.0, max_tokens=MAX_TOKENS,
                           chunk_steps=1)
  full = MAX_TOKENS
  with server.BackgroundServer(slow) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
    body = _body(_messages("Tell me a long story."), stream=True)
    # Streaming: read one content event, then hang up.
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
      for line in r.iter_lines():
        if '"content": "' in line and '"content": ""' not in line:
          break
    worker = slow.state.worker
    _wait_for(lambda: worker.history and worker.history[-1].finished)
    job = worker.history[-1]
    assert job.outcome == "cancelled"
    assert job.stream.result.stats.generated_tokens < full

    # Non-streaming: the client gives up (read timeout) while its request runs.
    with pytest.raises(httpx.ReadTimeout):
      client.post("/v1/chat/completions", json=_body(_messages("Another long story.")), timeout=0.6)
    _wait_for(lambda: len(worker.history) == 2)
    assert worker.history[-1].outcome == "cancelled"
    assert worker.history[-1].stream.result.stats.generated_tokens < full

    # The server still answers in full.
    r = client.post("/v1/chat/completions", json=_body(_messages("Hello")))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == full


# A minimal ChatML template whose thinking mode opens the <think> block in the prompt, so everything
# the model writes until "</think>" is reasoning.
THINK_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                  "<|im_start|>assistant\n{% if enable_thinking %}<think>\n{% endif %}")


def test_thinking_goes_to_reasoning_content(model_and_tokenizer):
  import copy

  model, tok = model_and_tokenizer
  tok = copy.copy(tok)
  tok.chat_template = THINK_TEMPLATE
  app = server.create_app(model, tok, temperature=0.0, max_tokens=MAX_TOKENS, chunk_steps=2, seed=0)
  messages = _messages("Think first.")
  with server.BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
    for thinking in (True, False):
      want = _expected((model, tok), messages, thinking=thinking)
      kwargs = {"chat_template_kwargs": {"enable_thinking": thinking}}
      message = client.post("/v1/chat/completions", json=_body(messages, **kwargs)).json()["choices"][0]["message"]
      content, reasoning, _, _ = _stream_request(client, _body(messages, stream=True, **kwargs))
      if thinking:  # no "</think>" in 24 random tokens: all of it is reasoning
        assert message["reasoning_content"] == reasoning == want.text.strip() and want.text.strip()
        assert message["content"] == content == ""
      else:
        assert "reasoning_content" not in message and reasoning == ""
        assert message["content"] == content == want.answer
