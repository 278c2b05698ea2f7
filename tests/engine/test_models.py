"""gguf_compat on tiny GGUF files written here, and the registry's error paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from inference_service.errors import ModelLoadError, ModelNotFound
from inference_service.models import gguf_compat
from inference_service.models.packaged import sha256_of, verify_sha256
from inference_service.models.registry import ModelRegistry

TOKENS = ["a", "b", "Ċ", "<|im_end|>", "ab"]
EMBEDDINGS = np.arange(len(TOKENS) * 8, dtype=np.float32).reshape(len(TOKENS), 8)


def write_gguf(path: Path, *, tokens=TOKENS, scores: bool = False, output_weight: bool = False) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    if scores:
        writer.add_token_scores([0.5] * len(tokens))
    writer.add_uint32("llama.context_length", 64)
    writer.add_tensor("token_embd.weight", EMBEDDINGS)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(8, dtype=np.float32))
    if output_weight:
        writer.add_tensor("output.weight", EMBEDDINGS * 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data) for t in GGUFReader(path).tensors}


@pytest.fixture
def modern(tmp_path) -> Path:
    """Like current converters write: no scores, tied output, byte-level newline."""
    return write_gguf(tmp_path / "modern.gguf")


def test_inspect_sees_the_three_fixes(modern):
    fixes = gguf_compat.inspect_fixes(GGUFReader(modern))
    assert fixes == gguf_compat.CompatFixes(add_scores=True, add_output_weight=True, rename_newline_token=2)
    assert fixes.needed
    assert gguf_compat.needs_rewrite(modern) is True


def test_rewrite_adds_scores_output_weight_and_newline(modern, tmp_path):
    destination = tmp_path / "compat.gguf"
    fixes = gguf_compat.rewrite_for_ctransformers(modern, destination)
    assert fixes.needed
    reader = GGUFReader(destination)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert reader.fields["llama.context_length"].contents() == 64
    assert reader.fields["tokenizer.ggml.tokens"].contents() == ["a", "b", "\n", "<|im_end|>", "ab"]
    assert reader.fields["tokenizer.ggml.scores"].contents() == [0.0] * len(TOKENS)
    data = tensors(destination)
    assert sorted(data) == ["blk.0.attn_norm.weight", "output.weight", "token_embd.weight"]
    np.testing.assert_array_equal(data["token_embd.weight"], EMBEDDINGS)
    np.testing.assert_array_equal(data["output.weight"], EMBEDDINGS)
    np.testing.assert_array_equal(data["blk.0.attn_norm.weight"], np.ones(8, dtype=np.float32))
    assert gguf_compat.needs_rewrite(destination) is False
    assert not list(tmp_path.glob("*.tmp*")), "no temporary file left behind"
    # the source is untouched
    assert GGUFReader(modern).fields["tokenizer.ggml.tokens"].contents() == TOKENS


def test_file_needing_nothing(tmp_path):
    path = write_gguf(tmp_path / "old.gguf", tokens=["a", "\n", "b"], scores=True, output_weight=True)
    fixes = gguf_compat.inspect_fixes(GGUFReader(path))
    assert fixes == gguf_compat.CompatFixes(add_scores=False, add_output_weight=False, rename_newline_token=None)
    assert gguf_compat.needs_rewrite(path) is False


def test_only_the_missing_fix_is_applied(tmp_path):
    path = write_gguf(tmp_path / "partial.gguf", scores=True, output_weight=True)
    fixes = gguf_compat.inspect_fixes(GGUFReader(path))
    assert fixes == gguf_compat.CompatFixes(add_scores=False, add_output_weight=False, rename_newline_token=2)
    destination = tmp_path / "fixed.gguf"
    gguf_compat.rewrite_for_ctransformers(path, destination)
    reader = GGUFReader(destination)
    assert reader.fields["tokenizer.ggml.scores"].contents() == [0.5] * len(TOKENS)
    np.testing.assert_array_equal(tensors(destination)["output.weight"], EMBEDDINGS * 2)  # kept, not replaced


@pytest.mark.model
def test_the_default_model_is_served_from_a_compat_copy(model_file):
    # registry.loadable() returns the source itself when nothing needs fixing, so a
    # different, cached path means the shipped file needed the rewrite. (Reading the
    # 98 MB file again with GGUFReader takes seconds; the engine tests load the copy.)
    assert model_file.loadable_path != model_file.source_path
    assert model_file.loadable_path.parent.name == "compat"
    assert model_file.loadable_path.stat().st_size > model_file.source_path.stat().st_size


# --- registry ---------------------------------------------------------------------------


def quiet_registry(tmp_path: Path) -> ModelRegistry:
    messages: list[str] = []
    registry = ModelRegistry(cache_dir=tmp_path / "cache", progress=messages.append)
    registry.messages = messages  # type: ignore[attr-defined]
    return registry


def test_missing_local_file_names_the_path(tmp_path):
    with pytest.raises(ModelLoadError) as info:
        quiet_registry(tmp_path).resolve("name=/path/that/does/not/exist")
    assert "/path/that/does/not/exist" in str(info.value)


def test_non_gguf_file_is_a_model_load_error(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"this is not a GGUF file at all" * 10)
    resolved = quiet_registry(tmp_path).resolve(f"notes={path}")  # found; read only when made loadable
    with pytest.raises(ModelLoadError) as info:
        resolved.loadable_path
    assert str(path) in str(info.value)


def test_local_gguf_is_rewritten_once_into_the_cache(modern, tmp_path):
    registry = quiet_registry(tmp_path)
    first = registry.resolve(f"tiny:1={modern}")
    assert (first.name, first.source_path, first.owned_by, first.origin) == ("tiny:1", modern, "local", "file")
    assert registry.messages == [] and not (registry.cache_dir / "compat").exists(), "rewritten only when read"
    assert first.loadable_path.parent == registry.cache_dir / "compat"
    assert gguf_compat.needs_rewrite(first.loadable_path) is False
    assert len(registry.messages) == 1
    second = registry.resolve(f"tiny:1={modern}")
    assert second.loadable_path == first.loadable_path
    assert len(registry.messages) == 1  # cached: not rewritten again


def test_local_gguf_needing_nothing_is_served_as_is(tmp_path):
    path = write_gguf(tmp_path / "old.gguf", tokens=["a", "\n"], scores=True, output_weight=True)
    resolved = quiet_registry(tmp_path).resolve(f"old={path}")
    assert resolved.loadable_path == path


def test_unknown_packaged_model_is_not_found(tmp_path):
    with pytest.raises(ModelNotFound) as info:
        quiet_registry(tmp_path).resolve("no-such-model:1b")
    assert "no-such-model:1b" in str(info.value)
    assert "smollm2:135m" in str(info.value) and "gemma3:270m" in str(info.value)  # the known names are listed


def test_checksum_verification(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"hello\n")
    expected = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"  # sha256 of b"hello\n"
    assert sha256_of(path) == expected
    verify_sha256(path, expected)  # passes silently
    wrong = "0" * 64
    with pytest.raises(ModelLoadError) as info:
        verify_sha256(path, wrong)
    message = str(info.value)
    assert "checksum mismatch" in message and "blob.bin" in message
    assert wrong in message and expected in message


def test_cached_path_is_filesystem_safe(tmp_path):
    registry = quiet_registry(tmp_path)
    assert registry.cached_path("smollm2:135m") == registry.cache_dir / "models" / "smollm2-135m.gguf"
