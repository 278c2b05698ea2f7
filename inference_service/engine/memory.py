"""What a model's slots cost in memory, and giving freed heap back to the system.

Each slot's KV cache is allocated for the whole configured context and its pages become
resident as the slot's sequences grow, so a service's anonymous memory rises to about
``base + slots x (KV cache + compute buffer)`` and stays there; that is its bound
(docs/operations.md, "Memory"). Tokenizing a very large text makes short-lived allocations of many
times its size; glibc keeps such freed memory in its arenas, so after one the heap is
trimmed explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import lru_cache
from pathlib import Path

from gguf import GGUFReader

log = logging.getLogger(__name__)

# Texts longer than this (characters) are followed by a heap trim once tokenized.
TRIM_AFTER_CHARS = 32_768
KV_BYTES_PER_VALUE = 2  # f16 keys and values


def kv_cache_bytes(path: Path, context_length: int) -> int:
    """Bytes of one slot's KV cache at ``context_length`` (keys and values, every layer)."""
    fields = GGUFReader(path).fields

    def value(key: str):
        return fields[key].contents()

    arch = value("general.architecture")
    layers = value(f"{arch}.block_count")
    width = value(f"{arch}.embedding_length")
    heads = value(f"{arch}.attention.head_count")
    kv_heads = value(f"{arch}.attention.head_count_kv") if f"{arch}.attention.head_count_kv" in fields else heads
    kv_width = width // heads * kv_heads
    return 2 * layers * context_length * kv_width * KV_BYTES_PER_VALUE


@lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> None:
    """Returns the heap's free pages to the system (glibc ``malloc_trim``); a no-op elsewhere."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
