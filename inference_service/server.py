"""The gRPC transport: a thin servicer over the engine, plus health and reflection.

The servicer only translates: protobuf in, engine call, protobuf out, and domain errors
to status codes (one table, ``STATUS_FOR_ERROR``). No generation logic lives here.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from inference_service import convert, limits
from inference_service.engine.types import InferenceEngine, ModelDescription
from inference_service.engine.validation import check_model_name
from inference_service.errors import (
    Cancelled,
    ContextLengthExceeded,
    DeadlineExceeded,
    InferenceError,
    InvalidRequest,
    ModelNotFound,
    QueueFull,
    ServiceUnavailable,
)
from inference_service.limits import (
    MAX_DETAILS_BYTES,
    MAX_PARAM_CHARS,
    PARAM_METADATA_KEY,
    RETRY_AFTER_METADATA_KEY,
    clip_utf8,
)
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
RETRY_AFTER_SECONDS = 1
# Handler threads kept beyond the generations' own: health checks and watches, ListModels,
# Tokenize, GetStatus, and Generate calls that are being refused.
CONTROL_RPC_HEADROOM = 16


def server_concurrency(model_count: int, slots: int, max_waiting: int) -> int:
    """Handler threads a service needs so that no call waits unseen in the executor.

    A Generate holds a handler thread while it waits for a slot and while it streams, so
    every generation the models can run or queue gets a thread, plus headroom for the rest.
    """
    return model_count * (slots + max_waiting) + CONTROL_RPC_HEADROOM


# Most specific first: ContextLengthExceeded is also an InvalidRequest.
STATUS_FOR_ERROR: list[tuple[type[InferenceError], grpc.StatusCode]] = [
    (ContextLengthExceeded, grpc.StatusCode.OUT_OF_RANGE),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, grpc.StatusCode.CANCELLED),
    (ServiceUnavailable, grpc.StatusCode.UNAVAILABLE),
]


def status_for(error: InferenceError) -> grpc.StatusCode:
    for error_type, code in STATUS_FOR_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def _abort(context: grpc.ServicerContext, error: Exception) -> None:
    """Ends the call with the error's status; details and metadata are bounded (they are trailers).

    Messages quote client values by a short prefix already; the caps here are a last guard so
    that no message can push the trailers past gRPC's metadata limit (8 KiB by default), which
    the client would report as a misleading RESOURCE_EXHAUSTED.
    """
    if not isinstance(error, InferenceError):
        log.exception("unexpected error", exc_info=error)
        context.abort(grpc.StatusCode.INTERNAL, "internal error")
    code = status_for(error)
    metadata = []
    param = getattr(error, "param", None)
    if param:
        # An ASCII metadata value: printable, escaped otherwise, and short.
        param = ascii(str(param))[1:-1][:MAX_PARAM_CHARS]
        metadata.append((PARAM_METADATA_KEY, param))
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        metadata.append((RETRY_AFTER_METADATA_KEY, str(RETRY_AFTER_SECONDS)))
    if metadata:
        context.set_trailing_metadata(tuple(metadata))
    context.abort(code, clip_utf8(str(error), MAX_DETAILS_BYTES))


class _Undecodable:
    """Stands for a request message protobuf could not parse (e.g. invalid UTF-8 in a string)."""

    def __init__(self, reason: str):
        self.reason = reason


class RejectUndecodableRequests(grpc.ServerInterceptor):
    """A request that does not parse gets INVALID_ARGUMENT, not grpcio's INTERNAL.

    grpcio answers a deserializer's exception with INTERNAL ("Exception deserializing
    request!"), which reads as the server's fault; a client that sends invalid UTF-8 in a
    string field made the mistake. The deserializer hands a marker to the handler instead,
    which refuses it.
    """

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        deserialize = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return deserialize(data)
            except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and kin
                return _Undecodable(str(error) or type(error).__name__)

        def refuse(request, context) -> None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request message could not be parsed (strings must be valid UTF-8): "
                          f"{request.reason[:200]}")

        if handler.response_streaming:
            behaviour = handler.unary_stream

            def unary_stream(request, context):
                if isinstance(request, _Undecodable):
                    refuse(request, context)
                yield from behaviour(request, context)

            return handler._replace(request_deserializer=lenient, unary_stream=unary_stream)
        behaviour = handler.unary_unary

        def unary_unary(request, context):
            if isinstance(request, _Undecodable):
                refuse(request, context)
            return behaviour(request, context)

        return handler._replace(request_deserializer=lenient, unary_unary=unary_unary)


def _model_info(model: ModelDescription) -> pb.ModelInfo:
    info = convert.model_to_proto(model)
    info.engine = model.engine
    info.architecture = model.architecture
    info.can_embed = model.can_embed
    info.embedding_dimensions = model.embedding_dimensions if model.can_embed else 0
    return info


def embedding_inputs(request: pb.EmbedRequest) -> list[str | tuple[int, ...]]:
    """An EmbedRequest's inputs for ``engine.embed``, checked against the shared limits.

    Errors name the input the way the REST edge's client wrote it (``input``, ``input[3]``):
    the edge passes ``error-param`` on as the OpenAI error's ``param``. The model's context
    and vocabulary are the engine's to check.
    """
    check_model_name(request.model)
    count = len(request.inputs)
    if count == 0:
        raise InvalidRequest("input must hold at least one text or token array", "input")
    if count > limits.MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(limits.too_many_inputs_message("input", count), "input")
    inputs: list[str | tuple[int, ...]] = []
    for i, item in enumerate(request.inputs):
        param = f"input[{i}]" if count > 1 else "input"
        kind = item.WhichOneof("kind")
        if kind == "text":
            text = item.text
            if not text:
                raise InvalidRequest(f"{param} is an empty string", param)
            if len(text) > limits.MAX_EMBEDDING_INPUT_CHARS:
                raise InvalidRequest(limits.too_long_message(param, text, limits.MAX_EMBEDDING_INPUT_CHARS), param)
            index = limits.lone_surrogate(text)  # protobuf refuses them; in-process callers may not
            if index is not None:
                raise InvalidRequest(limits.surrogate_message(param, text, index), param)
            inputs.append(text)
        elif kind == "tokens":
            ids = tuple(item.tokens.ids)
            if not ids:
                raise InvalidRequest(f"{param} is an empty token array", param)
            if len(ids) > limits.MAX_EMBEDDING_INPUT_TOKENS:
                raise InvalidRequest(limits.too_many_tokens_message(param, len(ids)), param)
            if min(ids) < 0:
                raise InvalidRequest(f"{param} holds a negative token id ({min(ids)})", param)
            inputs.append(ids)
        else:
            raise InvalidRequest(f"{param} sets neither text nor tokens", param)
    return inputs


def _bounded(text: str, limit: int, param: str) -> None:
    if len(text) > limit:
        raise InvalidRequest(limits.too_long_message(param, text, limit), param)


def _function_name(name: str, param: str, what: str) -> None:
    problem = limits.function_name_problem(name)
    if problem is not None:
        raise InvalidRequest(f"{what} {limits.quote(name)} {problem}", param)


def check_tool_fields(request: pb.GenerateRequest) -> None:
    """The bounds of a GenerateRequest's structured-output and tool fields (``limits``).

    Errors name the field the way the REST edge's client wrote it (``tools[2].function.name``,
    ``response_format``, ``tool_choice``, ``messages[3].tool_calls[0].function.arguments``):
    the edge passes ``error-param`` on as the OpenAI error's ``param``. Whether a schema or a
    grammar compiles is the engine's to say. Protobuf already refused invalid UTF-8.
    """
    kind = request.constraint.WhichOneof("kind")
    if kind in ("json_schema", "regex", "lark", "gbnf"):
        _bounded(getattr(request.constraint, kind), limits.MAX_SCHEMA_CHARS,
                 request.constraint.param[:limits.MAX_PARAM_CHARS] or "response_format")
    if len(request.tools) > limits.MAX_TOOLS:
        raise InvalidRequest(f"tools takes at most {limits.MAX_TOOLS} tools, got {len(request.tools)}", "tools")
    names: set[str] = set()
    for i, tool in enumerate(request.tools):
        param = f"tools[{i}].function"
        _function_name(tool.name, f"{param}.name", f"{param}.name")
        if tool.name in names:
            raise InvalidRequest(f"two tools are named {limits.quote(tool.name)}", f"{param}.name")
        names.add(tool.name)
        _bounded(tool.description, limits.MAX_DESCRIPTION_CHARS, f"{param}.description")
        _bounded(tool.parameters_json, limits.MAX_SCHEMA_CHARS, f"{param}.parameters")
    mode = request.tool_choice.mode
    if mode in (pb.ToolChoice.MODE_REQUIRED, pb.ToolChoice.MODE_FUNCTION) and not request.tools:
        raise InvalidRequest("tool_choice 'required' or a named function needs tools", "tool_choice")
    if mode == pb.ToolChoice.MODE_FUNCTION:
        name = request.tool_choice.function_name
        _function_name(name, "tool_choice", "tool_choice's function name")
        if name not in names:
            raise InvalidRequest(f"tool_choice names {limits.quote(name)}, which is not one of the tools",
                                 "tool_choice")
    check_message_tool_fields(request.messages)


def check_message_tool_fields(messages) -> None:
    """The bounds of the ChatMessages' names, tool calls and tool results (Generate, Tokenize)."""
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        _bounded(message.name, limits.MAX_NAME_CHARS, f"{param}.name")
        if message.tool_calls and message.role != "assistant":
            raise InvalidRequest(f"{param} has tool_calls, which only assistant turns have", f"{param}.tool_calls")
        for j, call in enumerate(message.tool_calls):
            call_param = f"{param}.tool_calls[{j}]"
            if not call.id:
                raise InvalidRequest(f"{call_param}.id is required", f"{call_param}.id")
            _bounded(call.id, limits.MAX_TOOL_CALL_ID_CHARS, f"{call_param}.id")
            _function_name(call.name, f"{call_param}.function.name", f"{call_param}.function.name")
            arguments = f"{call_param}.function.arguments"
            _bounded(call.arguments_json, limits.MAX_TOOL_ARGUMENTS_CHARS, arguments)
            problem = limits.json_object_problem(call.arguments_json)
            if problem is not None:
                raise InvalidRequest(f"{arguments} {problem}", arguments)
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidRequest(f"{param}.tool_call_id is required on a tool turn", f"{param}.tool_call_id")
        if message.role != "tool" and message.tool_call_id:
            raise InvalidRequest(f"{param} has a tool_call_id, which only tool turns have", f"{param}.tool_call_id")
        _bounded(message.tool_call_id, limits.MAX_TOOL_CALL_ID_CHARS, f"{param}.tool_call_id")


