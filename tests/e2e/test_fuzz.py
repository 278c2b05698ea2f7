"""Property-based, end to end: generated requests through real gunicorn (the edge) to the real
inference service and model. Every answer is a 2xx or a 4xx with the OpenAI error shape, never
a 5xx, and the stack still serves a normal request afterwards.

The requests are those of tests/edge/fuzz_requests.py with ``real_model=True``: texts sent to
the model stay short and ``max_tokens`` is always 1–3 or invalid, so that the few hundred
examples (most of them refused before any token) run in well under a minute on two cores.
"""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given

from tests.e2e.helpers import MODEL
from tests.edge.fuzz_requests import check_answer, fuzz_settings, requests

pytestmark = pytest.mark.model

EXAMPLES = 300
TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # a safety net only; answers take milliseconds


@pytest.fixture(scope="module")
def client(edge):
    with httpx.Client(base_url=edge.base_url, timeout=TIMEOUT) as http:
        yield http


def test_generated_requests_get_2xx_or_4xx_and_the_stack_keeps_serving(client, edge):
    seen: dict[int, int] = {}

    @fuzz_settings(EXAMPLES)
    @given(requests(real_model=True))
    def one_request(request):
        path, data = request
        resp = client.post(path, content=data, headers={"Content-Type": "application/json"})
        seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
        check_answer(resp.status_code, resp.headers.get("content-type"), resp.content)

    one_request()
    assert sum(seen.values()) >= EXAMPLES
    assert seen.get(200), f"no generated request was valid: {seen}"  # the fuzz reached the model too

    # The stack still serves a normal request, stream and not.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
    resp = client.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] >= 1
    resp = client.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "stream": True})
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    assert client.get("/health").status_code == 200
    assert edge.process.poll() is None
