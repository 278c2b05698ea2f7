"""rest_edge.client routing over several real gRPC servers (in process, fake servicers): health
watching, failover before the first token, spill-over and local capacity, DNS re-resolution.
No model runs here: seconds, not minutes."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from typing import Callable

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_service import limits
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from rest_edge import replica as replica_module
from rest_edge import routing
from rest_edge.client import InferenceClient
from rest_edge.errors import RequestError
from rest_edge.metrics import Metrics
from harness.processes import free_port

MODEL = "m"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        time.sleep(0.02)
    return True


class ReplicaServicer(pb_grpc.InferenceServiceServicer):
    """``mode``: ok (its name, then the end), unavailable (as a draining service answers),
    full (RESOURCE_EXHAUSTED, retry-after 2), midway (one piece, then UNAVAILABLE), hold (one
    piece, then waits for ``release``), stall (no answer until cancelled: a replica that
    accepts calls and never answers). ``models``: what it lists and serves."""

    def __init__(self, name: str):
        self.name = name
        self.mode = "ok"
        self.calls = 0
        self.metadata: list[dict] = []
        self.requests: list[pb.GenerateRequest] = []
        self.busy = 0
        self.release = threading.Event()
        self.models = [MODEL]
        self._lock = threading.Lock()

    def Generate(self, request, context):
        with self._lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            self.requests.append(request)
        if self.mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        if self.mode == "full":
            context.set_trailing_metadata(((limits.RETRY_AFTER_METADATA_KEY, "2"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full")
        if request.model not in self.models:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.model!r} not found")
        if self.mode == "stall":
            while context.is_active() and not self.release.wait(0.02):
                pass
            return
        yield pb.GenerateResponse(text=self.name, token_ids=[1])
        if self.mode == "midway":
            context.abort(grpc.StatusCode.UNAVAILABLE, "gone")
        if self.mode == "hold":
            with self._lock:
                self.busy += 1
            try:
                while not self.release.wait(0.02):
                    if not context.is_active():
                        return
            finally:
                with self._lock:
                    self.busy -= 1
        yield pb.GenerateResponse(finish_reason=pb.FINISH_REASON_STOP, usage=pb.Usage(completion_tokens=1))

    def Embed(self, request, context):
        with self._lock:
            self.calls += 1
        if self.mode == "unavailable":
            context.abort(grpc.StatusCode.UNAVAILABLE, "the service is shutting down")
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[1.0])], model=self.name)

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[pb.ModelInfo(name=m, owned_by=self.name) for m in self.models])

    def GetStatus(self, request, context):
        return pb.GetStatusResponse(models=[pb.ModelStatus(name=m, slots=1, busy_slots=min(self.busy, 1),
                                                           waiting=max(self.busy - 1, 0), max_waiting=1)
                                            for m in self.models])


class Server:
    def __init__(self, name: str, port: int = 0):
        self.servicer = ReplicaServicer(name)
        self.port = port
        self.start()

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        pb_grpc.add_InferenceServiceServicer_to_server(self.servicer, self.server)
        self.health = health.HealthServicer()
        self.health.set("", SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.servicer.release.set()
        self.server.stop(None)


@pytest.fixture
def servers():
    running = [Server(name) for name in "ABC"]
    yield running
    for server in running:
        server.stop()


@pytest.fixture
def make_client():
    made = []

    def make(target: str, policy: str = "least-loaded", **kwargs) -> tuple[InferenceClient, Metrics]:
        metrics = Metrics()
        client = InferenceClient(target, policy=policy, metrics=metrics, **kwargs)
        made.append(client)
        assert eventually(lambda: all(s == "serving" for s in client.replicas().values())), client.replicas()
        return client, metrics

    yield make
    for client in made:
        client.close()


def target(servers) -> str:
    return ",".join(s.address for s in servers)


def request(text: str = "hi", request_id: str = "") -> pb.GenerateRequest:
    return pb.GenerateRequest(model=MODEL, messages=[pb.ChatMessage(role="user", content=text)],
                              request_id=request_id)


def answer(client: InferenceClient, req: pb.GenerateRequest) -> str:
    return "".join(m.text for m in client.generate(req, timeout=10))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_every_replica_gets_calls_and_its_metadata(servers, make_client):
    client, metrics = make_client(target(servers))
    seen = {answer(client, request(f"conversation {i}", request_id=f"id-{i}")) for i in range(30)}
    assert seen == {"A", "B", "C"}
    for server in servers:
        assert all(md["x-request-id"] == req.request_id for md, req in zip(server.servicer.metadata,
                                                                          server.servicer.requests))
        assert sample(metrics, "edge_replica_requests_total", replica=server.address) == server.servicer.calls
        assert sample(metrics, "edge_replica_in_flight", replica=server.address) == 0
        assert sample(metrics, "edge_replica_serving", replica=server.address) == 1
    # an id that is no valid metadata value stays out of the metadata (never an error)
    answer(client, request("x", request_id="héllo"))
    assert all("x-request-id" not in md for s in servers for md, r in zip(s.servicer.metadata, s.servicer.requests)
               if r.request_id == "héllo")


def test_a_replica_answering_unavailable_is_retried_elsewhere_before_the_first_token(servers, make_client):
    a, b, c = servers
    a.servicer.mode = "unavailable"  # health still SERVING: the moment a drain begins
    client, metrics = make_client(target(servers), policy="round-robin")
    assert [answer(client, request()) for _ in range(9)].count("A") == 0
    assert a.servicer.calls >= 1
    assert sample(metrics, "edge_retries_total", replica=a.address, reason="unavailable") == a.servicer.calls
    # Suspect for a moment: round-robin skips it (its watch still says SERVING)
    assert a.servicer.calls == 1


def test_retried_once_only(servers, make_client):
    for server in servers:
        server.servicer.mode = "unavailable"
    client, metrics = make_client(target(servers))
    with pytest.raises(RequestError) as info:
        list(client.generate(request(), timeout=10))
    assert info.value.status == 503 and info.value.code == "service_unavailable"
    assert sum(s.servicer.calls for s in servers) == 2  # the first try and one retry


def test_no_retry_once_a_response_came(servers, make_client):
    for server in servers:
        server.servicer.mode = "midway"
    client, _ = make_client(target(servers))
    call = client.generate(request(), timeout=10)
    first = next(call)
    with pytest.raises(RequestError) as info:
        next(call)
    assert first.text in "ABC" and info.value.status == 503
    assert sum(s.servicer.calls for s in servers) == 1


def test_embed_fails_over_too(servers, make_client):
    servers[0].servicer.mode = "unavailable"
    client, _ = make_client(target(servers), policy="round-robin")
    assert {client.embed(pb.EmbedRequest(model=MODEL), timeout=10).result().model for _ in range(6)} == {"B", "C"}
    assert servers[0].servicer.calls == 1  # then suspect: passed over


def test_a_stopped_replica_is_left_and_comes_back_when_it_serves_again(servers, make_client):
    a, b, c = servers
    client, _ = make_client(target(servers), policy="round-robin")
    a.stop()
    assert eventually(lambda: client.replicas()[a.address] == "unreachable")
    assert {answer(client, request()) for _ in range(6)} == {"B", "C"}
    a.servicer.release.clear()
    a.start()  # the same port
    assert eventually(lambda: client.replicas()[a.address] == "serving")
    assert {answer(client, request()) for _ in range(6)} == {"A", "B", "C"}


def test_not_serving_replicas_get_nothing_and_health_needs_one(servers, make_client):
    a, b, c = servers
    client, _ = make_client(target(servers))
    a.health.set("", NOT_SERVING)
    b.health.set("", NOT_SERVING)
    assert eventually(lambda: [s for s in client.replicas().values()].count("not serving") == 2)
    assert {answer(client, request(f"{i}")) for i in range(6)} == {"C"}
    assert client.health() is True
    c.health.set("", NOT_SERVING)
    assert eventually(lambda: client.health() is False)
    with pytest.raises(RequestError) as info:
        client.generate(request(), timeout=10)
    assert info.value.status == 503
    a.health.set("", SERVING)
    assert eventually(lambda: client.health() is True)
    assert answer(client, request()) == "A"


def test_a_full_replica_spills_over_and_all_full_is_429(servers, make_client):
    a, b, c = servers
    a.servicer.mode = b.servicer.mode = "full"
    client, metrics = make_client(target(servers), policy="round-robin")
    assert {answer(client, request()) for _ in range(6)} == {"C"}
    assert sample(metrics, "edge_retries_total", replica=a.address, reason="full") >= 1
    c.servicer.mode = "full"
    with pytest.raises(RequestError) as info:
        list(client.generate(request(), timeout=10))
    assert info.value.status == 429 and info.value.headers["Retry-After"] in ("1", "2")


def capacity_known(client: InferenceClient) -> bool:
    return all(r.capacity.get(MODEL) == 2 for r in client._replicas.values())


def test_never_sent_to_a_full_replica_while_another_has_room(make_client):
    a, b = Server("A"), Server("B")
    try:
        for server in (a, b):
            server.servicer.mode = "hold"
        client, metrics = make_client(f"{a.address},{b.address}", policy="prefix-affinity")
        assert eventually(lambda: capacity_known(client))  # slots 1 + max_waiting 1 each
        # Conversations whose home is A
        cands = [routing.Candidate(a.address, 0), routing.Candidate(b.address, 0)]
        home_a = [r for r in (request(f"conversation {i}") for i in range(40))
                  if routing.rendezvous_order(routing.conversation_key(MODEL, [("user", r.messages[0].content)]),
                                              cands)[0].address == a.address]
        calls = []
        for req in home_a[:4]:
            call = client.generate(req, timeout=10)
            calls.append((call, next(call).text))
        # Two on A (its capacity), then B although their home is A; a fifth: nowhere (429, decided here).
        assert sorted(text for _, text in calls) == ["A", "A", "B", "B"]
        before = a.servicer.calls + b.servicer.calls
        with pytest.raises(RequestError) as info:
            client.generate(home_a[5], timeout=10)
        assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
        assert info.value.code == "rate_limit_exceeded"
        assert a.servicer.calls + b.servicer.calls == before  # the service was not asked
        assert sample(metrics, "edge_unrouted_requests_total", reason="all_full") == 1
        a.servicer.release.set()
        b.servicer.release.set()
        for call, _ in calls:
            assert list(call)[-1].finish_reason == pb.FINISH_REASON_STOP
        assert sample(metrics, "edge_replica_in_flight", replica=a.address) == 0
        assert answer(client, home_a[5]) == "A"  # back home
    finally:
        a.stop()
        b.stop()


def test_a_cancelled_call_frees_its_place(servers, make_client):
    servers[0].servicer.mode = "hold"
    client, metrics = make_client(servers[0].address)
    call = client.generate(request(), timeout=10)
    assert next(call).text == "A"
    assert sample(metrics, "edge_replica_in_flight", replica=servers[0].address) == 1
    assert call.cancel() is True
    assert sample(metrics, "edge_replica_in_flight", replica=servers[0].address) == 0
    with pytest.raises(RequestError) as info:
        next(call)
    assert info.value.status == 499
    assert sum(s.servicer.calls for s in servers) == 1  # a cancelled call is never retried


def test_dns_targets_are_resolved_again(servers, make_client, monkeypatch):
    a, b, c = servers
    answers: list = [[a.address]]
    monkeypatch.setattr(routing, "resolve", lambda host, port: answers[0]
                        if not isinstance(answers[0], Exception) else (_ for _ in ()).throw(answers[0]))
    client, _ = make_client("dns:///inference.test:50051", resolve_interval=0.1)
    assert client.replicas() == {a.address: "serving"}
    assert answer(client, request()) == "A"
    a.servicer.mode = "hold"
    held = client.generate(request(), timeout=10)
    assert next(held).text == "A"

    answers[0] = [b.address, c.address]  # A's pod went away; two new ones
    assert eventually(lambda: set(client.replicas()) == {b.address, c.address})
    assert eventually(lambda: set(client.replicas().values()) == {"serving"})
    assert {answer(client, request(f"{i}")) for i in range(12)} == {"B", "C"}
    a.servicer.release.set()  # the call in flight on the removed replica still finishes
    assert list(held)[-1].finish_reason == pb.FINISH_REASON_STOP

    answers[0] = OSError("temporary failure in name resolution")  # DNS trouble: keep what we know
    time.sleep(0.5)
    assert set(client.replicas()) == {b.address, c.address}
    assert answer(client, request()) in ("B", "C")


def test_dns_localhost(make_client):
    port = free_port()
    server = Server("L", port)
    try:
        client, _ = InferenceClient(f"dns:///localhost:{port}", policy="least-loaded"), None
        try:
            assert eventually(lambda: client.health())
            assert f"127.0.0.1:{port}" in client.replicas()
            assert answer(client, request()) == "L"
        finally:
            client.close()
    finally:
        server.stop()


def test_unreachable_at_start_is_a_503_not_a_wait_for_the_deadline():
    """Nothing listens: the edge answers 503 from the watches' state; a call that waited for
    its (long) deadline would have answered 504 instead."""
    client = InferenceClient(f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}")
    try:
        assert client.health() is False
        with pytest.raises(RequestError) as info:
            client.generate(request(), timeout=600)
        assert info.value.status == 503
        with pytest.raises(RequestError) as info:
            client.list_models(timeout=600)
        assert info.value.status == 503
    finally:
        client.close()


def test_list_models_asks_a_serving_replica(servers, make_client):
    client, _ = make_client(target(servers))
    servers[0].health.set("", NOT_SERVING)
    servers[1].health.set("", NOT_SERVING)
    assert eventually(lambda: list(client.replicas().values()).count("serving") == 1)
    assert [m.owned_by for m in client.list_models()] == ["C"]


def test_calls_go_only_to_replicas_that_serve_their_model(servers, make_client):
    """Model shards: A serves m and x, B only y, C both x and y."""
    a, b, c = servers
    a.servicer.models, b.servicer.models, c.servicer.models = [MODEL, "x"], ["y"], ["x", "y"]
    client, metrics = make_client(target(servers), policy="round-robin")
    assert eventually(lambda: all(r.models is not None and len(r.models) == len(s.servicer.models)
                                  for r, s in zip(client._replicas.values(), servers)))

    def served_by(model: str) -> set[str]:
        return {answer(client, pb.GenerateRequest(model=model, prompt=f"{i}")) for i in range(9)}

    assert served_by("x") == {"A", "C"}
    assert served_by("y") == {"B", "C"}
    assert served_by(MODEL) == {"A"}
    # No replica lists it: one is asked (the service judges the name), the 404 names them all.
    with pytest.raises(RequestError) as info:
        list(client.generate(pb.GenerateRequest(model="z", prompt="hi"), timeout=10))
    assert (info.value.status, info.value.code, info.value.param) == (404, "model_not_found", "model")
    assert info.value.message == f"model 'z' not found; served: {MODEL}, x, y"
    assert sorted(m.name for m in client.list_models()) == [MODEL, "x", "y"]  # the union, each once
    # The only replica with the model is down: 503 (it may come back), not 404.
    a.health.set("", NOT_SERVING)
    assert eventually(lambda: client.replicas()[a.address] == "not serving")
    with pytest.raises(RequestError) as info:
        list(client.generate(pb.GenerateRequest(model=MODEL, prompt="hi"), timeout=10))
    assert info.value.status == 404  # no serving replica lists it
    assert sorted(m.name for m in client.list_models()) == ["x", "y"]


def test_a_replica_that_changes_its_models_is_seen_at_the_next_poll(servers, make_client):
    a, b, c = servers
    client, _ = make_client(target(servers), policy="round-robin", status_interval=0.1)
    assert eventually(lambda: all(r.models is not None for r in client._replicas.values()))
    b.servicer.models = [MODEL, "new"]
    assert eventually(lambda: any(m.name == "new" for m in client.list_models()))
    assert answer(client, pb.GenerateRequest(model="new", prompt="hi")) == "B"


def test_a_stalled_replica_loses_its_calls_to_another(servers, make_client):
    """A replica that accepts a call and never answers: after the first-response timeout the
    call is cancelled there and served by another replica; the stalled one is passed over."""
    a, b, c = servers
    a.servicer.mode = "stall"
    client, metrics = make_client(target(servers), policy="round-robin", first_response_timeout=0.5)
    texts = [answer(client, request(f"{i}")) for i in range(6)]
    assert "A" not in texts and set(texts) <= {"B", "C"}
    assert a.servicer.calls >= 1
    assert sample(metrics, "edge_retries_total", replica=a.address, reason="stalled") == a.servicer.calls


def test_affinity_prefers_a_free_slot_to_queueing_at_home(make_client):
    """1-slot replicas: a conversation whose home is busy goes to an idle replica instead of
    waiting in home's queue (the load bound alone would have allowed home)."""
    a, b = Server("A"), Server("B")
    try:
        a.servicer.mode = b.servicer.mode = "hold"
        client, _ = make_client(f"{a.address},{b.address}", policy="prefix-affinity")
        assert eventually(lambda: capacity_known(client))
        cands = [routing.Candidate(a.address, 0), routing.Candidate(b.address, 0)]
        home_a = [r for r in (request(f"conversation {i}") for i in range(40))
                  if routing.rendezvous_order(routing.conversation_key(MODEL, [("user", r.messages[0].content)]),
                                              cands)[0].address == a.address]
        first = client.generate(home_a[0], timeout=10)
        assert next(first).text == "A"
        second = client.generate(home_a[1], timeout=10)
        assert next(second).text == "B"
        a.servicer.release.set()
        b.servicer.release.set()
        list(first), list(second)
    finally:
        a.stop()
        b.stop()


