"""CORS: which web pages may call the edge from a browser, as Falcon middleware.

A page calling the edge from another origin (``http://localhost:5173`` calling
``http://127.0.0.1:8000``) is allowed by the browser only when the edge says so. The policy:

* Allowed origins: loopback origins on any port (``localhost``, ``127.0.0.1``, ``[::1]``, http
  or https) always, which is what a developer's page runs on, plus the patterns of
  ``EDGE_CORS_ORIGINS`` (comma-separated origins such as ``https://app.example.com``; ``*``
  matches any characters, so ``https://*.example.com`` or ``*`` alone for every origin).
  Ollama's rule (loopback by default, ``OLLAMA_ORIGINS`` for the rest).
* An allowed origin's preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered
  204 with the route's methods, the request headers SDKs send (:data:`ALLOWED_HEADERS`, and
  the Stainless SDKs' ``x-stainless-*``) and a max age. It needs no API key: browsers never send
  credentials on a preflight (``rest_edge.auth`` lets ``OPTIONS`` through).
* Every answer to an allowed origin (errors and streams too) carries
  ``Access-Control-Allow-Origin`` and exposes ``x-request-id`` and ``retry-after``.
* Any other origin gets no CORS header at all, so the browser blocks the page from reading the
  answer. (CORS protects users' browsers; it is no access control: keys are.)

No credentials mode: API keys travel in headers (``Authorization``, ``x-api-key``), which a
page sends without ``credentials: "include"``; cookies are never used.
"""

from __future__ import annotations

import fnmatch
import os
import re
from typing import Iterable, Optional

import falcon

# Request headers the OpenAI, Anthropic and Ollama SDKs (and plain fetch callers) send; the
# Stainless-generated SDKs (openai, anthropic) add ``x-stainless-*`` headers besides.
ALLOWED_HEADERS = frozenset({
    "accept",
    "accept-language",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "anthropic-version",
    "authorization",
    "cache-control",
    "content-language",
    "content-type",
    "idempotency-key",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "user-agent",
    "x-api-key",
    "x-request-id",
})
ALLOWED_HEADER_PREFIXES = ("x-stainless-",)
EXPOSED_HEADERS = "x-request-id, retry-after"
# How long a browser may cache a preflight answer (Firefox caps it at a day, Chromium at 2 hours).
MAX_AGE_SECONDS = 86400

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
_ORIGIN = re.compile(r"^(https?)://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(\d{1,5}))?$")

ENV_VAR = "EDGE_CORS_ORIGINS"


def resolve_origins(origins: Optional[Iterable[str]] = None) -> list[str]:
    """The extra allowed origin patterns: ``origins``, else ``EDGE_CORS_ORIGINS``, lower-cased."""
    if origins is None:
        origins = (os.environ.get(ENV_VAR) or "").split(",")
    return [o.strip().lower().rstrip("/") for o in origins if o and o.strip()]


def is_loopback(origin: str) -> bool:
    """``origin`` is http(s) on localhost, 127.0.0.1 or [::1], with or without a port."""
    match = _ORIGIN.match(origin.lower())
    return bool(match) and match.group(2) in LOOPBACK_HOSTS and (match.group(3) is None or int(match.group(3)) < 65536)


class CorsPolicy:
    """Which origins may read the edge's answers (see the module's docstring)."""

    def __init__(self, origins: Iterable[str] = ()):
        self.patterns = [o for o in origins]

    def allows(self, origin: Optional[str]) -> bool:
        if not origin or origin == "null":
            return False
        if is_loopback(origin):
            return True
        lowered = origin.lower()
        return any(fnmatch.fnmatchcase(lowered, pattern) for pattern in self.patterns)


def _allowed_request_headers(requested: str) -> str:
    """The headers of ``Access-Control-Request-Headers`` this edge allows, comma-separated."""
    names = [h.strip().lower() for h in requested.split(",") if h.strip()]
    return ", ".join(h for h in names if h in ALLOWED_HEADERS or h.startswith(ALLOWED_HEADER_PREFIXES))


class CorsMiddleware:
    """Adds the CORS headers to answers to allowed origins and answers their preflights."""

    def __init__(self, policy: CorsPolicy):
        self._policy = policy

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource, req_succeeded: bool) -> None:
        origin = req.get_header("Origin")
        resp.append_header("Vary", "Origin")
        if not self._policy.allows(origin):
            return
        resp.set_header("Access-Control-Allow-Origin", origin)
        preflight = req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method") is not None
        if not preflight:
            resp.set_header("Access-Control-Expose-Headers", EXPOSED_HEADERS)
            return
        if resource is None:  # no such route: the 404 stands, readable by the page
            return
        # Falcon's default OPTIONS responder lists the resource's methods in ``Allow``.
        methods = resp.get_header("Allow") or "GET, POST"
        resp.status = falcon.HTTP_204
        resp.data = b""
        resp.text = None
        resp.content_type = None
        resp.set_header("Access-Control-Allow-Methods", methods)
        requested = req.get_header("Access-Control-Request-Headers")
        if requested:
            allowed = _allowed_request_headers(requested)
            if allowed:
                resp.set_header("Access-Control-Allow-Headers", allowed)
        resp.append_header("Vary", "Access-Control-Request-Method")
        resp.append_header("Vary", "Access-Control-Request-Headers")
        # Chromium's Private Network Access: a public page asking for a loopback server.
        if (req.get_header("Access-Control-Request-Private-Network") or "").lower() == "true":
            resp.set_header("Access-Control-Allow-Private-Network", "true")
        resp.set_header("Access-Control-Max-Age", str(MAX_AGE_SECONDS))
