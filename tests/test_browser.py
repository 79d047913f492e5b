"""The web page in a real browser: headless Chromium (Debian's ``chromium`` package) driven through the
DevTools protocol over ``--remote-debugging-pipe`` (JSON messages on fds 3/4, no extra dependency).

It opens the page, types a message, sees the reply stream in (partial text before the reply is
complete), checks the final text equals the API's, stops a second reply with the Stop button, and
saves a screenshot to ``artifacts/browser_chat.png``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time

import httpx
import pytest
from _helpers import SlowTokenizer

from smollm3_jax.serving import chat, server

MAX_TOKENS = 24
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "artifacts")
CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--window-size=1100,800",
  "--remote-debugging-pipe",
]


def _chromium_binary() -> str | None:
  for name in ("chromium", "chromium-browser"):
    path = shutil.which(name)
    if path:
      return path
  return None


class Chromium:
  """A headless Chromium and a DevTools-protocol client over its debugging pipe."""

  def __init__(self, binary: str, profile_dir: str, log_path: str):
    to_browser_r, self._to_browser = os.pipe()
    self._from_browser, from_browser_w = os.pipe()
    args = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"]
    self._log = open(log_path, "wb")
    # Chromium reads commands on fd 3 and writes replies on fd 4.
    self.proc = subprocess.Popen(
      ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', *args],
      pass_fds=(to_browser_r, from_browser_w),
      stdin=subprocess.DEVNULL,
      stdout=self._log,
      stderr=self._log,
    )
    os.close(to_browser_r)
    os.close(from_browser_w)
    self._next_id = 0
    self._replies: dict[int, dict] = {}
    self._cond = threading.Condition()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    buffer = b""
    while True:
      data = os.read(self._from_browser, 1 << 16)
      if not data:
        break
      buffer += data
      while b"\0" in buffer:
        raw, buffer = buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "id" in message:
          with self._cond:
            self._replies[message["id"]] = message
            self._cond.notify_all()
    with self._cond:
      self._cond.notify_all()

  def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30.0):
    with self._cond:
      self._next_id += 1
      mid = self._next_id
    message = {"id": mid, "method": method, "params": params or {}}
    if session:
      message["sessionId"] = session
    os.write(self._to_browser, json.dumps(message).encode() + b"\0")
    deadline = time.monotonic() + timeout
    with self._cond:
      while mid not in self._replies:
        left = deadline - time.monotonic()
        if left <= 0 or not self._reader.is_alive():
          raise TimeoutError(f"no reply to {method} (chromium exit code {self.proc.poll()})")
        self._cond.wait(left)
      reply = self._replies.pop(mid)
    if "error" in reply:
      raise RuntimeError(f"{method}: {reply['error']}")
    return reply["result"]

  def close(self):
    try:
      self.send("Browser.close", timeout=5)
    except Exception:  # noqa: BLE001  (it may already be gone)
      pass
    try:
      self.proc.wait(10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
    os.close(self._to_browser)
    self._log.close()


class Page:
  def __init__(self, browser: Chromium):
    self.browser = browser
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    self.send("Page.enable")
    self.send("Runtime.enable")

  def send(self, method, params=None, timeout=30.0):
    return self.browser.send(method, params, self.session, timeout)

  def eval(self, expression: str):
    out = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
    if "exceptionDetails" in out:
      raise RuntimeError(f"page script failed: {out['exceptionDetails']}")
    return out["result"].get("value")

  def wait_for(self, expression: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
      value = self.eval(expression)
      if value:
        return value
      assert time.monotonic() < deadline, f"timed out waiting for: {expression}"
      time.sleep(0.05)

  def type_and_enter(self, text: str):
    self.eval("document.getElementById('input').focus()")
    self.send("Input.insertText", {"text": text})
    for kind in ("keyDown", "keyUp"):
      self.send(
        "Input.dispatchKeyEvent",
        {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13, "nativeVirtualKeyCode": 13},
      )


# Records every change of the newest assistant message (its state and answer text).
OBSERVER = """(() => {
  window.__snapshots = [];
  new MutationObserver(() => {
    const a = [...document.querySelectorAll('.msg.assistant')].pop();
    if (a) window.__snapshots.push({state: a.dataset.state, text: a.querySelector('.answer').textContent});
  }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true, attributes: true});
  return true;
})()"""

LAST = "[...document.querySelectorAll('.msg.assistant')].pop()"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
  binary = _chromium_binary()
  if binary is None:
    pytest.skip("chromium not installed: apt-get install chromium")
  tmp = tmp_path_factory.mktemp("chromium")
  b = Chromium(binary, str(tmp / "profile"), str(tmp / "chromium.log"))
  try:
    b.send("Browser.getVersion", timeout=60)
  except Exception:
    b.close()
    raise
  yield b
  b.close()


@pytest.fixture(scope="module")
def served():
  model, tok = chat.load_chat_model("tiny", tiny_context=512)
  app = server.create_app(
    model,
    SlowTokenizer(tok, 0.02),
    model_name="tiny",
    temperature=0.6,
    top_p=0.95,
    max_tokens=MAX_TOKENS,
    thinking=False,
    chunk_steps=1,
  )
  server.warmup(app)
  with server.BackgroundServer(app) as srv:
    yield app, srv.url


def test_page_streams_reply_like_the_api(browser, served):
  app, url = served
  page = Page(browser)
  page.send("Page.navigate", {"url": url + "/"})
  page.wait_for("document.readyState === 'complete' && !!document.getElementById('send')")
  assert page.eval("document.getElementById('model-name').textContent").endswith("tiny")
  # Greedy, fixed budget: the API gives the same text for the same settings.
  page.eval(
    """(() => { const v = (id, x) => document.getElementById(id).value = x;
                v('temperature', '0'); v('top_p', '1'); v('max_tokens', '%d'); v('seed', '7');
                document.getElementById('thinking').checked = false; return true; })()"""
    % MAX_TOKENS
  )
  page.eval(OBSERVER)
  message = "What is the capital of France?"
  page.type_and_enter(message)
  page.wait_for(f"{LAST} && {LAST}.dataset.state !== 'streaming'", timeout=120)
  state, final, stats, user = page.eval(
    f"[{LAST}.dataset.state, {LAST}.querySelector('.answer').textContent, "
    f"{LAST}.querySelector('.stats').textContent, document.querySelector('.msg.user').textContent]"
  )
  assert state == "done", stats
  assert user == message
  assert "tokens" in stats and "tokens/s" in stats

  with httpx.Client(base_url=url, timeout=60) as client:
    r = client.post(
      "/v1/chat/completions",
      json={
        "messages": [{"role": "user", "content": message}],
        "temperature": 0,
        "top_p": 1,
        "max_tokens": MAX_TOKENS,
        "seed": 7,
        "chat_template_kwargs": {"enable_thinking": False},
      },
    )
  assert r.status_code == 200, r.text
  assert final == r.json()["choices"][0]["message"]["content"]
  assert final

  snapshots = page.eval("window.__snapshots")
  partial = [s["text"] for s in snapshots if s["state"] == "streaming" and s["text"] and s["text"] != final]
  assert partial, f"no text was seen before the reply completed: {snapshots}"
  assert all(final.startswith(p) for p in partial)
  assert len(set(partial)) >= 2, "the reply should grow in several steps"

  os.makedirs(ARTIFACTS, exist_ok=True)
  shot = os.path.join(ARTIFACTS, "browser_chat.png")
  png = base64.b64decode(page.send("Page.captureScreenshot", {"format": "png"})["data"])
  with open(shot, "wb") as f:
    f.write(png)
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  print(f"screenshot: {shot}")

  # Stop button: a new chat, a reply stopped mid-way; the server cancels the generation.
  done_before = len(app.state.worker.history)
  page.eval("document.getElementById('reset').click()")
  page.eval(OBSERVER)
  page.type_and_enter("Tell me a story.")
  page.wait_for(f"{LAST} && {LAST}.querySelector('.answer').textContent.length > 0", timeout=60)
  page.eval("document.getElementById('stop').click()")
  page.wait_for(f"{LAST}.dataset.state === 'stopped'", timeout=30)
  deadline = time.monotonic() + 30
  while len(app.state.worker.history) <= done_before:
    assert time.monotonic() < deadline, "the stopped request never finished on the server"
    time.sleep(0.05)
  job = app.state.worker.history[-1]
  assert job.outcome == "cancelled"
  assert job.result[0].stats.generated_tokens < MAX_TOKENS
  assert page.eval("document.getElementById('send').disabled") is False
