"""hf.co/OWNER/REPO[:QUANT]: which file is chosen, and the real huggingface_hub client against a local hub.

The client reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every
download runs ``python -m inference_service pull`` in a subprocess with its own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.processes import REPO
from inference_service.errors import ModelNotFound
from inference_service.models.huggingface import HfReference, pick_gguf
from tests.models.conftest import write_tiny_gguf
from tests.models.fake_hub import FakeHub

REPO_ID = "someone/Tiny-GGUF"


# --- names and the choice of file ------------------------------------------------------------


@pytest.mark.parametrize(("spec", "repo_id", "quant"), [
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF", "bartowski/Llama-3.2-1B-Instruct-GGUF", None),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "bartowski/Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
    ("huggingface.co/o/r:iq4_xs", "o/r", "iq4_xs"),
    ("hf.co/o/r:latest", "o/r", None),
])
def test_hugging_face_names(spec, repo_id, quant):
    assert HfReference.parse(spec) == HfReference(repo_id, quant)


@pytest.mark.parametrize("spec", ["smollm2:135m", "hf.co/only-owner", "hf.co/o/r/extra", "hf.co/../r", "example.com/o/r"])
def test_other_names_are_not_hugging_face_names(spec):
    assert HfReference.parse(spec) is None


FILES = ["README.md", "model-Q2_K.gguf", "model-Q4_K_M.gguf", "model-Q4_K_S.gguf", "model-Q8_0.gguf",
         "mmproj-model-f16.gguf"]


@pytest.mark.parametrize(("quant", "chosen"), [
    ("Q8_0", "model-Q8_0.gguf"), ("q4_k_m", "model-Q4_K_M.gguf"), ("Q4_K_S", "model-Q4_K_S.gguf"),
])
def test_a_quant_picks_its_file_case_insensitively(quant, chosen):
    assert pick_gguf(FILES, quant, "the repo") == chosen


def test_without_a_quant_q4_k_m_is_preferred():
    assert pick_gguf(FILES, None, "the repo") == "model-Q4_K_M.gguf"


def test_without_q4_k_m_the_preference_list_decides():
    assert pick_gguf(["a.Q8_0.gguf", "a.Q5_K_M.gguf", "a.F16.gguf"], None, "the repo") == "a.Q5_K_M.gguf"
    assert pick_gguf(["sub/only-one.gguf", "mmproj-x.gguf"], None, "the repo") == "sub/only-one.gguf"


def test_a_quant_is_a_whole_word():
    # Q4_K names neither Q4_K_M nor Q4_K_S, and IQ4_XS is not Q4_XS.
    assert pick_gguf(["m-Q4_K.gguf", "m-Q4_K_M.gguf", "m-Q4_K_S.gguf"], "Q4_K", "the repo") == "m-Q4_K.gguf"
    assert pick_gguf(["m-IQ4_XS.gguf", "m-Q4_0.gguf"], "IQ4_XS", "the repo") == "m-IQ4_XS.gguf"


@pytest.mark.parametrize(("files", "quant", "problem"), [
    (FILES, "Q5_K_M", "no file for quantization 'Q5_K_M'"),
    (["a-Q4_K_M-00001-of-00002.gguf", "a-Q4_K_M-00002-of-00002.gguf"], "Q4_K_M", "more than one file"),
    (["a.gguf", "b.gguf"], None, "cannot choose a file, name one with :QUANT"),
])
def test_a_missing_or_ambiguous_choice_lists_the_gguf_files(files, quant, problem):
    with pytest.raises(ModelNotFound) as info:
        pick_gguf(files, quant, "https://hub/o/r")
    message = str(info.value)
    assert message.startswith(problem)
    assert "GGUF files in https://hub/o/r: " in message
    assert all(f in message for f in files if f.endswith(".gguf") and "mmproj" not in f)
    assert "mmproj" not in message and "README" not in message


def test_a_repo_without_gguf_files():
    with pytest.raises(ModelNotFound) as info:
        pick_gguf(["README.md", "model.safetensors", "mmproj-x.gguf"], None, "https://hub/o/r")
    assert str(info.value) == "no GGUF file in https://hub/o/r (files: README.md, mmproj-x.gguf, model.safetensors)"


# --- the real client against a local hub -----------------------------------------------------


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("repo")
    files = {name: write_tiny_gguf(folder / name, label=name).read_bytes()
             for name in ("Tiny-Q4_K_M.gguf", "Tiny-Q8_0.gguf", "mmproj-Tiny-F16.gguf")}
    files["README.md"] = b"# Tiny\n"
    return files


@pytest.fixture
def hub(repo_files):
    with FakeHub({REPO_ID: repo_files}) as running:
        yield running


def pull(spec: str, tmp_path: Path, hub: FakeHub, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    environment.update(
        HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1",
        INFERENCE_SERVICE_CACHE=str(tmp_path / "cache"), OLLAMA_MODELS=str(tmp_path / "no-ollama"), **env,
    )
    return subprocess.run([sys.executable, "-m", "inference_service", "pull", spec], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=120)


def pulled_path(done: subprocess.CompletedProcess) -> Path:
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def test_the_default_file_lands_in_the_hub_cache_under_hf_home(hub, repo_files, tmp_path):
    path = pulled_path(pull(f"hf.co/{REPO_ID}", tmp_path, hub, HF_TOKEN="hf_test_token"))
    assert path.name == "Tiny-Q4_K_M.gguf"
    assert path.is_relative_to(tmp_path / "hf-home" / "hub" / "models--someone--Tiny-GGUF")
    assert path.read_bytes() == repo_files["Tiny-Q4_K_M.gguf"]
    assert not (tmp_path / "cache" / "models").exists(), "the hub's cache, not ours"
    downloads = hub.paths("GET")
    assert f"/{REPO_ID}/resolve/main/Tiny-Q4_K_M.gguf" in downloads
    assert not any("Q8_0" in p or "mmproj" in p for p in downloads)
    assert all(h.get("authorization") == "Bearer hf_test_token" for _, p, h in hub.requests if REPO_ID in p)


def test_a_quant_downloads_only_its_file(hub, repo_files, tmp_path):
    path = pulled_path(pull(f"huggingface.co/{REPO_ID}:q8_0", tmp_path, hub))
    assert path.name == "Tiny-Q8_0.gguf" and path.read_bytes() == repo_files["Tiny-Q8_0.gguf"]


def test_a_missing_quant_is_a_one_line_error_listing_the_files(hub, tmp_path):
    done = pull(f"hf.co/{REPO_ID}:Q5_K_M", tmp_path, hub)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(
        f"error: no file for quantization 'Q5_K_M'; GGUF files in {hub.url}/{REPO_ID}: Tiny-Q4_K_M.gguf, Tiny-Q8_0.gguf;")
    assert done.stderr.count("\n") == 1


def test_an_unknown_repo_is_not_found(hub, tmp_path):
    done = pull("hf.co/someone/Nothing-GGUF", tmp_path, hub)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"error: no Hugging Face repo {hub.url}/someone/Nothing-GGUF ")
    assert done.stderr.count("\n") == 1


def test_offline_mode_serves_what_was_downloaded(hub, tmp_path):
    online = pulled_path(pull(f"hf.co/{REPO_ID}:Q8_0", tmp_path, hub))
    requests_before = len(hub.requests)
    offline = pulled_path(pull(f"hf.co/{REPO_ID}:Q8_0", tmp_path, hub, HF_HUB_OFFLINE="1"))
    assert offline == online
    assert pulled_path(pull(f"hf.co/{REPO_ID}", tmp_path, hub, HF_HUB_OFFLINE="1")) == online  # the only cached one
    assert len(hub.requests) == requests_before, "offline: the hub is never asked"

    done = pull(f"hf.co/{REPO_ID}:Q4_K_M", tmp_path, hub, HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: no file for quantization 'Q4_K_M'; GGUF files in the Hugging Face cache "
                                  f"of {REPO_ID}: Tiny-Q8_0.gguf;")


def test_offline_without_a_cache_says_so(hub, tmp_path):
    done = pull(f"hf.co/{REPO_ID}", tmp_path, hub, HF_HUB_OFFLINE="1")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"error: cannot list {hub.url}/{REPO_ID} and nothing of it is cached: ")
    assert hub.requests == []
