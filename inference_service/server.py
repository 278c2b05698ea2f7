"""The gRPC transport: a thin servicer over the engine, health and reflection, and the
process lifecycle (``serve``).

The servicer only translates: protobuf in, engine call, protobuf out. Domain errors become
status codes in one place (``status_codes``), request messages are checked in another
(``request_checks``), each call's timing and log line come from ``call_log``, and proto
conversion is ``convert``'s. No generation logic lives here.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from inference_service import convert, limits
from inference_service.call_log import GenerateLog, GenerateObserver, GenerateTiming, for_log, request_id_of
from inference_service.engine.loading import LoadingEngine
from inference_service.engine.types import InferenceEngine
from inference_service.errors import InferenceError, ServiceUnavailable
from inference_service.health import HealthStatuses
from inference_service.request_checks import check_message_tool_fields, check_tool_fields, embedding_inputs
from inference_service.status_codes import (  # noqa: F401  (re-exported: tests and clients read them here)
    RETRY_AFTER_SECONDS,
    STATUS_FOR_ERROR,
    RejectUndecodableRequests,
    status_for,
    translate_errors,
)
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

__all__ = ["GenerateObserver", "LoadingEngine", "create_server", "serve", "server_concurrency"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name
# Handler threads kept beyond the generations' own: health checks and watches, ListModels,
# Tokenize, GetStatus, and Generate calls that are being refused.
CONTROL_RPC_HEADROOM = 16


def server_concurrency(model_count: int, slots: int, max_waiting: int) -> int:
    """Handler threads a service needs so that no call waits unseen in the executor.

    A Generate holds a handler thread while it waits for a slot and while it streams, so
    every generation the models can run or queue gets a thread, plus headroom for the rest.
    """
    return model_count * (slots + max_waiting) + CONTROL_RPC_HEADROOM


# Clients (the edge) send HTTP/2 keepalive pings every 2 s to find a replica that stopped
# answering; gRPC servers by default answer pings more frequent than every 5 minutes with GOAWAY
# "too_many_pings". Allow them, also on idle connections (a health watch is always open).
KEEPALIVE_SERVER_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 1000),
    ("grpc.http2.max_ping_strikes", 0),
)


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Each RPC: protobuf in, one engine call, protobuf out; errors become statuses
    (``status_codes.translate_errors``), requests are checked by ``request_checks``."""

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

    def _refuse_while_draining(self) -> None:
        if self._draining.is_set():
            raise ServiceUnavailable("the service is shutting down")

    @translate_errors
    def Generate(self, request, context):
        self._track(context)
        call_log = GenerateLog(self._observer, request_id_of(request, context), for_log(request.model, 200))
        timing = GenerateTiming(call_log, context)
        self._refuse_while_draining()
        check_tool_fields(request)
        domain_request = convert.request_from_proto(request)
        for chunk in self._engine.generate(domain_request, cancelled=cancellation(context),
                                           deadline=deadline_of(context)):
            call_log.chunk(chunk)
            timing.chunk(len(chunk.token_ids))
            if chunk.finish_reason is not None:
                # The generation is complete once its last chunk is handed over: a client
                # that closes the call on reading it (before the status) got all of it.
                timing.completed = True
            yield convert.chunk_to_proto(chunk, request.model)
        timing.completed = True

    @translate_errors
    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[convert.model_to_proto(m) for m in self._engine.models()])

    @translate_errors
    def Tokenize(self, request, context):
        check_message_tool_fields(request.messages)
        messages = convert.messages_from_proto(request.messages)
        ids, tokens = self._engine.tokenize(request.model, request.text, messages, raw=request.raw)
        return pb.TokenizeResponse(token_ids=ids, tokens=tokens)

    @translate_errors
    def Embed(self, request, context):
        self._refuse_while_draining()
        result = self._engine.embed(request.model, embedding_inputs(request), cancelled=cancellation(context))
        return pb.EmbedResponse(
            embeddings=[pb.Embedding(values=vector) for vector in result.vectors],
            prompt_tokens=result.prompt_tokens,
            model=request.model,
        )

    @translate_errors
    def GetStatus(self, request, context):
        status = self._engine.status()
        with self._idle:
            in_flight = self._in_flight
        return convert.status_to_proto(status, in_flight)


def cancellation(context: grpc.ServicerContext) -> threading.Event:
    """Set when the call ends for any reason (the client cancelled, left, or its deadline passed)."""
    cancelled = threading.Event()
    context.add_callback(cancelled.set)
    return cancelled


def deadline_of(context: grpc.ServicerContext) -> float | None:
    """The client's deadline as a ``time.monotonic()`` value; None without one (grpcio then
    reports an enormous time_remaining)."""
    remaining = context.time_remaining()
    return time.monotonic() + remaining if remaining is not None and remaining < 1e8 else None


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: HealthStatuses
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
            if self.servicer.wait_idle(grace):
                log.info("drained: every generation ended")
            else:
                log.warning("drain: the %.0fs grace ran out with generations in flight; they are cut", grace)
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
        options=[("grpc.so_reuseport", 0), *KEEPALIVE_SERVER_OPTIONS, *limits.GRPC_MESSAGE_OPTIONS],
        maximum_concurrent_rpcs=max_workers,
        interceptors=[RejectUndecodableRequests()],
    )
    draining = threading.Event()
    servicer = InferenceServicer(engine, draining, observer)
    pb_grpc.add_InferenceServiceServicer_to_server(servicer, server)
    health_servicer = HealthStatuses()
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
