"""Tokenization by llama.cpp's own vocabulary, for models the llama.cpp engine serves.

The ``tokenizers``-built tokenizer (``tokenizer.py``) reproduces llama.cpp for byte-level
BPE vocabularies with the pre-tokenizers it knows. The models the llama.cpp engine exists
for bring others: SentencePiece vocabularies with byte fallback (Gemma), per-model
pre-tokenizer regexes (Qwen2, Llama 3). llama.cpp implements every one the GGUF format
names, and it is the reference those files were converted against, so this engine asks it.

Same interface as ``TextTokenizer``: the prompt encoder, streamer and sampler above it are
shared by both engines. ``encode_text`` never parses control tokens (user text stays
text); ``encode_markup`` does (template markup, raw prompts).
"""

from __future__ import annotations

import ctypes
from inference_service.engine.llamacpp_runtime import LlamaModel
from inference_service.engine.tokenizer import GGUFVocabulary, TokenPieces

_ATTR_CONTROL = 1 << 3  # LLAMA_TOKEN_ATTR_CONTROL
_ATTR_USER_DEFINED = 1 << 4
_TOKEN_TYPE_CONTROL, _TOKEN_TYPE_USER_DEFINED, _TOKEN_TYPE_NORMAL = 3, 4, 1


class LlamaCppTokenizer(TokenPieces):
    def __init__(self, model: LlamaModel):
        llama = model.llama
        self._llama = llama
        self._vocab = model.vocab
        n = model.vocab_size
        texts, types, pieces = [], [], []
        buffer = ctypes.create_string_buffer(256)
        for i in range(n):
            texts.append((llama.llama_vocab_get_text(self._vocab, i) or b"").decode("utf-8", errors="replace"))
            attr = llama.llama_vocab_get_attr(self._vocab, i)
            types.append(_TOKEN_TYPE_CONTROL if attr & _ATTR_CONTROL
                         else _TOKEN_TYPE_USER_DEFINED if attr & _ATTR_USER_DEFINED else _TOKEN_TYPE_NORMAL)
            size = llama.llama_token_to_piece(self._vocab, i, buffer, len(buffer), 0, False)
            if size < 0:  # longer than the buffer: ask again with room
                big = ctypes.create_string_buffer(-size)
                size = llama.llama_token_to_piece(self._vocab, i, big, len(big), 0, False)
                pieces.append(big.raw[:size])
            else:
                pieces.append(buffer.raw[:size])

        def token_or_none(value: int) -> int | None:
            return value if 0 <= value < n else None

        self.vocab = GGUFVocabulary(
            tokens=texts,
            token_types=types,
            merges=[],
            pre=model.metadata("tokenizer.ggml.pre") or "default",
            bos_token_id=token_or_none(llama.llama_vocab_bos(self._vocab)),
            eos_token_id=token_or_none(llama.llama_vocab_eos(self._vocab)),
            chat_template=model.chat_template(),
            add_bos=bool(llama.llama_vocab_get_add_bos(self._vocab)),
            context_length=model.trained_context or None,
        )
        self.add_bos = self.vocab.add_bos
        self.end_of_generation_ids = frozenset(i for i in range(n) if llama.llama_vocab_is_eog(self._vocab, i))
        self.special_ids = frozenset(i for i, t in enumerate(types) if t == _TOKEN_TYPE_CONTROL)
        # Control tokens decode to nothing (markup, never text), as in TextTokenizer.
        self._token_bytes = [b"" if i in self.special_ids else piece for i, piece in enumerate(pieces)]
        self._ids = {text: i for i, text in reversed(list(enumerate(texts)))}  # first id wins
        # The strings llama.cpp parses as control tokens only when asked to (user-defined
        # tokens are matched in plain text too, so they are not markup).
        self.markup_strings: tuple[str, ...] = tuple(
            sorted((texts[i] for i in self.special_ids if texts[i]), key=len, reverse=True)
        )

    def _tokenize(self, text: str, parse_special: bool, add_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        tokens = (ctypes.c_int32 * capacity)()
        n = self._llama.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, parse_special)
        if n < 0:
            capacity = -n
            tokens = (ctypes.c_int32 * capacity)()
            n = self._llama.llama_tokenize(self._vocab, data, len(data), tokens, capacity, add_special, parse_special)
        return list(tokens[:n])

    def encode_for_embedding(self, text: str) -> list[int]:
        """Text as an embedding model reads it: with the BOS/EOS (or CLS/SEP) its vocabulary
        adds, as llama.cpp's own embedding does; markup in it stays text."""
        return self._tokenize(text, parse_special=False, add_special=True)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of ``text`` as text: control-token markup in it stays characters."""
        return self._tokenize(text, parse_special=False)

    def encode_markup(self, text: str) -> list[int]:
        """Token ids of text whose control-token markup becomes control tokens."""
        return self._tokenize(text, parse_special=True)

    def token_id(self, token: str) -> int | None:
        return self._ids.get(token)
