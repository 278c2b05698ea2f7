"""Responses out: a ``GenerateResponse`` stream becomes OpenAI's answer on one route.

Pure functions and per-response renderers, no I/O. :func:`events` turns the gRPC messages into
``Text``, ``ToolCalls`` and ``Finish`` events; a renderer (:class:`CompletionRenderer` for /v1/completions,
:class:`ChatRenderer` for /v1/chat/completions) turns events into the chunks of a stream or
into a whole body, built by :mod:`rest_edge.wire` (the byte-exact shapes). Log probabilities,
usage, model infos and embeddings (:func:`embedding_body`) get their OpenAI shapes here too.
The SSE framing and the cancellation of a stream are ``rest_edge.streaming``'s.
"""

from __future__ import annotations

import base64
import math
import sys
import time
from array import array
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator, Optional, Union

from inference_service.v1 import inference_pb2 as pb

from rest_edge import wire
from rest_edge.errors import RequestError

# OpenAI's value for a log probability that is minus infinity (JSON has no -Infinity).
LOGPROB_FLOOR = -9999.0
# Where a chat answer's thinking goes by default: Ollama's field (``reasoning``).
REASONING_FIELD = "reasoning"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


# --- GenerateResponse stream → events ---------------------------------------------------------

@dataclass(frozen=True)
class Text:
    """A piece of whole UTF-8 text, with the log probabilities of the tokens it came from."""

    text: str
    logprobs: tuple = ()
    index: int = 0  # the answer it belongs to (n > 1)


@dataclass(frozen=True)
class Reasoning:
    """A piece of the model's thinking (its template's <think> block), never part of the answer."""

    text: str
    logprobs: tuple = ()  # always empty: the tokens of thinking report with the next text or the finish
    index: int = 0


@dataclass(frozen=True)
class ToolCalls:
    """Calls the model completed (``pb.ToolCall``, each whole), in the order it made them."""

    calls: tuple
    logprobs: tuple = ()  # always empty: the tokens of calls report with the next text or the finish
    index: int = 0


@dataclass(frozen=True)
class AnswerEnd:
    """The end of one answer; ``logprobs`` are those of tokens that produced no text."""

    finish_reason: str
    usage: dict
    logprobs: tuple = ()
    index: int = 0

    def as_finish(self) -> "Finish":
        """This end as the end of a generation of one answer (each of n renderers sees one)."""
        return Finish(self.finish_reason, self.usage, self.logprobs)


@dataclass(frozen=True)
class Finish(AnswerEnd):
    """The end of a generation (with n > 1 answers: of the last answer to end)."""


@dataclass(frozen=True)
class ChoiceFinish(AnswerEnd):
    """The end of one of n > 1 answers that is not the last to end (the last one is a Finish)."""


Event = Union[Reasoning, Text, ToolCalls, ChoiceFinish, Finish]

_FINISH_REASONS = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def finish_reason(value: int) -> str:
    return _FINISH_REASONS.get(value, "stop")


def usage(u: pb.Usage) -> dict:
    return wire.usage_object(u.prompt_tokens, u.completion_tokens, cached_tokens=u.cached_prompt_tokens)


def events(messages: Iterable[pb.GenerateResponse], choices: int = 1) -> Iterator[Event]:
    """A GenerateResponse stream as events: ``Reasoning`` for each non-empty reasoning, ``Text``
    for each non-empty text, ``ToolCalls`` for each message with calls, then one ``Finish``.

    A message's text comes before its calls; a last message that carries text or calls gives
    them first. A stream that ends without a last message is an error of the service. With
    ``choices`` n > 1 the answers' events interleave, each with its ``index``; each answer but
    the last to end ends with a ``ChoiceFinish``, the last with the ``Finish``.
    """
    pending: dict[int, list] = {}
    ended = 0
    for msg in messages:
        i = msg.index
        waiting = pending.setdefault(i, [])
        waiting.extend(msg.logprobs)
        if msg.reasoning:
            yield Reasoning(msg.reasoning, index=i)
        if msg.text:
            yield Text(msg.text, tuple(waiting), index=i)
            waiting.clear()
        if msg.tool_calls:
            yield ToolCalls(tuple(msg.tool_calls), index=i)
        if msg.finish_reason != pb.FINISH_REASON_UNSPECIFIED or msg.HasField("usage"):
            ended += 1
            end = Finish if ended >= choices else ChoiceFinish
            yield end(finish_reason(msg.finish_reason), usage(msg.usage), tuple(waiting), index=i)
            if end is Finish:
                return
    raise RequestError(500, "The inference service ended the generation without finishing it.")


