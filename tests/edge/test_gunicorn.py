"""The edge on real gunicorn (gthread, rest_edge.gunicorn_conf) in front of a fake gRPC service.

Shows what falcon.testing cannot: frames arrive incrementally, a client that disconnects
cancels its RPC, and the official openai client understands the answers and the errors.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import edge_over
from tests.edge.fakes import FakeServicer, start_server


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    servicer = FakeServicer()
    server, grpc_port, _ = start_server(servicer)
    servicer.address = f"127.0.0.1:{grpc_port}"
    try:
        with edge_over(f"127.0.0.1:{grpc_port}", tmp_path_factory.mktemp("edge"), EDGE_THREADS="4") as running:
            yield running.base_url, servicer
    finally:
        server.stop(None)


def test_frames_arrive_incrementally_and_disconnect_cancels(edge):
    base, servicer = edge
    servicer.cancelled.clear()
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with httpx.Client(timeout=10) as http:
        with http.stream("POST", f"{base}/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "text/event-stream"
            assert resp.headers["x-accel-buffering"] == "no"
            lines = resp.iter_lines()
            got = [next(l for l in lines if l) for _ in range(3)]
            # the generation runs for ~50 s; three frames within the timeout prove streaming
            assert all(g.startswith('data: {"id":"chatcmpl-') for g in got)
            assert not servicer.cancelled.is_set()
        # leaving the block closes the connection mid-stream
    assert servicer.cancelled.wait(10), "the RPC was not cancelled after the client left"


def test_openai_client_stream_and_non_stream(edge):
    base, _ = edge
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    chat = client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.content == "Hello!"
    assert chat.usage.prompt_tokens_details.cached_tokens == 1
    chunks = list(client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content for c in chunks if c.choices) == "Hello!"
    assert chunks[-1].usage.total_tokens == 7
    comp = client.completions.create(model="ok", prompt="hi")
    assert comp.choices[0].text == "Hello!" and comp.choices[0].finish_reason == "stop"
    assert [m.id for m in client.models.list()] == ["smollm2:135m", "qwen2.5:0.5b-instruct"]
    assert client.models.retrieve("smollm2:135m").id == "smollm2:135m"


@pytest.mark.parametrize("model, exc", [
    ("bad", openai.BadRequestError),
    ("long", openai.BadRequestError),
    ("missing", openai.NotFoundError),
    ("full", openai.RateLimitError),
    ("crash", openai.InternalServerError),
])
def test_openai_client_errors(edge, model, exc):
    base, _ = edge
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "Traceback" not in str(info.value) and "secret" not in str(info.value)


def test_openai_client_rejects_unsupported(edge):
    base, _ = edge
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="ok", messages=[{"role": "user", "content": "hi"}], n=17)
    assert info.value.param == "n"


def test_a_stream_longer_than_the_worker_timeout_is_not_killed(edge, tmp_path):
    """``timeout`` detects hung workers; a gthread worker heartbeats while its threads stream."""
    _, servicer = edge
    with edge_over(servicer.address, tmp_path, EDGE_WORKER_TIMEOUT="2") as short:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.Client(timeout=10) as http:
            with http.stream("POST", f"{short.base_url}/v1/chat/completions", json=body) as resp:
                assert resp.status_code == 200
                frames = 0
                started = time.monotonic()
                for line in resp.iter_lines():
                    frames += bool(line)
                    if time.monotonic() - started > 5:  # 2.5 worker timeouts
                        break
        assert frames > 10
        assert "WORKER TIMEOUT" not in (tmp_path / "gunicorn.log").read_text()
