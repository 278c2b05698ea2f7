"""The disconnect watcher (rest_edge.disconnect): a departed client is noticed without writing.

Three levels: the watcher on real TCP socket pairs; the resource wired to it (falcon.testing
with a real socket in the WSGI environ); real gunicorn in front of a fake gRPC service whose
calls hang until cancelled (no model needed).

Waits are bounded (an Event with a generous timeout, then assert it fired), never speed
assertions: the machine is shared.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from typing import Any

import falcon.testing
import grpc
import httpx
import pytest

from inference_service.v1 import inference_pb2 as pb
from rest_edge import disconnect, responses, streaming
from rest_edge.app import create_app
from tests.conftest import start_edge, stop_process
from tests.e2e.helpers import abort, file_size, log_since, raw_post, read_until_closed
from tests.edge.fakes import FakeCall, FakeServicer, last, piece, rpc_error, start_server
from tests.helpers import eventually

BOUND = 10.0  # generous: "seen within about half a second" on a quiet machine


# --- helpers -------------------------------------------------------------------------------

@pytest.fixture
def watcher():
    w = disconnect.Watcher()
    yield w
    w.stop()


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server side, client side) of a real loopback TCP connection."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


# --- the watcher on real sockets -----------------------------------------------------------

@pytest.mark.parametrize("how", ["close", "reset", "shutdown"])
def test_a_departed_peer_is_seen(watcher, how):
    server, client = tcp_pair()
    gone = threading.Event()
    with server:
        handle = watcher.watch(server, gone.set)
        assert not handle.gone
        {"close": client.close, "reset": lambda: abort(client),
         "shutdown": lambda: client.shutdown(socket.SHUT_WR)}[how]()
        assert gone.wait(BOUND), f"peer {how} not seen"
        assert handle.gone
        eventually(lambda: watcher.watching() == 0, "no socket watched", timeout=BOUND)
        handle.close()  # idempotent after firing
        # The socket itself is untouched: still open, still this process's to close.
        assert server.fileno() >= 0
    client.close()


def test_a_peer_gone_before_registration_is_seen_at_once(watcher):
    server, client = tcp_pair()
    client.close()
    gone = threading.Event()
    with server:
        watcher.watch(server, gone.set)
        assert gone.wait(BOUND)


def test_a_pipelined_byte_is_not_gone_and_not_consumed(watcher):
    server, client = tcp_pair()
    calls = []
    with server, client:
        handle = watcher.watch(server, lambda: calls.append(1))
        client.sendall(b"GET / HTTP/1.1\r\n")
        # The watcher sees the data and stops watching that socket (no callback).
        eventually(lambda: watcher.watching() == 0, "a readable socket no longer watched", timeout=BOUND)
        client.close()  # even a later departure is not reported for a socket no longer watched
        time.sleep(0.3)
        assert calls == [] and not handle.gone
        server.settimeout(5)
        assert server.recv(100) == b"GET / HTTP/1.1\r\n"  # nothing was consumed


def test_an_idle_live_peer_is_not_gone(watcher):
    server, client = tcp_pair()
    calls = []
    with server, client:
        handle = watcher.watch(server, lambda: calls.append(1))
        time.sleep(0.3)
        assert calls == [] and not handle.gone and watcher.watching() == 1
        handle.close()
        assert watcher.watching() == 0


def test_closing_the_watch_stops_callbacks(watcher):
    server, client = tcp_pair()
    calls = []
    with server:
        with watcher.watch(server, lambda: calls.append(1)) as handle:
            pass
        assert watcher.watching() == 0
        client.close()
        time.sleep(0.3)
        assert calls == [] and not handle.gone
        # the socket is still readable for its owner (end of file), the watcher left it alone
        server.settimeout(5)
        assert server.recv(1) == b""


def test_close_waits_for_a_running_callback_then_none_follows(watcher):
    server, client = tcp_pair()
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow_callback():
        entered.set()
        release.wait(BOUND)
        finished.set()

    with server:
        handle = watcher.watch(server, slow_callback)
        client.close()
        assert entered.wait(BOUND)
        closer = threading.Thread(target=handle.close)
        closer.start()
        time.sleep(0.1)
        assert closer.is_alive(), "close() returned while on_gone was still running"
        release.set()
        closer.join(BOUND)
        assert not closer.is_alive() and finished.is_set()


def test_many_sockets_at_once(watcher):
    pairs = [tcp_pair() for _ in range(60)]
    fired = [threading.Event() for _ in pairs]
    handles = [watcher.watch(server, event.set) for (server, _), event in zip(pairs, fired)]
    try:
        assert watcher.watching() == 60
        leaving = set(range(0, 60, 3))
        for i in leaving:
            (abort if i % 2 else socket.socket.close)(pairs[i][1])
        for i in leaving:
            assert fired[i].wait(BOUND), f"departure of peer {i} not seen"
        time.sleep(0.3)
        stayed = [i for i in range(60) if i not in leaving]
        assert not any(fired[i].is_set() for i in stayed)
        assert not any(handles[i].gone for i in stayed)
        eventually(lambda: watcher.watching() == len(stayed), "only the peers that stayed watched", timeout=BOUND)
        for i in stayed:
            handles[i].close()
        assert watcher.watching() == 0
    finally:
        for server, client in pairs:
            server.close()
            client.close()


def test_a_failing_callback_does_not_stop_the_watcher(watcher):
    def boom():
        raise RuntimeError("callback failed")

    s1, c1 = tcp_pair()
    s2, c2 = tcp_pair()
    gone = threading.Event()
    with s1, s2:
        h1 = watcher.watch(s1, boom)
        watcher.watch(s2, gone.set)
        c1.close()
        eventually(lambda: h1.gone, "the first peer seen gone", timeout=BOUND)
        c2.close()
        assert gone.wait(BOUND)


def test_a_socket_closed_under_its_watch_is_dropped_quietly(watcher):
    server, client = tcp_pair()
    calls = []
    with client:
        watcher.watch(server, lambda: calls.append(1))
        # Let the watcher enter poll() with the socket: a close then wakes nothing (poll holds
        # the file open), and only the watcher's own sweep can notice it.
        time.sleep(0.2)
        server.close()  # its owner closed it without closing the watch
        # Dropped once the watcher sees the number closed. (Only then: a socket opened before
        # that may take the same number, and no watcher can tell it from the closed one.)
        eventually(lambda: watcher.watching() == 0, "no socket watched", timeout=BOUND)
        other_server, other_client = tcp_pair()  # may reuse the number
        with other_server, other_client:
            other_client.close()
            time.sleep(0.2)
    assert calls == []


def test_no_socket_means_no_watching():
    # falcon.testing, or any server without gunicorn's key: nothing to watch, nothing fails.
    handle = disconnect.watch_client({}, lambda: pytest.fail("called"))
    assert handle is disconnect.NOT_WATCHED and not handle.gone
    handle.close()
    assert disconnect.watch(None, lambda: None) is disconnect.NOT_WATCHED
    assert disconnect.watch_client({"gunicorn.socket": object()}, lambda: None) is disconnect.NOT_WATCHED


def test_the_process_watcher_is_one_lazy_daemon_thread():
    w = disconnect.default_watcher()
    assert disconnect.default_watcher() is w
    server, client = tcp_pair()
    with server, client:
        handle = disconnect.watch_client({disconnect.SOCKET_KEY: server}, lambda: None)
        threads = [t for t in threading.enumerate() if t.name == "client-disconnect-watcher"]
        assert len(threads) == 1 and threads[0].daemon
        handle.close()


# --- the stream wrapper --------------------------------------------------------------------

class FakeWatch:
    def __init__(self, gone: bool = False):
        self.gone = gone
        self.closed = 0

    def close(self):
        self.closed += 1


def test_closing_the_stream_ends_the_watch_even_before_iteration():
    call, watch = FakeCall([piece("a"), last()]), FakeWatch()
    events = responses.events(call)
    stream = streaming.sse_stream(responses.ChatRenderer("chatcmpl-1", "m"), next(events), events, call, watch=watch)
    stream.close()
    assert watch.closed == 1 and call.cancelled >= 1


def test_a_departed_stream_ends_quietly(caplog):
    cancelled = rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
    call, watch = FakeCall([piece("a"), cancelled]), FakeWatch(gone=True)
    errors = []
    events = responses.events(call)
    stream = streaming.sse_stream(responses.ChatRenderer("chatcmpl-1", "m"), next(events), events, call, watch=watch,
                                  on_error=errors.append)
    with caplog.at_level("INFO", logger="rest_edge"):
        frames = list(stream)
        stream.close()
    assert frames[-1] == b"data: [DONE]\n\n"
    assert errors == [], "a departed client is not a stream error"
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text
    assert "went away" in caplog.text
    assert watch.closed == 1


# --- the resource, with a real socket in the WSGI environ ------------------------------------

class HangingCall:
    """A Generate call: ``items`` first, then blocks until cancelled and fails CANCELLED."""

    def __init__(self, items=()):
        self._items = list(items)
        self._cancelled = threading.Event()
        self.cancels = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self._items:
            return self._items.pop(0)
        if not self._cancelled.wait(BOUND):
            raise AssertionError("the call was never cancelled")
        raise rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")

    def cancel(self):
        first = not self._cancelled.is_set()
        self._cancelled.set()
        self.cancels += 1
        return first


class HangingClient:
    def __init__(self, items=()):
        self.items = items
        self.calls: list[HangingCall] = []

    def generate(self, request, timeout=None):
        call = HangingCall(self.items)
        self.calls.append(call)
        return call

    def list_models(self, timeout=None):
        return []

    def health(self, timeout=None):
        return True


def _departures(client: falcon.testing.TestClient) -> float:
    for line in client.simulate_get("/metrics").text.splitlines():
        if line.startswith('edge_client_departures_total{route="/v1/chat/completions"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("stream, items", [(False, ()), (True, ()), (True, [piece("a")])],
                         ids=["non-stream", "stream-before-first-token", "stream-after-first-token"])
def test_resource_cancels_when_its_client_leaves(stream, items, caplog):
    fake = HangingClient(items)
    app = falcon.testing.TestClient(create_app(fake))
    server, client = tcp_pair()
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    timer = threading.Timer(0.2, client.close)
    timer.start()
    with server, caplog.at_level("INFO", logger="rest_edge"):
        result = app.simulate_post("/v1/chat/completions", json=body, extras={disconnect.SOCKET_KEY: server})
    timer.join()
    assert fake.calls[0].cancels >= 1
    if items:
        assert result.status_code == 200
        assert result.text.endswith("data: [DONE]\n\n")
    else:
        assert result.status_code == 499, result.text
    assert _departures(app) == 1.0
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")], caplog.text
    assert disconnect.default_watcher().watching() == 0


def test_resource_unwatches_a_finished_response():
    fake_items = [piece("a"), last()]

    class DoneClient(HangingClient):
        def generate(self, request, timeout=None):
            call = FakeCall(list(fake_items))
            self.calls.append(call)
            return call

    app = falcon.testing.TestClient(create_app(DoneClient()))
    server, client = tcp_pair()
    with server, client:
        for stream in (False, True):
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            result = app.simulate_post("/v1/chat/completions", json=body, extras={disconnect.SOCKET_KEY: server})
            assert result.status_code == 200
            assert disconnect.default_watcher().watching() == 0
        client.close()
        time.sleep(0.2)
    assert _departures(app) == 0.0


# --- real gunicorn in front of a fake service whose calls hang until cancelled ---------------

class HangingServicer(FakeServicer):
    """Adds the model ``hang``: holds the call until the client cancels it (bounded), after
    one piece when ``max_tokens`` is 1. Each call's cancel event is put on ``calls``."""

    def __init__(self):
        super().__init__()
        self.calls: "queue.Queue[threading.Event]" = queue.Queue()

    def Generate(self, request, context):
        if request.model != "hang":
            yield from super().Generate(request, context)
            return
        gone = threading.Event()
        context.add_callback(gone.set)
        self.calls.put(gone)
        if request.max_tokens == 1:
            yield pb.GenerateResponse(text="first", token_ids=[1])
        gone.wait(60)


