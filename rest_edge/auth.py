"""Optional API keys: when configured, /v1/* and /api/* (Ollama's API) require
``Authorization: Bearer <key>``, or the key in ``x-api-key`` (how Anthropic's clients send it)."""

from __future__ import annotations

import hmac
from typing import Iterable

import falcon

from rest_edge.errors import RequestError


_GUARDED = ("/v1", "/api")


class ApiKeyAuth:
    """Falcon middleware; /health and /metrics stay open (probes and scrapers), and so does
    ``OPTIONS`` (a browser's CORS preflight never carries a key; it runs nothing)."""

    def __init__(self, keys: Iterable[str]):
        self._keys = [k.encode("utf-8") for k in keys if k]

    def _valid(self, token: str) -> bool:
        candidate = token.encode("utf-8")
        # Compare against every key (no early exit) so timing does not tell which matched.
        found = False
        for key in self._keys:
            found |= hmac.compare_digest(candidate, key)
        return found

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self._keys or req.method == "OPTIONS" or not any(req.path == p or req.path.startswith(p + "/") for p in _GUARDED):
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            token = (req.get_header("x-api-key") or "").strip()
        if not token:
            raise RequestError(
                401,
                "You didn't provide an API key. Provide it in the Authorization header as 'Bearer YOUR_KEY' "
                "(or in x-api-key).",
                code="missing_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not self._valid(token):
            raise RequestError(
                401, "Incorrect API key provided.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )
