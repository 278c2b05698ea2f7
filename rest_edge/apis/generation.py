"""The Falcon resource of an API adapter's generation route: read, parse, call, render.

An adapter (one module per public API) gives ``parse(body, request_id) -> Parsed`` (the
``GenerateRequest`` to send and whether to stream) and ``rendering(parsed, id)`` (the
response body, or the stream's frames). Everything HTTP is here and shared: the body limit,
the request id, the disconnect watch that cancels the call of a departed client, the status
line that waits for the first event, SSE headers and stream-error metrics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Optional, Protocol

import falcon

from inference_service.v1 import inference_pb2 as pb

from rest_edge import responses
from rest_edge.resources import CallingResource, Client, json_response, new_id, request_id_of
from rest_edge.streaming import StreamRendering, rendered_stream


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


class ModuleAdapter:
    """The adapter of an API module: its ``parse`` and its rendering class (``rendering_of``);
    the API writes its ids with an underscore (``msg_…``, ``resp_…``)."""

    id_prefix: ClassVar[str]
    rendering_of: ClassVar[Callable[[Parsed, str], Rendering]]

    def rendering(self, parsed: Parsed, response_id: str) -> Rendering:
        return self.rendering_of(parsed, response_id.replace(f"{self.id_prefix}-", f"{self.id_prefix}_", 1))


class AdapterGenerationResource(CallingResource):
    """POST of an adapter's generation route, stream true or false."""

    def __init__(self, client: Client, adapter: Adapter, **settings: Any):
        super().__init__(client, **settings)
        self._adapter = adapter

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        rid = new_id(self._adapter.id_prefix)
        parsed = self._adapter.parse(self._json_body(req), request_id_of(req, rid))
        if parsed.answer is not None:
            json_response(resp, parsed.answer)
            return
        call = self._client.generate(parsed.request, timeout=self._request_timeout)
        rendering = self._adapter.rendering(parsed, rid)
        self._answer(req, resp, call, responses.events(call), stream=parsed.stream, body=rendering.body,
                     stream_of=functools.partial(rendered_stream, rendering),
                     content_type=getattr(self._adapter, "stream_content_type", "text/event-stream"))


class PromptTokensResource(CallingResource):
    """POST of a route that counts a request's prompt tokens (Anthropic's count_tokens).

    The count is the service's own (``Usage.prompt_tokens``) for the prompt the request renders
    (template, tools and all): one token is generated and dropped. A client that leaves
    cancels it.
    """

    def __init__(self, client: Client, parse: Callable[[dict, str], pb.GenerateRequest],
                 render: Callable[[dict], dict], **settings: Any):
        super().__init__(client, **settings)
        self._parse = parse
        self._render = render

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request = self._parse(self._json_body(req), request_id_of(req, new_id("count")))
        call = self._client.generate(request, timeout=self._request_timeout)
        finish = self._watched(req, call, lambda: next(e for e in responses.events(call)
                                                       if isinstance(e, responses.Finish)))
        json_response(resp, self._render(finish.usage))
