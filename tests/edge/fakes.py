"""Test doubles for the edge: a fake inference client and a fake gRPC servicer."""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from concurrent import futures
from typing import Any, Iterable, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from inference_service import limits
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

from rest_edge import errors

STOP = pb.FINISH_REASON_STOP
LENGTH = pb.FINISH_REASON_LENGTH
TOOL_CALLS = pb.FINISH_REASON_TOOL_CALLS


def call(name: str, arguments: str = "{}", id: str = "call_1") -> pb.ToolCall:  # noqa: A002
    """A tool call as the service sends it (``arguments`` is JSON text)."""
    return pb.ToolCall(id=id, name=name, arguments_json=arguments)


def piece(text: str, token_ids: Iterable[int] = (1,), logprobs: Iterable[pb.TokenLogprob] = (),
          tool_calls: Iterable[pb.ToolCall] = ()) -> pb.GenerateResponse:
    return pb.GenerateResponse(text=text, token_ids=list(token_ids), logprobs=list(logprobs), model="",
                               tool_calls=list(tool_calls))


def calls(*tool_calls: pb.ToolCall, token_ids: Iterable[int] = (7, 8, 9)) -> pb.GenerateResponse:
    """A message carrying only completed tool calls (no text), as the service streams them."""
    return piece("", token_ids, tool_calls=tool_calls)


def last(text: str = "", reason: int = STOP, prompt: int = 5, completion: int = 3, cached: int = 0,
         logprobs: Iterable[pb.TokenLogprob] = (), tool_calls: Iterable[pb.ToolCall] = ()) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        text=text,
        token_ids=[2] if text else [],
        logprobs=list(logprobs),
        finish_reason=reason,
        usage=pb.Usage(prompt_tokens=prompt, completion_tokens=completion, cached_prompt_tokens=cached),
        tool_calls=list(tool_calls),
    )


def rpc_error(code: grpc.StatusCode, details: str = "", **metadata: str) -> errors.RequestError:
    """What the real client raises for a failed RPC."""
    return errors.from_grpc(code, details, tuple(metadata.items()))


class FakeCall:
    """A Generate call scripted with messages and exceptions (raised when reached)."""

    def __init__(self, items: Iterable[Any]):
        self._items = iter(items)
        self.cancelled = 0
        self.consumed = 0

    def __iter__(self):
        return self

    def __next__(self):
        item = next(self._items)
        self.consumed += 1
        if isinstance(item, BaseException):
            raise item
        return item

    def cancel(self):
        self.cancelled += 1
        return True


EMBEDDING_DIMENSIONS = 4


def vector_of(item: pb.EmbedInput) -> list[float]:
    """The fake client's vector of one input: from a hash, float32-exact (not normalized)."""
    key = item.text.encode("utf-8") if item.WhichOneof("kind") == "text" else repr(list(item.tokens.ids)).encode()
    digest = hashlib.sha256(key).digest()
    raw = [(b - 127.5) / 127.5 for b in digest[:EMBEDDING_DIMENSIONS]]
    return list(struct.unpack(f"<{EMBEDDING_DIMENSIONS}f", struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *raw)))


def embed_response(request: pb.EmbedRequest) -> pb.EmbedResponse:
    """What the fake client answers by default: ``vector_of`` each input, one token per character or id."""
    return pb.EmbedResponse(
        embeddings=[pb.Embedding(values=vector_of(item)) for item in request.inputs],
        prompt_tokens=sum(len(item.text) if item.WhichOneof("kind") == "text" else len(item.tokens.ids)
                          for item in request.inputs),
        model=request.model,
    )


class FakeEmbedCall:
    """An Embed call: ``result()`` gives the response or raises the scripted error."""

    def __init__(self, outcome: Any):
        self._outcome = outcome
        self.cancelled = 0

    def result(self) -> pb.EmbedResponse:
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self._outcome

    def cancel(self) -> bool:
        self.cancelled += 1
        return True


