"""Start and stop the real processes: the inference service, the REST edge on gunicorn, or
any HTTP server (the benchmark's peer). Plain Python, no pytest: used by tests/conftest.py
(which turns a RuntimeError into pytest.fail) and by bench/, neither importing the other.

Every process gets its own session (process group), so ``stop_process`` ends it with its
children (gunicorn's workers). Every wait is bounded; a process that exits or does not become
ready in time is stopped and a RuntimeError carries the tail of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import grpc
import httpx

from harness.polling import NeverHappened, eventually

REPO = Path(__file__).resolve().parents[1]
LOG_TAIL = 4000  # characters of a failed process's log quoted in the error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM (the whole group when the process leads one), SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    send(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(10)


@dataclass
class Process:
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        stop_process(self.process)


@dataclass
class Service(Process):
    address: str  # host:port

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)


@dataclass
class HttpServer(Process):
    base_url: str  # http://127.0.0.1:port


P = TypeVar("P", bound=Process)


def _spawn(argv: Sequence[str], log_path: Path, env: dict | None = None, cwd: Path = REPO) -> subprocess.Popen:
    with log_path.open("wb") as log:
        return subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def wait_until(running: P, ready: Callable[[], bool], what: str, timeout: float) -> P:
    """Polls ``ready`` until true; stops the process and raises if it exits or time runs out."""
    def exited():
        code = running.process.poll()
        return None if code is None else f"exited with {code}"

    try:
        eventually(ready, what, timeout=timeout, interval=0.2, give_up=exited)
    except NeverHappened as problem:
        stop_process(running.process)
        raise RuntimeError(f"{problem}; {running.log_path}:\n{running.log()[-LOG_TAIL:]}") from None
    return running


def _serving(address: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        except grpc.RpcError:
            return False
    return status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_service(log_path: Path, *args: str, timeout: float = 300, cwd: Path = REPO) -> Service:
    """``python -m inference_service serve`` on a free loopback port (the package of the tree
    at ``cwd``); waits for SERVING."""
    address = f"127.0.0.1:{free_port()}"
    proc = _spawn([sys.executable, "-m", "inference_service", "serve", "--address", address, *args], log_path, cwd=cwd)
    return wait_until(Service(proc, log_path, address), lambda: _serving(address), "inference service", timeout)


def start_http_server(argv: Sequence[str], base_url: str, log_path: Path, *, ready_path: str = "/health",
                      env: dict | None = None, timeout: float = 180, cwd: Path = REPO) -> HttpServer:
    """Any HTTP server command (run in ``cwd``); waits until GET base_url + ready_path answers 200."""
    proc = _spawn(argv, log_path, env, cwd=cwd)
    running = HttpServer(proc, log_path, base_url)
    return wait_until(running, lambda: http_ok(base_url + ready_path), Path(argv[0]).name, timeout)


def start_edge(target: str, log_path: Path, *, gunicorn_args: Sequence[str] = (), timeout: float = 60,
               cwd: Path = REPO, **env_overrides: str) -> HttpServer:
    """Real gunicorn with rest_edge.gunicorn_conf (of the tree at ``cwd``) in front of
    ``target``; waits for /health 200 (which needs the service behind it SERVING). One worker,
    8 threads, no API keys unless overridden (EDGE_WORKERS=..., EDGE_THREADS=...)."""
    port = free_port()
    env = {**os.environ, "INFERENCE_TARGET": target, "EDGE_BIND": f"127.0.0.1:{port}",
           "EDGE_WORKERS": "1", "EDGE_THREADS": "8", "EDGE_API_KEYS": "", **env_overrides}
    argv = [str(Path(sys.executable).with_name("gunicorn")), "-c", "python:rest_edge.gunicorn_conf", *gunicorn_args]
    return start_http_server(argv, f"http://127.0.0.1:{port}", log_path, env=env, timeout=timeout, cwd=cwd)
