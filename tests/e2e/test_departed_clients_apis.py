"""A client of /v1/responses or /v1/messages that leaves early costs nothing more (real service,
real gunicorn): the adapters' routes share the disconnect watch and the stream cancellation
of the chat routes. Proof from the service's own accounting, as in test_departed_clients.
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


def test_responses_stream_client_leaving_mid_stream_stops_its_generation(edge, status, quiet):
    body = {"model": MODEL, "input": "Write a very long essay about the sea.", "max_output_tokens": LONG_MAX_TOKENS,
            "temperature": 0, "stream": True,
            "text": {"format": {"type": "json_schema", "name": "essay", "schema": ENDLESS}}}
    departed_before = _departures(edge, "/v1/responses")
    base = status.get()
    sock = raw_post(edge.base_url, "/v1/responses", body)
    try:
        seen = b""
        while b"response.output_text.delta" not in seen:
            chunk = sock.recv(65536)
            assert chunk, seen[-500:]
            seen += chunk
        assert seen.startswith(b"HTTP/1.1 200"), seen[:300]
    finally:
        left_at = time.monotonic()
        _leave(sock, "close")
    final = _assert_work_stopped(status, edge, base, left_at, "/v1/responses stream, mid-stream (close)")
    assert final.tokens_generated - base.tokens_generated < LONG_MAX_TOKENS
    assert _departures(edge, "/v1/responses") == departed_before + 1


def test_messages_client_leaving_while_its_answer_is_generated_stops_it(edge, status, quiet):
    body = {"model": MODEL, "max_tokens": LONG_MAX_TOKENS, "temperature": 0,
            "messages": [{"role": "user", "content": "Write a very long essay about the sea."}],
            "output_config": {"format": {"type": "json_schema", "schema": ENDLESS}}}
    departed_before = _departures(edge, "/v1/messages")
    base = status.get()
    sock = raw_post(edge.base_url, "/v1/messages", body)
    try:
        status.wait_for(lambda s: s.tokens_generated >= base.tokens_generated + 8, BOUND, "tokens being generated")
        assert _no_answer_yet(sock)
    finally:
        left_at = time.monotonic()
        _leave(sock, "reset")
    final = _assert_work_stopped(status, edge, base, left_at, "/v1/messages non-stream (reset)")
    assert final.tokens_generated - base.tokens_generated < LONG_MAX_TOKENS
    assert _departures(edge, "/v1/messages") == departed_before + 1
