"""The memory bound's parts: KV cache size from the GGUF, untokenized refusal of huge texts, trim."""

from __future__ import annotations

import platform

import pytest

from inference_service.engine import engine as engine_module
from inference_service.engine import memory
from inference_service.engine.memory import TRIM_AFTER_CHARS, kv_cache_bytes
from inference_service.engine.types import ChatMessage, GenerationRequest
from inference_service.errors import ContextLengthExceeded


def test_kv_cache_bytes_follow_the_models_shape(model_file):
    # SmolLM2-135M: 30 layers, 576 wide, 9 heads of which 3 KV heads -> 192 KV values per
    # token and layer, keys and values, f16.
    assert kv_cache_bytes(model_file.source_path, 4096) == 2 * 30 * 4096 * 192 * 2
    assert kv_cache_bytes(model_file.source_path, 1024) * 4 == kv_cache_bytes(model_file.source_path, 4096)


def test_text_no_context_can_hold_is_refused_before_tokenizing(engine, monkeypatch):
    model = engine.model("smollm2:135m")
    monkeypatch.setattr(model, "prompt_ids", lambda request: pytest.fail("tokenized a prompt that cannot fit"))
    huge = "x" * (model.max_prompt_chars + 1)
    for request in (GenerationRequest(model="smollm2:135m", prompt=huge),
                    GenerationRequest(model="smollm2:135m", messages=(ChatMessage("user", huge),))):
        with pytest.raises(ContextLengthExceeded) as info:
            engine.prepare(request)
        assert str(model.max_prompt_chars) in str(info.value)
        assert info.value.param == ("messages" if request.messages else "prompt")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_glibc_s_malloc_trim_is_found():
    assert memory._malloc_trim() is not None, "release_freed_memory would silently do nothing"


def test_only_a_large_text_is_followed_by_a_heap_trim(engine, monkeypatch):
    trims = []
    monkeypatch.setattr(engine_module, "release_freed_memory", lambda: trims.append(1))
    engine.prepare(GenerationRequest(model="smollm2:135m", prompt="Hello there", max_tokens=4))
    assert trims == []
    large = "word " * (TRIM_AFTER_CHARS // 5 + 1)  # tokenized, then too long for the context
    with pytest.raises(ContextLengthExceeded):
        engine.prepare(GenerationRequest(model="smollm2:135m", prompt=large))
    assert trims == [1]