class GenerateObserver:
    """Told about every Generate call (``inference_service.metrics`` counts them); does nothing.

    ``first_token``: seconds from the call's start to its first chunk with tokens;
    ``tokens``: a later chunk's tokens and the seconds since the previous chunk with tokens;
    ``finished``: the call's final gRPC status code name (``OK``, ``INVALID_ARGUMENT``,
    ``CANCELLED``...), once it has terminated. Called on gRPC's threads: keep them quick.
    """

    def first_token(self, seconds: float) -> None:
        pass

    def tokens(self, count: int, seconds: float) -> None:
        pass

    def finished(self, code: str) -> None:
        pass


class _GenerateTiming:
    """One Generate call's timing and end, reported to a :class:`GenerateObserver`."""

    def __init__(self, observer: GenerateObserver, context: grpc.ServicerContext):
        self._observer = observer
        self._started = self._last = time.monotonic()
        self._first = True
        self.completed = False  # the stream ran to its end (gRPC then sends OK)
        if not context.add_callback(lambda: self._terminated(context)):
            self._terminated(context)

    def chunk(self, token_count: int) -> None:
        if not token_count:
            return
        now = time.monotonic()
        if self._first:
            self._first = False
            self._observer.first_token(now - self._started)
        else:
            self._observer.tokens(token_count, now - self._last)
        self._last = now

    def _terminated(self, context: grpc.ServicerContext) -> None:
        code = context.code()  # set by abort(); None when the handler did not set one
        if code is not None:
            name = code.name
        elif self.completed:
            name = "OK"
        elif context.time_remaining() == 0:  # grpcio gives 0 once a client's deadline passed
            name = "DEADLINE_EXCEEDED"
        else:
            name = "CANCELLED"  # the client went away
        self._observer.finished(name)


