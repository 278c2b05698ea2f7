"""Helpers every kind of test uses: waiting for an event, a gRPC error's trailing metadata,
a stream of named events, and a Falcon test client of the edge app in front of a fake client."""

from __future__ import annotations

import json

import falcon.testing
import grpc
import pytest

from harness.polling import NeverHappened, eventually  # noqa: F401  (the one polling helper of tests/)
from rest_edge.app import create_app


def trailing(error: grpc.RpcError) -> dict[str, str]:
    """A failed call's trailing metadata (``error-param``, ``retry-after``...) as a dict."""
    return dict(error.trailing_metadata() or ())


def json_lines(log: str, what: str, fields: frozenset = frozenset()) -> list[dict]:
    """Every line of ``log`` (``what``'s output) as a JSON object with at least ``fields``;
    a line that is not fails the test."""
    lines = []
    for number, line in enumerate(log.splitlines(), 1):
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"line {number} of {what} is not JSON: {line!r}\n{log[-4000:]}")
        assert isinstance(lines[-1], dict), line
        assert set(lines[-1]) >= fields, line
    return lines


def named_events(text: str) -> list[tuple[str, dict]]:
    """A stream of named server-sent events (``event: <type>`` then its ``data:``), as
    (name, data) pairs; each data's ``type`` is its event's name."""
    out = []
    for frame in filter(None, text.split("\n\n")):
        name_line, data_line = frame.split("\n")
        name, data = name_line.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))
        assert data["type"] == name, frame
        out.append((name, data))
    return out


def client_for(fake, **kwargs) -> falcon.testing.TestClient:
    """The real edge app (``create_app``) over ``fake`` (tests/edge/fakes.FakeClient), in a
    Falcon test client; ``kwargs`` go to ``create_app``."""
    return falcon.testing.TestClient(create_app(fake, **kwargs))
