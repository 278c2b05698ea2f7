"""Prompts to token ids, with the trust boundary between template markup and user text.

The chat template writes control tokens (``<|im_start|>``, ``<|im_end|>``…) around the
messages; the messages themselves are text. Tokenizing the whole rendered string with
special-token parsing would let a user forge turns by typing those markers. So:

1. every occurrence of a markup string inside user text is swapped for a placeholder that
   the template passes through untouched (private-use characters around a number);
2. the template renders;
3. the rendered string is split at the markup strings that remain, which the template wrote:
   each becomes its control token; the text between them has its placeholders put back and
   is tokenized as text.

For a chat without markup in its text this gives exactly the ids of tokenizing the rendered
string with markup parsed (added tokens split the text the same way), so nothing changes
for honest input.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Sequence

from inference_service.engine.chat_template import ChatTemplate
from inference_service.engine.tokenizer import TextTokenizer
from inference_service.engine.types import ChatMessage
from inference_service.errors import InvalidRequest

# Pairs of private-use characters that delimit a placeholder; the first pair that appears in
# none of the user's text is used, so a placeholder can never be confused with user text.
_DELIMITER_CANDIDATES = [(chr(0xE000 + 2 * i), chr(0xE001 + 2 * i)) for i in range(64)]


class PromptEncoder:
    """Token ids of chats (through the template) and of plain or raw prompts."""

    def __init__(self, tokenizer: TextTokenizer, template: ChatTemplate | None):
        self.tokenizer = tokenizer
        self.template = template
        markup = tokenizer.markup_strings
        self._markup = re.compile("|".join(re.escape(m) for m in markup)) if markup else None

    def _with_bos(self, ids: list[int]) -> list[int]:
        """Prompts of models whose vocabulary asks for it (``add_bos``) start with BOS, once
        (a template that writes it already has it), as llama.cpp does."""
        bos = self.tokenizer.vocab.bos_token_id
        if self.tokenizer.add_bos and bos is not None and (not ids or ids[0] != bos):
            return [bos, *ids]
        return ids

    def encode_chat(self, messages: Sequence[ChatMessage], tools: list[dict] | None = None,
                    thinking: bool | None = None) -> list[int]:
        """``thinking`` False asks a thinking template not to think (its ``enable_thinking``)."""
        return self._with_bos(self._encode_chat(messages, tools, thinking))

    def _encode_chat(self, messages: Sequence[ChatMessage], tools: list[dict] | None,
                     thinking: bool | None = None) -> list[int]:
        assert self.template is not None
        if self._markup is None:
            return self.tokenizer.encode_text(self.template.render(messages, tools=tools, thinking=thinking))
        open_, close = _delimiters([m.content for m in messages] + ([json.dumps(tools, ensure_ascii=False)] if tools else []))
        literals: list[str] = []

        def hide(match: re.Match) -> str:
            literals.append(match.group())
            return f"{open_}{len(literals) - 1}{close}"

        escaped = [replace(m, content=self._markup.sub(hide, m.content)) for m in messages]
        # Tool specs are user text too (names, descriptions, schemas).
        escaped_tools = _map_strings(tools, lambda text: self._markup.sub(hide, text)) if tools else tools
        rendered = self.template.render(escaped, tools=escaped_tools, thinking=thinking)
        placeholder = re.compile(f"{re.escape(open_)}(\\d+){re.escape(close)}")

        def text_ids(piece: str) -> list[int]:
            return self.tokenizer.encode_text(placeholder.sub(lambda m: literals[int(m.group(1))], piece))

        ids: list[int] = []
        position = 0
        for match in self._markup.finditer(rendered):
            ids += text_ids(rendered[position : match.start()])
            ids.append(self.tokenizer.token_id(match.group()))
            position = match.end()
        ids += text_ids(rendered[position:])
        return ids

    def encode_prompt(self, prompt: str, raw: bool) -> list[int]:
        """A completion prompt: raw prompts are markup by contract; otherwise it is one user turn."""
        if raw:
            return self._with_bos(self.tokenizer.encode_markup(prompt))
        if self.template is None:
            return self._with_bos(self.tokenizer.encode_text(prompt))
        return self.encode_chat([ChatMessage("user", prompt)])


def _map_strings(value, change):
    """``value`` (JSON-like: dicts, lists, strings) with ``change`` applied to every string."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, list):
        return [_map_strings(v, change) for v in value]
    if isinstance(value, dict):
        return {change(k): _map_strings(v, change) for k, v in value.items()}
    return value


def _delimiters(texts) -> tuple[str, str]:
    joined = "".join(texts)
    for open_, close in _DELIMITER_CANDIDATES:
        if open_ not in joined and close not in joined:
            return open_, close
    # Every candidate character occurs in the chat: refuse rather than risk a collision
    # (no honest chat uses 128 distinct private-use characters).
    raise InvalidRequest("the messages use too many private-use characters", "messages")
