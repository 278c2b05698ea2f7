"""Fixtures of the end-to-end tests: clients of the real edge (``edge``) and the real service.

The session fixtures ``service`` and ``edge`` come from ``tests/conftest.py``: the real
inference service (2 slots, 2 waiting places) serving ``smollm2:135m``, and real gunicorn
(gthread) running the REST edge in front of it.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.helpers import MODEL, ServiceStatus, end_of_turn_bias

# Generous safety timeouts only: the machine is shared, a token can take seconds under load.
HTTP_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


@pytest.fixture
def oai(edge) -> openai.OpenAI:
    """The official client; no retries, so a 429 or 5xx is seen as it is."""
    client = openai.OpenAI(base_url=edge.base_url + "/v1", api_key="unused", max_retries=0, timeout=300.0)
    yield client
    client.close()


@pytest.fixture
def http(edge) -> httpx.Client:
    with httpx.Client(base_url=edge.base_url, timeout=HTTP_TIMEOUT) as client:
        yield client


@pytest.fixture(scope="session")
def no_eos_bias(service) -> dict[str, int]:
    """``logit_bias`` that bans the model's end-of-turn tokens: generation only ends by length."""
    return end_of_turn_bias(service.channel(), MODEL)


@pytest.fixture(scope="session")
def status(service) -> ServiceStatus:
    """The service's own accounting (``GetStatus``): slots, queue, running totals."""
    s = ServiceStatus(service.address)
    yield s
    s.close()
