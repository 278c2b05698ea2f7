"""``/metrics`` is the whole edge, whichever gunicorn worker answers the scrape (issue 12).

Real gunicorn with two workers in front of the fake gRPC service: every scrape shows the same
totals, summing every request of every worker; killing a worker takes nothing away; the
in-flight gauge forgets a dead worker's requests. In process (falcon.testing, no
PROMETHEUS_MULTIPROC_DIR) each app keeps its ordinary registry.

Each request and scrape opens its own connection, so the workers take turns at random; the
access log (with the worker's pid) shows that both answered scrapes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import falcon.testing
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rest_edge import gunicorn_conf
from rest_edge.app import create_app
from rest_edge.metrics import MULTIPROC_DIR_ENV
from tests.conftest import REPO, free_port, start_edge, stop_process
from harness.processes import http_ok
from tests.edge.fakes import FakeClient, FakeServicer, last, piece, start_server
from tests.helpers import eventually

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hi"}]
ACCESS_LOG_FORMAT = "--access-logformat '%(p)s %(m)s %(U)s %(s)s'"  # <worker pid> METHOD PATH STATUS
ACCESS_LINE = re.compile(r"^<(\d+)> (\S+) (\S+) (\d{3})$", re.M)

N_OK, N_BAD_EDGE, N_BAD_GRPC, N_COMP = 20, 4, 3, 3


# --- helpers --------------------------------------------------------------------------------

def scrape(base: str) -> dict:
    """One scrape on a new connection: {(sample name, sorted labels): value}."""
    resp = httpx.get(f"{base}/metrics", timeout=10)
    assert resp.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def requests_total(samples: dict, route: str, method: str, status: int) -> float:
    return samples.get(("edge_http_requests_total",
                        (("method", method), ("route", route), ("status", str(status)))), 0.0)


def in_flight(samples: dict, route: str) -> float:
    return samples.get(("edge_http_requests_in_flight", (("route", route),)), 0.0)


def started_count(samples: dict, route: str, method: str) -> float:
    return samples.get(("edge_http_response_start_seconds_count", (("method", method), ("route", route))), 0.0)


def scrape_pids(log_path: Path) -> list[int]:
    """Pids of the workers that answered the scrapes so far, in order, from the access log."""
    return [int(m[0]) for m in ACCESS_LINE.findall(log_path.read_text(errors="replace"))
            if m[1] == "GET" and m[2] == "/metrics"]


def scrapes_from_every_worker(base: str, log_path: Path, workers: set[int], least: int = 6) -> list[dict]:
    """Scrapes until each of ``workers`` answered at least one of them (and ``least`` in all)."""
    before = len(scrape_pids(log_path))
    results = []

    def answered_by_every_worker() -> bool:
        results.append(scrape(base))
        return len(results) >= least and workers <= set(scrape_pids(log_path)[before:])

    eventually(answered_by_every_worker, f"scrapes answered by every worker {workers}", timeout=30, interval=0)
    return results


def worker_pids(arbiter: int, count: int, timeout: float = 30) -> set[int]:
    """The arbiter's worker processes, once there are ``count`` of them (/proc)."""
    def children() -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == arbiter and fields[0] != "Z":
                found.add(int(stat.parent.name))
        return found

    return eventually(children, f"the arbiter {arbiter} with {count} workers", until=lambda found: len(found) == count,
                      timeout=timeout, interval=0.1)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, left for whoever adopted it to reap, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_holding_connection(server_port: int, client_port: int, candidates: set[int]) -> int:
    """Which process holds the server side of the TCP connection 127.0.0.1:client_port."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = fields[1], fields[2]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            inode = fields[9]
    assert inode is not None, "the connection is not in /proc/net/tcp"
    for pid in candidates:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    pytest.fail(f"no worker of {candidates} holds the connection")


def send_traffic(base: str) -> None:
    """N_OK chat 200s, N_BAD_EDGE + N_BAD_GRPC chat 400s, N_COMP completion 200s; one connection each."""
    for _ in range(N_OK):
        resp = httpx.post(f"{base}{CHAT}", json={"model": "ok", "messages": MESSAGES}, timeout=10)
        assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "Hello!"
    for _ in range(N_BAD_EDGE):  # refused by the edge itself
        assert httpx.post(f"{base}{CHAT}", json={"model": "ok", "messages": MESSAGES, "n": 17},
                          timeout=10).status_code == 400
    for _ in range(N_BAD_GRPC):  # INVALID_ARGUMENT from the service
        assert httpx.post(f"{base}{CHAT}", json={"model": "bad", "messages": MESSAGES},
                          timeout=10).status_code == 400
    for _ in range(N_COMP):
        assert httpx.post(f"{base}{COMP}", json={"model": "ok", "prompt": "hi"}, timeout=10).status_code == 200


def assert_agree(scrapes: list[dict], ok: float, bad: float, comp: float) -> None:
    """Every scrape shows the same totals; the scrapes count themselves, one more each time."""
    first_metrics = requests_total(scrapes[0], "/metrics", "GET", 200)
    for i, samples in enumerate(scrapes):
        assert requests_total(samples, CHAT, "POST", 200) == ok, (i, samples)
        assert requests_total(samples, CHAT, "POST", 400) == bad, i
        assert requests_total(samples, COMP, "POST", 200) == comp, i
        assert started_count(samples, CHAT, "POST") == ok + bad, i
        assert requests_total(samples, "/metrics", "GET", 200) == first_metrics + i, i
        assert in_flight(samples, CHAT) == 0, i
        assert in_flight(samples, "/metrics") == 1, i  # the scrape itself


# --- real gunicorn, two workers -----------------------------------------------------------

@pytest.fixture(scope="module")
def grpc_target():
    servicer = FakeServicer()
    server, grpc_port, _ = start_server(servicer)
    try:
        yield f"127.0.0.1:{grpc_port}"
    finally:
        server.stop(None)


@pytest.fixture(scope="module")
def edge(grpc_target, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("edge") / "gunicorn.log"
    running = start_edge(grpc_target, log_path, EDGE_WORKERS="2", EDGE_THREADS="4",
                         GUNICORN_CMD_ARGS=ACCESS_LOG_FORMAT)
    try:
        yield running
    finally:
        stop_process(running.process)


def private_dir(log_path: Path) -> Path:
    found = re.search(r"Metrics: workers share (\S+) \(private", log_path.read_text(errors="replace"))
    assert found, "the arbiter did not create a private metrics directory"
    return Path(found[1])


def test_every_scrape_shows_the_whole_edge(edge):
    send_traffic(edge.base_url)
    workers = worker_pids(edge.process.pid, 2)
    scrapes = scrapes_from_every_worker(edge.base_url, edge.log_path, workers)
    assert_agree(scrapes, N_OK, N_BAD_EDGE + N_BAD_GRPC, N_COMP)
    assert private_dir(edge.log_path).is_dir()


def test_a_killed_worker_takes_no_counts_away(edge):
    base, log_path = edge.base_url, edge.log_path
    before = scrape(base)
    ok, bad = requests_total(before, CHAT, "POST", 200), requests_total(before, CHAT, "POST", 400)
    comp = requests_total(before, COMP, "POST", 200)
    workers = worker_pids(edge.process.pid, 2)
    port = int(base.rsplit(":", 1)[1])

    # A stream in flight (counted as a 200 when its headers went out), in some worker.
    body = json.dumps({"model": "slow", "messages": MESSAGES, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST " + CHAT.encode() + b" HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        assert received.startswith(b"HTTP/1.1 200"), received
        during = scrape(base)
        assert in_flight(during, CHAT) == 1
        assert requests_total(during, CHAT, "POST", 200) == ok + 1

        victim = pid_holding_connection(port, sock.getsockname()[1], workers)
        os.kill(victim, signal.SIGKILL)
        sock.settimeout(10)
        try:
            while sock.recv(4096):  # the stream dies with its worker
                pass
        except ConnectionResetError:
            pass

    replaced = worker_pids(edge.process.pid, 2)
    while victim in replaced:
        replaced = worker_pids(edge.process.pid, 2)
    assert httpx.get(f"{base}/health", timeout=10).status_code == 200
    scrapes = scrapes_from_every_worker(base, log_path, replaced)
    # The dead worker's counts are still there; its stream is no longer in flight.
    assert_agree(scrapes, ok + 1, bad, comp)

    # Counting goes on from there.
    send_traffic(base)
    assert_agree(scrapes_from_every_worker(base, log_path, replaced),
                 ok + 1 + N_OK, bad + N_BAD_EDGE + N_BAD_GRPC, comp + N_COMP)
    assert "Worker (pid:%d) was sent SIGKILL" % victim in log_path.read_text(errors="replace")


def test_usr2_upgrade_keeps_the_counts(grpc_target, tmp_path):
    """A new master started by USR2 shares the old one's directory: through the handover and
    after the old master is gone, the totals go on; the last master out removes it."""
    log_path = tmp_path / "gunicorn.log"
    edge = start_edge(grpc_target, log_path, EDGE_WORKERS="2", GUNICORN_CMD_ARGS=ACCESS_LOG_FORMAT)
    new_master = None
    try:
        send_traffic(edge.base_url)
        directory = private_dir(log_path)
        os.kill(edge.process.pid, signal.SIGUSR2)
        listening = re.compile(r"Listening at: \S+ \((\d+)\)")
        masters = eventually(lambda: listening.findall(log_path.read_text(errors="replace")),
                             "the new master listening", until=lambda found: len(found) >= 2, timeout=30, interval=0.1)
        new_master = int(masters[-1])
        shared = f"[{new_master}] [INFO] Metrics: workers share {directory} (with the old master's)"
        assert shared in log_path.read_text(errors="replace")
        worker_pids(new_master, 2)
        during = scrape(edge.base_url)
        assert requests_total(during, CHAT, "POST", 200) == N_OK

        edge.process.terminate()  # the old master and its workers leave
        assert edge.process.wait(30) == 0
        assert directory.is_dir()
        workers = worker_pids(new_master, 2)
        send_traffic(edge.base_url)
        assert_agree(scrapes_from_every_worker(edge.base_url, log_path, workers),
                     2 * N_OK, 2 * (N_BAD_EDGE + N_BAD_GRPC), 2 * N_COMP)

        os.kill(new_master, signal.SIGTERM)
        eventually(lambda: not alive(new_master), "the new master gone (not our child: polled)", timeout=30,
                   interval=0.1)
        new_master = None
        assert not directory.exists()
    finally:
        stop_process(edge.process)
        if new_master is not None:
            os.kill(new_master, signal.SIGKILL)


@pytest.mark.parametrize("master_pid, reexec_pid, kept", [
    (0, 0, False), (0, 4242, True), ("parent", 0, True), (4242, 0, False)],
    ids=["alone", "usr2-parent", "usr2-child", "usr2-child-orphaned-before-gunicorn-noticed"])
def test_hooks_never_touch_another_edges_directory(monkeypatch, tmp_path, master_pid, reexec_pid, kept):
    """An arbiter started with another edge's private directory in its environment makes its
    own (a USR2 child shares it instead); a master removes its private directory on exit
    only when no other master (its USR2 child or parent) still uses it."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a private directory goes
    if master_pid == "parent":
        master_pid = os.getppid()
    other = tmp_path / "other"
    other.mkdir()
    (other / "counter_1.db").write_bytes(b"another edge's counts")
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(other))
    monkeypatch.setenv("EDGE_PRIVATE_METRICS_DIR", str(other))
    server = SimpleNamespace(master_pid=master_pid, reexec_pid=reexec_pid, log=logging.getLogger("test"))
    gunicorn_conf.on_starting(server)
    mine = Path(os.environ[MULTIPROC_DIR_ENV])
    assert (mine == other) == bool(master_pid)
    assert (other / "counter_1.db").exists()
    gunicorn_conf.on_exit(server)
    assert mine.exists() == kept
    if mine != other:
        assert (other / "counter_1.db").exists()


# --- python -m rest_edge (make run) ---------------------------------------------------------

@pytest.mark.parametrize("operator_dir", [False, True], ids=["private-dir", "operator-dir"])
def test_python_m_rest_edge(grpc_target, tmp_path, operator_dir):
    """``python -m rest_edge`` imports the app, and so prometheus_client, in the arbiter: with
    no PROMETHEUS_MULTIPROC_DIR given, before the gunicorn hook sets it. The workers still
    write to the directory's files. An operator's directory is emptied at start (a previous
    run's counts are gone) and kept at exit; the private one is removed."""
    env = {**os.environ, "EDGE_API_KEYS": ""}
    env.pop(MULTIPROC_DIR_ENV, None)
    if operator_dir:
        directory = tmp_path / "prom"
        directory.mkdir()
        env[MULTIPROC_DIR_ENV] = str(directory)
        subprocess.run(  # a previous run's counts, left in the directory
            [sys.executable, "-c", "from rest_edge.metrics import Metrics;"
             f"Metrics().requests.labels({CHAT!r}, 'POST', '200').inc(1000)"],
            cwd=REPO, env=env, check=True,
        )
        assert list(directory.glob("counter_*.db"))

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "edge.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rest_edge", "--target", grpc_target, "--bind", f"127.0.0.1:{port}", "--workers", "2"],
        cwd=REPO, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        eventually(lambda: http_ok(f"{base}/health"), "the edge healthy", timeout=30, interval=0.1,
                   give_up=lambda: proc.poll() is not None and log_path.read_text(errors="replace")[-4000:])
        if not operator_dir:
            directory = private_dir(log_path)
        workers = worker_pids(proc.pid, 2)
        send_traffic(base)
        def counting_workers() -> set[int]:
            httpx.get(f"{base}/health", timeout=10)  # requests land on either worker at random
            return {int(p.stem.split("_")[1]) for p in directory.glob("counter_*.db")}

        eventually(counting_workers, f"every worker {workers} has counted something",
                   until=lambda counting: counting == workers, timeout=30, interval=0)
        scrapes = [scrape(base) for _ in range(8)]
        first_metrics = requests_total(scrapes[0], "/metrics", "GET", 200)
        for i, samples in enumerate(scrapes):
            assert requests_total(samples, CHAT, "POST", 200) == N_OK, (i, samples)
            assert requests_total(samples, CHAT, "POST", 400) == N_BAD_EDGE + N_BAD_GRPC
            assert requests_total(samples, COMP, "POST", 200) == N_COMP
            assert requests_total(samples, "/metrics", "GET", 200) == first_metrics + i
        proc.terminate()
        assert proc.wait(30) == 0
        assert directory.is_dir() == operator_dir
    finally:
        stop_process(proc)


