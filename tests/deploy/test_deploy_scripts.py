"""The scripts the images run: deploy/service_health.py (Docker's HEALTHCHECK of the service)
against the real gRPC server over a fake engine, and deploy/prepare_model.py (the model baked
at build, or prepared once for compose) on the real default model."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.processes import REPO, free_port
from inference_service.server import create_server
from tests.service.fake_engine import FakeEngine

SAFETY = 60  # seconds: bounds a hang only


def health_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "deploy" / "service_health.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=SAFETY, env=env)


@pytest.fixture
def server():
    running = create_server(FakeEngine(), "127.0.0.1:0", serving=False)
    yield running
    running.server.stop(None)


def test_health_check_follows_the_service_state(server):
    address = f"127.0.0.1:{server.port}"
    loading = health_check("--address", address)
    assert loading.returncode == 1 and "NOT_SERVING" in loading.stdout
    server.set_serving(True)
    serving = health_check("--address", address)
    assert serving.returncode == 0 and "SERVING" in serving.stdout
    server.drain_and_stop(grace=5)  # SIGTERM's path: NOT_SERVING, then stopped
    stopped = health_check("--address", address, "--timeout", "2")
    assert stopped.returncode == 1


def test_health_check_reads_the_port_of_inference_address(server):
    import os

    server.set_serving(True)
    env = {**os.environ, "INFERENCE_ADDRESS": f"0.0.0.0:{server.port}"}
    assert health_check(env=env).returncode == 0
    env["INFERENCE_ADDRESS"] = f"0.0.0.0:{free_port()}"  # nobody there
    assert health_check("--timeout", "2", env=env).returncode == 1


@pytest.mark.model
def test_prepare_model_caches_the_model_and_its_ctransformers_copy(model_file):
    """On the default model (already cached by the session's ``model_file``): the file, and the
    compatible copy ctransformers will load, both in the cache afterwards."""
    from inference_service.models.registry import ModelRegistry

    result = subprocess.run([sys.executable, str(REPO / "deploy" / "prepare_model.py"), "smollm2:135m"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ctransformers loads" in result.stdout
    model = ModelRegistry().resolve("smollm2:135m")
    assert str(model.loadable_path) in result.stdout and model.loadable_path.is_file()


def test_prepare_model_reports_an_unknown_model():
    result = subprocess.run([sys.executable, str(REPO / "deploy" / "prepare_model.py"), "no-such-model:1b"],
                            cwd=REPO, capture_output=True, text=True, timeout=SAFETY,
                            env={**__import__("os").environ, "OLLAMA_MODELS": str(REPO / "no-ollama-store")})
    assert result.returncode == 1
    assert result.stderr.startswith("error: no model named 'no-such-model:1b'")
