"""Bad input from outside, end to end (issue 7): raw bytes gunicorn or the app must refuse, and
strings that used to be echoed into gRPC trailers, over HTTP and over gRPC.

Raw requests go through a plain socket to the real gunicorn edge (``edge``, in front of the real
service): a malformed chunked body reaches the app (``read_body``), a bad request line, header
section or ``Content-Length`` is refused by gunicorn itself, whose answer the edge's worker
(``rest_edge.worker``) writes as OpenAI-shaped JSON with gunicorn's status.
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Optional
from urllib.parse import urlsplit

import grpc
import pytest
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.e2e.helpers import MODEL
from tests.edge.fuzz_requests import check_answer, fuzz_settings, requests, weighted

pytestmark = pytest.mark.model

SAFETY = 60  # seconds: bounds a hang, never a measured limit
ERROR_KEYS = ["message", "type", "param", "code"]


@dataclass
class Answer:
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes
    closed: bool  # the server closed the connection after this answer

    @property
    def error(self) -> dict:
        assert self.headers.get("Content-Type", "").startswith("application/json"), (self.status, self.body[:300])
        body = json.loads(self.body)
        assert list(body) == ["error"] and list(body["error"]) == ERROR_KEYS, body
        error = body["error"]
        assert isinstance(error["message"], str) and isinstance(error["type"], str)
        assert len(error["message"]) <= 300, error["message"]
        return error


def exchange(edge, data: bytes, *, half_close: bool = False) -> Optional[Answer]:
    """Sends raw bytes on a new connection; the first answer, or None if the server closed without one.

    ``half_close`` ends the client's side after the bytes, for requests that are cut short:
    gunicorn then sees EOF instead of waiting for the rest. (A request that would be served may
    then be answered 499: the edge takes the closed side for a client that left.)
    """
    address = urlsplit(edge.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=SAFETY) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            return None
        body = response.read()
        try:
            closed = sock.recv(1) == b""
        except ConnectionResetError:
            closed = True
        return Answer(response.status, response.reason, response.headers, body, closed)


def post(path: str, body: bytes, *headers: str, chunked: bool = False) -> bytes:
    """A raw POST; ``Connection: close`` unless a header says otherwise, so the answer ends at EOF."""
    if not any(h.lower().startswith("connection:") for h in headers):
        headers = (*headers, "Connection: close")
    lines = [f"POST {path} HTTP/1.1", "Host: edge", "Content-Type: application/json", *headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


JSON_BODY = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 1}).encode()


# --- malformed chunked bodies: the app answers 400 and the connection closes -------------------------

@pytest.mark.parametrize("chunks, cut_short", [
    (b"zz\r\n" + JSON_BODY + b"\r\n0\r\n\r\n", False),  # chunk size not hex
    (b"%x\r\n" % len(JSON_BODY) + JSON_BODY + b"XX0\r\n\r\n", False),  # chunk data not ended by CRLF
    (b"%x;\x01\r\n" % len(JSON_BODY) + JSON_BODY + b"\r\n0\r\n\r\n", False),  # bad chunk extension
    (b"-5\r\nabc\r\n0\r\n\r\n", False),  # negative size
    (b"%x\r\n" % (len(JSON_BODY) + 50) + JSON_BODY, True),  # the client stops mid-chunk
    (b"%x\r\n" % len(JSON_BODY) + JSON_BODY + b"\r\n", True),  # no last chunk
], ids=["size zz", "missing terminator", "bad extension", "negative size", "truncated", "no last chunk"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_malformed_chunked_body_is_400_json(edge, path, chunks, cut_short):
    answer = exchange(edge, post(path, chunks, chunked=True), half_close=cut_short)
    assert answer is not None
    assert answer.status == 400, answer.body
    error = answer.error
    assert error["type"] == "invalid_request_error"
    assert answer.closed  # where the next request would start is unknown: not reused


def test_malformed_chunked_body_on_a_kept_alive_connection_is_400_then_closed(edge):
    # No half-close: the client keeps the connection open; the edge must still answer and close.
    request = post("/v1/completions", b"zz\r\nabc\r\n0\r\n\r\n", "Connection: keep-alive", chunked=True)
    answer = exchange(edge, request)
    assert answer is not None and answer.status == 400 and answer.closed
    assert answer.error["type"] == "invalid_request_error"


def test_unread_malformed_body_gets_no_second_answer(edge):
    # The app answers 405 without reading the body; gunicorn then drains it, finds it malformed,
    # and used to write a second answer (a 400) after the first on the same connection.
    request = post("/health", b"zz\r\nabc\r\n0\r\n\r\n", "Connection: keep-alive", chunked=True)
    answer = exchange(edge, request)
    assert answer is not None and answer.status == 405
    assert answer.closed  # and nothing after the 405


def test_body_shorter_than_content_length_is_400(edge):
    # A whole JSON object, but the client ends its side 20 bytes short of its Content-Length.
    answer = exchange(edge, post("/v1/completions", JSON_BODY, f"Content-Length: {len(JSON_BODY) + 20}"),
                      half_close=True)
    assert answer is not None and answer.status == 400
    assert "incomplete" in answer.error["message"]


def test_well_formed_chunked_body_is_served(edge):
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (JSON_BODY[:10], JSON_BODY[10:])) + b"0\r\n\r\n"
    answer = exchange(edge, post("/v1/completions", chunks, chunked=True))
    assert answer is not None and answer.status == 200, answer.body
    assert json.loads(answer.body)["choices"][0]["finish_reason"] in ("stop", "length")


# --- refused by gunicorn before the app: JSON with gunicorn's status ------------------------------------

GUNICORN_REFUSALS = [
    ("bad request line", b"GARBAGE\r\n\r\n", 400),
    ("bad method", b"G@T /health HTTP/1.1\r\nHost: edge\r\n\r\n", 400),
    ("bad version", b"GET /health HTTP/2.5\r\nHost: edge\r\n\r\n", 400),
    ("content-length not a number", post("/v1/completions", JSON_BODY, "Content-Length: abc"), 400),
    ("content-length negative", post("/v1/completions", JSON_BODY, "Content-Length: -1"), 400),
    ("content-length with a sign", post("/v1/completions", JSON_BODY, "Content-Length: +27"), 400),
    ("content-length twice", post("/v1/completions", JSON_BODY, "Content-Length: 27", "Content-Length: 27"), 400),
    ("content-length list", post("/v1/completions", JSON_BODY, "Content-Length: 27, 27"), 400),
    ("content-length and chunked", post("/v1/completions", b"0\r\n\r\n", "Content-Length: 5", chunked=True), 400),
    ("chunked twice", post("/v1/completions", b"0\r\n\r\n", "Transfer-Encoding: chunked", chunked=True), 400),
    ("bad header name", b"GET /health HTTP/1.1\r\nHost: edge\r\nX Y: z\r\n\r\n", 400),
    ("bare LF", b"GET /health HTTP/1.1\nHost: edge\n\n", 400),
    ("header too large", b"GET /health HTTP/1.1\r\nHost: edge\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", 431),
    ("too many headers", b"GET /health HTTP/1.1\r\nHost: edge\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150))
     + b"\r\n", 431),
    ("request line too long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: edge\r\n\r\n", 414),
    # An unknown transfer coding: RFC 9112 says 501, and so does gunicorn.
    ("unknown transfer coding", post("/v1/completions", JSON_BODY, "Transfer-Encoding: br"), 501),
]


@pytest.mark.parametrize("data, status", [c[1:] for c in GUNICORN_REFUSALS], ids=[c[0] for c in GUNICORN_REFUSALS])
def test_gunicorn_refusals_are_json(edge, data, status):
    answer = exchange(edge, data)
    assert answer is not None
    assert answer.status == status, answer.body
    assert answer.headers["Connection"] == "close" and answer.closed
    error = answer.error
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
    assert error["param"] is None and error["code"] is None
    assert b"<html>" not in answer.body


def test_a_long_request_line_is_quoted_by_a_prefix(edge):
    answer = exchange(edge, b"GET /" + b"q" * 3000 + b" HTTP/1.1 extra\r\nHost: edge\r\n\r\n")
    assert answer is not None and answer.status == 400
    assert b"q" * 200 not in answer.body


# --- strings that used to reach gRPC trailers -----------------------------------------------------------

LONG = 9000


@pytest.mark.parametrize("path, body, param", [
    ("/v1/chat/completions", {"model": "m" * LONG, "messages": [{"role": "user", "content": "Hi"}]}, "model"),
    ("/v1/completions", {"model": "m" * LONG, "prompt": "Hi"}, "model"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "r" * LONG, "content": "Hi"}]},
     "messages[0].role"),
    ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stop": ["s" * LONG]},
     "stop[0]"),
], ids=["chat model", "completion model", "role", "stop"])
@pytest.mark.parametrize("stream", [False, True])
def test_long_strings_are_400_naming_the_field_every_time(edge, path, body, param, stream):
    raw = json.dumps(dict(body, stream=stream, max_tokens=1)).encode()
    for _ in range(3):  # used to be a random mix of 404 and 429
        answer = exchange(edge, post(path, raw, f"Content-Length: {len(raw)}"))
        assert answer is not None and answer.status == 400, answer.body[:300]
        error = answer.error
        assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_long_model_name_is_404_quoting_a_prefix(edge):
    raw = json.dumps({"model": "z" * 256, "prompt": "Hi", "max_tokens": 1}).encode()
    answer = exchange(edge, post("/v1/completions", raw, f"Content-Length: {len(raw)}"))
    assert answer is not None and answer.status == 404
    assert "z" * 65 not in answer.error["message"]


@pytest.fixture(scope="module")
def stub(service):
    with service.channel() as channel:
        yield pb_grpc.InferenceServiceStub(channel)


@pytest.mark.parametrize("request_, param", [
    (pb.GenerateRequest(model="m" * LONG, prompt="Hi", max_tokens=1), "model"),
    (pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="r" * LONG, content="Hi")], max_tokens=1),
     "messages[0].role"),
    (pb.GenerateRequest(model=MODEL, prompt="Hi", stop=["s" * LONG], max_tokens=1), "stop"),
], ids=["model", "role", "stop"])
def test_grpc_long_strings_are_invalid_argument_with_short_details(stub, request_, param):
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Generate(request_, timeout=SAFETY))
    error = info.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details()[:200])
    assert dict(error.trailing_metadata())["error-param"] == param
    assert len(error.details()) <= 300


def test_grpc_tokenize_long_model_is_invalid_argument(stub):
    with pytest.raises(grpc.RpcError) as info:
        stub.Tokenize(pb.TokenizeRequest(model="m" * LONG, text="Hi"), timeout=SAFETY)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(info.value.details()) <= 300


# --- generated raw requests --------------------------------------------------------------------------------

# Mostly what a client would send, now and then something odd (hypothesis favours the ends of
# a list, so plain lists would make most requests die on their first line).
PATHS = weighted((8, st.sampled_from(["/v1/completions", "/v1/chat/completions"])),
                 (2, st.sampled_from(["/health", "/v1/models", "/v1/models/" + MODEL])),
                 (1, st.sampled_from(["*", "/%ff%fe", "/v1/../v1/models", "http://edge/health", "/" + "p" * 300, "/\x7f",
                                      "/v1/completions?x=1#f"])))
METHODS = weighted((8, st.just("POST")), (1, st.sampled_from(["GET", "PUT", "DELETE", "OPTIONS"])),
                   (1, st.sampled_from(["G@T", "", "get", "POST POST"])))
VERSIONS = weighted((8, st.just("HTTP/1.1")), (1, st.just("HTTP/1.0")),
                    (1, st.sampled_from(["HTTP/2.0", "HTTP/1.1 x", "", "http/1.1", "HTTP/9.9"])))
LENGTHS = ["abc", "-1", "+5", "1,1", "", "9" * 30, " 5", "0x10", "½"]
CODINGS = ["chunked", "gzip", "br", "chunked, chunked", "identity", "gzip, chunked", "chunked, gzip", "CHUNKED", ""]
EXTRA_HEADERS = ["Expect: 100-continue", "Expect: 200-ok", "X Y: z", "X-A:\x00", ": empty", "X-Long: " + "l" * 9000,
                 "Connection: close", "Connection: keep-alive", "Content-Type: text/plain", "Host: a\r\nHost: b",
                 " X-Folded: yes", "Authorization: Bearer x", "X-Ünicode: é"]


@st.composite
def raw_requests(draw) -> tuple[bytes, bool]:
    """Raw bytes of one request, built from odd parts; and whether an unknown coding was named."""
    method = draw(METHODS)
    target = draw(PATHS)
    version = draw(VERSIONS)
    _, body = draw(requests(real_model=True))
    headers = ["Host: edge"] if draw(st.integers(0, 9)) else []
    framing = draw(weighted((4, st.just("length")), (4, st.just("chunked")), (1, st.just("bad length")),
                            (1, st.just("coding")), (1, st.just("none"))))
    if framing == "length":
        headers.append(f"Content-Length: {len(body) + draw(st.sampled_from([0, 0, 0, -1, 1, 50]))}")
    elif framing == "bad length":
        headers.append(f"Content-Length: {draw(st.sampled_from(LENGTHS))}")
    elif framing == "coding":
        headers.append(f"Transfer-Encoding: {draw(st.sampled_from(CODINGS))}")
    if framing == "chunked":
        headers.append("Transfer-Encoding: chunked")
        size = draw(weighted((6, st.just("ok")), (1, st.sampled_from(["zz", "-1", "ffffffffffffffffff", "big", "small", " 5"]))))
        n = len(body)
        size_text = {"ok": f"{n:x}", "big": f"{n + 7:x}", "small": f"{max(n - 3, 0):x}"}.get(size, size)
        ext = draw(weighted((6, st.just("")), (1, st.sampled_from([";a=b", ";\x01", ";" + "e" * 5000]))))
        end = draw(weighted((6, st.just(b"\r\n0\r\n\r\n")),
                            (1, st.sampled_from([b"0\r\n\r\n", b"\r\n", b"", b"\r\n0\r\nX: y\r\n\r\n"]))))
        body = f"{size_text}{ext}\r\n".encode("latin-1") + body + end
    for header in draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2)):
        headers.append(header)
    newline = draw(weighted((12, st.just("\r\n")), (1, st.just("\n"))))
    head = f"{method} {target} {version}".strip() + newline + "".join(h + newline for h in headers) + newline
    unknown_coding = framing == "coding"
    return head.encode("utf-8") + body, unknown_coding


@fuzz_settings(150, HealthCheck.function_scoped_fixture)
@given(raw_requests())
def test_generated_raw_requests_get_json_answers(edge, raw):
    data, coding_header = raw
    answer = exchange(edge, data, half_close=True)  # many are cut short or framed wrongly
    if answer is None:
        return  # an incomplete request that the client ended: gunicorn closes without an answer
    if answer.status == 501:  # gunicorn's (and RFC 9112's) answer to an unknown transfer coding
        assert coding_header, data[:300]
        assert answer.error["type"] == "server_error"
        return
    if data.startswith((b"OPTIONS ", b"HEAD ")) and answer.status == 200:
        assert answer.body == b""  # an OPTIONS answer (Allow header) or a HEAD answer has no body
        return
    check_answer(answer.status, answer.headers.get("Content-Type"), answer.body, completion=False)


def test_the_edge_still_serves_after_the_bad_bytes(edge):
    answer = exchange(edge, post("/v1/completions", JSON_BODY, f"Content-Length: {len(JSON_BODY)}"))
    assert answer is not None and answer.status == 200, answer.body
    assert edge.process.poll() is None
