"""Helpers every kind of test uses: waiting for an event, a gRPC error's trailing metadata,
and a Falcon test client of the edge app in front of a fake client."""

from __future__ import annotations

import falcon.testing
import grpc

from harness.polling import NeverHappened, eventually  # noqa: F401  (the one polling helper of tests/)
from rest_edge.app import create_app


def trailing(error: grpc.RpcError) -> dict[str, str]:
    """A failed call's trailing metadata (``error-param``, ``retry-after``...) as a dict."""
    return dict(error.trailing_metadata() or ())


def client_for(fake, **kwargs) -> falcon.testing.TestClient:
    """The real edge app (``create_app``) over ``fake`` (tests/edge/fakes.FakeClient), in a
    Falcon test client; ``kwargs`` go to ``create_app``."""
    return falcon.testing.TestClient(create_app(fake, **kwargs))
