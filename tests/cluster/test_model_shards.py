"""Replicas that serve different models behind one edge (real processes, real models): every
request goes to a replica that has its model, /v1/models is the union, and a model no replica
serves is a 404 naming them all. A: smollm2:135m, B: gemma3:270m, C: both."""

from __future__ import annotations

import threading
import uuid

import httpx
import pytest

from tests.cluster.conftest import routed
from tests.conftest import start_edge, start_service
from tests.engines import GEMMA3, SMOLLM2, gemma3_file  # noqa: F401  (fixture)
from harness.processes import stop_process

pytestmark = pytest.mark.model

TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # a bound on a hang, never a measured limit
SERVES = {"a": [SMOLLM2], "b": [GEMMA3], "c": [SMOLLM2, GEMMA3]}


@pytest.fixture(scope="module")
def shards(gemma3_file, tmp_path_factory):
    started = {}
    try:
        for name, models in SERVES.items():
            args = [arg for model in models for arg in ("--model", model)]
            started[name] = start_service(tmp_path_factory.mktemp(f"shard-{name}"), *args, "--slots", "1",
                                          "--threads", "1")
        yield started
    finally:
        for service in started.values():
            stop_process(service.process)


@pytest.fixture(scope="module")
def shard_edge(shards, tmp_path_factory):
    target = ",".join(s.address for s in shards.values())
    edge = start_edge(target, tmp_path_factory.mktemp("shard-edge") / "gunicorn.log", EDGE_ROUTING="least-loaded",
                      EDGE_LOG_LEVEL="debug", EDGE_LOG_FORMAT="text", EDGE_THREADS="8")
    yield edge
    stop_process(edge.process)


def test_each_request_goes_to_a_replica_with_its_model(shards, shard_edge):
    served_by = {s.address: name for name, s in shards.items()}
    results: dict[str, tuple[str, int]] = {}
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=shard_edge.base_url, timeout=TIMEOUT) as http:
            for i in range(6):
                model = (SMOLLM2, GEMMA3)[(k + i) % 2]
                request_id = f"shard-{uuid.uuid4().hex[:10]}"
                response = http.post("/v1/completions", headers={"X-Request-Id": request_id},
                                     json={"model": model, "prompt": f"Count: {k} {i}", "max_tokens": 2})
                with lock:
                    results[request_id] = (model, response.status_code)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert len(results) == 18
    assert {status for _, status in results.values()} == {200}, results
    where = routed(shard_edge.log())
    for request_id, (model, _) in results.items():
        replica = served_by[where[request_id][-1][0]]
        assert model in SERVES[replica], (request_id, model, replica)


def test_models_are_the_union_and_an_unserved_model_is_a_404(shard_edge):
    with httpx.Client(base_url=shard_edge.base_url, timeout=TIMEOUT) as http:
        listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
        assert sorted(listed) == sorted([SMOLLM2, GEMMA3])
        assert http.get(f"/v1/models/{GEMMA3}").status_code == 200
        response = http.post("/v1/completions", json={"model": "qwen3:0.6b", "prompt": "hi", "max_tokens": 1})
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert error["message"] == f"model 'qwen3:0.6b' not found; served: {', '.join(sorted([SMOLLM2, GEMMA3]))}"
