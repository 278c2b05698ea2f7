"""The edge's client of the inference service replicas: the only module of the edge that calls gRPC.

:class:`InferenceClient` keeps the replica set (``rest_edge.replica``: channel, health watch,
capacity and models of each) and decides where each call goes (``rest_edge.routing`` has the
targets and the policies); ``rest_edge.routed_call`` runs one call with its retry.

Only SERVING replicas that serve the call's model get it (a replica whose models are not known
yet is tried after those known to serve it); ``/v1/models`` lists the union of the serving
replicas' models, and a model no serving replica has is a 404. A NOT_SERVING (loading,
draining) or unreachable one comes back by itself once its watch says SERVING again.

Each gunicorn worker builds its own client after the fork and routes on its own: the in-flight
counts are this worker's, plus what the replica's ``GetStatus`` said the others held at the
last poll.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional

import grpc

from inference_service.v1 import inference_pb2 as pb

from rest_edge import errors, routing
from rest_edge.errors import from_rpc_error, rpc_attr
from rest_edge.replica import (
    NOT_SERVING,
    REMOVED,
    SERVING,
    STARTING,
    STATUS_INTERVAL,
    STATUS_TIMEOUT,
    SUSPECT_SECONDS,
    UNREACHABLE,
    Replica,
)
from rest_edge.routed_call import VANISHED, Attempt, EmbedCall, GenerateCall, valid_request_id

__all__ = ["DEFAULT_TARGET", "InferenceClient", "valid_request_id", "NOT_SERVING"]

log = logging.getLogger("rest_edge")

DEFAULT_TARGET = "127.0.0.1:50051"

# The most a call waits for the first health answers after the worker started.
STARTUP_WAIT = 5.0
# A re-resolution asked for early (a replica became unreachable) waits at least this long
# after the previous one.
MIN_RESOLVE_GAP = 2.0


class InferenceClient:
    """Generate / Embed / ListModels / health over the replicas of ``target``.

    ``target``: one address, a comma-separated list, or ``dns:///name:port`` (see
    ``rest_edge.routing.parse_targets``); ``policy``: ``prefix-affinity`` (default),
    ``least-loaded`` or ``round-robin``. Channels are created here (in the gunicorn worker,
    after the fork) and connect in the background; one client serves all threads of a worker.
    ``metrics`` (``rest_edge.metrics.Metrics``) gets the per-replica counts.
    ``first_response_timeout``: a Generate that has had no response from its replica for this
    many seconds is cancelled there and tried on another replica (None: no limit; a frozen or
    unreachable replica is found by keepalive anyway, see ``rest_edge.replica``).
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
        first_response_timeout: Optional[float] = None,
    ):
        self.target = target
        self.targets = routing.parse_targets(target)
        self.policy = routing.make_policy(policy)
        self._metrics = metrics
        self._list_timeout = list_timeout
        self._health_timeout = health_timeout
        self._resolve_interval = resolve_interval
        self._status_interval = status_interval
        self.first_response_timeout = first_response_timeout or None
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
        call.start()
        return call

    def embed(self, request: pb.EmbedRequest, timeout: Optional[float] = None) -> EmbedCall:
        """Start an Embed RPC on a replica (least loaded under prefix-affinity: no prefix to reuse)."""
        call = EmbedCall(self, request, request.model, None, timeout)
        call.start()
        return call

    def list_models(self, timeout: Optional[float] = None) -> list[pb.ModelInfo]:
        """The models of every serving replica (each name once, in replica order), from their
        last ``ListModels``; a serving replica whose models are not known yet is asked now."""
        with self._lock:
            self._wait_started_locked(STARTUP_WAIT)
            now = time.monotonic()
            serving = [r for r in self._replicas.values() if r.eligible(now)]
            states = self._states_locked()
        if not serving:
            log.warning("ListModels: no replica is serving (%s); 503", states)
            raise errors.service_unavailable()
        last_error: Optional[grpc.RpcError] = None
        known: list[list[pb.ModelInfo]] = []
        for replica in serving:
            models = replica.models
            if models is None:
                try:
                    models = self._refresh_models(replica, timeout or self._list_timeout)
                except grpc.RpcError as err:
                    last_error = err
                    if rpc_attr(err, "code") in VANISHED:
                        self.suspect(replica, f"ListModels: {rpc_attr(err, 'details')}")
                    continue
            known.append(models)
        if not known:
            assert last_error is not None
            raise from_rpc_error(last_error) from None
        union: dict[str, pb.ModelInfo] = {}
        for models in known:
            for model in models:
                union.setdefault(model.name, model)
        return list(union.values())

    def _refresh_models(self, replica: Replica, timeout: float) -> list[pb.ModelInfo]:
        models = list(replica.stub.ListModels(pb.ListModelsRequest(), timeout=timeout).models)
        with self._lock:
            replica.models = models
        return models

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

    def acquire(self, model: str, key: Optional[bytes], exclude: set[str], request_id: str,
                retry: bool = False, takes_slot: bool = True) -> Optional[Attempt]:
        """A place on the replica the policy picks, among the serving ones not in ``exclude``
        that serve ``model`` (those whose models are not known yet after those known to): the
        first in the policy's order with room counting every client's calls, else the first with
        room by this worker's own count (the service decides). When no serving replica lists the
        model, any serving replica is asked, so that the service itself answers for the name (a
        404, or a 400 for a name that is no valid name; see ``RoutedCall``). None on a retry when
        there is none; else RequestError: 503 when no replica serves, 429 when all are full.
        A call that ``takes_slot`` False (an embedding: the service computes it beside the slots)
        is neither held back by the slots' capacity nor counted against it."""
        with self._lock:
            if not retry:
                self._wait_started_locked(STARTUP_WAIT)
            now = time.monotonic()
            eligible = [r for r in self._replicas.values() if r.eligible(now)]
            serving_model = [r for r in eligible if r.serves(model) is not False]
            listed = bool(serving_model)
            candidates = [routing.Candidate(r.address, r.load(), r, free=r.free_slots(model))
                          for r in (serving_model or eligible) if r.address not in exclude]
            chosen = None
            if not candidates:
                reason = "no_replica"
            else:
                ordered = self.policy.order(candidates, key)
                if listed:  # those known to serve it before those not known yet
                    ordered = sorted(ordered, key=lambda c: c.replica.serves(model) is None)
                if not takes_slot:
                    chosen = ordered[0]
                else:
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
                if takes_slot:
                    replica.in_flight_by_model[model] = replica.in_flight_by_model.get(model, 0) + 1
                routed = (self.policy.describe(chosen, candidates, key)
                          if log.isEnabledFor(logging.DEBUG) else None)
        if chosen is None:
            if self._metrics is not None:
                self._metrics.unrouted.labels(reason).inc()
            extra = {"request_id": request_id}
            if reason == "no_replica":
                log.warning("request %s: no replica is serving (%s); 503", request_id or "-", states, extra=extra)
                raise errors.service_unavailable()
            log.warning("request %s: every serving replica is full (%s); 429", request_id or "-", states, extra=extra)
            raise errors.capacity_exhausted()
        if routed is not None:
            log.debug("request %s -> %s (%s)", request_id or "-", replica.address, routed,
                      extra={"request_id": request_id, "replica": replica.address})
        if self._metrics is not None:
            self._metrics.replica_requests.labels(replica.address).inc()
            self._metrics.replica_in_flight.labels(replica.address).inc()
        return Attempt(self, replica, model, listed=listed, takes_slot=takes_slot)

    def served_models(self) -> list[str]:
        """The names of the models the serving replicas list (sorted)."""
        with self._lock:
            now = time.monotonic()
            return sorted({m.name for r in self._replicas.values() if r.eligible(now) for m in (r.models or ())})

    def release(self, replica: Replica, model: str, takes_slot: bool = True) -> None:
        with self._lock:
            replica.in_flight -= 1
            left = replica.in_flight_by_model.get(model, 0) - 1
            if not takes_slot:
                pass
            elif left > 0:
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

    def _states_locked(self) -> str:
        return ", ".join(f"{a} {r.state}, {r.in_flight} in flight" for a, r in self._replicas.items()) or "none"

    def suspect(self, replica: Replica, why: str) -> None:
        with self._lock:
            replica.suspect_until = time.monotonic() + SUSPECT_SECONDS
        log.info("replica %s failed a call (%s): no new calls for %.0f s unless its health watch says "
                 "SERVING again", replica.address, why, SUSPECT_SECONDS, extra={"replica": replica.address})
        self._resolve_now.set()

    def refused(self, replica: Replica, model: str) -> None:
        with self._lock:
            replica.refused_until[model] = time.monotonic() + self._status_interval

    def count_retry(self, replica: Replica, reason: str, request_id: str, code: Any, now_on: str) -> None:
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
            elif state == UNREACHABLE:
                replica.models = None  # it may come back restarted with other models
            self._changed.notify_all()
        log.info("replica %s: %s (%s; was %s)", replica.address, state, why, before, extra={"replica": replica.address})
        if self._metrics is not None:
            self._metrics.replica_serving.labels(replica.address).set(1 if state == SERVING else 0)
        if state == SERVING:
            self._poll_now.set()
        elif state == UNREACHABLE:
            self._resolve_now.set()

    def _add_locked(self, address: str) -> None:
        replica = Replica(address, self._set_state)
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
            code = rpc_attr(err, "code")
            log.debug("GetStatus of %s failed: %s", replica.address, code)
            if code is grpc.StatusCode.UNIMPLEMENTED:  # capacity unknown: the service decides alone
                with self._lock:
                    replica.status_unsupported = True
                self._poll_models(replica, None)
            return
        except ValueError:  # the channel was closed meanwhile
            return
        with self._lock:
            replica.slots = {m.name: m.slots for m in status.models}
            replica.capacity = {m.name: m.slots + m.max_waiting for m in status.models}
            replica.others = {
                m.name: max(0, m.busy_slots + m.waiting - replica.in_flight_by_model.get(m.name, 0))
                for m in status.models
            }
        self._poll_models(replica, {m.name for m in status.models})

    def _poll_models(self, replica: Replica, names: Optional[set[str]]) -> None:
        """Asks ``ListModels`` when the replica's models are unknown or its status shows another set."""
        known = replica.models
        if known is not None and (names is None or names == {m.name for m in known}):
            return
        try:
            self._refresh_models(replica, STATUS_TIMEOUT)
        except grpc.RpcError as err:
            log.debug("ListModels of %s failed: %s", replica.address, rpc_attr(err, "code"))
        except ValueError:  # the channel was closed meanwhile
            pass
