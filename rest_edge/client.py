"""The edge's client of the inference service replicas: the only module of the edge that calls gRPC.

:class:`InferenceClient` routes each call to one replica (``rest_edge.routing`` has the
targets and the policies). Per replica (:class:`Replica`): one channel, a background thread
WATCHING its ``grpc.health.v1`` status (the streaming ``Watch`` RPC, reconnecting with
backoff), its capacity from ``GetStatus`` (polled), and this worker's count of calls in flight
there. Only SERVING replicas get new calls; a NOT_SERVING (loading, draining) or unreachable
one comes back by itself once its watch says SERVING again (see ``Replica._watch`` for why a
draining replica's watch is closed, and when).

Each gunicorn worker builds its own client after the fork and routes on its own: the in-flight
counts are this worker's, plus what the replica's ``GetStatus`` said the others held at the
last poll.

Failed RPCs come out as :class:`rest_edge.errors.RequestError` (status, type, code and param
per the gRPC→HTTP table), so resources never see ``grpc.RpcError``. A Generate or Embed call
that fails before its first response because its replica vanished (UNAVAILABLE: refused,
reset, draining; or a CANCELLED we did not ask for) is retried once on another replica; one
refused with RESOURCE_EXHAUSTED is tried on another replica with room. Calls carry the request
id as ``x-request-id`` metadata.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from typing import Any, Callable, Iterator, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

from rest_edge import errors, routing

log = logging.getLogger("rest_edge")

DEFAULT_TARGET = "127.0.0.1:50051"

# The caller's request id travels as this metadata (and in GenerateRequest.request_id).
REQUEST_ID_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,%d}\Z" % MAX_REQUEST_ID_CHARS)

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
# The most a call waits for the first health answers after the worker started.
STARTUP_WAIT = 5.0
# A re-resolution asked for early (a replica became unreachable) waits at least this long
# after the previous one.
MIN_RESOLVE_GAP = 2.0

CHANNEL_OPTIONS = (
    ("grpc.primary_user_agent", "rest-edge"),
    # gRPC's defaults (1 s doubling to 120 s) would keep a restarted replica away for minutes.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

# Replica states.
STARTING = "starting"          # no health answer yet
SERVING = "serving"
NOT_SERVING = "not serving"    # loading, draining, or an unknown service
UNREACHABLE = "unreachable"    # no health watch: refused, reset, gone
REMOVED = "removed"            # no longer among the targets (DNS)

# Codes that mean the replica, not the request, failed (before the first response).
_VANISHED = (grpc.StatusCode.UNAVAILABLE,)


def valid_request_id(value: Optional[str]) -> bool:
    """1-128 visible ASCII characters (0x21-0x7E): safe as gRPC metadata and in log lines."""
    return bool(value) and _REQUEST_ID.match(value) is not None


def error_from_rpc(err: grpc.RpcError) -> errors.RequestError:
    """The RequestError of a failed RPC (stub errors are also ``grpc.Call`` objects)."""
    return errors.from_grpc(_attr(err, "code"), _attr(err, "details"), _attr(err, "trailing_metadata"))


def _attr(err: Any, name: str):
    fn = getattr(err, name, None)
    try:
        return fn() if callable(fn) else None
    except Exception:  # a call object that cannot tell
        return None


def _metadata(request_id: str) -> Optional[tuple]:
    return ((REQUEST_ID_METADATA_KEY, request_id),) if valid_request_id(request_id) else None


class Replica:
    """One replica: its channel and stubs, health, capacity and this worker's calls there.

    State is guarded by the client's lock; the watch thread only reports to the client.
    """

    def __init__(self, address: str, client: "InferenceClient", channel: Optional[grpc.Channel] = None):
        self.address = address
        self._client = client
        self.channel = channel if channel is not None else grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = pb_grpc.InferenceServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self.state = STARTING
        self.suspect_until = 0.0
        self.in_flight = 0
        self.in_flight_by_model: dict[str, int] = {}
        self.capacity: dict[str, int] = {}       # model → slots + max_waiting (GetStatus)
        self.others: dict[str, int] = {}         # model → calls of other clients at the last poll
        self.refused_until: dict[str, float] = {}  # model → RESOURCE_EXHAUSTED seen, until
        self.closed = False
        self.status_unsupported = False  # GetStatus answered UNIMPLEMENTED (until it serves again)
        self._stop = threading.Event()
        self._watch_call: Any = None
        self._watch_lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=f"health-watch {address}", daemon=True)

    # --- read under the client's lock ---

    def eligible(self, now: float) -> bool:
        return self.state == SERVING and now >= self.suspect_until

    def load(self) -> int:
        return self.in_flight + sum(self.others.values())

    def local_room(self, model: str) -> bool:
        """Room by this worker's own count: certain knowledge (the service decides the rest)."""
        cap = self.capacity.get(model)
        return cap is None or self.in_flight_by_model.get(model, 0) < cap

    def estimated_room(self, model: str, now: float) -> bool:
        """Room counting the other clients' calls of the last poll, and no recent refusal."""
        if self.refused_until.get(model, 0.0) > now:
            return False
        cap = self.capacity.get(model)
        return cap is None or self.in_flight_by_model.get(model, 0) + self.others.get(model, 0) < cap

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
        close the stream at once: grpcio-health-checking's HealthServicer deadlocks when a
        watch closes while ``set()``/``enter_graceful_shutdown()`` is sending to its watchers
        (grpc/grpc#43403: set() holds the servicer's lock while waiting for a send that the
        server thread, blocked on that lock by the close, never completes). So after SERVING
        turned NOT_SERVING the stream stays open while ``Check`` is asked every
        :data:`CHECK_INTERVAL`, and is closed when a Check fails (the drained service stops
        taking calls) or after :data:`DRAIN_LINGER` seconds, when the drain's one update has
        long been sent (a graceful shutdown freezes the status: nothing is sent after it).
        A replica that is NOT_SERVING from the start (loading) is watched until it serves:
        nothing is closed while it may call set().
        """
        backoff = WATCH_BACKOFF_INITIAL
        while not self._stop.is_set():
            why = "its health watch ended"
            try:
                status = self._watch_until_drained()
                if status is None:
                    return  # stopped
                while status != health_pb2.HealthCheckResponse.SERVING:
                    self._client._set_state(self, NOT_SERVING, _status_name(status))
                    backoff = WATCH_BACKOFF_INITIAL
                    if self._stop.wait(CHECK_INTERVAL):
                        return
                    status = self._health.Check(health_pb2.HealthCheckRequest(service=""),
                                                timeout=CHECK_TIMEOUT).status
                continue  # SERVING again: watch
            except _WatchEnded:
                pass
            except grpc.RpcError as err:
                code = _attr(err, "code")
                why = f"{getattr(code, 'name', code)}: {_attr(err, 'details')}"
            except Exception:  # noqa: BLE001 - the watch thread must live on (or end quietly when stopped)
                if self._stop.is_set():
                    return
                log.exception("health watch of %s failed", self.address)
            if self._stop.is_set():
                return
            self._client._set_state(self, UNREACHABLE, why)
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
                    self._client._set_state(self, SERVING, "SERVING")
                    continue
                self._client._set_state(self, NOT_SERVING, _status_name(answer.status))
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


class _Attempt:
    """One try of a call on one replica: it holds a place in that replica's in-flight count
    until ``release()``."""

    def __init__(self, client: "InferenceClient", replica: Replica, model: str):
        self.client = client
        self.replica = replica
        self.model = model
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.client._release(self.replica, self.model)


class _RoutedCall:
    """Shared by Generate and Embed: picks a replica, starts the RPC there, and decides
    whether a failure before the first response is tried again elsewhere."""

    def __init__(self, client: "InferenceClient", request: Any, model: str, key: Optional[bytes],
                 timeout: Optional[float]):
        self._client = client
        self._request = request
        self._model = model
        self._key = key
        self._deadline = time.monotonic() + timeout if timeout is not None else None
        self._lock = threading.Lock()
        self._rpc: Any = None
        self._attempt: Optional[_Attempt] = None
        self._cancelled = False
        self._answered = False
        self._complete = False  # the last message came: the RPC ends by itself
        self._tried: set[str] = set()
        self._failovers = 0

    @property
    def request_id(self) -> str:
        return self._request.request_id

    def _remaining(self) -> Optional[float]:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _invoke(self, replica: Replica, timeout: Optional[float]) -> Any:
        raise NotImplementedError

    def _start(self) -> bool:
        """Pick a replica (not one tried before) and start the RPC there. The first time,
        RequestError when there is none (503) or all are full (429); on a retry, False."""
        retry = bool(self._tried)
        attempt = self._client._acquire(self._model, self._key, self._tried, self.request_id, retry=retry)
        if attempt is None:
            return False
        self._tried.add(attempt.replica.address)
        remaining = self._remaining()
        try:
            rpc = self._invoke(attempt.replica, None if remaining is None else max(remaining, 0.001))
        except grpc.RpcError as err:
            attempt.release()
            raise error_from_rpc(err) from None
        except BaseException:
            attempt.release()
            raise
        with self._lock:
            self._rpc, self._attempt = rpc, attempt
            cancelled = self._cancelled
        if cancelled:  # cancelled while switching replicas
            rpc.cancel()
        return True

    def _release(self) -> None:
        with self._lock:
            attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.release()

    def _retry(self, err: grpc.RpcError, replica: Replica) -> bool:
        """After a failure: start again on another replica if the failure came before the
        first response, from the replica rather than the request, and nobody cancelled."""
        with self._lock:
            if self._answered or self._cancelled:
                return False
        code = _attr(err, "code")
        if code in _VANISHED or code is grpc.StatusCode.CANCELLED:  # a CANCELLED we did not ask for: shutdown race
            if self._failovers >= 1:
                return False
            reason = "unavailable"
            self._client._suspect(replica, f"{code.name}: {_attr(err, 'details')}")
        elif code is grpc.StatusCode.RESOURCE_EXHAUSTED:
            reason = "full"
            self._client._refused(replica, self._model)
        else:
            return False
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return False
        try:
            if not self._start():
                return False  # nowhere else to go: the client gets the first replica's error
        except errors.RequestError:
            return False
        if reason == "unavailable":
            self._failovers += 1
        self._client._count_retry(replica, reason, self.request_id, code, self._attempt_address())
        return True

    def _attempt_address(self) -> str:
        with self._lock:
            return self._attempt.replica.address if self._attempt is not None else "-"

    def _current(self) -> tuple[Any, Optional[Replica]]:
        with self._lock:
            return self._rpc, (self._attempt.replica if self._attempt is not None else None)

    def cancel(self) -> bool:
        """Cancel the RPC; a no-op (False) when it already ended, or when its last message came
        (the service is ending it with OK: cancelling it then would count a finished generation
        as cancelled in the service's call metrics)."""
        with self._lock:
            self._cancelled = True
            rpc = None if self._complete else self._rpc
        try:
            return bool(rpc.cancel()) if rpc is not None else False
        finally:
            self._release()


class GenerateCall(_RoutedCall):
    """An in-flight Generate RPC: iterate for responses, ``cancel()`` to stop it."""

    def _invoke(self, replica, timeout):
        return replica.stub.Generate(self._request, timeout=timeout, metadata=_metadata(self.request_id))

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        return self

    def __next__(self) -> pb.GenerateResponse:
        while True:
            rpc, replica = self._current()
            try:
                message = next(rpc)
            except StopIteration:
                self._release()
                raise
            except grpc.RpcError as err:
                self._release()
                if replica is not None and self._retry(err, replica):
                    continue
                raise error_from_rpc(err) from None
            with self._lock:
                self._answered = True
                if message.finish_reason != pb.FINISH_REASON_UNSPECIFIED or message.HasField("usage"):
                    self._complete = True
            return message


class EmbedCall(_RoutedCall):
    """An in-flight Embed RPC: ``result()`` waits for the answer, ``cancel()`` stops it."""

    def _invoke(self, replica, timeout):
        return replica.stub.Embed.future(self._request, timeout=timeout, metadata=_metadata(self.request_id))

    def result(self) -> pb.EmbedResponse:
        while True:
            future, replica = self._current()
            try:
                answer = future.result()
            except grpc.RpcError as err:
                self._release()
                if replica is not None and self._retry(err, replica):
                    continue
                raise error_from_rpc(err) from None
            except grpc.FutureCancelledError:  # cancelled here, before the service answered
                self._release()
                raise errors.from_grpc(grpc.StatusCode.CANCELLED, "the call was cancelled") from None
            with self._lock:
                self._answered = True
            self._release()
            return answer


class InferenceClient:
    """Generate / Embed / ListModels / health over the replicas of ``target``.

    ``target``: one address, a comma-separated list, or ``dns:///name:port`` (see
    ``rest_edge.routing.parse_targets``); ``policy``: ``prefix-affinity`` (default),
    ``least-loaded`` or ``round-robin``. Channels are created here (in the gunicorn worker,
    after the fork) and connect in the background; one client serves all threads of a worker.
    ``metrics`` (``rest_edge.metrics.Metrics``) gets the per-replica counts.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        policy: str = routing.DEFAULT_POLICY,
        metrics: Any = None,
        list_timeout: float = 10.0,
        health_timeout: float = 2.0,
        resolve_interval: float = routing.RESOLVE_INTERVAL,
        status_interval: float = STATUS_INTERVAL,
    ):
        self.target = target
        self.targets = routing.parse_targets(target)
        self.policy = routing.make_policy(policy)
        self._metrics = metrics
        self._list_timeout = list_timeout
        self._health_timeout = health_timeout
        self._resolve_interval = resolve_interval
        self._status_interval = status_interval
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._replicas: dict[str, Replica] = {}
        self._closed = threading.Event()
        self._poll_now = threading.Event()
        self._resolve_now = threading.Event()
        self._resolved = not self.targets.dynamic
        self._started = time.monotonic()
        self._threads: list[threading.Thread] = []
        with self._lock:
            for address in self.targets.addresses:
                self._add_locked(address)
        if self.targets.dynamic:
            self._spawn(self._resolve_loop, "resolve " + self.targets.describe())
        self._spawn(self._poll_loop, "status poll")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    # --- the public interface of the resources ---

    def generate(self, request: pb.GenerateRequest, timeout: Optional[float] = None) -> GenerateCall:
        """Start a Generate RPC on a replica; ``timeout`` is its deadline, for the whole stream
        (a retry gets what is left of it)."""
        key = None
        if self.policy.name == routing.PREFIX_AFFINITY:
            key = routing.conversation_key(request.model, [(m.role, m.content) for m in request.messages],
                                           request.prompt)
        call = GenerateCall(self, request, request.model, key, timeout)
        call._start()
        return call

    def embed(self, request: pb.EmbedRequest, timeout: Optional[float] = None) -> EmbedCall:
        """Start an Embed RPC on a replica (least loaded under prefix-affinity: no prefix to reuse)."""
        call = EmbedCall(self, request, request.model, None, timeout)
        call._start()
        return call

    def list_models(self, timeout: Optional[float] = None) -> list[pb.ModelInfo]:
        """ListModels of a serving replica (every replica serves the same models); another one
        if that one is unavailable."""
        tried: set[str] = set()
        last_error: Optional[grpc.RpcError] = None
        for _ in range(2):
            replica = self._any_serving(tried)
            if replica is None:
                break
            tried.add(replica.address)
            try:
                resp = replica.stub.ListModels(pb.ListModelsRequest(), timeout=timeout or self._list_timeout)
            except grpc.RpcError as err:
                last_error = err
                if _attr(err, "code") in _VANISHED:
                    self._suspect(replica, f"ListModels: {_attr(err, 'details')}")
                    continue
                raise error_from_rpc(err) from None
            return list(resp.models)
        if last_error is not None:
            raise error_from_rpc(last_error) from None
        with self._lock:
            states = self._states_locked()
        log.warning("ListModels: no replica is serving (%s); 503", states)
        raise errors.service_unavailable()

    def health(self, timeout: Optional[float] = None) -> bool:
        """True when at least one replica's health watch says SERVING (no RPC: the watches'
        state; right after start, waits up to ``timeout`` for their first answers)."""
        with self._lock:
            self._wait_started_locked(timeout if timeout is not None else self._health_timeout)
            return any(r.state == SERVING for r in self._replicas.values())

    def replicas(self) -> dict[str, str]:
        """Each replica's address and state (for logs and tests)."""
        with self._lock:
            return {address: r.state for address, r in self._replicas.items()}

    def close(self) -> None:
        self._closed.set()
        self._poll_now.set()
        self._resolve_now.set()
        with self._lock:
            replicas = list(self._replicas.values())
            self._replicas.clear()
        for replica in replicas:
            replica.stop()
            replica.channel.close()

    # --- routing ---

    def _wait_started_locked(self, timeout: float) -> None:
        """Right after start (or when a replica was added): wait, at most ``timeout``, until
        DNS answered once and every replica's watch answered, or one replica serves."""
        end = time.monotonic() + timeout

        def settled() -> bool:
            if not self._resolved:
                return False
            replicas = self._replicas.values()
            return any(r.state == SERVING for r in replicas) or all(r.state != STARTING for r in replicas)

        while not settled():
            left = end - time.monotonic()
            if left <= 0:
                return
            self._changed.wait(left)

    def _acquire(self, model: str, key: Optional[bytes], exclude: set[str], request_id: str,
                 retry: bool = False) -> Optional[_Attempt]:
        """A place on the replica the policy picks, among the serving ones not in ``exclude``:
        the first in the policy's order with room counting every client's calls, else the first
        with room by this worker's own count (the service decides). None on a retry when there is
        none; else RequestError: 503 when no replica serves, 429 when all are full."""
        with self._lock:
            if not retry:
                self._wait_started_locked(STARTUP_WAIT)
            now = time.monotonic()
            candidates = [routing.Candidate(r.address, r.load(), r) for r in self._replicas.values()
                          if r.address not in exclude and r.eligible(now)]
            if not candidates:
                reason = "no_replica"
                chosen = None
            else:
                ordered = self.policy.order(candidates, key)
                chosen = (next((c for c in ordered if c.replica.estimated_room(model, now)), None)
                          or next((c for c in ordered if c.replica.local_room(model)), None))
                reason = "all_full"
            if chosen is None:
                if retry:
                    return None
                states = self._states_locked()
            else:
                replica = chosen.replica
                replica.in_flight += 1
                replica.in_flight_by_model[model] = replica.in_flight_by_model.get(model, 0) + 1
                routed = (self.policy.describe(chosen, candidates, key)
                          if log.isEnabledFor(logging.DEBUG) else None)
        if chosen is None:
            if self._metrics is not None:
                self._metrics.unrouted.labels(reason).inc()
            if reason == "no_replica":
                log.warning("request %s: no replica is serving (%s); 503", request_id or "-", states,
                            extra={"request_id": request_id})
                raise errors.service_unavailable()
            log.warning("request %s: every serving replica is full (%s); 429", request_id or "-", states,
                        extra={"request_id": request_id})
            raise errors.capacity_exhausted()
        if routed is not None:
            log.debug("request %s -> %s (%s)", request_id or "-", replica.address, routed,
                      extra={"request_id": request_id, "replica": replica.address})
        if self._metrics is not None:
            self._metrics.replica_requests.labels(replica.address).inc()
            self._metrics.replica_in_flight.labels(replica.address).inc()
        return _Attempt(self, replica, model)

    def _release(self, replica: Replica, model: str) -> None:
        with self._lock:
            replica.in_flight -= 1
            left = replica.in_flight_by_model.get(model, 0) - 1
            if left > 0:
                replica.in_flight_by_model[model] = left
            else:
                replica.in_flight_by_model.pop(model, None)
            close = replica.state == REMOVED and replica.in_flight == 0 and not replica.closed
            if close:
                replica.closed = True
        if self._metrics is not None:
            self._metrics.replica_in_flight.labels(replica.address).dec()
        if close:
            replica.channel.close()

    def _any_serving(self, exclude: set[str]) -> Optional[Replica]:
        with self._lock:
            self._wait_started_locked(STARTUP_WAIT)
            now = time.monotonic()
            serving = [r for r in self._replicas.values() if r.address not in exclude and r.eligible(now)]
            if not serving:
                return None
            least = min(r.load() for r in serving)
            return random.choice([r for r in serving if r.load() == least])

    def _states_locked(self) -> str:
        return ", ".join(f"{a} {r.state}, {r.in_flight} in flight" for a, r in self._replicas.items()) or "none"

    def _suspect(self, replica: Replica, why: str) -> None:
        with self._lock:
            replica.suspect_until = time.monotonic() + SUSPECT_SECONDS
        log.info("replica %s failed a call (%s): no new calls for %.0f s unless its health watch says "
                 "SERVING again", replica.address, why, SUSPECT_SECONDS, extra={"replica": replica.address})
        self._resolve_now.set()

    def _refused(self, replica: Replica, model: str) -> None:
        with self._lock:
            replica.refused_until[model] = time.monotonic() + self._status_interval

    def _count_retry(self, replica: Replica, reason: str, request_id: str, code: Any, now_on: str) -> None:
        log.log(logging.WARNING if reason == "unavailable" else logging.INFO,
                "request %s: replica %s answered %s before the first token; retried on %s",
                request_id or "-", replica.address, getattr(code, "name", code), now_on,
                extra={"request_id": request_id, "replica": replica.address, "retry_replica": now_on})
        if self._metrics is not None:
            self._metrics.retries.labels(replica.address, reason).inc()

    # --- replica state (watch threads, resolver) ---

    def _set_state(self, replica: Replica, state: str, why: str = "") -> None:
        with self._lock:
            if replica.state == REMOVED or replica.state == state:
                return
            before, replica.state = replica.state, state
            if state == SERVING:
                replica.suspect_until = 0.0
                replica.status_unsupported = False
            self._changed.notify_all()
        log.info("replica %s: %s (%s; was %s)", replica.address, state, why, before, extra={"replica": replica.address})
        if self._metrics is not None:
            self._metrics.replica_serving.labels(replica.address).set(1 if state == SERVING else 0)
        if state == SERVING:
            self._poll_now.set()
        elif state == UNREACHABLE:
            self._resolve_now.set()

    def _add_locked(self, address: str) -> None:
        replica = Replica(address, self)
        self._replicas[address] = replica
        replica.start()

    def _set_addresses(self, addresses: list[str]) -> None:
        with self._lock:
            current = set(self._replicas)
            added = [a for a in addresses if a not in current]
            removed = [a for a in sorted(current) if a not in addresses]
            for address in added:
                self._add_locked(address)
            gone = [self._replicas.pop(address) for address in removed]
            for replica in gone:
                replica.state = REMOVED
            close_now = [r for r in gone if r.in_flight == 0]
            for replica in close_now:
                replica.closed = True
            self._resolved = True
            self._changed.notify_all()
        if added or removed:
            log.info("replicas of %s: %s (added %s, removed %s)", self.targets.describe(), ", ".join(addresses),
                     ", ".join(added) or "none", ", ".join(removed) or "none")
        for replica in gone:
            replica.stop()
            if self._metrics is not None:
                self._metrics.replica_serving.labels(replica.address).set(0)
        for replica in close_now:  # the others close when their last call ends
            replica.channel.close()

    def _resolve_loop(self) -> None:
        host, port = self.targets.dns_host, self.targets.dns_port
        failing = False
        last = 0.0
        while not self._closed.is_set():
            gap = last + min(MIN_RESOLVE_GAP, self._resolve_interval) - time.monotonic()
            if gap > 0 and self._closed.wait(gap):
                return
            last = time.monotonic()
            self._resolve_now.clear()
            try:
                addresses = routing.resolve(host, port)
                if not addresses:
                    raise OSError("no address")
            except OSError as error:
                if not failing:
                    log.warning("DNS %s: %s; keeping the replicas known (%d)", self.targets.describe(), error,
                                len(self._replicas))
                failing = True
                with self._lock:
                    self._resolved = True
                    self._changed.notify_all()
            else:
                if failing:
                    log.info("DNS %s resolves again", self.targets.describe())
                failing = False
                self._set_addresses(addresses)
            self._resolve_now.wait(self._resolve_interval)

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._poll_now.wait(self._status_interval)
            self._poll_now.clear()
            if self._closed.is_set():
                return
            with self._lock:
                serving = [r for r in self._replicas.values() if r.state == SERVING and not r.status_unsupported]
            for replica in serving:
                self._poll(replica)

    def _poll(self, replica: Replica) -> None:
        try:
            status = replica.stub.GetStatus(pb.GetStatusRequest(), timeout=STATUS_TIMEOUT)
        except grpc.RpcError as err:
            code = _attr(err, "code")
            log.debug("GetStatus of %s failed: %s", replica.address, code)
            if code is grpc.StatusCode.UNIMPLEMENTED:  # capacity unknown: the service decides alone
                with self._lock:
                    replica.status_unsupported = True
            return
        except ValueError:  # the channel was closed meanwhile
            return
        with self._lock:
            replica.capacity = {m.name: m.slots + m.max_waiting for m in status.models}
            replica.others = {
                m.name: max(0, m.busy_slots + m.waiting - replica.in_flight_by_model.get(m.name, 0))
                for m in status.models
            }