# --- log probabilities ---------------------------------------------------------

def _logprob(value: float) -> float:
    if math.isnan(value) or value == -math.inf:
        return LOGPROB_FLOOR
    # The proto carries float32: print the shortest decimal that float32 holds.
    return float(f"{value:.7g}")


def _bytes(token: str, token_bytes: bytes) -> list[int]:
    return list(token_bytes) if token_bytes else list(token.encode("utf-8"))


def chat_logprobs(entries: Iterable[pb.TokenLogprob]) -> dict:
    """``choices[].logprobs`` of a chat response or chunk."""
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": _logprob(lp.logprob),
                "bytes": _bytes(lp.token, lp.token_bytes),
                "top_logprobs": [
                    {"token": t.token, "logprob": _logprob(t.logprob), "bytes": _bytes(t.token, t.token_bytes)}
                    for t in lp.top_logprobs
                ],
            }
            for lp in entries
        ],
        "refusal": None,  # OpenAI's schema has it beside content (nullable); these models never refuse apart
    }


def completion_logprobs(entries: Iterable[pb.TokenLogprob], offset: int = 0) -> tuple[dict, int]:
    """``choices[].logprobs`` of a completion; ``text_offset`` counts characters from ``offset``.

    Returns the object and the offset after its tokens (for the next chunk of a stream).
    """
    tokens, token_logprobs, top, offsets = [], [], [], []
    for lp in entries:
        tokens.append(lp.token)
        token_logprobs.append(_logprob(lp.logprob))
        alternatives: dict[str, float] = {}
        for t in lp.top_logprobs:
            alternatives.setdefault(t.token, _logprob(t.logprob))
        top.append(alternatives)
        offsets.append(offset)
        offset += len(lp.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}, offset


# --- models ----------------------------------------------------------------------------------

def model_object(info: pb.ModelInfo) -> dict:
    return wire.model_object(info.name, info.created, info.owned_by or "library")


# --- embeddings ------------------------------------------------------------------------------

def base64_floats(values: Iterable[float]) -> str:
    """A vector as OpenAI's ``encoding_format: "base64"`` has it: little-endian float32 bytes."""
    packed = array("f", values)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def embedding_body(response: pb.EmbedResponse, model: str, encoding_format: str = "float") -> dict:
    """The /v1/embeddings body of an EmbedResponse, one ``data`` entry per input, in order.

    Float vectors are written as the exact values of the float32 numbers the service sent
    (``0.10000000149011612``, as OpenAI writes them), so a client reading them as float32
    gets the bits that base64 would have given.
    """
    encode = base64_floats if encoding_format == "base64" else list
    data = [wire.embedding_object(i, encode(e.values)) for i, e in enumerate(response.embeddings)]
    return wire.embedding_list(data, model, response.prompt_tokens)


# --- one renderer per route ---------------------------------------------------------------------

