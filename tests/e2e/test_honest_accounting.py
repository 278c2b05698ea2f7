"""Honest ids and outcomes with the real stack: a generation the client received whole is OK
in the service's log and counters however the edge closes the call, and response ids are
unique across gunicorn workers."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid

import httpx
import pytest

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from tests.e2e.helpers import MODEL
from harness.processes import free_port, start_http_server, stop_process

pytestmark = pytest.mark.model

SAFETY = 120  # seconds; a bound on a hang, never a measured limit
OUTCOME = re.compile(r"generate (\S+): model \S+, ([A-Z_]+),")


def outcomes(log: str) -> dict[str, str]:
    return dict(OUTCOME.findall(log))


def status(service) -> pb.GetStatusResponse:
    with service.channel() as channel:
        return pb_grpc.InferenceServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=SAFETY)


def test_completed_generations_are_ok_not_cancelled(service, http):
    before = status(service)
    ids = []
    for i in range(4):
        request_id = f"whole-{uuid.uuid4().hex[:10]}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Say hi, number {i}."}],
                "max_tokens": 3, "temperature": 0, "stream": i % 2 == 1}
        response = http.post("/v1/chat/completions", json=body, headers={"X-Request-Id": request_id})
        assert response.status_code == 200, response.text
        ids.append(request_id)
    end = time.monotonic() + SAFETY
    while not all(i in outcomes(service.log()) for i in ids):
        assert time.monotonic() < end, "the service never logged the calls' outcomes"
        time.sleep(0.1)
    logged = outcomes(service.log())
    assert [logged[i] for i in ids] == ["OK"] * 4
    after = status(service)
    assert after.generations_finished - before.generations_finished >= 4
    assert after.generations_cancelled == before.generations_cancelled


def test_response_ids_are_unique_across_workers(service, tmp_path):
    """Two gunicorn workers of ``python -m rest_edge`` (what ``make run`` starts, whose master
    imports the app before forking): ids drawn after the fork never repeat (before, both
    workers started from the same counter value and handed out the same ids)."""
    port = free_port()
    argv = [sys.executable, "-m", "rest_edge", "--target", service.address, "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--threads", "4"]
    env = {**os.environ, "EDGE_API_KEYS": ""}
    try:
        edge = start_http_server(argv, f"http://127.0.0.1:{port}", tmp_path / "two-workers.log", env=env)
    except RuntimeError as error:
        pytest.fail(str(error))
    ids: list[str] = []
    pids: set[str] = set()
    lock = threading.Lock()
    try:
        def client(k: int) -> None:
            with httpx.Client(base_url=edge.base_url, timeout=SAFETY) as http:
                for i in range(9):
                    # a new connection each time, so both workers' accept loops get calls
                    response = http.post("/v1/completions", headers={"Connection": "close"},
                                         json={"model": MODEL, "prompt": f"{k}-{i}", "max_tokens": 1})
                    assert response.status_code == 200, response.text
                    with lock:
                        ids.append(response.json()["id"])

        # Four at once: the session's service has 2 slots + 2 queue places.
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SAFETY)
        pids = set(re.findall(r"Booting worker with pid: (\d+)", edge.log()))
    finally:
        stop_process(edge.process)
    assert len(pids) == 2
    assert len(ids) == 36
    assert all(re.fullmatch(r"cmpl-\d+", i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids), sorted(ids)
