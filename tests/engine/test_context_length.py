"""The context a model is served with: the configured one, never more than the model's own."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFWriter

from inference_service.engine.engine import EngineConfig, effective_context_length
from inference_service.engine.tokenizer import GGUFVocabulary


@pytest.mark.parametrize("configured, model_context, expected", [
    (4096, 8192, 4096),  # the default model: its own context is larger, the configured one wins
    (4096, 2048, 2048),  # a model trained for less: never more than its own
    (4096, 4096, 4096),
    (512, 2048, 512),
    (4096, None, 4096),  # the file does not say
    (4096, 0, 4096),  # nor does a zero
])
def test_the_smaller_of_the_configured_and_the_models_own(configured, model_context, expected):
    assert effective_context_length(configured, model_context) == expected


def _gguf(path: Path, context_length: int | None) -> Path:
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    if context_length is not None:
        writer.add_uint32("llama.context_length", context_length)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("context_length", [64, None])
def test_the_vocabulary_reads_the_models_own_context(tmp_path, context_length):
    vocab = GGUFVocabulary.read(_gguf(tmp_path / "tiny.gguf", context_length))
    assert vocab.context_length == context_length
    assert vocab.context_length is None or type(vocab.context_length) is int


@pytest.mark.model
def test_the_default_model_is_served_with_the_configured_context(tokenizer):
    assert tokenizer.vocab.context_length == 8192
    assert effective_context_length(EngineConfig().context_length, tokenizer.vocab.context_length) == 4096
