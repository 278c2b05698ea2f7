"""A chat's next turn against its cold start, over HTTP: the one measurement of it that
bench/run.py and bench/engines.py share (bench/cluster.py measures whole conversations).

Each repeat sends a ~1,000-token history no cache has seen (bench/prompts.chat_history) and a
question (cold), then the same history with that answer and a follow-up (next turn): a server
that reuses the history's evaluation answers the next turn sooner. Rows: the cold prompt's
size, the medians of both TTFTs and ``chat_next_over_cold`` (lower: more of it reused).
"""

from __future__ import annotations

import uuid
from typing import Callable

from bench import prompts
from bench.measure import Stream, median
from bench.prompts import MODEL
from bench.sse import chat_stream, count_prompt_tokens

HISTORY_TOKENS = 1000
ANSWER_TOKENS = 32


def chat_turn_rows(base_url: str, repeats: int, kept: Callable[[str, list[Stream]], list[Stream]],
                   history_tokens: int = HISTORY_TOKENS, answer_tokens: int = ANSWER_TOKENS) -> dict:
    """``repeats`` cold chats and their next turns; ``kept(what, streams)`` returns the
    successful streams (and records the others as the system's failures)."""
    cold, warm, ask = [], [], []
    for _ in range(repeats):
        ask = prompts.chat_history(history_tokens, nonce=uuid.uuid4().hex) + [
            {"role": "user", "content": "Which places did the notes mention?"}]
        first = chat_stream(base_url, MODEL, ask, answer_tokens)
        cold += kept("chat cold", [first])
        more = ask + [{"role": "assistant", "content": first.text},
                      {"role": "user", "content": "Thanks. And which years?"}]
        warm += kept("chat next", [chat_stream(base_url, MODEL, more, answer_tokens)])
    rows = {
        # from stream usage, else (a server that sends none) asked afterwards
        "chat_prompt_tokens": median(s.prompt_tokens for s in cold) or count_prompt_tokens(base_url, MODEL, ask),
        "chat_ttft_cold_ms": median(s.ttft_s * 1000 for s in cold),
        "chat_ttft_next_ms": median(s.ttft_s * 1000 for s in warm),
    }
    if rows["chat_ttft_cold_ms"] and rows["chat_ttft_next_ms"]:
        rows["chat_next_over_cold"] = rows["chat_ttft_next_ms"] / rows["chat_ttft_cold_ms"]
    return rows
