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

from rest_edge import cors, errors, requests, responses, routing
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
    value = (policy or _env("EDGE_ROUTING") or routing.DEFAULT_POLICY).strip().lower()
    if value not in routing.POLICIES:
        raise ValueError(f"EDGE_ROUTING must be one of {', '.join(routing.POLICIES)}, not {value!r}")
    return value


def resolve_max_body_bytes(value: Optional[int] = None) -> int:
    if value is None:
        env = _env("EDGE_MAX_BODY_BYTES")
        value = int(env) if env is not None else DEFAULT_MAX_BODY_BYTES
    if value <= 0:
        raise ValueError(f"max_body_bytes must be positive, got {value}")
    return value


def resolve_request_timeout(value: Optional[float] = None) -> float:
    if value is None:
        env = _env("EDGE_REQUEST_TIMEOUT")
        value = float(env) if env is not None else DEFAULT_REQUEST_TIMEOUT
    if value <= 0:
        raise ValueError(f"request_timeout must be positive, got {value}")
    return value


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


def create_app(
    client: Optional[Client] = None,
    *,
    target: Optional[str] = None,
    routing_policy: Optional[str] = None,
    max_body_bytes: Optional[int] = None,
    api_keys: Optional[Iterable[str]] = None,
    request_timeout: Optional[float] = None,
    cors_origins: Optional[Iterable[str]] = None,
    metrics: bool = True,
) -> falcon.App:
    """Build the app. ``client`` defaults to an :class:`InferenceClient` of ``target``."""
    max_body = resolve_max_body_bytes(max_body_bytes)
    timeout = resolve_request_timeout(request_timeout)
    keys = resolve_api_keys(api_keys)
    app_metrics = Metrics() if metrics else None
    if client is None:
        target = resolve_target(target)
        policy = resolve_routing(routing_policy)
        client = InferenceClient(target, policy=policy, metrics=app_metrics)
        log.info("REST edge: inference service at %s (routing %s)", target, policy)
    _install_log_filter()

    # CORS first: its response hook then sees every answer, an auth failure's included.
    middleware: list = [cors.CorsMiddleware(cors.CorsPolicy(cors.resolve_origins(cors_origins))), RequestIdMiddleware()]
    if app_metrics is not None:
        middleware.append(MetricsMiddleware(app_metrics))
    if keys:
        middleware.append(ApiKeyAuth(keys))

    app = falcon.App(middleware=middleware)
    errors.install(app)

    common = dict(max_body_bytes=max_body, request_timeout=timeout, metrics=app_metrics)
    app.add_route("/v1/completions",
                  GenerationResource(client, requests.completion_request, responses.CompletionRenderer, **common))
    app.add_route("/v1/chat/completions",
                  GenerationResource(client, requests.chat_request, responses.ChatRenderer, **common))
    app.add_route("/v1/embeddings", EmbeddingsResource(client, **common))
    app.add_route("/v1/models", ModelsResource(client))
    app.add_route("/v1/models/{model:path}", ModelResource(client))
    app.add_route("/health", HealthResource(client))
    if app_metrics is not None:
        app.add_route("/metrics", MetricsResource(app_metrics))
    return app
