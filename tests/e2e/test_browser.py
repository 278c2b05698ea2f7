"""A real browser calls the real edge: headless Chromium (tests/browser.py) loads a page from
one origin that streams a chat completion from the edge on another origin through ``fetch`` and
a ``ReadableStream``; a page from an origin the edge does not allow is blocked by the browser.

The pages come from a static HTTP server on 127.0.0.1; the browser reaches it as
``http://localhost:<port>`` (a loopback origin, allowed by default) and as
``http://foreign.test:<port>`` (mapped to 127.0.0.1 by ``--host-resolver-rules``: the same
server under a foreign name, not allowed). The edge, on ``http://127.0.0.1:<port>``, has an API
key, so the page's call needs a preflight that carries none.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading

import pytest

from tests.browser import Browser, page_dir
from tests.conftest import start_edge, stop_process
from tests.e2e.helpers import MODEL
from harness.processes import free_port

API_KEY = "sk-browser-test"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>chat</title></head><body>
<script>
// Streams a chat completion and returns what a page can see of it.
async function streamChat(edge, key, content) {
  let response;
  try {
    response = await fetch(edge + "/v1/chat/completions", {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + key,
                "X-Stainless-Lang": "js"},
      body: JSON.stringify({model: "%(model)s", stream: true, max_tokens: 8, temperature: 0,
                            messages: [{role: "user", content: content}]}),
    });
  } catch (error) {
    return {fetched: false, error: error.name + ": " + error.message};
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "", reads = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    reads += 1;
    text += decoder.decode(value, {stream: true});
  }
  return {fetched: true, status: response.status, contentType: response.headers.get("content-type"),
          requestId: response.headers.get("x-request-id"), reads: reads, body: text};
}
</script></body></html>
""" % {"model": MODEL}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def pages():
    """A static HTTP server of the test page on 127.0.0.1; yields its port."""
    root = page_dir({"chat.html": PAGE})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def keyed_edge(service, tmp_path_factory):
    running = start_edge(service.address, tmp_path_factory.mktemp("edge-browser") / "gunicorn.log",
                         EDGE_API_KEYS=API_KEY)
    yield running
    stop_process(running.process)


@pytest.fixture(scope="module")
def browser():
    with Browser(extra_args=["--host-resolver-rules=MAP foreign.test 127.0.0.1"]) as chromium:
        yield chromium


def _sse_data(body: str) -> list:
    frames = [f for f in body.split("\n\n") if f]
    assert all(f.startswith("data: ") for f in frames), body
    return [f[len("data: "):] if f == "data: [DONE]" else json.loads(f[len("data: "):]) for f in frames]


def test_a_loopback_page_streams_a_chat_completion(browser, pages, keyed_edge):
    session = browser.open(f"http://localhost:{pages}/chat.html")
    assert browser.evaluate(session, "location.origin") == f"http://localhost:{pages}"
    result = browser.evaluate(session, f"streamChat({json.dumps(keyed_edge.base_url)}, {json.dumps(API_KEY)}, "
                                       "'Say hello.')")
    assert result["fetched"], result
    assert result["status"] == 200
    assert result["contentType"] == "text/event-stream"
    assert result["requestId"]  # exposed to the page
    frames = _sse_data(result["body"])
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)


def test_a_wrong_key_is_readable_by_an_allowed_page(browser, pages, keyed_edge):
    session = browser.open(f"http://127.0.0.1:{pages}/chat.html")
    result = browser.evaluate(session, f"streamChat({json.dumps(keyed_edge.base_url)}, 'sk-wrong', 'hi')")
    assert result["fetched"] and result["status"] == 401, result
    assert json.loads(result["body"])["error"]["code"] == "invalid_api_key"


def test_a_foreign_page_is_blocked_by_the_browser(browser, pages, keyed_edge):
    session = browser.open(f"http://foreign.test:{pages}/chat.html")
    assert browser.evaluate(session, "location.origin") == f"http://foreign.test:{pages}"
    result = browser.evaluate(session, f"streamChat({json.dumps(keyed_edge.base_url)}, {json.dumps(API_KEY)}, 'hi')")
    assert result == {"fetched": False, "error": "TypeError: Failed to fetch"}
    # Blocked for CORS (the preflight's answer allowed nothing), not for a network failure.
    failed = browser.wait_for_event("Network.loadingFailed", session,
                                    where=lambda params: "corsErrorStatus" in params)
    assert failed["corsErrorStatus"]["corsError"].startswith("Preflight"), failed