# --- in process: the ordinary registry ----------------------------------------------------

def test_in_process_each_app_has_its_own_registry(monkeypatch):
    monkeypatch.delenv(MULTIPROC_DIR_ENV, raising=False)
    chat = {"model": "m", "messages": MESSAGES}
    one = falcon.testing.TestClient(create_app(FakeClient([piece("a"), last()])))
    two = falcon.testing.TestClient(create_app(FakeClient([piece("a"), last()])))
    for _ in range(3):
        assert one.simulate_post(CHAT, json=chat).status_code == 200
    assert two.simulate_post(CHAT, json={**chat, "stream": True}).status_code == 200
    mine = {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(one.simulate_get("/metrics").text) for s in f.samples}
    theirs = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(two.simulate_get("/metrics").text) for s in f.samples}
    assert requests_total(mine, CHAT, "POST", 200) == 3
    assert requests_total(theirs, CHAT, "POST", 200) == 1
    assert in_flight(mine, CHAT) == 0 and in_flight(theirs, CHAT) == 0  # the stream was closed
    assert in_flight(mine, "/metrics") == 1
    assert ("edge_http_requests_created", (("method", "POST"), ("route", CHAT), ("status", "200"))) in mine


def test_in_process_multiprocess_mode_even_if_prometheus_client_came_first(monkeypatch, tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR set after prometheus_client was imported (its values
    already in-memory floats), the app's values still go to the directory's files."""
    from prometheus_client import values

    monkeypatch.setattr(values, "ValueClass", values.MutexValue)  # restored after the test
    monkeypatch.setenv(MULTIPROC_DIR_ENV, str(tmp_path))
    client = falcon.testing.TestClient(create_app(FakeClient([piece("a"), last()])))
    assert client.simulate_post(CHAT, json={"model": "m", "messages": MESSAGES}).status_code == 200
    assert (tmp_path / f"counter_{os.getpid()}.db").exists()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(client.simulate_get("/metrics").text) for s in f.samples}
    assert requests_total(samples, CHAT, "POST", 200) == 1
