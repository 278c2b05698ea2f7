"""Fixtures shared by the engine tests: the default model's own tokenizer and template.

Building the tokenizer from the GGUF takes a couple of seconds, so it is done once.
"""

from __future__ import annotations

import pytest

from inference_service.engine.chat_template import ChatTemplate
from inference_service.engine.tokenizer import TextTokenizer


@pytest.fixture(scope="session")
def tokenizer(model_file) -> TextTokenizer:
    return TextTokenizer.from_gguf(model_file.source_path)


@pytest.fixture(scope="session")
def template(tokenizer) -> ChatTemplate:
    vocab = tokenizer.vocab
    assert vocab.chat_template, "the default model ships a chat template"
    return ChatTemplate(vocab.chat_template, vocab.tokens[vocab.bos_token_id], vocab.tokens[vocab.eos_token_id])
