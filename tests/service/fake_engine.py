"""A fake engine for the real gRPC server: scripted by the request's model name.

It has the engine's interface (``generate``, ``models``, ``tokenize``, ``status``, ``embed``)
and honours the ``cancelled`` event the servicer passes, like the real engine: it checks it
before every chunk (or, embedding, while gated) and records that it stopped.

Structured outputs and tools: model "tools" calls tools (:data:`TOOL_ARGUMENTS` as arguments):
the function ``tool_choice`` names, else the first tool, and with ``parallel_tool_calls`` and a
second tool that one too, in the last chunk, which ends with finish "tool_calls"; without tools
(or with ``tool_choice`` "none") it answers "no call". Model "json" answers :data:`JSON_ANSWER`
as text; "echo-tools" answers, as JSON text, what the request's constraint, tools, tool choice
and messages were (:func:`echo_of`), for tests across the gRPC and HTTP boundaries.

Embeddings: model "fake" embeds each input as :func:`fake_vector` (deterministic, unit length,
exact float32 values, ``EMBEDDING_DIMENSIONS`` long), one prompt token per character or token
id; the ERRORS names raise their errors, "no-embed" is a model that cannot embed, "gated"
waits for ``release`` or the caller's cancellation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import struct
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from inference_service.engine.handoff import run_on_thread
from inference_service.engine.types import (
    EmbeddingResult,
    EngineStatus,
    GenerationChunk,
    GenerationRequest,
    InferenceEngine,
    ModelDescription,
    ModelStatus,
    ToolCall,
    Usage,
)
from inference_service.errors import (
    Cancelled,
    ContextLengthExceeded,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServiceUnavailable,
)

CHUNK_PAUSE = 0.02  # seconds between chunks of a "slow" stream (pacing only, never asserted)

# Errors raised before the first chunk, by model name.
ERRORS = {
    "invalid": lambda: InvalidRequest("temperature must be in [0.0, 2.0], got 3.0", "temperature"),
    "context": lambda: ContextLengthExceeded(
        "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
        "(3000 in the prompt, 2000 for the completion)."
    ),
    "missing": lambda: ModelNotFound("model 'missing' not found; served: fake"),
    "full": lambda: QueueFull("2 requests are already waiting for a model slot (limit 2); retry later"),
    "expired": lambda: DeadlineExceeded("the deadline passed while waiting for a model slot"),
    "loading": lambda: ServiceUnavailable("the model is still loading; retry shortly"),
    "crash": lambda: RuntimeError('Traceback (most recent call last):\n  File "/secret/path.py", line 1'),
}


EMBEDDING_DIMENSIONS = 8

TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'  # the arguments of every call of model "tools"
JSON_ANSWER = '{"city": "Paris", "celsius": 21.5}'  # what model "json" writes


def echo_of(request: GenerationRequest) -> dict:
    """What model "echo-tools" answers (as JSON text): the request's tool and format fields."""
    return {
        "constraint": dataclasses.asdict(request.constraint) if request.constraint else None,
        "tools": [dataclasses.asdict(t) for t in request.tools],
        "tool_choice": request.tool_choice,
        "tool_choice_name": request.tool_choice_name,
        "parallel_tool_calls": request.parallel_tool_calls,
        "messages": [dataclasses.asdict(m) for m in request.messages],
    }

# Embed's errors: those of generation, with the context error naming the input, plus a model
# that cannot embed (as a generation-only model of the real engine answers).
EMBED_ERRORS = {
    **ERRORS,
    "context": lambda: ContextLengthExceeded(
        "input has 5000 tokens, more than the model's context of 4096 tokens", param="input"
    ),
    "no-embed": lambda: InvalidRequest("model 'no-embed' cannot compute embeddings", "model"),
}


def fake_vector(item: str | Sequence[int]) -> tuple[float, ...]:
    """The fake engine's vector of one input: from a hash, unit length, float32-exact."""
    key = item.encode("utf-8") if isinstance(item, str) else b"ids:" + ",".join(map(str, item)).encode()
    digest = hashlib.sha256(key).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw))
    return struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *(x / norm for x in raw)))


@dataclass
class EmbedCall:
    model: str
    inputs: tuple
    cancelled: threading.Event
    stopped_by_cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Call:
    request: GenerationRequest
    cancelled: threading.Event
    deadline: float | None
    chunks_sent: int = 0
    stopped_by_cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)


