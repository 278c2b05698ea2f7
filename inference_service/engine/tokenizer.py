"""Tokenization in Python from a GGUF file's own vocabulary.

ctransformers' 2023 BPE tokenizer does not map GPT-2 byte-level symbols and does not
parse special tokens, so the engine hands it token ids made here instead. The
``tokenizers`` library builds the same byte-level BPE that llama.cpp builds from the
GGUF ``tokens`` and ``merges``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from gguf import GGUFReader
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizers by tokenizer.ggml.pre: "split digits one by one" first, then the GPT-2 regex.
# (Qwen2's own regex differs from GPT-2's: its files go to the llama.cpp engine's tokenizer.)
_DIGIT_SPLITTING_PRE = {"smollm", "starcoder", "refact", "command-r", "deepseek-coder"}
# The pre-tokenizers this tokenizer reproduces exactly (the GPT-2 regex, with or without
# digits split one by one); a vocabulary with any other goes to llama.cpp's tokenizer.
SUPPORTED_PRE_TOKENIZERS = frozenset(_DIGIT_SPLITTING_PRE | {"default", "gpt-2", "gpt2"})


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes→printable-unicode table used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, codes)}


@dataclass(frozen=True)
class GGUFVocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_token_id: int | None
    eos_token_id: int | None
    chat_template: str | None
    add_bos: bool
    # The context the model was trained for (``<arch>.context_length``); the engine serves at
    # most this much (``engine.effective_context_length``). None when the file does not say.
    context_length: int | None

    @classmethod
    def read(cls, path: Path) -> "GGUFVocabulary":
        reader = GGUFReader(path)
        fields = reader.fields

        def value(key: str, default=None):
            field = fields.get(key)
            return field.contents() if field is not None else default

        arch = value("general.architecture", "llama")
        context_length = value(f"{arch}.context_length")
        model = value("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"tokenizer model {model!r} is not supported (only byte-level BPE, 'gpt2')")
        return cls(
            tokens=list(value("tokenizer.ggml.tokens", [])),
            token_types=list(value("tokenizer.ggml.token_type", [])),
            merges=list(value("tokenizer.ggml.merges", [])),
            pre=value("tokenizer.ggml.pre", "default"),
            bos_token_id=value("tokenizer.ggml.bos_token_id"),
            eos_token_id=value("tokenizer.ggml.eos_token_id"),
            chat_template=value("tokenizer.chat_template"),
            add_bos=bool(value("tokenizer.ggml.add_bos_token", False)),
            context_length=int(context_length) if context_length is not None else None,
        )


class TokenPieces:
    """The byte view of a vocabulary that streaming and logprobs need, whoever tokenizes.

    Subclasses set ``vocab``, ``special_ids`` (control tokens: markup, never text) and
    ``_token_bytes`` (each token's bytes; empty for control tokens).
    """

    vocab: GGUFVocabulary
    special_ids: frozenset[int]
    _token_bytes: list[bytes]

    @property
    def longest_token_bytes(self) -> int:
        return max(1, max(map(len, self._token_bytes)))

    @property
    def vocab_size(self) -> int:
        return len(self._token_bytes)

    def decode(self, token_ids: Sequence[int]) -> str:
        return b"".join(self._token_bytes[i] for i in token_ids).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes[token_id]

    def token_text(self, token_id: int) -> str:
        """The token as readable text (for logprobs); broken UTF-8 shows as U+FFFD."""
        if token_id in self.special_ids:
            return self.vocab.tokens[token_id]
        return self._token_bytes[token_id].decode("utf-8", errors="replace")


class TextTokenizer(TokenPieces):
    """Byte-level BPE tokenizer plus the byte view of every token the streamer needs."""

    def __init__(self, vocab: GGUFVocabulary):
        self.vocab = vocab
        self.add_bos = vocab.add_bos  # prompts start with BOS (the GGUF's add_bos_token)
        token_to_id = {token: i for i, token in enumerate(vocab.tokens)}
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
        bpe = models.BPE(vocab=token_to_id, merges=merges, fuse_unk=False, byte_fallback=False)
        tokenizer = Tokenizer(bpe)
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if vocab.pre in _DIGIT_SPLITTING_PRE:
            tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), byte_level]
            )
        else:
            tokenizer.pre_tokenizer = byte_level
        tokenizer.decoder = decoders.ByteLevel()
        special_ids = [
            i for i, t in enumerate(vocab.token_types) if t in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED)
        ]
        tokenizer.add_special_tokens(
            [AddedToken(vocab.tokens[i], special=True, normalized=False) for i in special_ids]
        )
        self._markup_tokenizer = tokenizer
        # A twin that reads control-token markup as the characters it is: for user text.
        # (Two objects, not one with a toggled flag: encoding runs on many threads.)
        self._text_tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._text_tokenizer.encode_special_tokens = True
        self.special_ids = frozenset(i for i in special_ids if vocab.token_types[i] == TOKEN_TYPE_CONTROL)
        # Every string the markup tokenizer turns into one special token, longest first.
        self.markup_strings: tuple[str, ...] = tuple(
            sorted((vocab.tokens[i] for i in special_ids), key=len, reverse=True)
        )
        byte_decoder = _byte_decoder()
        # Control tokens decode to nothing: they are markup, never text.
        self._token_bytes: list[bytes] = [
            b"" if i in self.special_ids else bytes(byte_decoder.get(ch, 0x3F) for ch in token)
            if all(ch in byte_decoder for ch in token)
            else token.encode("utf-8")
            for i, token in enumerate(vocab.tokens)
        ]

    @classmethod
    def from_gguf(cls, path: Path) -> "TextTokenizer":
        return cls(GGUFVocabulary.read(path))

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` as text: ``<|im_end|>`` in it gives the tokens of its characters."""
        return self._text_tokenizer.encode(text, add_special_tokens=False).ids

    def encode_markup(self, text: str) -> list[int]:
        """Token ids of text whose special-token markup (``<|im_start|>``…) becomes control tokens.

        Only for text the caller or the chat template wrote as markup (raw prompts).
        """
        return self._markup_tokenizer.encode(text, add_special_tokens=False).ids

    def token_id(self, token: str) -> int | None:
        return self._markup_tokenizer.token_to_id(token)
