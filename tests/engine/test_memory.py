"""The memory bound's parts: KV cache size from the GGUF, untokenized refusal of huge texts, trim."""

from __future__ import annotations

import pytest

from inference_service.engine.memory import kv_cache_bytes, release_freed_memory
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


def test_release_freed_memory_is_safe_to_call():
    release_freed_memory()
    release_freed_memory()
