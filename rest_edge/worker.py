"""gunicorn's gthread worker, answering the requests gunicorn itself refuses in OpenAI's shape.

gunicorn refuses some requests before the app sees them: a bad request line or method, a bad
or oversized header section (``Content-Length`` included), an unsupported transfer coding, a
chunked body it cannot parse. Its worker then calls ``handle_error(req, client, addr, exc)``,
which picks the status (400, 403, 414, 417, 431, 501, or 500 for a failure of its own), logs,
and writes a small HTML page with ``Connection: close``.

:class:`JsonErrorThreadWorker` keeps all of that — the status is the one gunicorn chose (with
the standard reason phrase), its logging and access log are untouched — and only replaces the
HTML page with the edge's error body ``{"error":{"message","type","param","code"}}``. It lets
gunicorn write its answer into a recorder, reads the status line back, and sends the JSON
answer instead. Should the recorded answer ever not parse (a future gunicorn writing
differently), gunicorn's own bytes go out unchanged.

Enabled by ``worker_class`` in :mod:`rest_edge.gunicorn_conf`. Nothing here imports grpc:
gunicorn imports the worker class in the arbiter, before it forks.
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

from inference_service.limits import ELLIPSIS
from rest_edge import wire

# The part of gunicorn's reason for the refusal that is quoted (it may carry request bytes).
MAX_DETAIL_CHARS = 96
INTERNAL_MESSAGE = "The server had an error while processing your request."

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")


class _Recorder:
    """Stands in for the client socket while gunicorn writes its error answer; keeps the bytes.

    Everything but writing (``gettimeout``, ``setblocking``, ...) goes to the real socket.
    """

    def __init__(self, sock: Any):
        self._sock = sock
        self.data = bytearray()

    def sendall(self, data: bytes) -> None:
        self.data += data

    def send(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def _error_type(status: int) -> str:
    """``rest_edge.errors.error_type`` for the statuses gunicorn uses (that module imports grpc)."""
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
            429: "rate_limit_error"}.get(status, "invalid_request_error")


def _detail(exc: BaseException) -> str:
    """gunicorn's words for the refusal, cut to a short prefix (they may quote the request)."""
    text = str(exc) or type(exc).__name__
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + ELLIPSIS


def json_error_answer(status: int, reason: str, exc: BaseException) -> bytes:
    """The whole HTTP answer (status line, headers, JSON body) for a refused request."""
    if status >= 500 and status != 501:  # gunicorn's (or the app's) own failure: no details
        message = INTERNAL_MESSAGE
    else:
        message = f"The HTTP request was rejected ({reason}): {_detail(exc)}"
    body = wire.dumps(wire.error_body(message, _error_type(status))).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def translate_answer(answer: bytes, exc: BaseException) -> bytes:
    """gunicorn's HTML error answer as the JSON one with the same status; unchanged if unparsable."""
    match = _STATUS_LINE.match(answer)
    if match is None:
        return answer
    status = int(match.group(1))
    try:  # the standard phrase: gunicorn 27 says "501 Bad Request"
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = match.group(2).decode("latin-1")
    return json_error_answer(status, reason, exc)


# Set on a gunicorn request once its answer has been sent.
_ANSWERED = "_rest_edge_answered"


class JsonErrorThreadWorker(ThreadWorker):
    """gunicorn's gthread worker whose own error answers are OpenAI-shaped JSON.

    Also: one answer per request. gunicorn drains the body the app left unread before it reuses
    a connection; when that body is malformed (a bad chunk after a 405, say) it used to write a
    second answer, a 400, after the one already sent. The error is logged and the connection
    closed instead.
    """

    def handle_request(self, req: Any, conn: Any) -> bool:
        keepalive = super().handle_request(req, conn)
        setattr(req, _ANSWERED, True)
        return keepalive

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if getattr(req, _ANSWERED, False):
            self.log.warning("Invalid request from ip=%s after its answer was sent: %s; closing the connection",
                             (addr or ("",))[0], _detail(exc))
            return
        recorder = _Recorder(client)
        super().handle_error(req, recorder, addr, exc)
        answer = bytes(recorder.data)
        if not answer:
            return  # gunicorn failed to build its answer (it logged why); nothing to send
        try:
            util.write_nonblock(client, translate_answer(answer, exc))
        except Exception:  # noqa: BLE001 - the client is gone; like gunicorn, only a debug line
            self.log.debug("Failed to send error message.")
