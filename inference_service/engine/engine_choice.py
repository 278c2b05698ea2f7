"""Which engine computes a model: ctransformers for what it loads, llama.cpp for the rest.

ctransformers (2023) builds llama-family graphs only, and our Python tokenizer reproduces
only byte-level BPE vocabularies with the pre-tokenizers it knows. Everything else (Qwen2,
Gemma, Phi, Llama 3 with its own pre-tokenizer and rope scaling...) needs llama.cpp.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from gguf import GGUFReader

from inference_service.engine.tokenizer import SUPPORTED_PRE_TOKENIZERS
from inference_service.errors import ModelLoadError

ENGINES = ("auto", "ctransformers", "llamacpp")
CTRANSFORMERS_ARCHITECTURES = frozenset({"llama"})


@dataclass(frozen=True)
class GGUFIdentity:
    architecture: str
    tokenizer_model: str
    pre_tokenizer: str
    rope_scaling: str
    embedding_length: int = 0

    @classmethod
    def read(cls, path: Path) -> "GGUFIdentity":
        try:
            fields = GGUFReader(path).fields
        except (ValueError, OSError) as exc:
            raise ModelLoadError(f"{path} is not a readable GGUF file: {exc}") from exc

        def value(key: str, default: str = "") -> str:
            field = fields.get(key)
            return str(field.contents()) if field is not None else default

        architecture = value("general.architecture")
        return cls(
            architecture=architecture,
            tokenizer_model=value("tokenizer.ggml.model"),
            pre_tokenizer=value("tokenizer.ggml.pre", "default"),
            rope_scaling=value(f"{architecture}.rope.scaling.type", "none"),
            embedding_length=int(value(f"{architecture}.embedding_length", "0") or 0),
        )

    def ctransformers_refusal(self) -> str | None:
        """Why ctransformers cannot serve this file, or None when it can."""
        if self.architecture not in CTRANSFORMERS_ARCHITECTURES:
            return f"architecture {self.architecture!r} (ctransformers builds {', '.join(sorted(CTRANSFORMERS_ARCHITECTURES))} graphs only)"
        if self.tokenizer_model != "gpt2":
            return f"tokenizer {self.tokenizer_model!r} (the ctransformers engine tokenizes byte-level BPE, 'gpt2', only)"
        if self.pre_tokenizer not in SUPPORTED_PRE_TOKENIZERS:
            return f"pre-tokenizer {self.pre_tokenizer!r} (known: {', '.join(sorted(SUPPORTED_PRE_TOKENIZERS))})"
        if self.rope_scaling not in ("none", "linear"):
            return f"rope scaling {self.rope_scaling!r}"
        return None


@lru_cache(maxsize=1)
def llama_cpp_available() -> bool:
    """Whether the llamacpp extra is installed (without importing it: that loads the library)."""
    return importlib.util.find_spec("llama_cpp") is not None


def choose_engine(requested: str, identity: GGUFIdentity, model_name: str) -> str:
    """The engine for a model: ``requested`` checked against the file, or ``auto``'s pick."""
    if requested not in ENGINES:
        raise ModelLoadError(f"unknown engine {requested!r} for {model_name}; choose one of {', '.join(ENGINES)}")
    refusal = identity.ctransformers_refusal()
    if requested == "ctransformers" and refusal is not None:
        raise ModelLoadError(
            f"ctransformers cannot serve {model_name}: {refusal}; use --engine llamacpp (or auto)"
        )
    if requested == "auto":
        return "ctransformers" if refusal is None else "llamacpp"
    return requested


def split_engine(spec: str) -> tuple[str, str | None]:
    """``MODEL@ENGINE`` (a ``--model`` entry naming its engine) into the model and the engine.

    Only a suffix that is an engine's name counts, so an ``@`` inside a path stays the path's.
    """
    head, at, tail = spec.rpartition("@")
    if at and head and tail in ENGINES:
        return head, tail
    return spec, None
