"""The resolver's first source, local files, and the lazy ctransformers rewrite."""

from __future__ import annotations

import pytest

from inference_service.errors import ModelLoadError
from inference_service.models.registry import ModelFile, ModelRegistry
from tests.models.conftest import write_tiny_gguf


@pytest.fixture
def registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(cache_dir=tmp_path / "cache", progress=lambda message: None, ollama_dir=tmp_path / "no-ollama")


def test_a_plain_path_is_named_by_its_stem(registry, tmp_path):
    path = write_tiny_gguf(tmp_path / "My-Model.Q4_0.gguf")
    model = registry.resolve(str(path))
    assert (model.name, model.source_path, model.owned_by, model.origin) == ("My-Model.Q4_0", path, "local", "file")


def test_a_plain_path_may_contain_an_equals_sign(registry, tmp_path):
    path = write_tiny_gguf(tmp_path / "a=b.gguf")
    assert registry.resolve(str(path)).name == "a=b"


def test_name_equals_path(registry, tmp_path):
    path = write_tiny_gguf(tmp_path / "file.gguf")
    model = registry.resolve(f"served:name={path}")
    assert (model.name, model.source_path) == ("served:name", path)


def test_name_equals_a_missing_path(registry, tmp_path):
    with pytest.raises(ModelLoadError, match=f"model file {tmp_path}/missing.gguf does not exist"):
        registry.resolve(f"x={tmp_path}/missing.gguf")


def test_the_rewrite_happens_when_loadable_path_is_first_read(tmp_path):
    path = write_tiny_gguf(tmp_path / "modern.gguf")  # no scores, no output.weight: needs the rewrite
    calls = []

    def make_loadable(source):
        calls.append(source)
        return tmp_path / "compat.gguf"

    model = ModelFile(name="m", source_path=path, owned_by="local", make_loadable=make_loadable)
    assert calls == [] and model.origin == "file"
    assert model.loadable_path == tmp_path / "compat.gguf"
    assert model.loadable_path == tmp_path / "compat.gguf"
    assert calls == [path], "once"


def test_resolving_never_rewrites(registry, tmp_path):
    model = registry.resolve(str(write_tiny_gguf(tmp_path / "modern.gguf")))
    assert not (registry.cache_dir / "compat").exists()
    assert model.loadable_path.parent == registry.cache_dir / "compat"
