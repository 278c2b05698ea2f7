"""Falcon resources: thin HTTP adapters over an injected inference client.

The client is anything with ``generate(request, timeout) -> call`` (iterable of
GenerateResponse, with ``cancel()``), ``embed(request, timeout) -> call`` (``result()`` an
EmbedResponse, with ``cancel()``), ``list_models() -> [ModelInfo]`` and ``health() -> bool``;
its failures are :class:`RequestError`. Tests inject a fake.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import random
import threading
from typing import Any, Callable, Iterator, Optional, Protocol, TypeVar

import falcon

from inference_service.limits import quote
from inference_service.v1 import inference_pb2 as pb

from rest_edge import disconnect, requests, responses, streaming, wire
from rest_edge.apis.fields import parse_json_body
from rest_edge.errors import RequestError
from rest_edge.metrics import Metrics

log = logging.getLogger("rest_edge")

T = TypeVar("T")


class Client(Protocol):
    def generate(self, request: pb.GenerateRequest, timeout: Optional[float] = None) -> Any: ...
    def embed(self, request: pb.EmbedRequest, timeout: Optional[float] = None) -> Any: ...
    def list_models(self, timeout: Optional[float] = None) -> list: ...
    def health(self, timeout: Optional[float] = None) -> bool: ...


class ResponseIds:
    """Response ids in the reference format (``chatcmpl-<digits>``): a counter from a random
    point of a 10**15 range, drawn in each process after any fork. A counter made at import
    would be copied into every gunicorn worker, which would then hand out the same ids; two
    processes' ranges of n ids each overlap with probability about 2n/10**15."""

    _SPACE = 10**15

    def __init__(self):
        self._counter = None
        self._pid = None
        self._lock = threading.Lock()

    def next(self) -> int:
        if self._pid != os.getpid():  # first use in this process (also after a fork)
            with self._lock:
                if self._pid != os.getpid():
                    self._counter = itertools.count(random.SystemRandom().randrange(1_000, self._SPACE))
                    self._pid = os.getpid()
        return next(self._counter)


_ids = ResponseIds()


def new_id(prefix: str) -> str:
    return f"{prefix}-{_ids.next()}"


