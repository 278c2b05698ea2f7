"""Property-based: whatever a client sends to either generation route, the app in process answers
a 2xx or a 4xx with the OpenAI error shape, never a 5xx (tests/edge/fuzz_requests.py draws the
requests; tests/e2e/test_fuzz.py runs fewer of them through real gunicorn and the real service).

Every request the app lets through must be a protobuf the real client can send.
"""

from __future__ import annotations

import falcon.testing
from hypothesis import given

from rest_edge.app import create_app
from tests.edge.fakes import FakeClient, last, piece
from tests.edge.fuzz_requests import check_answer, fuzz_settings, requests

EXAMPLES = 1200


def _script(request):
    request.SerializeToString()  # what the real gRPC client does first: it must not raise
    return [piece("Hel"), piece("lo"), last("!")]


FAKE = FakeClient(_script)
CLIENT = falcon.testing.TestClient(create_app(FAKE))


@fuzz_settings(EXAMPLES)
@given(requests())
def test_any_request_is_answered_2xx_or_4xx_with_the_error_shape(request):
    path, data = request
    result = CLIENT.simulate_post(path, body=data, headers={"Content-Type": "application/json"})
    check_answer(result.status_code, result.headers.get("content-type"), result.content)


def test_the_app_still_serves_a_normal_request_after_the_fuzz():
    """Runs after the fuzz above (same app, same fake client)."""
    result = CLIENT.simulate_post("/v1/chat/completions", json={
        "model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert result.status_code == 200
    assert result.json["choices"][0]["message"]["content"] == "Hello!"