class FakeClient:
    """The client interface of the resources, scripted per test.

    ``embed_script(request)`` returns the EmbedResponse (or an exception that ``result()``
    raises); by default :func:`embed_response`. ``embed_error`` is raised by ``embed()`` itself.
    """

    def __init__(
        self,
        script: Any = (),
        *,
        models: Iterable[pb.ModelInfo] = (),
        healthy: Any = True,
        generate_error: Optional[BaseException] = None,
        models_error: Optional[BaseException] = None,
        embed_script: Any = embed_response,
        embed_error: Optional[BaseException] = None,
    ):
        self.script = script
        self.embed_script = embed_script
        self.embed_error = embed_error
        self.embed_requests: list[pb.EmbedRequest] = []
        self.embed_calls: list[FakeEmbedCall] = []
        self.list_models_calls = 0
        self.models = list(models)
        self.healthy = healthy
        self.generate_error = generate_error
        self.models_error = models_error
        self.requests: list[pb.GenerateRequest] = []
        self.timeouts: list[Optional[float]] = []
        self.calls: list[FakeCall] = []

    def generate(self, request: pb.GenerateRequest, timeout: Optional[float] = None) -> FakeCall:
        self.requests.append(request)
        self.timeouts.append(timeout)
        if self.generate_error is not None:
            raise self.generate_error
        items = self.script(request) if callable(self.script) else list(self.script)
        call = FakeCall(items)
        self.calls.append(call)
        return call

    def embed(self, request: pb.EmbedRequest, timeout: Optional[float] = None) -> FakeEmbedCall:
        self.embed_requests.append(request)
        self.timeouts.append(timeout)
        if self.embed_error is not None:
            raise self.embed_error
        call = FakeEmbedCall(self.embed_script(request))
        self.embed_calls.append(call)
        return call

    def list_models(self, timeout: Optional[float] = None) -> list[pb.ModelInfo]:
        self.list_models_calls += 1
        if self.models_error is not None:
            raise self.models_error
        return list(self.models)

    def health(self, timeout: Optional[float] = None) -> bool:
        if isinstance(self.healthy, BaseException):
            raise self.healthy
        return self.healthy


# --- a real gRPC server with a fake servicer ------------------------------------------------

class FakeServicer(pb_grpc.InferenceServiceServicer):
    """Behaviour chosen by the request's model name:

    ``ok``: "Hel", "lo" then a last message with "!" · ``bad``: INVALID_ARGUMENT with
    error-param ``temperature`` · ``full``: RESOURCE_EXHAUSTED with retry-after 3 ·
    ``long``: OUT_OF_RANGE · ``missing``: NOT_FOUND · ``crash``: an exception in the handler ·
    ``midway``: one piece, then INTERNAL · ``slow``: a piece every 50 ms until cancelled (or
    1000 pieces) · ``sleepy``: sleeps 5 s before the first piece (for deadlines).
    """

    def __init__(self):
        self.requests: list[pb.GenerateRequest] = []
        self.cancelled = threading.Event()
        self.started = threading.Event()
        self.metadata: list[tuple] = []

    def Generate(self, request, context):
        self.requests.append(request)
        self.metadata.append(tuple(context.invocation_metadata()))
        model = request.model
        if model == "ok":
            yield pb.GenerateResponse(text="Hel", token_ids=[1], model="ok")
            yield pb.GenerateResponse(text="lo", token_ids=[2], model="ok")
            yield pb.GenerateResponse(
                text="!", token_ids=[3], model="ok", finish_reason=pb.FINISH_REASON_STOP,
                usage=pb.Usage(prompt_tokens=4, completion_tokens=3, cached_prompt_tokens=1),
            )
        elif model == "bad":
            context.set_trailing_metadata(((limits.PARAM_METADATA_KEY, "temperature"),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "temperature must be between 0 and 2")
        elif model == "full":
            context.set_trailing_metadata(((limits.RETRY_AFTER_METADATA_KEY, "3"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the queue is full")
        elif model == "long":
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "prompt (9000 tokens) + max_tokens exceeds the context (8192)")
        elif model == "missing":
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{model}' not found")
        elif model == "crash":
            raise RuntimeError("secret internal detail /home/x/model.gguf")
        elif model == "midway":
            yield pb.GenerateResponse(text="partial", token_ids=[1])
            context.abort(grpc.StatusCode.INTERNAL, "engine blew up: secret")
        elif model == "slow":
            done = threading.Event()
            context.add_callback(done.set)
            context.add_callback(self.cancelled.set)
            self.started.set()
            for i in range(1000):
                if done.is_set():
                    return
                yield pb.GenerateResponse(text=f"t{i} ", token_ids=[i])
                time.sleep(0.05)
            yield pb.GenerateResponse(finish_reason=pb.FINISH_REASON_LENGTH, usage=pb.Usage(prompt_tokens=1, completion_tokens=1000))
        elif model == "sleepy":
            time.sleep(5)
            yield pb.GenerateResponse(text="late", finish_reason=pb.FINISH_REASON_STOP, usage=pb.Usage())
        else:
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{model}' not found")

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[
            pb.ModelInfo(name="smollm2:135m", created=1700000000, owned_by="library", context_length=8192,
                         has_chat_template=True),
            pb.ModelInfo(name="qwen2.5:0.5b-instruct", created=1700000001, owned_by="library"),
        ])


def start_server(servicer: FakeServicer) -> tuple[grpc.Server, int, health.HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, health_servicer