@pytest.fixture(scope="module")
def hanging_edge(tmp_path_factory):
    servicer = HangingServicer()
    server, grpc_port, _ = start_server(servicer)
    try:
        running = start_edge(f"127.0.0.1:{grpc_port}", tmp_path_factory.mktemp("edge") / "gunicorn.log",
                             EDGE_THREADS="4")
        try:
            yield running, servicer
        finally:
            stop_process(running.process)
    finally:
        server.stop(None)


def _hang_body(stream: bool, after_first: bool = False) -> dict:
    body: dict[str, Any] = {"model": "hang", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    if after_first:
        body["max_tokens"] = 1
    return body


@pytest.mark.parametrize("stream, after_first, how", [
    (True, False, "close"), (True, False, "reset"), (False, False, "close"), (False, False, "reset"),
    (True, True, "close"),
], ids=["stream-before-first-close", "stream-before-first-reset", "non-stream-close", "non-stream-reset",
        "stream-after-first-close"])
def test_gunicorn_cancels_when_the_client_leaves_without_a_write(hanging_edge, stream, after_first, how):
    edge, servicer = hanging_edge
    log_offset = file_size(edge.log_path)
    sock = raw_post(edge.base_url, "/v1/chat/completions", _hang_body(stream, after_first))
    gone = servicer.calls.get(timeout=BOUND)  # the call reached the service
    if after_first:
        sock.settimeout(BOUND)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")  # headers and the first frame came
    assert not gone.wait(0.3), "cancelled while the client was still there"
    (sock.close if how == "close" else (lambda: abort(sock)))()
    assert gone.wait(BOUND), "the edge did not cancel the call of a departed client"
    # The departed request ends quietly: no traceback, no error; the edge still answers.
    resp = httpx.post(edge.base_url + "/v1/chat/completions",
                      json={"model": "ok", "messages": [{"role": "user", "content": "hi"}]}, timeout=BOUND)
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Hello!"
    time.sleep(0.2)
    log = log_since(edge.log_path, log_offset)
    assert "Traceback" not in log and "[ERROR]" not in log and "[WARNING]" not in log, log[-3000:]


def test_gunicorn_keep_alive_connections_still_work(hanging_edge):
    edge, _ = hanging_edge
    body = {"model": "ok", "messages": [{"role": "user", "content": "hi"}]}
    ports = set()
    with httpx.Client(base_url=edge.base_url, timeout=BOUND) as http:
        for i in range(6):
            if i % 2:
                with http.stream("POST", "/v1/chat/completions", json=dict(body, stream=True)) as resp:
                    raw = resp.read()
                    assert resp.status_code == 200 and raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
                    ports.add(resp.extensions["network_stream"].get_extra_info("client_addr")[1])
            else:
                resp = http.post("/v1/chat/completions", json=body)
                assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Hello!"
                ports.add(resp.extensions["network_stream"].get_extra_info("client_addr")[1])
            time.sleep(0.05)  # the connection is back in gunicorn's poller between requests
    assert len(ports) == 1, f"the keep-alive connection was not reused: {ports}"


def test_gunicorn_pipelined_requests_are_both_answered(hanging_edge):
    edge, _ = hanging_edge
    host, port = edge.base_url.rsplit("/", 1)[1].split(":")
    data = json.dumps({"model": "ok", "messages": [{"role": "user", "content": "hi"}]}).encode()

    def request(connection: str) -> bytes:
        return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: {connection}\r\n\r\n").encode() + data

    with socket.create_connection((host, int(port)), timeout=BOUND) as sock:
        sock.sendall(request("keep-alive") + request("close"))
        received = read_until_closed(sock)
    assert received.count(b"HTTP/1.1 200") == 2, received[:2000]
    assert received.count(b'"Hello!"') == 2