class Renderer(ABC):
    """The answer to one generation request: stream chunks (:meth:`chunks`) or a body (:meth:`body`).

    One per response: it holds the response ``id``, the ``model`` name, whether the client
    asked for log probabilities and (streams) for the usage chunk. ``created`` is read from
    ``clock`` for every chunk. Subclasses are the routes; they call the builders of ``wire``.
    """

    id_prefix: ClassVar[str]
    # The route's wire builders: of a text chunk (id, created, model, text, finish_reason,
    # logprobs) and of the usage chunk (id, created, model, usage).
    _chunk_shape: ClassVar[Callable[..., dict]]
    _usage_shape: ClassVar[Callable[..., dict]]

    def __init__(
        self,
        id: str,  # noqa: A002
        model: str,
        *,
        logprobs: bool = False,
        include_usage: bool = False,
        clock: Callable[[], float] = time.time,
    ):
        self.id = id
        self.model = model
        self.logprobs = logprobs
        self.include_usage = include_usage
        self._clock = clock

    def chunks(self, event: Event) -> list[dict]:
        """The stream chunks of one event: a text chunk; a tool-call chunk; or the finish chunk,
        then the usage chunk when the client asked for it."""
        if isinstance(event, Reasoning):
            return self._reasoning_chunks(self._created(), event.text)
        if isinstance(event, Text):
            lp = self._logprobs(event.logprobs) if self.logprobs else wire.ABSENT
            return [self._chunk(self._created(), event.text, None, lp)]
        if isinstance(event, ToolCalls):
            return self._tool_call_chunks(self._created(), event.calls, None if self.logprobs else wire.ABSENT)
        lp = wire.ABSENT
        if self.logprobs:  # ``null`` on the finish chunk when no token is left to report
            lp = self._logprobs(event.logprobs) if event.logprobs else None
        out = [self._chunk(self._created(), "", event.finish_reason, lp)]
        if self.include_usage:
            out.append(self.usage_chunk(event.usage))
        return out

    def usage_chunk(self, usage: dict) -> dict:
        """The ``stream_options.include_usage`` chunk that reports ``usage``."""
        return self._usage_shape(self.id, self._created(), self.model, usage)

    def body(self, events: Iterable[Event]) -> dict:
        """The whole (non-stream) response body of a generation (``events()`` ends with a Finish)."""
        texts: list[str] = []
        thoughts: list[str] = []
        entries: list = []
        calls: list = []
        for event in events:
            entries.extend(event.logprobs)
            if isinstance(event, Finish):
                lp = self._logprobs(tuple(entries)) if self.logprobs else wire.ABSENT
                return self._response(self._created(), "".join(texts), event.finish_reason, event.usage, lp,
                                      tuple(calls), reasoning="".join(thoughts))
            if isinstance(event, ToolCalls):
                calls.extend(event.calls)
            elif isinstance(event, Reasoning):
                thoughts.append(event.text)
            else:
                texts.append(event.text)
        raise AssertionError("events() ends with a Finish or raises")

    def _created(self) -> int:
        return int(self._clock())

    # --- per route ---

    @abstractmethod
    def _logprobs(self, entries: tuple) -> dict: ...

    def _chunk(self, created: int, text: str, finish_reason: Optional[str], logprobs: Any) -> dict:
        return self._chunk_shape(self.id, created, self.model, text, finish_reason, logprobs)

    @abstractmethod
    def _response(self, created: int, text: str, finish_reason: str, usage: dict, logprobs: Any,
                  tool_calls: tuple = (), reasoning: str = "") -> dict: ...

    def _tool_call_chunks(self, created: int, calls: tuple, logprobs: Any) -> list[dict]:
        """Routes without tools never get calls (the service makes them only when asked)."""
        return []

    def _reasoning_chunks(self, created: int, text: str) -> list[dict]:
        """Completions have no chat template, so no thinking is ever separated there."""
        return []


class CompletionRenderer(Renderer):
    """POST /v1/completions: ``text`` choices; ``text_offset`` of logprobs runs on across chunks."""

    id_prefix = "cmpl"
    _chunk_shape = staticmethod(wire.completion_chunk)
    _usage_shape = staticmethod(wire.completion_usage_chunk)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._offset = 0  # characters of text already given logprobs

    def _logprobs(self, entries: tuple) -> dict:
        lp, self._offset = completion_logprobs(entries, self._offset)
        return lp

    def _response(self, created: int, text: str, finish_reason: str, usage: dict, logprobs: Any,
                  tool_calls: tuple = (), reasoning: str = "") -> dict:
        return wire.completion_response(self.id, created, self.model, text, finish_reason, usage, logprobs)