def request_id_of(req: falcon.Request, fallback: str) -> str:
    """The request's id (``X-Request-Id``, set by the app's middleware), else ``fallback``.
    It goes to the service in GenerateRequest/EmbedRequest.request_id and as metadata."""
    return getattr(req.context, "request_id", None) or fallback


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The raw request body, at most ``limit`` bytes (else 413).

    A body that cannot be read whole (a malformed chunk size or terminator, a client that
    ended its side before sending all of its ``Content-Length``) is the client's error: 400.
    After a malformed chunk gunicorn closes the connection once the answer is sent.
    """
    length = req.content_length
    if length is not None and length > limit:
        raise RequestError(413, f"The request body is too large: {length} bytes; the limit is {limit} bytes.")
    try:
        if length is not None:
            data = req.bounded_stream.read()
        elif req.env.get("wsgi.input_terminated"):
            data = req.stream.read(limit + 1)  # chunked request body, the server ends the input
        else:
            return b""
    except Exception as exc:  # noqa: BLE001 - gunicorn's ParseException (bad chunk), NoMoreData, OSError
        log.info("%s %s: unreadable request body: %s", req.method, req.path, type(exc).__name__)
        raise RequestError(
            400, "The request body could not be read: malformed chunked transfer encoding or an incomplete body."
        ) from None
    if length is not None and len(data) < length:
        raise RequestError(
            400, f"The request body is incomplete: {len(data)} of the {length} bytes of its Content-Length arrived."
        )
    if len(data) > limit:
        raise RequestError(413, f"The request body is too large; the limit is {limit} bytes.")
    return data


def json_response(resp: falcon.Response, obj: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = wire.dumps(obj).encode("utf-8")


def watched_call(req: falcon.Request, call: Any, metrics: Optional[Metrics]) -> streaming.ClientWatch:
    """Watches the client of ``req``: when it leaves, ``call`` is cancelled (and counted)."""
    departures = metrics.client_departures.labels(req.uri_template or "unmatched") if metrics else None

    def on_gone() -> None:
        if call.cancel() and departures is not None:
            departures.inc()

    return disconnect.watch_client(req.env, on_gone)


StreamOf = Callable[..., streaming.CancellingStream]
"""``(first, rest, call, *, watch, on_error)`` -> the response iterable of a stream."""


class CallingResource:
    """A route that calls the service: its body limit, the call's deadline, and the metrics of
    departed clients and failed streams. A client that leaves before its answer is complete
    cancels the call (the blocked ``next()`` then raises a 499 RequestError), whether or not
    anything was written yet."""

    def __init__(self, client: Client, *, max_body_bytes: int, request_timeout: Optional[float] = None,
                 metrics: Optional[Metrics] = None):
        self._client = client
        self._max_body_bytes = max_body_bytes
        self._request_timeout = request_timeout
        self._metrics = metrics

    def _json_body(self, req: falcon.Request) -> dict:
        return parse_json_body(read_body(req, self._max_body_bytes))

    def _watched(self, req: falcon.Request, call: Any, work: Callable[[], T], *, cancel: bool = True) -> T:
        """``work()`` while the client is watched; then the call is cancelled (``cancel``), a
        no-op once it ended."""
        watch = watched_call(req, call, self._metrics)
        try:
            return work()
        finally:
            watch.close()
            if cancel:
                call.cancel()

    def _answer(self, req: falcon.Request, resp: falcon.Response, call: Any, events: Iterator[responses.Event], *,
                stream: bool, body: Callable[[Iterator[responses.Event]], dict], stream_of: StreamOf,
                content_type: str = "text/event-stream") -> None:
        """Answers a generation: its whole ``body``, or (``stream``) the stream ``stream_of`` makes."""
        if not stream:
            json_response(resp, self._watched(req, call, lambda: body(events)))
            return
        watch = watched_call(req, call, self._metrics)
        # The status line goes out before the body iterator runs: take the first event here,
        # so that everything knowable before the first token gets its real HTTP status.
        try:
            first = next(events)
        except BaseException:
            watch.close()
            call.cancel()
            raise
        resp.content_type = content_type
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = stream_of(first, events, call, watch=watch, on_error=self._count_stream_error(req.uri_template))

    def _count_stream_error(self, route: Optional[str]) -> Optional[Callable[[RequestError], None]]:
        if self._metrics is None:
            return None
        counter = self._metrics.stream_errors
        return lambda err: counter.labels(route or "unmatched", str(err.status)).inc()


class GenerationResource(CallingResource):
    """POST /v1/completions or /v1/chat/completions, stream true or false: parse, call, render."""

    def __init__(self, client: Client, parse: Callable[[dict, str], requests.ParsedRequest],
                 renderer: type[responses.Renderer], **settings: Any):
        super().__init__(client, **settings)
        self._parse = parse
        self._renderer = renderer

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = new_id(self._renderer.id_prefix)
        parsed = self._parse(self._json_body(req), request_id_of(req, rid))
        call = self._client.generate(parsed.request, timeout=self._request_timeout)
        if parsed.choices == 1:
            render = self._renderer(rid, parsed.model, logprobs=parsed.logprobs, include_usage=parsed.include_usage,
                                    **parsed.render_options)
        else:
            render = responses.ChoicesRenderer(
                lambda: self._renderer(rid, parsed.model, logprobs=parsed.logprobs, **parsed.render_options),
                parsed.choices, include_usage=parsed.include_usage)
        self._answer(req, resp, call, responses.events(call, choices=parsed.choices), stream=parsed.stream,
                     body=render.body, stream_of=functools.partial(streaming.sse_stream, render))


class EmbeddingsResource(CallingResource):
    """POST /v1/embeddings: parse, check ``dimensions``, call Embed, render.

    ``dimensions`` is honoured only as what it always is here: the model's own full length
    (asked from ListModels). Any other value is refused naming it, since this server never
    shortens vectors (truncating is only meaningful for models trained for it).
    A client that leaves while its inputs are embedded cancels the call.
    """

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        parsed = requests.embedding_request(self._json_body(req), request_id_of(req, new_id("embd")))
        if parsed.dimensions is not None:
            self._check_dimensions(parsed.model, parsed.dimensions)
        call = self._client.embed(parsed.request, timeout=self._request_timeout)
        result = self._watched(req, call, call.result, cancel=False)
        json_response(resp, responses.embedding_body(result, parsed.model, parsed.encoding_format))

    def _check_dimensions(self, model: str, dimensions: int) -> None:
        info = next((m for m in self._client.list_models() if m.name == model), None)
        if info is None or not info.can_embed:
            return  # Embed answers with the model's own error (404, or a model that cannot embed)
        if dimensions != info.embedding_dimensions:
            raise RequestError(
                400,
                f"Unsupported value for 'dimensions': {quote(dimensions)}. This server returns the model's full "
                f"vectors, {info.embedding_dimensions} dimensions for {quote(model)}; omit 'dimensions' or send "
                f"{info.embedding_dimensions}.",
                param="dimensions",
                code="unsupported_parameter",
            )


def _model_not_found(name: str) -> RequestError:
    return RequestError(404, f"The model {quote(name)} does not exist.", param="model", code="model_not_found")


class ModelsResource:
    """GET /v1/models."""

    def __init__(self, client: Client):
        self._client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        models = [responses.model_object(m) for m in self._client.list_models()]
        json_response(resp, wire.model_list(models))


class ModelResource:
    """GET /v1/models/{model}; names contain ':' and '.' (and may contain '/')."""

    def __init__(self, client: Client):
        self._client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response, model: str) -> None:
        for info in self._client.list_models():
            if info.name == model:
                json_response(resp, responses.model_object(info))
                return
        raise _model_not_found(model)


class HealthResource:
    """GET /health: 200 when at least one replica of the inference service is SERVING (by its
    health watch), else 503."""

    def __init__(self, client: Client):
        self._client = client

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            ok = self._client.health()
        except Exception:
            log.exception("health check failed")
            ok = False
        resp.set_header("Cache-Control", "no-store")
        if ok:
            json_response(resp, {"status": "ok"})
        else:
            json_response(resp, {"status": "unavailable"}, status=503)
