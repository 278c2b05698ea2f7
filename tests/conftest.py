"""Session fixtures for tests that use the real parts.

- ``engine``: the real default model, in process (two slots).
- ``service``: the real inference service as a subprocess (``python -m inference_service``).
- ``edge``: real gunicorn running the REST edge in front of ``service``.

Each starts once per session and only when a test asks for it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2:135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def model_file():
    from inference_service.models.registry import ModelRegistry

    return ModelRegistry().resolve(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def engine(model_file):
    from inference_service.engine.engine import Engine, EngineConfig

    return Engine.load([model_file], EngineConfig(slots=2, max_waiting=4))


@dataclass
class Service:
    address: str
    process: subprocess.Popen
    log_path: Path

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_serving(address: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc.poll() is not None:
                pytest.fail(f"inference service exited:\n{log_path.read_text(errors='replace')}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"inference service not SERVING after {timeout}s:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)


def start_service(tmp_dir: Path, *extra_args: str) -> Service:
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_dir / "inference_service.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "inference_service", "serve", "--address", address, *extra_args],
        cwd=REPO, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )
    wait_serving(address, proc, log_path)
    return Service(address=address, process=proc, log_path=log_path)


@pytest.fixture(scope="session")
def service(model_file, tmp_path_factory):
    svc = start_service(tmp_path_factory.mktemp("service"), "--slots", "2", "--max-waiting", "2")
    yield svc
    stop_process(svc.process)


@dataclass
class Edge:
    base_url: str
    process: subprocess.Popen
    log_path: Path


def start_edge(target: str, log_path: Path, **env_overrides: str) -> Edge:
    """Real gunicorn with rest_edge.gunicorn_conf in front of ``target``; waits for /health 200."""
    port = free_port()
    env = {**os.environ, "INFERENCE_TARGET": target, "EDGE_BIND": f"127.0.0.1:{port}",
           "EDGE_WORKERS": "1", "EDGE_THREADS": "8", "EDGE_API_KEYS": "", **env_overrides}
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:rest_edge.gunicorn_conf"],
        cwd=REPO, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return Edge(base_url=base, process=proc, log_path=log_path)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"edge did not come up:\n{log_path.read_text(errors='replace')}")
        time.sleep(0.1)


@pytest.fixture(scope="session")
def edge(service, tmp_path_factory):
    running = start_edge(service.address, tmp_path_factory.mktemp("edge") / "gunicorn.log")
    yield running
    stop_process(running.process)
