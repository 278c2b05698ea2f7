"""X-Request-Id at the edge (falcon.testing, fake client): taken from the client when it is
1-128 visible ASCII characters, else made; on every response, errors included; passed to the
service in the request; in the app's log records."""

from __future__ import annotations

import logging
import re

import falcon.testing
import grpc
import pytest

from rest_edge.app import create_app
from tests.edge.fakes import FakeClient, last, piece, rpc_error

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
MADE = re.compile(r"[0-9a-f]{32}\Z")  # uuid4 hex


def client_for(fake: FakeClient, **kwargs) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(fake, **kwargs))


@pytest.mark.parametrize("stream", [False, True])
def test_the_clients_id_is_used_and_returned(stream):
    fake = FakeClient([piece("a"), last()])
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES, "stream": stream},
                                            headers={"X-Request-Id": "req-42_abc.DEF:1/2"})
    assert result.status_code == 200
    assert result.headers["x-request-id"] == "req-42_abc.DEF:1/2"
    assert fake.requests[0].request_id == "req-42_abc.DEF:1/2"


@pytest.mark.parametrize("given", [None, "", "x" * 129, "has space", "tab\there", "naïve", "a\x7fb"])
def test_a_missing_or_bad_id_is_replaced(given):
    fake = FakeClient([piece("a"), last()])
    headers = {} if given is None else {"X-Request-Id": given}
    result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES}, headers=headers)
    assert result.status_code == 200
    made = result.headers["x-request-id"]
    assert MADE.match(made) and fake.requests[0].request_id == made


def test_ids_are_unique():
    client = client_for(FakeClient(lambda request: [piece("a"), last()]))
    ids = {client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES}).headers["x-request-id"]
           for _ in range(20)}
    assert len(ids) == 20


def test_128_characters_are_accepted():
    given = "~" + "a" * 127
    result = client_for(FakeClient()).simulate_get("/health", headers={"X-Request-Id": given})
    assert result.headers["x-request-id"] == given


def test_embeddings_pass_it_too():
    fake = FakeClient()
    result = client_for(fake).simulate_post("/v1/embeddings", json={"model": "m", "input": "x"},
                                            headers={"X-Request-Id": "emb-1"})
    assert result.status_code == 200 and fake.embed_requests[0].request_id == "emb-1"


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/nope", None, 404),                                                  # no route
    ("DELETE", CHAT, None, 405),
    ("POST", CHAT, "{", 400),                                                     # bad JSON
    ("POST", CHAT, "x" * 2000, 413),
    ("POST", CHAT, '{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', 429),  # the service's
    ("POST", CHAT, '{"model": "crash", "messages": [{"role": "user", "content": "hi"}]}', 500),  # unexpected
    ("GET", "/health", None, 200),
    ("GET", "/metrics", None, 200),
])
def test_every_response_carries_it(method, path, body, status):
    def generate(request):
        if request.model == "crash":
            raise RuntimeError("boom")
        return [rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", **{"retry-after": "3"})]

    client = client_for(FakeClient(generate), max_body_bytes=1000)
    result = client.simulate_request(method, path, body=body, headers={"X-Request-Id": "err-1"})
    assert result.status_code == status
    assert result.headers["x-request-id"] == "err-1"
    result = client.simulate_request(method, path, body=body)
    assert result.status_code == status and MADE.match(result.headers["x-request-id"])


@pytest.mark.parametrize("path", ["/nope", "/v1/models"])
def test_errors_before_the_resource_carry_it(path):
    # 404 (no route) and 401 (API key missing) happen before any resource runs
    client = client_for(FakeClient(), api_keys=["k"])
    result = client.simulate_get(path, headers={"X-Request-Id": "err-2"})
    assert result.status_code in (401, 404) and result.headers["x-request-id"] == "err-2"


def test_app_log_records_carry_it(caplog):
    fake = FakeClient([rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad temperature", **{"error-param": "temperature"})])
    with caplog.at_level(logging.INFO, logger="rest_edge"):
        result = client_for(fake).simulate_post(CHAT, json={"model": "m", "messages": MESSAGES},
                                                headers={"X-Request-Id": "log-1"})
    assert result.status_code == 400
    records = [r for r in caplog.records if r.name == "rest_edge" and "-> 400" in r.getMessage()]
    assert records and all(getattr(r, "request_id", None) == "log-1" for r in records)