def test_watch_backoff_constants_keep_a_restart_quick():
    # A restarted replica is noticed within about a second of its listening again.
    assert replica_module.WATCH_BACKOFF_MAX <= 1.0
    assert dict(replica_module.CHANNEL_OPTIONS)["grpc.max_reconnect_backoff_ms"] <= 2000


def test_embeddings_neither_wait_for_slots_nor_take_them(servers, make_client):
    """A replica whose slot and queue place are held by generations still takes embeddings
    (the service computes them beside the slots), and they do not count against its capacity."""
    a = servers[0]
    a.servicer.mode = "hold"
    client, _ = make_client(a.address)
    assert eventually(lambda: capacity_known(client))
    held = [client.generate(request(f"{i}"), timeout=10) for i in range(2)]  # slots 1 + max_waiting 1
    for call in held:
        assert next(call).text == "A"
    with pytest.raises(RequestError) as info:
        client.generate(request("third"), timeout=10)
    assert info.value.status == 429
    calls = [client.embed(pb.EmbedRequest(model=MODEL), timeout=10) for _ in range(4)]
    assert [c.result().model for c in calls] == ["A"] * 4
    assert client._replicas[a.address].in_flight_by_model == {MODEL: 2}
    a.servicer.release.set()
    for call in held:
        list(call)
