"""A client of /v1/responses, /v1/messages or Ollama's /api/chat and /api/generate that leaves
early costs nothing more (real service, real gunicorn): the adapters' routes share the
disconnect watch and the stream cancellation of the chat routes. Proof from the service's own
accounting, as in test_departed_clients.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.helpers import MODEL, raw_post
from tests.e2e.test_departed_clients import (  # noqa: F401  (quiet is a fixture)
    BOUND,
    LONG_MAX_TOKENS,
    _assert_work_stopped,
    _departures,
    _leave,
    _no_answer_yet,
    quiet,
)

pytestmark = pytest.mark.model

# Structured output that cannot end early (the engine constrains every token): the generation
# runs until the client leaves or max tokens, whatever the model would rather do.
ENDLESS = {"type": "object", "properties": {"essay": {"type": "string", "minLength": 20000}}, "required": ["essay"]}
ESSAY = "Write a very long essay about the sea."
OLLAMA_OPTIONS = {"temperature": 0, "num_predict": LONG_MAX_TOKENS}


def _leaving_costs_nothing(edge, status, route: str, body: dict, how: str, what: str, answer_begun) -> None:
    """The client of ``route`` leaves (``how``) once ``answer_begun(sock, base)`` returned: its
    generation stops short of its max tokens, and the edge counts one departure there."""
    departed_before = _departures(edge, route)
    base = status.get()
    sock = raw_post(edge.base_url, route, body)
    try:
        answer_begun(sock, base)
    finally:
        left_at = time.monotonic()
        _leave(sock, how)
    final = _assert_work_stopped(status, edge, base, left_at, f"{route} {what} ({how})")
    assert final.tokens_generated - base.tokens_generated < LONG_MAX_TOKENS
    assert _departures(edge, route) == departed_before + 1


@pytest.mark.parametrize("route, body, frames_seen", [
    pytest.param("/v1/responses",
                 {"model": MODEL, "input": ESSAY, "max_output_tokens": LONG_MAX_TOKENS, "temperature": 0,
                  "stream": True, "text": {"format": {"type": "json_schema", "name": "essay", "schema": ENDLESS}}},
                 lambda seen: b"response.output_text.delta" in seen, id="responses"),
    pytest.param("/api/chat",
                 {"model": MODEL, "messages": [{"role": "user", "content": ESSAY}], "format": ENDLESS,
                  "options": OLLAMA_OPTIONS},
                 lambda seen: seen.count(b"\n{") >= 3, id="ollama-chat"),
])
def test_stream_client_leaving_mid_stream_stops_its_generation(edge, status, quiet, route, body, frames_seen):
    def streaming(sock, base) -> None:
        seen = b""
        while not frames_seen(seen):
            chunk = sock.recv(65536)
            assert chunk, seen[-500:]
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen[:300]

    _leaving_costs_nothing(edge, status, route, body, "close", "stream, mid-stream", streaming)


@pytest.mark.parametrize("route, body", [
    pytest.param("/v1/messages",
                 {"model": MODEL, "max_tokens": LONG_MAX_TOKENS, "temperature": 0,
                  "messages": [{"role": "user", "content": ESSAY}],
                  "output_config": {"format": {"type": "json_schema", "schema": ENDLESS}}}, id="messages"),
    pytest.param("/api/generate",
                 {"model": MODEL, "prompt": ESSAY, "format": ENDLESS, "stream": False, "options": OLLAMA_OPTIONS},
                 id="ollama-generate"),
])
def test_client_leaving_while_its_whole_answer_is_generated_stops_it(edge, status, quiet, route, body):
    def generating(sock, base) -> None:
        status.wait_for(lambda s: s.tokens_generated >= base.tokens_generated + 8, BOUND, "tokens being generated")
        assert _no_answer_yet(sock)

    _leaving_costs_nothing(edge, status, route, body, "reset", "whole answer", generating)
