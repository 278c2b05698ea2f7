"""Three real inference service replicas (``--slots 1 --threads 1 --max-waiting 2``, each on
its own loopback port, kept across restarts) for the cluster tests; each test starts its own
real gunicorn edge in front of all three (``INFERENCE_TARGET=a,b,c``) with the policy it
needs, its debug log naming the replica of each request id."""

from __future__ import annotations

import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import grpc
import pytest

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc
from harness import processes
from harness.processes import Service, free_port, stop_process

GRACE = 30  # --grace: what in-flight streams get after SIGTERM
REPLICA_ARGS = ("--slots", "1", "--threads", "1", "--max-waiting", "2", "--grace", str(GRACE))
ROUTED = re.compile(r"request (\S+) -> (\S+) \((.*)\)\s*$", re.M)
RETRIED = re.compile(r"request (\S+): replica (\S+) answered (\S+) before the first token; retried on (\S+)", re.M)


@dataclass
class Replica:
    name: str
    port: int
    log_dir: Path
    service: Optional[Service] = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.starts}.log"

    def start(self, timeout: float = 300) -> None:
        """``python -m inference_service serve`` on this replica's port; waits for SERVING."""
        self.starts += 1
        argv = [sys.executable, "-m", "inference_service", "serve", "--address", self.address, *REPLICA_ARGS]
        proc = processes._spawn(argv, self.log_path)
        self.service = processes.wait_until(Service(proc, self.log_path, self.address),
                                            lambda: processes._serving(self.address), f"replica {self.name}", timeout)

    @property
    def running(self) -> bool:
        return self.service is not None and self.service.process.poll() is None

    def signal(self, sig: int) -> None:
        os.kill(self.service.pid, sig)

    def status(self) -> pb.GetStatusResponse:
        with grpc.insecure_channel(self.address) as channel:
            return pb_grpc.InferenceServiceStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)

    def log(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob(f"{self.name}-*.log")))

    def stop(self) -> None:
        if self.service is not None:
            stop_process(self.service.process, grace=GRACE + 10)


@dataclass
class Cluster:
    replicas: list[Replica] = field(default_factory=list)

    @property
    def target(self) -> str:
        return ",".join(r.address for r in self.replicas)

    def by_address(self, address: str) -> Replica:
        return next(r for r in self.replicas if r.address == address)

    def ensure_all_up(self) -> None:
        """Starts (on its own port) every replica that is not running, all at once."""
        down = [r for r in self.replicas if not r.running]
        errors: list[str] = []

        def start(replica: Replica) -> None:
            try:
                replica.start()
            except RuntimeError as error:
                errors.append(str(error))

        threads = [threading.Thread(target=start, args=(r,)) for r in down]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            pytest.fail("\n".join(errors))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("replicas")
    running = Cluster([Replica(name, free_port(), log_dir) for name in ("r1", "r2", "r3")])
    try:
        running.ensure_all_up()
        yield running
    finally:
        for replica in running.replicas:
            replica.stop()


@pytest.fixture
def replicas(cluster) -> Cluster:
    """The three replicas, every one of them up (a test before may have stopped one)."""
    cluster.ensure_all_up()
    return cluster


@pytest.fixture
def start_edge(replicas, tmp_path):
    """``start_edge(policy)``: real gunicorn (one worker, 16 threads) in front of the three
    replicas, routing by ``policy``, at debug level (its log names each request's replica)."""
    started = []

    def start(policy: str, **env: str) -> processes.HttpServer:
        try:
            edge = processes.start_edge(replicas.target, tmp_path / f"edge-{policy}-{len(started)}.log",
                                        EDGE_ROUTING=policy, EDGE_THREADS="16", EDGE_LOG_LEVEL="debug",
                                        EDGE_LOG_FORMAT="text", **env)
        except RuntimeError as error:
            pytest.fail(str(error))
        started.append(edge)
        return edge

    yield start
    for edge in started:
        stop_process(edge.process)


def routed(edge_log: str) -> dict[str, list[tuple[str, str]]]:
    """request id → [(replica, how)] from the edge's debug lines, in order (a retry adds one)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for request_id, address, how in ROUTED.findall(edge_log):
        out.setdefault(request_id, []).append((address, how))
    return out
