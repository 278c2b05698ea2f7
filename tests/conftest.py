"""Session fixtures for tests that use the real parts.

- ``engine``: the real default model, in process (two slots).
- ``service``: the real inference service as a subprocess (``python -m inference_service``).
- ``edge``: real gunicorn running the REST edge in front of ``service``.

Each starts once per session and only when a test asks for it. Starting and stopping the
processes is harness/processes.py (shared with bench/); here a failure to start is pytest.fail.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import pytest

from harness import processes
from harness.processes import REPO, HttpServer, Service, free_port, stop_process  # noqa: F401  (used by tests)

DEFAULT_MODEL = "smollm2:135m"
Edge = HttpServer


@pytest.fixture(scope="session")
def model_file():
    from inference_service.models.registry import ModelRegistry

    return ModelRegistry().resolve(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def engine(model_file):
    from inference_service.engine.engine import Engine, EngineConfig

    return Engine.load([model_file], EngineConfig(slots=2, max_waiting=4))


def start_service(tmp_dir: Path, *extra_args: str) -> Service:
    """The real service (``python -m inference_service serve``), SERVING; its log in tmp_dir."""
    try:
        return processes.start_service(tmp_dir / "inference_service.log", *extra_args)
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="session")
def service(model_file, tmp_path_factory):
    svc = start_service(tmp_path_factory.mktemp("service"), "--slots", "2", "--max-waiting", "2")
    yield svc
    stop_process(svc.process)


def start_edge(target: str, log_path: Path, **env_overrides: str) -> Edge:
    """Real gunicorn with rest_edge.gunicorn_conf in front of ``target``; waits for /health 200."""
    try:
        return processes.start_edge(target, log_path, **env_overrides)
    except RuntimeError as error:
        pytest.fail(str(error))


@contextlib.contextmanager
def edge_over(target: str, log_dir: Path, **env_overrides: str) -> Iterator[Edge]:
    """:func:`start_edge` in front of ``target`` (its log in ``log_dir``), stopped after the block."""
    running = start_edge(target, log_dir / "gunicorn.log", **env_overrides)
    try:
        yield running
    finally:
        stop_process(running.process)


@pytest.fixture(scope="session")
def edge(service, tmp_path_factory):
    with edge_over(service.address, tmp_path_factory.mktemp("edge")) as running:
        yield running