# The caller's request id (the REST edge sends it as metadata and as GenerateRequest.request_id).
REQUEST_ID_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128


def _for_log(text: str, limit: int) -> str:
    """A client's string made safe for one log line: printable ASCII (others escaped), bounded."""
    return ascii(text)[1:-1][:limit]


def request_id_of(request, context: grpc.ServicerContext) -> str:
    """The call's request id for logs: the ``x-request-id`` metadata, else ``request.request_id``;
    printable ASCII (others escaped), at most MAX_REQUEST_ID_CHARS."""
    found = ""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY and isinstance(value, str) and value:
            found = value
            break
    found = found or request.request_id
    return _for_log(found, MAX_REQUEST_ID_CHARS)


class _GenerateLog(GenerateObserver):
    """Passes a Generate call's events on to the observer and logs one INFO line when it ends:
    request id, model, outcome (status code name), tokens and duration (also as fields, for
    ``--log-format json``)."""

    def __init__(self, observer: GenerateObserver, request_id: str, model: str):
        self._observer = observer
        self._started = time.monotonic()
        self.request_id = request_id
        self.model = model
        self.prompt_tokens: int | None = None  # known from the last chunk's usage
        self.completion_tokens = 0

    def first_token(self, seconds: float) -> None:
        self._observer.first_token(seconds)

    def tokens(self, count: int, seconds: float) -> None:
        self._observer.tokens(count, seconds)

    def finished(self, code: str) -> None:
        try:
            self._observer.finished(code)
        finally:
            duration = time.monotonic() - self._started
            prompt = "-" if self.prompt_tokens is None else self.prompt_tokens
            log.info("generate %s: model %s, %s, %s prompt + %d completion tokens in %.3fs",
                     self.request_id or "-", self.model, code, prompt, self.completion_tokens, duration,
                     extra={"request_id": self.request_id, "model": self.model, "outcome": code,
                            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                            "duration_s": round(duration, 6)})


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, engine: InferenceEngine, draining: threading.Event | None = None,
                 observer: GenerateObserver | None = None):
        self._engine = engine
        self._observer = observer or GenerateObserver()
        self._draining = draining or threading.Event()
        self._in_flight = 0  # Generate calls not yet terminated
        self._idle = threading.Condition()

    def _track(self, context) -> None:
        """Counts the call until it terminates (the callback fires even if gRPC drops the generator)."""
        with self._idle:
            self._in_flight += 1

        def done():
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

        if not context.add_callback(done):
            done()

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no Generate call is in flight; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout)

    def Generate(self, request, context):
        self._track(context)
        call_log = _GenerateLog(self._observer, request_id_of(request, context), _for_log(request.model, 200))
        timing = _GenerateTiming(call_log, context)
        if self._draining.is_set():
            _abort(context, ServiceUnavailable("the service is shutting down"))
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        remaining = context.time_remaining()
        # Without a client deadline grpcio reports an enormous time_remaining: treat as none.
        deadline = time.monotonic() + remaining if remaining is not None and remaining < 1e8 else None
        try:
            check_tool_fields(request)
            domain_request = convert.request_from_proto(request)
            for chunk in self._engine.generate(domain_request, cancelled=cancelled, deadline=deadline):
                timing.chunk(len(chunk.token_ids))
                call_log.completion_tokens += len(chunk.token_ids)
                if chunk.usage is not None:
                    call_log.prompt_tokens = chunk.usage.prompt_tokens
                    call_log.completion_tokens = chunk.usage.completion_tokens
                yield convert.chunk_to_proto(chunk, request.model)
            timing.completed = True
        except Cancelled:
            return  # the client is gone; nobody reads a status
        except Exception as error:  # noqa: BLE001 - every error becomes a status, never a traceback
            _abort(context, error)

    def ListModels(self, request, context):
        try:
            models = self._engine.models()
        except Exception as error:  # noqa: BLE001
            _abort(context, error)
        return pb.ListModelsResponse(models=[_model_info(m) for m in models])

    def Tokenize(self, request, context):
        try:
            check_message_tool_fields(request.messages)
            messages = convert.messages_from_proto(request.messages)
            ids, tokens = self._engine.tokenize(request.model, request.text, messages, raw=request.raw)
        except Exception as error:  # noqa: BLE001
            _abort(context, error)
        return pb.TokenizeResponse(token_ids=ids, tokens=tokens)

    def Embed(self, request, context):
        if self._draining.is_set():
            _abort(context, ServiceUnavailable("the service is shutting down"))
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        try:
            inputs = embedding_inputs(request)
            result = self._engine.embed(request.model, inputs, cancelled=cancelled)
        except Cancelled:
            context.abort(grpc.StatusCode.CANCELLED, "cancelled")  # the client is gone; nobody reads it
        except Exception as error:  # noqa: BLE001
            _abort(context, error)
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=vector) for vector in result.vectors],
            prompt_tokens=result.prompt_tokens,
            model=request.model,
        )

    def GetStatus(self, request, context):
        try:
            status = self._engine.status()
        except Exception as error:  # noqa: BLE001
            _abort(context, error)
        with self._idle:
            in_flight = self._in_flight
        return convert.status_to_proto(status, in_flight)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    draining: threading.Event
    servicer: InferenceServicer | None = None

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def drain_and_stop(self, grace: float) -> None:
        """Health NOT_SERVING, refuse new generations, let in-flight streams finish within ``grace``.

        The server keeps accepting calls until the in-flight generations are done, so a new
        Generate meanwhile gets UNAVAILABLE from the servicer (gRPC's own shutdown answers
        calls racing it with CANCELLED, which clients read as their own cancellation).
        """
        end = time.monotonic() + grace
        self.draining.set()
        self.health.enter_graceful_shutdown()
        if self.servicer is not None:
            self.servicer.wait_idle(grace)
        self.server.stop(max(0.0, end - time.monotonic())).wait()


