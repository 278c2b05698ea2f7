"""The Falcon WSGI app of the REST edge.

gunicorn entry: ``rest_edge.app:create_app()`` (factory call syntax). Nothing here runs at
import: the gRPC channel is created inside ``create_app``, i.e. in the worker after the fork
(``preload_app = False``).

Settings (argument, else environment variable, else default):

* ``target``          ``INFERENCE_TARGET``       ``127.0.0.1:50051``
* ``max_body_bytes``  ``EDGE_MAX_BODY_BYTES``    1 MiB
* ``api_keys``        ``EDGE_API_KEYS``          none (comma-separated; when set, /v1/* needs one)
* ``request_timeout`` ``EDGE_REQUEST_TIMEOUT``   600 s (the gRPC deadline of a generation)
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Optional

import falcon

from rest_edge import errors, requests, responses
from rest_edge.auth import ApiKeyAuth
from rest_edge.client import DEFAULT_TARGET, InferenceClient
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


def create_app(
    client: Optional[Client] = None,
    *,
    target: Optional[str] = None,
    max_body_bytes: Optional[int] = None,
    api_keys: Optional[Iterable[str]] = None,
    request_timeout: Optional[float] = None,
    metrics: bool = True,
) -> falcon.App:
    """Build the app. ``client`` defaults to an :class:`InferenceClient` of ``target``."""
    max_body = resolve_max_body_bytes(max_body_bytes)
    timeout = resolve_request_timeout(request_timeout)
    keys = resolve_api_keys(api_keys)
    if client is None:
        target = resolve_target(target)
        client = InferenceClient(target)
        log.info("REST edge: inference service at %s", target)

    app_metrics = Metrics() if metrics else None
    middleware: list = []
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
