"""The Falcon resource of an API adapter's generation route: read, parse, call, render.

An adapter (one module per public API) gives ``parse(body, request_id) -> Parsed`` (the
``GenerateRequest`` to send and whether to stream) and ``rendering(parsed, id)`` (the
response body, or the stream's frames). Everything HTTP is here and shared: the body limit,
the request id, the disconnect watch that cancels the call of a departed client, the status
line that waits for the first event, SSE headers and stream-error metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol

import falcon

from inference_service.v1 import inference_pb2 as pb

from rest_edge import disconnect, responses, wire
from rest_edge.apis.fields import parse_json_body
from rest_edge.apis.sse import StreamRendering, event_stream
from rest_edge.errors import RequestError
from rest_edge.metrics import Metrics
from rest_edge.resources import Client, new_id, read_body, request_id_of


@dataclass
class Parsed:
    """A validated request of an adapter: the protobuf to send, and what its renderer needs."""

    request: pb.GenerateRequest
    model: str
    stream: bool = False
    echo: Any = None  # the adapter's own view of the request, for its renderer
    # A body known without generating (Ollama's "load the model" request): answered as is.
    answer: Optional[dict] = None


class Rendering(StreamRendering, Protocol):
    def body(self, events: Iterable[responses.Event]) -> dict: ...


class Adapter(Protocol):
    id_prefix: str
    # The media type of a stream (optional; server-sent events when the adapter has none).
    # stream_content_type: str

    def parse(self, body: dict, request_id: str) -> Parsed: ...

    def rendering(self, parsed: Parsed, response_id: str) -> Rendering: ...


def json_response(resp: falcon.Response, obj: Any, status: int = 200) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.data = wire.dumps(obj).encode("utf-8")


def watched_call(req: falcon.Request, call: Any, metrics: Optional[Metrics]) -> Any:
    """Watches the client of ``req``: when it leaves, ``call`` is cancelled (and counted)."""
    departures = metrics.client_departures.labels(req.uri_template or "unmatched") if metrics else None

    def on_gone() -> None:
        if call.cancel() and departures is not None:
            departures.inc()

    return disconnect.watch_client(req.env, on_gone)


class AdapterGenerationResource:
    """POST of an adapter's generation route, stream true or false."""

    def __init__(self, client: Client, adapter: Adapter, *, max_body_bytes: int, request_timeout: Optional[float],
                 metrics: Optional[Metrics] = None):
        self._client = client
        self._adapter = adapter
        self._max_body_bytes = max_body_bytes
        self._request_timeout = request_timeout
        self._metrics = metrics

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = new_id(self._adapter.id_prefix)
        body = parse_json_body(read_body(req, self._max_body_bytes))
        parsed = self._adapter.parse(body, request_id_of(req, rid))
        if parsed.answer is not None:
            json_response(resp, parsed.answer)
            return
        call = self._client.generate(parsed.request, timeout=self._request_timeout)
        rendering = self._adapter.rendering(parsed, rid)
        events = responses.events(call)
        watch = watched_call(req, call, self._metrics)
        if not parsed.stream:
            try:
                answer = rendering.body(events)
            finally:
                watch.close()
                call.cancel()
            json_response(resp, answer)
            return
        try:
            first = next(events)
        except BaseException:
            watch.close()
            call.cancel()
            raise
        resp.content_type = getattr(self._adapter, "stream_content_type", "text/event-stream")
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = event_stream(rendering, first, events, call, watch=watch,
                                   on_error=self._count_stream_error(req.uri_template))

    def _count_stream_error(self, route: Optional[str]) -> Optional[Callable[[RequestError], None]]:
        if self._metrics is None:
            return None
        counter = self._metrics.stream_errors
        return lambda err: counter.labels(route or "unmatched", str(err.status)).inc()


class PromptTokensResource:
    """POST of a route that counts a request's prompt tokens (Anthropic's count_tokens).

    The count is the service's own (``Usage.prompt_tokens``) for the prompt the request renders
    (template, tools and all): one token is generated and dropped. A client that leaves
    cancels it.
    """

    def __init__(self, client: Client, parse: Callable[[dict, str], pb.GenerateRequest],
                 render: Callable[[dict], dict], *, max_body_bytes: int, request_timeout: Optional[float],
                 metrics: Optional[Metrics] = None):
        self._client = client
        self._parse = parse
        self._render = render
        self._max_body_bytes = max_body_bytes
        self._request_timeout = request_timeout
        self._metrics = metrics

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = parse_json_body(read_body(req, self._max_body_bytes))
        request = self._parse(body, request_id_of(req, new_id("count")))
        call = self._client.generate(request, timeout=self._request_timeout)
        watch = watched_call(req, call, self._metrics)
        try:
            usage = next(e for e in responses.events(call) if isinstance(e, responses.Finish)).usage
        finally:
            watch.close()
            call.cancel()
        json_response(resp, self._render(usage))
