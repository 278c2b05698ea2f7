"""Errors of the REST edge: one domain exception, the gRPC→HTTP table, OpenAI error bodies.

Everything the edge answers with an error goes through :class:`RequestError`, whose body is
OpenAI's ``{"error":{"message","type","param","code"}}``. Falcon error handlers at the bottom
turn it (and Falcon's own HTTP errors, and anything unexpected) into a response; no traceback
ever reaches a client, unexpected exceptions are logged with theirs server-side only.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import falcon
import grpc

from inference_service.limits import (
    MAX_DETAILS_BYTES,
    PARAM_METADATA_KEY,
    QUOTE_CHARS,
    RETRY_AFTER_METADATA_KEY,
    clip_utf8,
    quote,
)
from rest_edge import wire

log = logging.getLogger("rest_edge")

# HTTP status → OpenAI error ``type``. Clients (the openai SDK included) switch on the HTTP
# status; the type names follow OpenAI where it has one.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    if status >= 500 or status == 499:
        return "server_error"
    return ERROR_TYPES.get(status, "invalid_request_error")


class RequestError(Exception):
    """A request that gets an OpenAI error body instead of a completion.

    Raised by validation (``rest_edge.requests``), by the gRPC client (a failed RPC) and by resources.
    """

    def __init__(
        self,
        status: int,
        message: str,
        param: Optional[str] = None,
        code: Optional[str] = None,
        type: Optional[str] = None,  # noqa: A002 - OpenAI's field name
        headers: Optional[Mapping[str, str]] = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or error_type(status)
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return wire.error_body(self.message, self.type, self.param, self.code)

    def __repr__(self) -> str:
        return (
            f"RequestError(status={self.status}, message={self.message!r}, param={self.param!r},"
            f" code={self.code!r}, type={self.type!r})"
        )


def invalid(message: str, param: Optional[str] = None, code: Optional[str] = None) -> RequestError:
    """A 400 invalid_request_error."""
    return RequestError(400, message, param=param, code=code)


# --- gRPC status → HTTP ------------------------------------------------------------------

@dataclass(frozen=True)
class GrpcMapping:
    http_status: int
    code: Optional[str] = None
    # When set, this fixed message replaces the service's details (which may carry internal
    # information such as addresses or exception text); the details are logged instead.
    generic_message: Optional[str] = None


_INTERNAL = "The server had an error while processing your request."

GRPC_TO_HTTP: dict[grpc.StatusCode, GrpcMapping] = {
    # OK never arrives as an error; if it ever does, it is a bug somewhere: 500.
    grpc.StatusCode.OK: GrpcMapping(500, generic_message=_INTERNAL),
    grpc.StatusCode.CANCELLED: GrpcMapping(499, code="cancelled", generic_message="The request was cancelled."),
    grpc.StatusCode.UNKNOWN: GrpcMapping(500, generic_message=_INTERNAL),
    grpc.StatusCode.INVALID_ARGUMENT: GrpcMapping(400),
    grpc.StatusCode.DEADLINE_EXCEEDED: GrpcMapping(504, code="timeout", generic_message="The request timed out."),
    grpc.StatusCode.NOT_FOUND: GrpcMapping(404, code="model_not_found"),
    grpc.StatusCode.ALREADY_EXISTS: GrpcMapping(409),
    grpc.StatusCode.PERMISSION_DENIED: GrpcMapping(403),
    grpc.StatusCode.RESOURCE_EXHAUSTED: GrpcMapping(429, code="rate_limit_exceeded"),
    grpc.StatusCode.FAILED_PRECONDITION: GrpcMapping(400),
    grpc.StatusCode.ABORTED: GrpcMapping(409),
    grpc.StatusCode.OUT_OF_RANGE: GrpcMapping(400, code="context_length_exceeded"),
    grpc.StatusCode.UNIMPLEMENTED: GrpcMapping(501, generic_message="This operation is not supported by the inference service."),
    grpc.StatusCode.INTERNAL: GrpcMapping(500, generic_message=_INTERNAL),
    grpc.StatusCode.UNAVAILABLE: GrpcMapping(503, code="service_unavailable", generic_message="The inference service is unavailable. Please retry later."),
    grpc.StatusCode.DATA_LOSS: GrpcMapping(500, generic_message=_INTERNAL),
    grpc.StatusCode.UNAUTHENTICATED: GrpcMapping(401),
}

# Sent as Retry-After when the service's RESOURCE_EXHAUSTED carries no RETRY_AFTER_METADATA_KEY.
DEFAULT_RETRY_AFTER = "1"

_DEFAULT_PARAM = {
    grpc.StatusCode.NOT_FOUND: "model",
}


def _metadata_value(metadata: Optional[Sequence[Any]], key: str) -> Optional[str]:
    for item in metadata or ():
        k, v = item[0], item[1]
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


# gRPC's own message-size refusal ("Received message larger than max (4730897 vs. 4194304)",
# on either side): the request or its answer exceeds a channel's limit. Not "busy": a retry
# would fail the same way.
_MESSAGE_TOO_LARGE = re.compile(r"(Received|Sent) message larger than max \((\d+) vs\. (\d+)\)")
# Details that come from gRPC's library rather than the service (whose messages are ours).
_GRPC_WORDING = re.compile(r"grpc|Stream removed|Socket closed|CLIENT:|SERVER:|RST_STREAM|HTTP/2|"
                           r"Concurrent RPC limit|Deadline Exceeded|Received message larger", re.IGNORECASE)
_BUSY = "The inference service is busy; retry later."
_REFUSED = "The inference service refused the request."


def _too_large(details: str) -> Optional[RequestError]:
    match = _MESSAGE_TOO_LARGE.search(details)
    if match is None:
        return None
    log.error("inference RPC failed: message too large: %s", details)
    size, limit = int(match.group(2)), int(match.group(3))
    return RequestError(413, f"The request is too large to serve: it needs a {size}-byte message between the "
                             f"edge and the inference service, whose limit is {limit} bytes. Send less per "
                             "request (fewer or shorter inputs).", code="request_too_large")


def from_grpc(
    code: Optional[grpc.StatusCode],
    details: Optional[str],
    trailing_metadata: Optional[Sequence[Any]] = None,
) -> RequestError:
    """The RequestError for a failed RPC: status, type, code, param per the table.

    No wording of gRPC's own reaches the client: a message-size refusal is a 413 naming the
    limit, any other detail that gRPC's library wrote (not the service) becomes our message.
    """
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    too_large = _too_large(details or "")
    if too_large is not None:
        return too_large
    mapping = GRPC_TO_HTTP.get(code) or GRPC_TO_HTTP[grpc.StatusCode.UNKNOWN]
    status = mapping.http_status
    param = _metadata_value(trailing_metadata, PARAM_METADATA_KEY) or _DEFAULT_PARAM.get(code)
    if mapping.generic_message is not None:
        if code is grpc.StatusCode.CANCELLED:
            log.info("inference RPC cancelled: %s", details)
        else:
            log.error("inference RPC failed: %s: %s", code.name, details)
        message = mapping.generic_message
    elif not details or _GRPC_WORDING.search(details):
        log.warning("inference RPC failed with gRPC's own details: %s: %s", code.name, details)
        message = _BUSY if code is grpc.StatusCode.RESOURCE_EXHAUSTED else _REFUSED
    else:
        # The service bounds its messages; a peer that does not is cut here.
        message = clip_utf8(details, MAX_DETAILS_BYTES)
    headers = {}
    if status == 429:
        headers["Retry-After"] = _metadata_value(trailing_metadata, RETRY_AFTER_METADATA_KEY) or DEFAULT_RETRY_AFTER
    return RequestError(status, message, param=param, code=mapping.code, headers=headers)


def internal_error() -> RequestError:
    return RequestError(500, _INTERNAL)


def service_unavailable() -> RequestError:
    """What the edge answers itself when no replica of the service is serving: the same 503
    as the service's UNAVAILABLE."""
    mapping = GRPC_TO_HTTP[grpc.StatusCode.UNAVAILABLE]
    return RequestError(mapping.http_status, mapping.generic_message, code=mapping.code)