class ChatRenderer(Renderer):
    """POST /v1/chat/completions: an assistant ``delta`` per chunk, a ``message`` in the body.

    Tool calls: in a stream, each message's calls in one chunk (``content`` "", every call
    whole, ``index`` counting the calls of the answer); in a body, ``message.tool_calls``, with
    ``content`` null when the model wrote no text (as OpenAI answers).
    """

    id_prefix = "chatcmpl"
    _chunk_shape = staticmethod(wire.chat_chunk)
    _usage_shape = staticmethod(wire.chat_usage_chunk)

    strict_stream = False  # OpenAI's own chunk shapes instead of the reference's (StrictChatRenderer)

    def __init__(self, *args: Any, reasoning_field: str = REASONING_FIELD, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._calls = 0  # tool calls already streamed
        self._role_sent = False
        # Where thinking goes: "reasoning" (Ollama's name), "reasoning_content" (llama.cpp's),
        # or "" to leave it in the content inside <think>...</think>, as the model wrote it.
        self._reasoning_field = reasoning_field
        self._thinking_open = False  # inline: the <think> tag was written, its end not yet

    def chunks(self, event: Event) -> list[dict]:
        if self._reasoning_field or not self._thinking_open or isinstance(event, Reasoning):
            out = super().chunks(event)
        else:
            self._thinking_open = False  # inline: the answer (or the end) closes the block
            out = [wire.chat_chunk(self.id, self._created(), self.model, THINK_CLOSE)] + super().chunks(event)
        return [self._openai_shape(chunk) for chunk in out] if self.strict_stream else out

    def _openai_shape(self, chunk: dict) -> dict:
        """OpenAI's stream: ``role`` in the first chunk only (SDK helpers join every chunk's
        role), ``content`` null beside tool calls, the finish chunk's delta empty."""
        if not chunk.get("choices"):
            return chunk  # the usage chunk
        choice = chunk["choices"][0]
        delta = choice["delta"]
        if self._role_sent:
            delta.pop("role", None)
        self._role_sent = True
        if "tool_calls" in delta:
            delta["content"] = None
        if choice.get("finish_reason") is not None and delta.get("content") == "":
            del delta["content"]
        return chunk

    def _reasoning_chunks(self, created: int, text: str) -> list[dict]:
        if self._reasoning_field:
            return [wire.chat_chunk(self.id, created, self.model, "", reasoning=(self._reasoning_field, text))]
        opening = "" if self._thinking_open else THINK_OPEN
        self._thinking_open = True
        return [wire.chat_chunk(self.id, created, self.model, opening + text)]

    def _tool_call_chunks(self, created: int, calls: tuple, logprobs: Any) -> list[dict]:
        deltas = [wire.tool_call_delta(self._calls + k, c.id, c.name, c.arguments_json) for k, c in enumerate(calls)]
        self._calls += len(calls)
        return [wire.chat_chunk(self.id, created, self.model, "", None, logprobs, tool_calls=deltas)]

    def _logprobs(self, entries: tuple) -> dict:
        return chat_logprobs(entries)

    def _response(self, created: int, text: str, finish_reason: str, usage: dict, logprobs: Any,
                  tool_calls: tuple = (), reasoning: str = "") -> dict:
        thought = wire.ABSENT
        if reasoning and self._reasoning_field:
            thought = (self._reasoning_field, reasoning)
        elif reasoning:
            text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{text}"
        if not tool_calls:
            return wire.chat_response(self.id, created, self.model, text, finish_reason, usage, logprobs,
                                      reasoning=thought)
        objects = [wire.tool_call_object(c.id, c.name, c.arguments_json) for c in tool_calls]
        return wire.chat_response(self.id, created, self.model, text or None, finish_reason, usage, logprobs,
                                  tool_calls=objects, reasoning=thought)


class StrictChatRenderer(ChatRenderer):
    """/v1/chat/completions streamed in OpenAI's own shapes (``EDGE_CHAT_STREAM=openai``)."""

    strict_stream = True


class ChoicesRenderer:
    """The n > 1 answers of one request (``n``): one renderer per answer (``make()``, all with
    the same id, none with its own usage chunk), their chunks' ``index`` set to the answer's,
    and one usage for the request: the prompt once, the completions summed (OpenAI's way)."""

    def __init__(self, make: Callable[[], Renderer], choices: int, include_usage: bool = False):
        self._answers = [make() for _ in range(choices)]
        self.id = self._answers[0].id
        self._include_usage = include_usage
        self._usages: dict[int, dict] = {}

    def chunks(self, event: Event) -> list[dict]:
        answer = self._answers[event.index]
        out = [_with_index(chunk, event.index) for chunk in answer.chunks(self._seen(event))]
        if isinstance(event, Finish) and self._include_usage:
            out.append(answer.usage_chunk(self._usage()))
        return out

    def body(self, events: Iterable[Event]) -> dict:
        per_answer: dict[int, list] = {i: [] for i in range(len(self._answers))}
        for event in events:
            per_answer[event.index].append(self._seen(event))
        bodies = [answer.body(per_answer[i]) for i, answer in enumerate(self._answers)]
        whole = bodies[0]
        whole["choices"] = [dict(body["choices"][0], index=i) for i, body in enumerate(bodies)]
        whole["usage"] = self._usage()
        return whole

    def _seen(self, event: Event) -> Event:
        """``event`` as its answer's renderer takes it: an answer's end is its Finish (its usage
        kept for the request's)."""
        if not isinstance(event, AnswerEnd):
            return event
        self._usages[event.index] = event.usage
        return event.as_finish()

    def _usage(self) -> dict:
        first = self._usages.get(0) or next(iter(self._usages.values()))
        completion = sum(u["completion_tokens"] for u in self._usages.values())
        cached = first.get("prompt_tokens_details", {}).get("cached_tokens")
        return wire.usage_object(first["prompt_tokens"], completion, cached_tokens=cached)


def _with_index(chunk: dict, index: int) -> dict:
    for choice in chunk.get("choices", ()):
        choice["index"] = index
    return chunk
