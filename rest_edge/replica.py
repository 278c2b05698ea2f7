"""One inference service replica as the edge sees it: its channel, health, capacity and models.

Per replica: one channel with HTTP/2 keepalive (a replica that stops answering, frozen or cut
off, fails its calls and its health watch within :data:`KEEPALIVE_TIME_MS` +
:data:`KEEPALIVE_TIMEOUT_MS`), a background thread WATCHING its ``grpc.health.v1`` status
(the streaming ``Watch`` RPC, reconnecting with backoff), what its last ``GetStatus`` said
(each model's slots, queue and the other clients' calls) and which models it serves (its
``ListModels``, refreshed when its status shows another set). This worker's calls in flight
there are counted by the client (:mod:`rest_edge.client`), under the client's lock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any, Callable, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service import limits
from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

from rest_edge.errors import rpc_attr

log = logging.getLogger("rest_edge")

# Seconds between GetStatus polls of each serving replica (and at once when one turns SERVING).
STATUS_INTERVAL = 2.0
STATUS_TIMEOUT = 2.0
# A replica that answered a call with UNAVAILABLE gets no new call for this long, even if
# its health watch has not said anything yet (the watch notices a dead peer by itself).
SUSPECT_SECONDS = 2.0
# Health watch reconnection: exponential backoff with jitter, capped.
WATCH_BACKOFF_INITIAL = 0.1
WATCH_BACKOFF_MAX = 1.0
# After SERVING turned NOT_SERVING (a drain), the watch stays open this long, then health is
# asked (Check) every CHECK_INTERVAL until SERVING (see Replica._watch).
DRAIN_LINGER = 2.0
CHECK_INTERVAL = 0.5
CHECK_TIMEOUT = 2.0
# HTTP/2 keepalive: a PING every KEEPALIVE_TIME_MS, and the connection (with every call on it)
# is dropped when one is not answered within KEEPALIVE_TIMEOUT_MS. The service allows pings
# this frequent (inference_service.server.KEEPALIVE_SERVER_OPTIONS); a gRPC server with
# default settings answers them with GOAWAY "too_many_pings" after a few.
KEEPALIVE_TIME_MS = 2000
KEEPALIVE_TIMEOUT_MS = 2000

CHANNEL_OPTIONS = (
    ("grpc.primary_user_agent", "rest-edge"),
    # gRPC's defaults (1 s doubling to 120 s) would keep a restarted replica away for minutes.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Every size the API allows: 2,048 embeddings of the widest model (limits.MAX_MESSAGE_BYTES).
    *limits.GRPC_MESSAGE_OPTIONS,
)

# Replica states.
STARTING = "starting"          # no health answer yet
SERVING = "serving"
NOT_SERVING = "not serving"    # loading, draining, or an unknown service
UNREACHABLE = "unreachable"    # no health watch: refused, reset, frozen, gone
REMOVED = "removed"            # no longer among the targets (DNS)


class Replica:
    """One replica: its channel and stubs, health, capacity, models and this worker's calls there.

    State is guarded by the client's lock; the watch thread only reports, through
    ``on_state(replica, state, why)``.
    """

    def __init__(self, address: str, on_state: Callable[["Replica", str, str], None],
                 channel: Optional[grpc.Channel] = None):
        self.address = address
        self._on_state = on_state
        self.channel = channel if channel is not None else grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.state = STARTING
        self.suspect_until = 0.0
        self.in_flight = 0
        self.in_flight_by_model: dict[str, int] = {}
        self.slots: dict[str, int] = {}          # model → slots (GetStatus)
        self.capacity: dict[str, int] = {}       # model → slots + max_waiting (GetStatus)
        self.others: dict[str, int] = {}         # model → calls of other clients at the last poll
        self.refused_until: dict[str, float] = {}  # model → RESOURCE_EXHAUSTED seen, until
        self.models: Optional[list[pb.ModelInfo]] = None  # its ListModels; None until known
        self.closed = False
        self.status_unsupported = False  # GetStatus answered UNIMPLEMENTED (until it serves again)
        self._stop = threading.Event()
        self._watch_call: Any = None
        self._watch_lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"health-watch {address}", daemon=True)

    # --- read under the client's lock ---

    def eligible(self, now: float) -> bool:
        return self.state == SERVING and now >= self.suspect_until

    def serves(self, model: str) -> Optional[bool]:
        """Whether it serves ``model``; None while its models are not known yet."""
        if self.models is None:
            return None
        return any(m.name == model for m in self.models)

    def load(self) -> int:
        return self.in_flight + sum(self.others.values())

    def model_load(self, model: str) -> int:
        return self.in_flight_by_model.get(model, 0) + self.others.get(model, 0)

    def free_slots(self, model: str) -> Optional[int]:
        """Slots of ``model`` no call holds, by the last poll and this worker's calls; None if unknown."""
        slots = self.slots.get(model)
        return None if slots is None else max(0, slots - self.model_load(model))

    def local_room(self, model: str) -> bool:
        """Room by this worker's own count: certain knowledge (the service decides the rest)."""
        cap = self.capacity.get(model)
        return cap is None or self.in_flight_by_model.get(model, 0) < cap

    def estimated_room(self, model: str, now: float) -> bool:
        """Room counting the other clients' calls of the last poll, and no recent refusal."""
        if self.refused_until.get(model, 0.0) > now:
            return False
        cap = self.capacity.get(model)
        return cap is None or self.model_load(model) < cap

    # --- the health watch ---

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._watch_lock:
            call = self._watch_call
        if call is not None:
            call.cancel()

    def _watch(self) -> None:
        """Watch the replica's health; once it turned from SERVING to NOT_SERVING, poll ``Check``.

        Why not watch a draining replica: a Watch stream is an RPC that never ends by itself,
        and a draining service's ``server.stop(grace)`` waits for every open RPC, so it would
        keep the service alive for its whole grace period after its last generation. Why not
        close the stream at once: grpcio-health-checking's HealthServicer (which services of
        earlier versions run) deadlocks when a watch closes while ``set()`` is sending to its
        watchers (grpc/grpc#43403). So after SERVING turned NOT_SERVING the stream stays open
        while ``Check`` is asked every :data:`CHECK_INTERVAL`, and is closed when a Check fails
        (the drained service stops taking calls) or after :data:`DRAIN_LINGER` seconds, when the
        drain's one update has long been sent. A replica that is NOT_SERVING from the start
        (loading) is watched until it serves.
        """
        backoff = WATCH_BACKOFF_INITIAL
        while not self._stop.is_set():
            why = "its health watch ended"
            try:
                status = self._watch_until_drained()
                if status is None:
                    return  # stopped
                while status != health_pb2.HealthCheckResponse.SERVING:
                    self._on_state(self, NOT_SERVING, _status_name(status))
                    backoff = WATCH_BACKOFF_INITIAL
                    if self._stop.wait(CHECK_INTERVAL):
                        return
                    status = self._health.Check(health_pb2.HealthCheckRequest(service=""),
                                                timeout=CHECK_TIMEOUT).status
                continue  # SERVING again: watch
            except _WatchEnded:
                pass
            except grpc.RpcError as err:
                code = rpc_attr(err, "code")
                why = f"{getattr(code, 'name', code)}: {rpc_attr(err, 'details')}"
            except Exception:  # noqa: BLE001 - the watch thread must live on (or end quietly when stopped)
                if self._stop.is_set():
                    return
                log.exception("health watch of %s failed", self.address)
            if self._stop.is_set():
                return
            self._on_state(self, UNREACHABLE, why)
            self._stop.wait(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, WATCH_BACKOFF_MAX)

    def _watch_until_drained(self) -> Optional[int]:
        """Opens a Watch and reports what it says until SERVING turns into something else;
        returns that status (the stream closed after DRAIN_LINGER), or None when stopped.
        _WatchEnded or RpcError when the watch ends or fails."""
        call = self._health.Watch(health_pb2.HealthCheckRequest(service=""))
        with self._watch_lock:
            self._watch_call = call
        try:
            if self._stop.is_set():
                return None
            served = False
            for answer in call:
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    served = True
                    self._on_state(self, SERVING, "SERVING")
                    continue
                self._on_state(self, NOT_SERVING, _status_name(answer.status))
                if served and not self._linger():
                    return None if self._stop.is_set() else answer.status
            if self._stop.is_set():
                return None
            raise _WatchEnded()
        finally:
            with self._watch_lock:
                self._watch_call = None
            call.cancel()

    def _linger(self) -> bool:
        """The watch stays open (unread) for DRAIN_LINGER seconds while ``Check`` is asked
        every CHECK_INTERVAL: True as soon as it says SERVING again (go on reading the watch),
        False when the time is up (or the replica is stopped)."""
        end = time.monotonic() + DRAIN_LINGER
        while time.monotonic() < end:
            if self._stop.wait(CHECK_INTERVAL):
                return False
            status = self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                return True
        return False


class _WatchEnded(Exception):
    """The service ended a health watch without an error."""


def _status_name(status: int) -> str:
    try:
        return health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    except ValueError:
        return str(status)
