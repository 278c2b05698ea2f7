"""The service's own grpc.health.v1 servicer over real gRPC: Check, Watch, graceful shutdown, and
watches closing while statuses change (grpcio's servicer could deadlock there, grpc/grpc#43403)."""

from __future__ import annotations

import random
import threading
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.health import NOT_SERVING, SERVICE_UNKNOWN, SERVING, HealthStatuses

SAFETY = 30  # seconds; a bound on a hang, never a measured limit


@pytest.fixture
def served():
    statuses = HealthStatuses()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
    health_pb2_grpc.add_HealthServicer_to_server(statuses, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield statuses, health_pb2_grpc.HealthStub(channel)
    channel.close()
    server.stop(None)


def check(stub, service: str = "") -> int:
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=SAFETY).status


def test_check_answers_the_status_and_not_found_for_unknown_services(served):
    statuses, stub = served
    statuses.set("", SERVING)
    assert check(stub) == SERVING
    with pytest.raises(grpc.RpcError) as info:
        check(stub, "nope")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


def test_watch_sends_the_status_then_each_change(served):
    statuses, stub = served
    call = stub.Watch(health_pb2.HealthCheckRequest(service="x"), timeout=SAFETY)
    assert next(call).status == SERVICE_UNKNOWN
    statuses.set("x", SERVING)
    assert next(call).status == SERVING
    statuses.set("x", SERVING)  # no change: nothing sent
    statuses.set("x", NOT_SERVING)
    assert next(call).status == NOT_SERVING
    call.cancel()


def test_graceful_shutdown_says_not_serving_and_freezes(served):
    statuses, stub = served
    statuses.set("", SERVING)
    call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=SAFETY)
    assert next(call).status == SERVING
    statuses.enter_graceful_shutdown()
    assert next(call).status == NOT_SERVING
    statuses.set("", SERVING)
    assert check(stub) == NOT_SERVING
    call.cancel()


def test_watches_closing_while_statuses_change_never_block(served):
    statuses, stub = served
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            statuses.set("", SERVING)
            statuses.set("", NOT_SERVING)

    def watcher(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(20):
            call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=SAFETY)
            for _ in range(rng.randint(0, 3)):
                next(call)
            call.cancel()

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    watchers = [threading.Thread(target=watcher, args=(k,), daemon=True) for k in range(8)]
    for thread in watchers:
        thread.start()
    for thread in watchers:
        thread.join(SAFETY)
    stop.set()
    flipper.join(SAFETY)
    assert not any(t.is_alive() for t in watchers) and not flipper.is_alive()
    statuses.set("", SERVING)
    assert check(stub) == SERVING  # still answering
