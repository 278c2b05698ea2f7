"""Thinking separated from the answer: models whose chat template thinks (Qwen3, DeepSeek-R1
distills, most new small models) write ``<think>…</think>`` before their answer.

:class:`ReasoningSplitter` takes the streamed text and hands back (reasoning, content) pieces:
what is inside the thinking block is reasoning, the rest content. A tag split across tokens
(``</th`` + ``ink>``) is held back until it is whole, so no part of a tag ever reaches either
side. The block opens either in the prompt (the template's generation prompt ends with
``<think>``) or as the first thing the model writes; text before any opening tag is content.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"

_START, _INSIDE, _AFTER, _CONTENT = "start", "inside", "after", "content"


def template_thinks(source: str) -> bool:
    """Whether a chat template writes or reads thinking blocks."""
    return CLOSE in source


def prompt_opens_thinking(prompt_tail: str) -> bool:
    """Whether a rendered prompt ends inside an open thinking block (the template opened it)."""
    tail = prompt_tail.rstrip()
    return tail.endswith(OPEN)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    def __init__(self, inside: bool = False):
        self._state = _INSIDE if inside else _START
        self._held = ""
        self._leading = True  # inside the block, before its first visible character

    def push(self, text: str) -> tuple[str, str]:
        """(reasoning, content) of the text so far that is certain."""
        buffer, self._held = self._held + text, ""
        reasoning, content = [], []
        while buffer:
            if self._state == _START:
                stripped = buffer.lstrip()
                if stripped.startswith(OPEN):
                    self._state, buffer = _INSIDE, stripped[len(OPEN):]
                elif OPEN.startswith(stripped):  # may still become the opening tag
                    self._held = buffer
                    break
                else:
                    self._state = _CONTENT
            elif self._state == _INSIDE:
                if self._leading:
                    buffer = buffer.lstrip()
                    if not buffer:
                        break
                    self._leading = False
                end = buffer.find(CLOSE)
                if end >= 0:
                    reasoning.append(buffer[:end])
                    self._state, buffer = _AFTER, buffer[end + len(CLOSE):]
                    continue
                keep = _partial_suffix(buffer, CLOSE)
                reasoning.append(buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep:]
                break
            elif self._state == _AFTER:  # the blank lines between the block and the answer
                buffer = buffer.lstrip()
                if buffer:
                    self._state = _CONTENT
            else:
                content.append(buffer)
                break
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is held back, at the end of the generation: an unfinished tag is text."""
        held, self._held = self._held, ""
        if self._state == _INSIDE:
            return held, ""
        if self._state == _AFTER:
            return "", ""
        return "", held

    @property
    def reasoning_open(self) -> bool:
        return self._state == _INSIDE
