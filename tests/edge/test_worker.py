"""rest_edge.worker: gunicorn's own refusals (before the app) as OpenAI-shaped JSON.

The worker is driven directly over a socket pair with gunicorn's real exceptions; the same
cases over real gunicorn and a raw socket are in tests/e2e/test_bad_bytes.py.
"""

from __future__ import annotations

import json
import socket
from http import HTTPStatus

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger
from gunicorn.http import errors as gerrors
from gunicorn.workers.gthread import ThreadWorker

from rest_edge import gunicorn_conf
from rest_edge.worker import JsonErrorThreadWorker, translate_answer

ERROR_KEYS = ["message", "type", "param", "code"]


def answer_to(exc: BaseException, req=None) -> tuple[str, dict, bytes]:
    cfg = Config()
    worker = JsonErrorThreadWorker(0, 0, [], None, 30, cfg, Logger(cfg))
    ours, theirs = socket.socketpair()
    with theirs:
        with ours:
            worker.handle_error(req, ours, ("127.0.0.1", 5), exc)
        data = b""
        while chunk := theirs.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    return lines[0], json.loads(body), body


CASES = [
    (gerrors.InvalidRequestLine("GARBAGE"), 400, "invalid_request_error"),
    (gerrors.InvalidRequestMethod("G@T"), 400, "invalid_request_error"),
    (gerrors.InvalidHTTPVersion((2, 5)), 400, "invalid_request_error"),
    (gerrors.InvalidHeader("CONTENT-LENGTH"), 400, "invalid_request_error"),
    (gerrors.InvalidHeaderName("X Y"), 400, "invalid_request_error"),
    (gerrors.LimitRequestLine(5000, 4094), 414, "invalid_request_error"),
    (gerrors.LimitRequestHeaders("limit request headers fields size"), 431, "invalid_request_error"),
    (gerrors.InvalidChunkSize(b"zz"), 400, "invalid_request_error"),
    (gerrors.UnsupportedTransferCoding("br"), 501, "server_error"),
    (gerrors.ForbiddenProxyRequest("1.2.3.4"), 403, "permission_error"),
    (gerrors.ExpectationFailed("200-ok"), 417, "invalid_request_error"),
]


@pytest.mark.parametrize("exc, status, type_", CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_gunicorn_refusals_are_json_with_gunicorns_status(exc, status, type_):
    line, body, _ = answer_to(exc)
    assert line == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"  # gunicorn 27 says "501 Bad Request"
    assert list(body) == ["error"] and list(body["error"]) == ERROR_KEYS
    assert body["error"]["type"] == type_
    assert body["error"]["param"] is None and body["error"]["code"] is None
    assert body["error"]["message"].startswith("The HTTP request was rejected")


def test_the_request_is_quoted_by_a_short_prefix_only():
    _, body, raw = answer_to(gerrors.InvalidRequestLine("X" * 4000))
    assert len(body["error"]["message"]) < 200
    assert body["error"]["message"].endswith("…")
    assert b"XXXX" * 100 not in raw


def test_an_unexpected_failure_is_a_generic_500():
    line, body, _ = answer_to(RuntimeError("secret /home/x"))
    assert line == "HTTP/1.1 500 Internal Server Error"
    assert body["error"] == {"message": "The server had an error while processing your request.",
                             "type": "server_error", "param": None, "code": None}


def test_an_answer_that_does_not_parse_goes_out_unchanged():
    assert translate_answer(b"garbage", RuntimeError()) == b"garbage"


def test_gunicorn_conf_uses_the_worker():
    assert gunicorn_conf.worker_class == "rest_edge.worker.JsonErrorThreadWorker"
    assert issubclass(JsonErrorThreadWorker, ThreadWorker)
    cfg = Config()
    cfg.set("worker_class", gunicorn_conf.worker_class)
    assert cfg.worker_class is JsonErrorThreadWorker


def test_no_second_answer_for_a_request_already_answered():
    """gunicorn drains an unread body after the answer; a malformed one must not get a second answer."""
    cfg = Config()
    worker = JsonErrorThreadWorker(0, 0, [], None, 30, cfg, Logger(cfg))

    class Answered:
        _rest_edge_answered = True

    ours, theirs = socket.socketpair()
    with theirs:
        with ours:
            worker.handle_error(Answered(), ours, ("127.0.0.1", 5), gerrors.InvalidChunkSize(b"zz"))
        assert theirs.recv(100) == b""