def capacity_exhausted(retry_after: str = DEFAULT_RETRY_AFTER) -> RequestError:
    """What the edge answers itself when every serving replica is full (its slots and queue
    places taken by this edge's own calls): the same 429 and Retry-After as the service's
    RESOURCE_EXHAUSTED."""
    return RequestError(429, "Every replica of the inference service is at capacity (all model slots and queue "
                             "places are taken); retry later.",
                        code=GRPC_TO_HTTP[grpc.StatusCode.RESOURCE_EXHAUSTED].code,
                        headers={"Retry-After": retry_after})


# --- Falcon error handlers ---------------------------------------------------------------

# Status lines Falcon does not know (it would say "499 Unknown").
_STATUS_LINES = {499: "499 Client Closed Request", 529: "529 Overloaded"}


def openai_shape(err: RequestError) -> tuple[int, dict[str, Any]]:
    """OpenAI's error shape (every route but those of another API family)."""
    return err.status, err.body()


# An API's error shape: the HTTP status and body of a RequestError in that API's terms.
ErrorShape = Callable[[RequestError], tuple[int, dict[str, Any]]]


def dumps_error(body: dict[str, Any]) -> bytes:
    """An error body as UTF-8 JSON bytes.

    Messages quote client values through ``limits.quote`` (escaped, never raw), but should a
    lone surrogate ever reach one, the body falls back to ASCII JSON (``\\ud800`` escapes)
    rather than failing to encode.
    """
    try:
        return wire.dumps(body).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def error_json(err: RequestError) -> bytes:
    """The error's OpenAI body as UTF-8 JSON bytes."""
    return dumps_error(err.body())


