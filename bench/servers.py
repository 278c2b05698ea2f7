"""The systems under test as processes: the gRPC service (or several replicas of it), the
REST edge on gunicorn, the peer, llama-cpp-python's own OpenAI server (.bench-venv,
bench/install_peer.sh), and llama.cpp's own ``llama-server`` (bench/.build,
``bash bench/install_peer.sh llama-server``).
Started and stopped by harness/processes.py; each logs to LOG_DIR/<name>.log. A process that
does not come up stops the benchmark with its log's tail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Sequence

from bench.prompts import MODEL
from harness import processes
from harness.processes import REPO, HttpServer

PEER_PYTHON = REPO / ".bench-venv" / "bin" / "python"
LLAMA_SERVER = REPO / "bench" / ".build" / "llama-build" / "bin" / "llama-server"


def _started(start, *args, **kwargs):
    try:
        return start(*args, **kwargs)
    except RuntimeError as error:
        raise SystemExit(str(error)) from None


def start_service(slots: int, log_dir: Path, threads: int | None = None, engine: str | None = None,
                  extra_args: Sequence[str] = (), name: str = "service",
                  max_waiting: int = 64, cwd: Path = processes.REPO) -> tuple[subprocess.Popen, str]:
    """The gRPC service with ``slots`` slots (and at most ``threads`` compute threads), on
    ``engine`` (auto | ctransformers | llamacpp; None: the service's default), at most
    ``max_waiting`` requests queued for a slot, plus any ``extra_args`` of ``serve``; logs to
    LOG_DIR/<name>.log. (process, address); stop it with harness.processes.stop_process."""
    args = ["--slots", str(slots), "--max-waiting", str(max_waiting)]
    args += ["--threads", str(threads)] if threads else []
    args += (["--engine", engine] if engine else []) + list(extra_args)
    service = _started(processes.start_service, log_dir / f"{name}.log", *args, cwd=cwd)
    return service.process, service.address


def start_edge(target: str, log_dir: Path, name: str, workers: int = 1, threads: int = 16,
               routing: str | None = None, log_level: str = "warning", cwd: Path = processes.REPO) -> HttpServer:
    """The REST edge (of the tree at ``cwd``) in front of ``target`` (one address, or a comma
    list of replicas routed by ``routing``: EDGE_ROUTING, None for the edge's default), access
    log off; a context manager that stops it."""
    env = {"EDGE_ROUTING": routing} if routing else {}
    return _started(processes.start_edge, target, log_dir / f"{name}.log", cwd=cwd,
                    gunicorn_args=["--access-logfile", "/dev/null"],
                    EDGE_WORKERS=str(workers), EDGE_THREADS=str(threads), EDGE_LOG_LEVEL=log_level, **env)


def start_replicas(count: int, slots: int, log_dir: Path, name: str, threads: int | None = None,
                   engine: str | None = None, max_waiting: int = 64,
                   extra_args: Sequence[str] = ()) -> list[tuple[subprocess.Popen, str]]:
    """``count`` gRPC services alike (as :func:`start_service`), one after another, logging to
    LOG_DIR/<name>-<i>.log; [(process, address)]. If one does not come up, those already
    started are stopped before the benchmark stops. Stop them with :func:`stop_replicas`."""
    replicas: list[tuple[subprocess.Popen, str]] = []
    try:
        for i in range(count):
            replicas.append(start_service(slots, log_dir, threads, engine=engine, extra_args=extra_args,
                                          name=f"{name}-{i}", max_waiting=max_waiting))
    except BaseException:
        stop_replicas(replicas)
        raise
    return replicas


def stop_replicas(replicas: Sequence[tuple[subprocess.Popen, str]]) -> None:
    for process, _ in replicas:
        processes.stop_process(process)


def peer_argv(model_file: Path, port: int, threads: int) -> list[str]:
    """llama-cpp-python 0.3.36's server. interrupt_requests False: its default makes a new
    request cut the stream in progress short. logits_all False: its default keeps the logits
    of every prompt token (slower prompt evaluation); our engine computes last-token logits."""
    return [str(PEER_PYTHON), "-m", "llama_cpp.server", "--model", str(model_file), "--model_alias", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_batch", "512",
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
            "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False"]


def start_peer(model_file: Path, log_dir: Path, threads: int) -> HttpServer:
    """The peer on ``model_file``, ready when GET /v1/models answers; a context manager."""
    if not PEER_PYTHON.exists():
        raise SystemExit(f"{PEER_PYTHON} missing: run bash bench/install_peer.sh (or pass --skip-peer)")
    port = processes.free_port()
    return _started(processes.start_http_server, peer_argv(model_file, port, threads), f"http://127.0.0.1:{port}",
                    log_dir / "peer.log", ready_path="/v1/models")


def llama_server_argv(model_file: Path, port: int, threads: int, parallel: int, ctx_per_slot: int = 4096) -> list[str]:
    """llama.cpp's llama-server with ``parallel`` slots of ``ctx_per_slot`` tokens each
    (``-c`` is the whole KV cache, split among the slots), its continuous batching and prompt
    cache at their defaults, ``threads`` for generation and for prompt evaluation."""
    return [str(LLAMA_SERVER), "-m", str(model_file), "--host", "127.0.0.1", "--port", str(port), "-a", MODEL,
            "-c", str(ctx_per_slot * parallel), "-np", str(parallel), "-t", str(threads), "-tb", str(threads),
            "--no-webui"]


def start_llama_server(model_file: Path, log_dir: Path, threads: int, parallel: int, name: str = "llama-server",
                       ctx_per_slot: int = 4096) -> HttpServer:
    """llama-server on ``model_file``, ready when GET /health answers 200; a context manager."""
    if not LLAMA_SERVER.exists():
        raise SystemExit(f"{LLAMA_SERVER} missing: run `bash bench/install_peer.sh llama-server` first")
    port = processes.free_port()
    return _started(processes.start_http_server, llama_server_argv(model_file, port, threads, parallel, ctx_per_slot),
                    f"http://127.0.0.1:{port}", log_dir / f"{name}.log", ready_path="/health")
