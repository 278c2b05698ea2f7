"""CORS with falcon's test client and a fake inference client: preflights, allowed and foreign
origins, API keys, errors and streams. The real browser is in tests/e2e/test_browser.py."""

from __future__ import annotations

import falcon.testing
import pytest

from rest_edge import cors
from rest_edge.app import create_app
from tests.edge.fakes import FakeClient, last, piece

CHAT = "/v1/chat/completions"
BODY = {"model": "smollm2:135m", "messages": [{"role": "user", "content": "hi"}]}
PREFLIGHT_HEADERS = {
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-lang, x-evil",
}


def client_for(fake=None, **kwargs) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(create_app(fake or FakeClient(), **kwargs))


def preflight(client, origin, path=CHAT, **headers):
    return client.simulate_options(path, headers={"Origin": origin, **PREFLIGHT_HEADERS, **headers})


@pytest.mark.parametrize("origin", [
    "http://localhost:5173", "http://localhost", "https://localhost:8443", "http://127.0.0.1:3000",
    "http://[::1]:8080", "HTTP://LOCALHOST:5173",
])
def test_loopback_origins_on_any_port_are_allowed_by_default(origin):
    result = preflight(client_for(), origin)
    assert result.status_code == 204
    assert result.headers["access-control-allow-origin"] == origin
    assert result.headers["access-control-allow-methods"] == "POST"
    # The SDKs' headers are allowed, an unknown one is not.
    assert result.headers["access-control-allow-headers"] == "authorization, content-type, x-stainless-os, x-stainless-lang"
    assert result.headers["access-control-max-age"] == str(cors.MAX_AGE_SECONDS)
    assert "origin" in result.headers["vary"].lower()
    assert result.text == ""


@pytest.mark.parametrize("origin", [
    "https://evil.example", "http://localhost.evil.example", "http://127.0.0.1.evil.example:80", "null",
    "http://localhost:5173/path", "file://", "http://10.0.0.1:8000", "http://localhost:99999",
])
def test_a_foreign_origin_gets_no_cors_headers(origin):
    client = client_for(FakeClient([piece("x"), last()]))
    result = preflight(client, origin)
    assert not [h for h in result.headers if h.startswith("access-control-")]
    result = client.simulate_post(CHAT, json=BODY, headers={"Origin": origin})
    assert result.status_code == 200  # the edge answers; the browser hides it from the page
    assert not [h for h in result.headers if h.startswith("access-control-")]


def test_edge_cors_origins_adds_patterns(monkeypatch):
    monkeypatch.setenv("EDGE_CORS_ORIGINS", " https://app.example.com , https://*.corp.example ")
    client = client_for()
    for origin in ("https://app.example.com", "https://chat.corp.example", "http://localhost:1"):
        assert preflight(client, origin).headers["access-control-allow-origin"] == origin
    for origin in ("http://app.example.com", "https://app.example.com.evil", "https://corp.example"):
        assert "access-control-allow-origin" not in preflight(client, origin).headers


def test_a_star_allows_every_origin():
    client = client_for(cors_origins=["*"])
    assert preflight(client, "https://anything.example").headers["access-control-allow-origin"] == "https://anything.example"


def test_answers_expose_the_request_id_and_retry_after():
    client = client_for(FakeClient([piece("Hi"), last()]))
    result = client.simulate_post(CHAT, json={**BODY, "stream": True}, headers={"Origin": "http://localhost:5173"})
    assert result.status_code == 200 and result.text.endswith("data: [DONE]\n\n")
    assert result.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert result.headers["access-control-expose-headers"] == "x-request-id, retry-after"
    assert result.headers["x-request-id"]


def test_errors_carry_cors_headers_so_the_page_can_read_them():
    client = client_for()
    result = client.simulate_post(CHAT, json={"model": "m"}, headers={"Origin": "http://localhost:5173"})
    assert result.status_code == 400
    assert result.headers["access-control-allow-origin"] == "http://localhost:5173"
    result = client.simulate_get("/v1/nope", headers={"Origin": "http://localhost:5173"})
    assert result.status_code == 404
    assert result.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_preflight_needs_no_api_key_but_the_call_does():
    client = client_for(FakeClient([piece("x"), last()]), api_keys=["sk-1"])
    result = preflight(client, "http://localhost:5173")
    assert result.status_code == 204
    assert result.headers["access-control-allow-origin"] == "http://localhost:5173"
    result = client.simulate_post(CHAT, json=BODY, headers={"Origin": "http://localhost:5173"})
    assert result.status_code == 401
    assert result.headers["access-control-allow-origin"] == "http://localhost:5173"
    result = client.simulate_post(CHAT, json=BODY, headers={"Origin": "http://localhost:5173",
                                                             "Authorization": "Bearer sk-1"})
    assert result.status_code == 200


@pytest.mark.parametrize("path,methods", [
    ("/v1/chat/completions", "POST"), ("/v1/completions", "POST"),
    ("/v1/embeddings", "POST"), ("/v1/models", "GET"),
    ("/v1/models/smollm2:135m", "GET"), ("/health", "GET"),
    ("/v1/responses", "POST"), ("/v1/messages", "POST"), ("/api/chat", "POST"), ("/api/tags", "GET"),
])
def test_every_route_answers_preflights_with_its_methods(path, methods):
    result = preflight(client_for(), "http://127.0.0.1:5173", path=path)
    assert result.status_code == 204
    assert result.headers["access-control-allow-methods"] == methods


def test_private_network_access_preflight():
    result = preflight(client_for(), "http://localhost:5173", **{"Access-Control-Request-Private-Network": "true"})
    assert result.headers["access-control-allow-private-network"] == "true"


def test_a_plain_options_request_is_not_a_preflight():
    result = client_for().simulate_options(CHAT, headers={"Origin": "http://localhost:5173"})
    assert result.status_code == 200
    assert "access-control-allow-methods" not in result.headers
    assert result.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_the_anthropic_sdks_headers_are_allowed_on_messages():
    result = client_for().simulate_options("/v1/messages", headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "anthropic-version,content-type,x-api-key,"
                                          "anthropic-dangerous-direct-browser-access,x-stainless-retry-count"})
    assert result.status_code == 204
    assert result.headers["access-control-allow-headers"] == (
        "anthropic-version, content-type, x-api-key, anthropic-dangerous-direct-browser-access, "
        "x-stainless-retry-count")