def _write_error(resp: falcon.Response, err: RequestError, shape: ErrorShape = openai_shape) -> None:
    status, body = shape(err)
    resp.status = _STATUS_LINES.get(status, status)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps_error(body)
    resp.stream = None
    for name, value in err.headers.items():
        resp.set_header(name, value)


def handle_request_error(req: falcon.Request, resp: falcon.Response, ex: RequestError, params: Any,
                         shape: ErrorShape = openai_shape) -> None:
    if ex.status >= 500:
        log.warning("%s %s -> %d %s", req.method, req.path, ex.status, ex.message)
    else:
        log.info("%s %s -> %d %s (param=%s)", req.method, req.path, ex.status, ex.message, ex.param)
    _write_error(resp, ex, shape)


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: Any,
                      shape: ErrorShape = openai_shape) -> None:
    """Falcon's own errors (unknown route, wrong method, ...) with OpenAI bodies."""
    status = ex.status_code
    message = ex.description or ex.title or "Request failed."
    if status == 404 and not ex.description:
        message = f"Unknown request URL: {req.method} {_path(req)}."
    elif status == 405 and not ex.description:
        message = f"Method {req.method} is not allowed for {_path(req)}."
    err = RequestError(status, message, headers=ex.headers or None)
    _write_error(resp, err, shape)


def _path(req: falcon.Request) -> str:
    """The request path for a message: at most a short prefix of it."""
    path = req.path
    return path if len(path) <= QUOTE_CHARS else path[:QUOTE_CHARS] + "…"


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any,
                      shape: ErrorShape = openai_shape) -> None:
    """Anything unexpected: logged with its traceback here, a generic 500 for the client."""
    log.exception("unhandled error on %s %s", req.method, req.path)
    _write_error(resp, internal_error(), shape)


def install(app: falcon.App, shapes: Sequence[tuple[str, ErrorShape]] = ()) -> None:
    """The error handlers. ``shapes``: (path prefix, shape) of the routes of API families whose
    errors are not OpenAI's (``/v1/messages`` and below answer in Anthropic's shape), also for
    errors raised before a route is found (authentication, unknown sub-paths)."""

    def shape_of(req: falcon.Request) -> ErrorShape:
        for prefix, shape in shapes:
            if req.path == prefix or req.path.startswith(prefix + "/"):
                return shape
        return openai_shape

    def handler(handle: Callable[..., None]) -> Callable[..., None]:
        return lambda req, resp, ex, params: handle(req, resp, ex, params, shape_of(req))

    # Falcon picks the most specific handler by the exception's MRO.
    app.add_error_handler(Exception, handler(handle_unexpected))
    app.add_error_handler(falcon.HTTPError, handler(handle_http_error))
    app.add_error_handler(RequestError, handler(handle_request_error))


def rpc_attr(err: Any, name: str):
    """``err.code()``, ``err.details()``... of a failed RPC, or None when the object cannot tell."""
    fn = getattr(err, name, None)
    try:
        return fn() if callable(fn) else None
    except Exception:  # noqa: BLE001 - a call object that cannot tell
        return None


def from_rpc_error(err: grpc.RpcError) -> RequestError:
    """The RequestError of a failed RPC (stub errors are also ``grpc.Call`` objects)."""
    return from_grpc(rpc_attr(err, "code"), rpc_attr(err, "details"), rpc_attr(err, "trailing_metadata"))


def model_not_served(model: str, served: Sequence[str]) -> RequestError:
    """What the edge answers itself when no replica serves ``model``: the service's own 404."""
    return from_grpc(grpc.StatusCode.NOT_FOUND,
                     f"model {quote(model)} not found; served: {', '.join(served) or 'none'}")
