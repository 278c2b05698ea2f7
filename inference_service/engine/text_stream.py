"""Turn generated token ids into whole UTF-8 text pieces without leaking stop strings."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class StreamStep:
    text: str  # text safe to emit now (may be "")
    # A stop string was matched: generation must end.  ``text`` excludes the
    # stop string and everything after it.
    stopped: bool


class TextStreamer:
    """Incremental detokenizer with stop-string hold-back.

    Token bytes go through an incremental UTF-8 decoder, so a character split
    across tokens is emitted only once complete.  Decoded text that could still
    be the start of a stop string is held back until it either completes the
    stop string (and is dropped) or can no longer match (and is emitted).
    """

    def __init__(self, token_bytes: Callable[[int], bytes], stop: Sequence[str] = ()) -> None:
        self._token_bytes = token_bytes
        self._stops = tuple(dict.fromkeys(s for s in stop if s))
        self._max_stop_len = max((len(s) for s in self._stops), default=0)
        # errors="replace": invalid sequences become U+FFFD at once; an
        # incomplete trailing sequence stays buffered until more bytes arrive.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._done = False

    @property
    def stopped(self) -> bool:
        """True once a stop string matched or flush() was called."""
        return self._done

    def push(self, token_id: int, stops_armed: bool = True) -> StreamStep:
        """Adds a token; with ``stops_armed`` False (``min_tokens`` not reached yet) its text
        goes out whole and can never be part of a stop string."""
        if self._done:
            raise RuntimeError("push() after the stream ended")
        self._pending += self._decoder.decode(self._token_bytes(token_id))
        if not stops_armed:
            text, self._pending = self._pending, ""
            return StreamStep(text=text, stopped=False)

        cut = find_stop(self._pending, self._stops)
        if cut is not None:
            text = self._pending[:cut]
            self._pending = ""
            self._done = True
            return StreamStep(text=text, stopped=True)

        held = self._held_back_len()
        if held:
            text, self._pending = self._pending[:-held], self._pending[-held:]
        else:
            text, self._pending = self._pending, ""
        return StreamStep(text=text, stopped=False)

    def flush(self) -> str:
        """Return all held-back text at end of generation (EOS or length limit).

        The bytes of a character that generation ended in the middle of are dropped: they
        can never become text, and a trailing U+FFFD is noise to every client.
        """
        if self._done:
            return ""
        self._done = True
        text = self._pending
        self._pending = ""
        self._decoder.reset()
        cut = find_stop(text, self._stops)
        return text if cut is None else text[:cut]

    def _held_back_len(self) -> int:
        """Length of the longest suffix of pending text that begins some stop string."""
        pending = self._pending
        # pending contains no full stop string, so only proper prefixes matter.
        for length in range(min(len(pending), self._max_stop_len - 1), 0, -1):
            suffix = pending[-length:]
            if any(stop.startswith(suffix) for stop in self._stops):
                return length
        return 0


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest occurrence of any non-empty stop string begins, or None."""
    earliest: int | None = None
    for stop in stops:
        if not stop:
            continue
        index = text.find(stop)
        if index != -1 and (earliest is None or index < earliest):
            earliest = index
    return earliest
