"""The Falcon WSGI app of the REST edge.

gunicorn entry: ``rest_edge.app:create_app()`` (factory call syntax). Nothing here runs at
import: the gRPC channels (one per replica) and their health watch threads are created inside
``create_app``, i.e. in the worker after the fork (``preload_app = False``); each worker
routes on its own.

Settings (argument, else environment variable, else default):

* ``target``          ``INFERENCE_TARGET``       ``127.0.0.1:50051``; a comma-separated list of
  replicas, or ``dns:///name:port`` (rest_edge.routing)
* ``routing_policy``  ``EDGE_ROUTING``           ``prefix-affinity`` (or ``least-loaded``, ``round-robin``)
* ``max_body_bytes``  ``EDGE_MAX_BODY_BYTES``    1 MiB
* ``api_keys``        ``EDGE_API_KEYS``          none (comma-separated; when set, /v1/* needs one)
* ``request_timeout`` ``EDGE_REQUEST_TIMEOUT``   600 s (the gRPC deadline of a generation)
* ``first_token_timeout`` ``EDGE_FIRST_TOKEN_TIMEOUT`` none (0); seconds a generation waits for
  its replica's first answer before it is moved to another replica
* ``cors_origins``    ``EDGE_CORS_ORIGINS``      none besides loopback origins, which are always
  allowed (comma-separated origin patterns, ``*`` for any; rest_edge.cors)
"""

from __future__ import annotations

import contextvars
import logging
import os
import uuid
from typing import Iterable, Optional

import falcon

from inference_service.settings import SettingError, from_environment
from rest_edge import cors, errors, requests, responses, routing
from rest_edge.apis import anthropic_messages, ollama, openai_responses
from rest_edge.apis.generation import AdapterGenerationResource, PromptTokensResource
from rest_edge.auth import ApiKeyAuth
from rest_edge.client import DEFAULT_TARGET, InferenceClient, valid_request_id
from rest_edge.metrics import Metrics, MetricsMiddleware, MetricsResource
from rest_edge.resources import (
    Client,
    EmbeddingsResource,
    GenerationResource,
    HealthResource,
    ModelResource,
    ModelsResource,
)

log = logging.getLogger("rest_edge")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_REQUEST_TIMEOUT = 600.0


def _env(name: str) -> Optional[str]:
    value = os.environ.get(name)
    return value if value not in (None, "") else None


def resolve_target(target: Optional[str] = None) -> str:
    return target or _env("INFERENCE_TARGET") or DEFAULT_TARGET


def resolve_routing(policy: Optional[str] = None) -> str:
    if policy is None:
        return from_environment("EDGE_ROUTING", routing.DEFAULT_POLICY, str.lower, routing.POLICIES)
    value = policy.strip().lower()
    if value not in routing.POLICIES:
        raise ValueError(f"the routing policy must be one of {', '.join(routing.POLICIES)}, not {value!r}")
    return value