def create_server(
    engine: InferenceEngine,
    address: str = "127.0.0.1:50051",
    *,
    max_workers: int = 64,
    serving: bool = True,
    observer: GenerateObserver | None = None,
) -> RunningServer:
    """Builds and starts a server; ``address`` may use port 0 for an ephemeral port.

    ``engine`` is anything with ``generate``, ``models``, ``tokenize``, ``status`` and ``embed``
    (``engine.types.InferenceEngine``; tests inject fakes). With ``serving=False`` health stays
    NOT_SERVING until ``set_serving(True)`` (model loading). At most ``max_workers`` calls are
    handled at once; beyond that a call is refused at once with RESOURCE_EXHAUSTED instead of
    waiting unseen for a thread. ``observer`` is told each Generate call's timing and status
    (metrics); by default nobody is.
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[("grpc.so_reuseport", 0), *limits.GRPC_MESSAGE_OPTIONS],
        maximum_concurrent_rpcs=max_workers,
        interceptors=[RejectUndecodableRequests()],
    )
    draining = threading.Event()
    servicer = InferenceServicer(engine, draining, observer)
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    server.start()
    running = RunningServer(server=server, port=port, health=health_servicer, draining=draining, servicer=servicer)
    running.set_serving(serving)
    return running


class LoadingEngine(InferenceEngine):
    """The engine while it loads: every call is UNAVAILABLE until ``ready(engine)``.

    The server binds before the models load, so health can answer NOT_SERVING meanwhile.
    """

    def __init__(self):
        self._engine = None

    def ready(self, engine: InferenceEngine) -> None:
        self._engine = engine

    def _loaded(self):
        if self._engine is None:
            raise ServiceUnavailable("the model is still loading; retry shortly")
        return self._engine

    def generate(self, request, cancelled=None, deadline=None):
        return self._loaded().generate(request, cancelled=cancelled, deadline=deadline)

    def models(self):
        return self._loaded().models()

    def tokenize(self, model_name, text="", messages=(), raw=False):
        return self._loaded().tokenize(model_name, text, messages, raw=raw)

    def status(self):
        return self._loaded().status()

    def embed(self, model_name, inputs, cancelled=None):
        return self._loaded().embed(model_name, inputs, cancelled=cancelled)


def serve(model_specs: list[str], address: str, engine_config, grace: float,
          metrics_address: str | None = None) -> None:
    """Binds first (health NOT_SERVING), loads and warms the models, serves until SIGTERM/SIGINT.

    With ``metrics_address`` (HOST:PORT) Prometheus metrics are served there from before the
    models load (``inference_service.metrics``); without it prometheus_client is not imported.
    """
    from inference_service.engine.engine import Engine
    from inference_service.engine.engine_choice import split_engine
    from inference_service.models.registry import ModelRegistry

    loading = LoadingEngine()
    exporter = None  # the metrics endpoint, when asked for
    if metrics_address:
        from inference_service import metrics as service_metrics

        try:
            exporter = service_metrics.start(loading, metrics_address)
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: metrics address {metrics_address}: {error}") from None
    concurrency = server_concurrency(len(model_specs), engine_config.slots, engine_config.max_waiting)
    running = create_server(loading, address, serving=False, max_workers=concurrency,
                            observer=exporter.metrics if exporter is not None else None)
    log.info("listening on %s (NOT_SERVING while loading)", address)
    # A signal handler must not take locks (Event.set does): a signal landing while the main
    # thread holds the same lock deadlocks. It only records the signal; the main thread polls.
    received: list[int] = []

    def request_stop(signum, frame):
        received.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        registry = ModelRegistry()
        entries = [split_engine(spec) for spec in model_specs]
        model_files = [registry.resolve(spec) for spec, _ in entries]
        engine = Engine.load(model_files, engine_config, engines=[chosen for _, chosen in entries])
        engine.warm_up()
    except InferenceError as error:
        running.server.stop(0)
        raise SystemExit(f"error: {error}") from None
    loading.ready(engine)
    if exporter is not None:  # before health says SERVING: a scrape after that sees it
        exporter.metrics.set_state(service_metrics.SERVING)
    running.set_serving(True)
    log.info("serving %s on %s", ", ".join(m.name for m in engine.models()), address)
    while not received:
        time.sleep(0.1)
    log.info("signal %s: draining (grace %.0fs)", received[0], grace)
    if exporter is not None:
        exporter.metrics.set_state(service_metrics.DRAINING)
    running.drain_and_stop(grace)
    engine.close()
    log.info("stopped")
