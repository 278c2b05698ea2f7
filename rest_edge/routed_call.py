"""One routed call: a Generate or Embed RPC on the replica the router picks, and its retry.

A call that fails before its first response because its replica vanished (UNAVAILABLE:
refused, reset, draining, a keepalive that went unanswered; or a CANCELLED we did not ask for)
or stalled (no first response within ``first_response_timeout``: a replica that accepts
connections but answers nothing) is tried once more on another replica; one refused with
RESOURCE_EXHAUSTED is tried on another replica with room. Once a response came, a failure
reaches the caller (a stream's error frame). Calls carry the request id as ``x-request-id``
metadata. Failed RPCs come out as :class:`rest_edge.errors.RequestError`.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, Iterator, Optional, Protocol

import grpc

from inference_service.limits import RETRY_AFTER_METADATA_KEY
from inference_service.v1 import inference_pb2 as pb

from rest_edge import errors
from rest_edge.errors import from_rpc_error, rpc_attr
from rest_edge.replica import Replica

# The caller's request id travels as this metadata (and in GenerateRequest.request_id).
REQUEST_ID_METADATA_KEY = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,%d}\Z" % MAX_REQUEST_ID_CHARS)

# Codes that mean the replica, not the request, failed (before the first response).
VANISHED = (grpc.StatusCode.UNAVAILABLE,)


def valid_request_id(value: Optional[str]) -> bool:
    """1-128 visible ASCII characters (0x21-0x7E): safe as gRPC metadata and in log lines."""
    return bool(value) and _REQUEST_ID.match(value) is not None


def _metadata(request_id: str) -> Optional[tuple]:
    return ((REQUEST_ID_METADATA_KEY, request_id),) if valid_request_id(request_id) else None


class Router(Protocol):
    """What a routed call asks of the client that owns the replicas."""

    first_response_timeout: Optional[float]

    def acquire(self, model: str, key: Optional[bytes], exclude: set[str], request_id: str,
                retry: bool = False, takes_slot: bool = True) -> Optional["Attempt"]: ...

    def release(self, replica: Replica, model: str, takes_slot: bool = True) -> None: ...

    def suspect(self, replica: Replica, why: str) -> None: ...

    def refused(self, replica: Replica, model: str) -> None: ...

    def count_retry(self, replica: Replica, reason: str, request_id: str, code: Any, now_on: str) -> None: ...

    def served_models(self) -> list[str]: ...


class Attempt:
    """One try of a call on one replica: it holds a place in that replica's in-flight count
    until ``release()``."""

    def __init__(self, router: Router, replica: Replica, model: str, listed: bool = True, takes_slot: bool = True):
        self.router = router
        self.replica = replica
        self.model = model
        self.listed = listed  # the replica was chosen because it lists the model
        self.takes_slot = takes_slot
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.router.release(self.replica, self.model, self.takes_slot)


def _says_retry_after(err: grpc.RpcError) -> bool:
    return any(key == RETRY_AFTER_METADATA_KEY for key, _ in (rpc_attr(err, "trailing_metadata") or ()))


class _RoutedCall:
    """Shared by Generate and Embed: picks a replica, starts the RPC there, and decides
    whether a failure before the first response is tried again elsewhere."""

    takes_slot = True  # a generation holds a slot (or a queue place) of its replica

    def __init__(self, router: Router, request: Any, model: str, key: Optional[bytes],
                 timeout: Optional[float]):
        self._router = router
        self._request = request
        self._model = model
        self._key = key
        self._deadline = time.monotonic() + timeout if timeout is not None else None
        self._lock = threading.Lock()
        self._rpc: Any = None
        self._attempt: Optional[Attempt] = None
        self._cancelled = False
        self._answered = False
        self._complete = False  # the last message came: the RPC ends by itself
        self._stalled: Optional[Any] = None  # the RPC cancelled for want of a first response
        self._watchdog: Optional[threading.Timer] = None
        self._tried: set[str] = set()
        self._failovers = 0
        self._unlisted = False  # no serving replica listed the model when the call started

    @property
    def request_id(self) -> str:
        return self._request.request_id

    def _remaining(self) -> Optional[float]:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def _invoke(self, replica: Replica, timeout: Optional[float]) -> Any:
        raise NotImplementedError

    def start(self) -> bool:
        """Pick a replica (not one tried before) and start the RPC there. The first time,
        RequestError when there is none (503), none serves the model (404) or all are full
        (429); on a retry, False."""
        retry = bool(self._tried)
        attempt = self._router.acquire(self._model, self._key, self._tried, self.request_id, retry=retry,
                                       takes_slot=self.takes_slot)
        if attempt is None:
            return False
        self._tried.add(attempt.replica.address)
        remaining = self._remaining()
        try:
            rpc = self._invoke(attempt.replica, None if remaining is None else max(remaining, 0.001))
        except grpc.RpcError as err:
            attempt.release()
            raise from_rpc_error(err) from None
        except BaseException:
            attempt.release()
            raise
        with self._lock:
            self._rpc, self._attempt = rpc, attempt
            self._unlisted = not attempt.listed
            cancelled = self._cancelled
        if cancelled:  # cancelled while switching replicas
            rpc.cancel()
        else:
            self._arm_watchdog(rpc)
        return True

    def _arm_watchdog(self, rpc: Any) -> None:
        """Cancels ``rpc`` if it has not answered within the router's first-response timeout;
        the failure that follows is then retried like a vanished replica's."""
        limit = self._router.first_response_timeout
        if not limit:
            return

        def fire() -> None:
            with self._lock:
                if self._answered or self._cancelled or self._rpc is not rpc:
                    return
                self._stalled = rpc
            rpc.cancel()

        timer = threading.Timer(limit, fire)
        timer.daemon = True
        with self._lock:
            previous, self._watchdog = self._watchdog, timer
        if previous is not None:
            previous.cancel()
        timer.start()

    def _disarm_watchdog(self) -> None:
        with self._lock:
            timer, self._watchdog = self._watchdog, None
        if timer is not None:
            timer.cancel()

    def _mark_answered(self, complete: bool = False) -> None:
        with self._lock:
            self._answered = True
            self._complete = self._complete or complete
        self._disarm_watchdog()

    def _release(self) -> None:
        with self._lock:
            attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.release()

    def _retry(self, err: grpc.RpcError, replica: Replica, rpc: Any) -> bool:
        """After a failure: start again on another replica if the failure came before the
        first response, from the replica rather than the request, and nobody cancelled."""
        with self._lock:
            if self._answered or self._cancelled:
                return False
            stalled = self._stalled is rpc
        code = rpc_attr(err, "code")
        if stalled:
            reason = "stalled"
            self._router.suspect(replica, f"no answer in {self._router.first_response_timeout:g} s")
        elif code in VANISHED or code is grpc.StatusCode.CANCELLED:  # a CANCELLED we did not ask for
            reason = "unavailable"
            self._router.suspect(replica, f"{code.name}: {rpc_attr(err, 'details')}")
        elif code is grpc.StatusCode.RESOURCE_EXHAUSTED and _says_retry_after(err):
            reason = "full"  # a full queue; a message over the size limit would be refused anywhere
            self._router.refused(replica, self._model)
        else:
            return False
        if reason != "full" and self._failovers >= 1:
            return False
        remaining = self._remaining()
        if remaining is not None and remaining <= 0:
            return False
        try:
            if not self.start():
                return False  # nowhere else to go: the client gets the first replica's error
        except errors.RequestError:
            return False
        if reason != "full":
            self._failovers += 1
        self._router.count_retry(replica, reason, self.request_id, code, self._attempt_address())
        return True

    def _error(self, err: grpc.RpcError, rpc: Any) -> errors.RequestError:
        with self._lock:
            stalled = self._stalled is rpc
            unlisted = self._unlisted
        if stalled:
            return errors.from_grpc(grpc.StatusCode.UNAVAILABLE, "no replica answered in time")
        if unlisted and rpc_attr(err, "code") is grpc.StatusCode.NOT_FOUND:
            # No serving replica lists the model: the one asked named only its own models.
            return errors.model_not_served(self._model, self._router.served_models())
        return from_rpc_error(err)

    def _attempt_address(self) -> str:
        with self._lock:
            return self._attempt.replica.address if self._attempt is not None else "-"

    def _current(self) -> tuple[Any, Optional[Replica]]:
        with self._lock:
            return self._rpc, (self._attempt.replica if self._attempt is not None else None)

    def cancel(self) -> bool:
        """Cancel the RPC; a no-op (False) when it already ended, or when its last message came
        (the service is ending it with OK)."""
        with self._lock:
            self._cancelled = True
            rpc = None if self._complete else self._rpc
        self._disarm_watchdog()
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
                self._disarm_watchdog()
                self._release()
                raise
            except grpc.RpcError as err:
                self._disarm_watchdog()
                self._release()
                if replica is not None and self._retry(err, replica, rpc):
                    continue
                raise self._error(err, rpc) from None
            self._mark_answered(complete=message.finish_reason != pb.FINISH_REASON_UNSPECIFIED
                                or message.HasField("usage"))
            return message


class EmbedCall(_RoutedCall):
    """An in-flight Embed RPC: ``result()`` waits for the answer, ``cancel()`` stops it.

    The first-response timeout does not apply: an embedding's one answer comes when all of it
    is computed. It takes no slot: the service computes embeddings beside the generations."""

    takes_slot = False

    def _arm_watchdog(self, rpc: Any) -> None:
        pass

    def _invoke(self, replica, timeout):
        return replica.stub.Embed.future(self._request, timeout=timeout, metadata=_metadata(self.request_id))

    def result(self) -> pb.EmbedResponse:
        while True:
            future, replica = self._current()
            try:
                answer = future.result()
            except grpc.RpcError as err:
                self._release()
                if replica is not None and self._retry(err, replica, future):
                    continue
                raise self._error(err, future) from None
            except grpc.FutureCancelledError:  # cancelled here, before the service answered
                self._release()
                raise errors.from_grpc(grpc.StatusCode.CANCELLED, "the call was cancelled") from None
            self._mark_answered()
            self._release()
            return answer
