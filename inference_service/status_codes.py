"""Domain errors as gRPC statuses: one table for every RPC, and the two places that apply it.

``translate_errors`` wraps a servicer method (unary or server-streaming): an
``InferenceError`` ends the call with its status (``STATUS_FOR_ERROR``), the request field at
fault as ``error-param`` trailing metadata and, for RESOURCE_EXHAUSTED, ``retry-after``; any
other exception is logged with its traceback and ends the call as a bare INTERNAL.
``RejectUndecodableRequests`` turns a request protobuf cannot parse into INVALID_ARGUMENT.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable

import grpc

from inference_service.errors import (
    Cancelled,
    ContextLengthExceeded,
    DeadlineExceeded,
    InferenceError,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServiceUnavailable,
)
from inference_service.limits import (
    MAX_DETAILS_BYTES,
    MAX_PARAM_CHARS,
    PARAM_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    clip_utf8,
)

log = logging.getLogger("inference_service.server")

RETRY_AFTER_SECONDS = 1


# Most specific first: ContextLengthExceeded is also an InvalidRequest.
STATUS_FOR_ERROR: list[tuple[type[InferenceError], grpc.StatusCode]] = [
    (ContextLengthExceeded, grpc.StatusCode.OUT_OF_RANGE),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (ServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_for(error: InferenceError) -> grpc.StatusCode:
    for error_type, code in STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def abort_with(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the call with the error's status; details and metadata are bounded (they are trailers).

    Messages quote client values by a short prefix already; the caps here are a last guard so
    that no message can push the trailers past gRPC's metadata limit (8 KiB by default), which
    the client would report as a misleading RESOURCE_EXHAUSTED.
    """
    if not isinstance(error, InferenceError):
        log.exception("unexpected error", exc_info=error)
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    code = status_for(error)
    metadata = []
    param = getattr(error, "param", None)
    if param:
        # An ASCII metadata value: printable, escaped otherwise, and short.
        param = ascii(str(param))[1:-1][:MAX_PARAM_CHARS]
        metadata.append((PARAM_METADATA_KEY, param))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        metadata.append((RETRY_AFTER_METADATA_KEY, str(RETRY_AFTER_SECONDS)))
    if metadata:
        context.set_trailing_metadata(tuple(metadata))
    context.abort(code, clip_utf8(str(error), MAX_DETAILS_BYTES))


class _Undecodable:
    """Stands for a request message protobuf could not parse (e.g. invalid UTF-8 in a string)."""

    def __init__(self, reason: str):
        self.reason = reason


class RejectUndecodableRequests(grpc.ServerInterceptor):
    """A request that does not parse gets INVALID_ARGUMENT, not grpcio's INTERNAL.

    grpcio answers a deserializer's exception with INTERNAL ("Exception deserializing
    request!"), which reads as the server's fault; a client that sends invalid UTF-8 in a
    string field made the mistake. The deserializer hands a marker to the handler instead,
    which refuses it.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        deserialize = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return deserialize(data)
            except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and kin
                return _Undecodable(str(error) or type(error).__name__)

        def refuse(request, context) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request message could not be parsed (strings must be valid UTF-8): "
                          f"{request.reason[:200]}")

        if handler.response_streaming:
            behaviour = handler.unary_stream

            def unary_stream(request, context):
                if isinstance(request, _Undecodable):
                    refuse(request, context)
                yield from behaviour(request, context)

            return handler._replace(request_deserializer=lenient, unary_stream=unary_stream)
        behaviour = handler.unary_unary

        def unary_unary(request, context):
            if isinstance(request, _Undecodable):
                refuse(request, context)
            return behaviour(request, context)

        return handler._replace(request_deserializer=lenient, unary_unary=unary_unary)


def translate_errors(method: Callable) -> Callable:
    """A servicer method whose errors end the call with their status (see the module doc).

    A server-streaming method (a generator) is wrapped as a generator; ``Cancelled`` raised
    while streaming just ends it: the client is gone and nobody reads a status.
    """
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def streaming(self, request, context):
            try:
                yield from method(self, request, context)
            except Cancelled:
                return
            except Exception as error:  # noqa: BLE001 - every error becomes a status, never a traceback
                abort_with(context, error)
        return streaming

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            return method(self, request, context)
        except Exception as error:  # noqa: BLE001
            abort_with(context, error)
    return unary