class FakeEngine(InferenceEngine):
    def __init__(self):
        self.calls: list[Call] = []
        self.call_started = threading.Semaphore(0)
        self.release = threading.Event()  # lets "gated" streams (and embeddings) finish
        self.embed_calls: list[EmbedCall] = []
        self.embed_started = threading.Semaphore(0)

    # --- engine interface ---------------------------------------------------------------

    def models(self) -> list[ModelDescription]:
        return [ModelDescription(name="fake", created=1700000000, owned_by="tests", context_length=4096,
                                 has_chat_template=True, engine="fake", architecture="llama", can_embed=True,
                                 embedding_dimensions=EMBEDDING_DIMENSIONS)]

    def status(self) -> EngineStatus:
        busy = sum(1 for c in self.calls if not (c.finished.is_set() or c.stopped_by_cancel.is_set()))
        return EngineStatus(
            models=(ModelStatus("fake", slots=64, busy_slots=busy, waiting=0, max_waiting=0),),
            generations_started=len(self.calls),
            generations_finished=sum(1 for c in self.calls if c.finished.is_set()),
            generations_cancelled=sum(1 for c in self.calls if c.stopped_by_cancel.is_set()),
        )

    def tokenize(self, model_name, text="", messages=(), raw=False):
        if model_name != "fake":
            raise ModelNotFound(f"model {model_name!r} not found; served: fake")
        source = text or "".join(m.content for m in messages)
        return [ord(c) for c in source], list(source)

    def embed(self, model_name: str, inputs, cancelled=None) -> EmbeddingResult:
        if model_name in EMBED_ERRORS:
            raise EMBED_ERRORS[model_name]()
        call = EmbedCall(model=model_name, inputs=tuple(inputs), cancelled=cancelled or threading.Event())
        self.embed_calls.append(call)
        self.embed_started.release()
        if model_name == "gated":
            while not self.release.wait(CHUNK_PAUSE):
                if call.cancelled.is_set():
                    call.stopped_by_cancel.set()
                    raise Cancelled("the caller went away")
        elif model_name != "fake":
            raise ModelNotFound(f"model {model_name!r} not found; served: fake")
        return EmbeddingResult(
            vectors=tuple(fake_vector(item) for item in inputs),
            prompt_tokens=sum(len(item) for item in inputs),
        )

    def generate(self, request: GenerationRequest, cancelled=None, deadline=None) -> Iterator[GenerationChunk]:
        if request.model in ERRORS:
            raise ERRORS[request.model]()
        call = Call(request=request, cancelled=cancelled or threading.Event(), deadline=deadline)
        self.calls.append(call)
        self.call_started.release()
        # Like the real engine, the work runs on its own thread driven by the cancel event:
        # gRPC stops pulling from a cancelled handler's generator and never closes it.
        return run_on_thread(lambda: self._script(call), name="fake-generate")

    def _script(self, call: Call) -> Iterator[GenerationChunk]:
        behaviour = call.request.model
        if behaviour == "tools":
            yield from self._tool_calls(call)
            return
        if behaviour == "json":
            yield self._chunk(call, JSON_ANSWER[:10])
            yield self._last(call, JSON_ANSWER[10:])
            return
        if behaviour == "echo-tools":
            yield self._last(call, json.dumps(echo_of(call.request), ensure_ascii=False))
            return
        if behaviour == "midway":
            yield GenerationChunk(text="partial", token_ids=(1,))
            raise InvalidRequest("something about the request became clear late", "stop")
        if behaviour == "midway-crash":
            yield GenerationChunk(text="partial", token_ids=(1,))
            raise RuntimeError("secret internal detail")
        if behaviour == "gated":
            # one chunk, then wait for the test to release the end
            yield self._chunk(call, "first ")
            while not self.release.wait(CHUNK_PAUSE):
                if call.cancelled.is_set():
                    call.stopped_by_cancel.set()
                    return
            yield self._last(call, "last")
            return
        # "slow" (default): many chunks, stopping before the next one once cancelled
        total = call.request.max_tokens or 10_000
        for i in range(total):
            if call.cancelled.is_set():
                call.stopped_by_cancel.set()
                return
            if i == total - 1:
                yield self._last(call, f"t{i}")
                return
            yield self._chunk(call, f"t{i} ")
            call.cancelled.wait(CHUNK_PAUSE)

    def _tool_calls(self, call: Call) -> Iterator[GenerationChunk]:
        request = call.request
        if not request.tools or request.tool_choice == "none":
            yield self._last(call, "no call")
            return
        if request.tool_choice == "function":
            names = [request.tool_choice_name]
        else:
            names = [t.name for t in request.tools[:2 if request.parallel_tool_calls else 1]]
        made = [ToolCall(id=f"call_{k}", name=name, arguments=TOOL_ARGUMENTS) for k, name in enumerate(names)]
        call.chunks_sent += 1
        yield GenerationChunk(text="", token_ids=(call.chunks_sent,), tool_calls=(made[0],))
        call.chunks_sent += 1
        call.finished.set()
        yield GenerationChunk(
            text="", token_ids=(call.chunks_sent,), tool_calls=tuple(made[1:]), finish_reason="tool_calls",
            usage=Usage(prompt_tokens=4, completion_tokens=call.chunks_sent),
        )

    def _chunk(self, call: Call, text: str) -> GenerationChunk:
        call.chunks_sent += 1
        return GenerationChunk(text=text, token_ids=(call.chunks_sent,))

    def _last(self, call: Call, text: str) -> GenerationChunk:
        call.chunks_sent += 1
        call.finished.set()
        return GenerationChunk(
            text=text, token_ids=(call.chunks_sent,), finish_reason="stop",
            usage=Usage(prompt_tokens=4, completion_tokens=call.chunks_sent, cached_prompt_tokens=1),
        )
