"""The service's ``grpc.health.v1.Health``: Check and Watch over a table of statuses.

Why not grpcio-health-checking's ``HealthServicer``: its ``set()`` sends to every watcher while
holding the servicer's lock, and a watch closing at that moment blocks a server thread on the
same lock, so the two can wait for each other forever (grpc/grpc#43403; seen when an edge closed
its watch of a draining replica). Here ``set()`` only records the status and wakes the watchers;
each Watch stream sends from its own handler thread, outside the lock, so a watch may close at
any moment.
"""

from __future__ import annotations

import threading
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthStatuses(health_pb2_grpc.HealthServicer):
    """``set(service, status)`` and ``enter_graceful_shutdown()``, as grpcio's servicer has them."""

    def __init__(self):
        self._changed = threading.Condition()
        self._statuses: dict[str, int] = {}
        self._shut_down = False

    def set(self, service: str, status: int) -> None:
        with self._changed:
            if self._shut_down:
                return  # a graceful shutdown freezes every status at NOT_SERVING
            self._statuses[service] = status
            self._changed.notify_all()

    def enter_graceful_shutdown(self) -> None:
        with self._changed:
            if self._shut_down:
                return
            self._shut_down = True
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
            self._changed.notify_all()

    def status(self, service: str = "") -> int | None:
        with self._changed:
            return self._statuses.get(service)

    def Check(self, request, context):
        status = self.status(request.service)
        if status is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    def Watch(self, request, context) -> Iterator[health_pb2.HealthCheckResponse]:
        """Sends the current status, then every change, until the client leaves."""
        ended = threading.Event()

        def wake() -> None:
            ended.set()
            with self._changed:
                self._changed.notify_all()

        if not context.add_callback(wake):
            return
        sent = None
        while not ended.is_set():
            with self._changed:
                while not ended.is_set() and self._statuses.get(request.service, SERVICE_UNKNOWN) == sent:
                    self._changed.wait()
                status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if ended.is_set():
                return
            sent = status
            yield health_pb2.HealthCheckResponse(status=status)
