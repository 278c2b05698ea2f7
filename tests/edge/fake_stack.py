"""The real gunicorn edge in front of the real gRPC server over the fake engine, for tests
that drive it with the official openai client (the fake scripts the answers by model name)."""

from __future__ import annotations

import openai
import pytest

from inference_service.server import create_server
from tests.conftest import edge_over
from tests.service.fake_engine import FakeEngine

SAFETY = 30  # seconds: bounds a hang, never a measured limit


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    engine = FakeEngine()
    running = create_server(engine, "127.0.0.1:0")
    try:
        with edge_over(f"127.0.0.1:{running.port}", tmp_path_factory.mktemp("edge"), EDGE_THREADS="4") as edge:
            yield edge.base_url, engine
    finally:
        engine.release.set()
        running.server.stop(None)


@pytest.fixture
def oai(stack) -> openai.OpenAI:
    client = openai.OpenAI(base_url=stack[0] + "/v1", api_key="unused", max_retries=0, timeout=SAFETY)
    yield client
    client.close()
