"""TextTokenizer built from the default model's GGUF: known ids and lossless round trips.

The expected ids are those current llama.cpp gives for SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.model  # reads the default model's GGUF (pulled once, then cached)

KNOWN_IDS = [
    ("Hello world", [19556, 905]),
    # smollm pre-tokenizer: digits one by one, then the GPT-2 regex.
    ("12345 apples", [33, 34, 35, 36, 37, 13855]),
    # Control tokens in text are parsed as single tokens.
    ("<|im_start|>user\nHi<|im_end|>\n", [1, 4093, 198, 26843, 2, 198]),
    # No prefix space is added: "world" is not " world" (905, "Ġworld").
    ("world", [6693]),
]


@pytest.mark.parametrize("text, ids", KNOWN_IDS, ids=[repr(t) for t, _ in KNOWN_IDS])
def test_known_ids(tokenizer, text, ids):
    assert tokenizer.encode_markup(text) == ids


ROUND_TRIPS = [
    "The quick brown fox jumps over the lazy dog.",
    "请用中文回答：你好吗？",
    "日本語のテキストと한국어",
    "emoji 😀👍🏽 and family 👨‍👩‍👧",
    "café naïve résumé Ångström Øre",
    "spaces   runs\t\ttabs\n\n\nnewlines    end  ",
    "   leading spaces",
    "x = [1, 22, 333]; y = {'k': 4444}",
    "mixed 中文 and English 123 😀",
]


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_decode_inverts_encode(tokenizer, text):
    ids = tokenizer.encode_markup(text)
    assert ids, "non-empty text gives tokens"
    assert tokenizer.decode(ids) == text
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == text.encode("utf-8")


def test_vocabulary_facts(tokenizer):
    vocab = tokenizer.vocab
    assert tokenizer.vocab_size == 49152
    assert vocab.pre == "smollm"
    assert (vocab.bos_token_id, vocab.eos_token_id) == (1, 2)
    assert [tokenizer.token_id(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] == [0, 1, 2]
    assert vocab.tokens[198] == "Ċ"  # the byte-level newline, decoded as "\n"
    assert tokenizer.token_bytes(198) == b"\n"


def test_control_tokens_decode_to_nothing(tokenizer):
    assert tokenizer.decode([1, 4093, 198, 26843, 2]) == "user\nHi"
    assert tokenizer.token_bytes(2) == b""
    assert tokenizer.token_text(2) == "<|im_end|>"  # readable for logprobs


def test_a_chinese_character_spans_tokens(tokenizer):
    """Why the streamer must hold bytes back: single tokens carry partial characters."""
    ids = tokenizer.encode_markup("你")
    assert ids == [18645, 250]
    assert [tokenizer.token_bytes(i) for i in ids] == [b"\xe4\xbd", b"\xa0"]
    assert tokenizer.token_text(18645) == "\ufffd"  # half a character is not text
    assert tokenizer.decode(ids) == "你"


def test_emoji_spans_tokens(tokenizer):
    ids = tokenizer.encode_markup("😀")
    assert ids == [10813, 242, 218]
    assert b"".join(tokenizer.token_bytes(i) for i in ids) == "😀".encode("utf-8")