def resolve_max_body_bytes(value: Optional[int] = None) -> int:
    return _positive(value, "max_body_bytes", "EDGE_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, int)


def resolve_request_timeout(value: Optional[float] = None) -> float:
    return _positive(value, "request_timeout", "EDGE_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT, float)


def _positive(value, param: str, env: str, default, convert):
    """``value``, else ``env``'s (checked), else ``default``; a ValueError naming whichever was
    not positive."""
    source = param
    if value is None:
        value, source = from_environment(env, default, convert), env
    if value <= 0:
        raise SettingError(f"{source} must be positive, not {value}")
    return value


CHAT_STREAMS = ("reference", "openai")


def resolve_chat_stream(value: Optional[str] = None) -> str:
    """``EDGE_CHAT_STREAM``: ``reference`` (default: the chunks of the server this replaces,
    byte for byte) or ``openai`` (OpenAI's own: the role only in the first chunk, ``content``
    null beside tool calls, an empty delta on the finish chunk), for SDK stream helpers that
    join every chunk's role."""
    if value is None:
        return from_environment("EDGE_CHAT_STREAM", "reference", str.lower, CHAT_STREAMS)
    value = value.strip().lower()
    if value not in CHAT_STREAMS:
        raise SettingError(f"chat_stream must be one of {', '.join(CHAT_STREAMS)}, not {value!r}")
    return value


def resolve_first_token_timeout(value: Optional[float] = None) -> Optional[float]:
    """``EDGE_FIRST_TOKEN_TIMEOUT``: seconds a stream may wait for its replica's first answer
    before it is moved to another replica (0, the default: no limit)."""
    source = "first_token_timeout"
    if value is None:
        value, source = from_environment("EDGE_FIRST_TOKEN_TIMEOUT", 0.0, float), "EDGE_FIRST_TOKEN_TIMEOUT"
    if not value >= 0:
        raise SettingError(f"{source} must be 0 (no limit) or positive, not {value}")
    return value or None


def resolve_api_keys(keys: Optional[Iterable[str]] = None) -> list[str]:
    if keys is None:
        keys = (_env("EDGE_API_KEYS") or "").split(",")
    return [k.strip() for k in keys if k and k.strip()]


# --- request ids ---------------------------------------------------------------------------

REQUEST_ID_HEADER = "X-Request-Id"

# The request id of the request this thread is handling (gthread: one request at a time per
# thread, its stream included), for the app's log records.
_current_request_id: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("request_id", default=None)


class RequestIdMiddleware:
    """Every request gets an id: the client's ``X-Request-Id`` when it is 1-128 visible ASCII
    characters, else a new one (uuid4 hex). It is on every response (errors too) as
    ``X-Request-Id``, in ``req.context.request_id`` (the resources pass it to the service), and
    in the ``request_id`` attribute of the ``rest_edge`` log records made while the request is
    handled (:class:`RequestIdLogFilter`)."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header(REQUEST_ID_HEADER)
        request_id = given if valid_request_id(given) else uuid.uuid4().hex
        req.context.request_id = request_id
        _current_request_id.set(request_id)
        resp.set_header(REQUEST_ID_HEADER, request_id)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        request_id = getattr(req.context, "request_id", None)
        if request_id:
            resp.set_header(REQUEST_ID_HEADER, request_id)


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` (the current request's) to a record that has none; formats are
    untouched (the JSON log format shows the attribute as a field)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = _current_request_id.get()
            if request_id is not None:
                record.request_id = request_id
        return True


def _install_log_filter() -> None:
    if not any(isinstance(f, RequestIdLogFilter) for f in log.filters):
        log.addFilter(RequestIdLogFilter())


def _add_ollama_routes(app: falcon.App, client: Client, common: dict) -> None:
    """Ollama's native API (rest_edge.apis.ollama)."""
    app.add_route("/api/chat", AdapterGenerationResource(client, ollama.chat_adapter(client), **common))
    app.add_route("/api/generate", AdapterGenerationResource(client, ollama.generate_adapter(client), **common))
    app.add_route("/api/embed", ollama.EmbedResource(client, legacy=False, **common))
    app.add_route("/api/embeddings", ollama.EmbedResource(client, legacy=True, **common))
    app.add_route("/api/tags", ollama.TagsResource(client))
    app.add_route("/api/ps", ollama.PsResource(client))
    app.add_route("/api/show", ollama.ShowResource(client, max_body_bytes=common["max_body_bytes"]))
    app.add_route("/api/pull", ollama.PullResource(client, max_body_bytes=common["max_body_bytes"]))
    app.add_route("/api/version", ollama.VersionResource())


def create_app(
    client: Optional[Client] = None,
    *,
    target: Optional[str] = None,
    routing_policy: Optional[str] = None,
    max_body_bytes: Optional[int] = None,
    api_keys: Optional[Iterable[str]] = None,
    request_timeout: Optional[float] = None,
    cors_origins: Optional[Iterable[str]] = None,
    first_token_timeout: Optional[float] = None,
    chat_stream: Optional[str] = None,
    metrics: bool = True,
) -> falcon.App:
    """Build the app. ``client`` defaults to an :class:`InferenceClient` of ``target``."""
    max_body = resolve_max_body_bytes(max_body_bytes)
    timeout = resolve_request_timeout(request_timeout)
    keys = resolve_api_keys(api_keys)
    chat_renderer = (responses.StrictChatRenderer if resolve_chat_stream(chat_stream) == "openai"
                     else responses.ChatRenderer)
    app_metrics = Metrics() if metrics else None
    if client is None:
        target = resolve_target(target)
        policy = resolve_routing(routing_policy)
        client = InferenceClient(target, policy=policy, metrics=app_metrics,
                                 first_response_timeout=resolve_first_token_timeout(first_token_timeout))
        log.info("REST edge: inference service at %s (routing %s)", target, policy)
    _install_log_filter()

    # CORS first: its response hook then sees every answer, an auth failure's included.
    middleware: list = [cors.CorsMiddleware(cors.CorsPolicy(cors.resolve_origins(cors_origins))), RequestIdMiddleware()]
    if app_metrics is not None:
        middleware.append(MetricsMiddleware(app_metrics))
    if keys:
        middleware.append(ApiKeyAuth(keys))

    app = falcon.App(middleware=middleware)
    errors.install(app, shapes=[(anthropic_messages.ROUTE, anthropic_messages.error_shape),
                                (ollama.ROUTE_PREFIX, ollama.error_shape)])

    common = dict(max_body_bytes=max_body, request_timeout=timeout, metrics=app_metrics)
    app.add_route("/v1/completions",
                  GenerationResource(client, requests.completion_request, responses.CompletionRenderer, **common))
    app.add_route("/v1/chat/completions",
                  GenerationResource(client, requests.chat_request, chat_renderer, **common))
    app.add_route("/v1/embeddings", EmbeddingsResource(client, **common))
    app.add_route(openai_responses.ROUTE,
                  AdapterGenerationResource(client, openai_responses.ResponsesAdapter(), **common))
    app.add_route(anthropic_messages.ROUTE,
                  AdapterGenerationResource(client, anthropic_messages.MessagesAdapter(), **common))
    app.add_route(anthropic_messages.ROUTE + "/count_tokens",
                  PromptTokensResource(client, anthropic_messages.count_request, anthropic_messages.count_body,
                                       **common))
    _add_ollama_routes(app, client, common)
    app.add_route("/v1/models", ModelsResource(client))
    app.add_route("/v1/models/{model:path}", ModelResource(client))
    app.add_route("/health", HealthResource(client))
    if app_metrics is not None:
        app.add_route("/metrics", MetricsResource(app_metrics))
    return app
