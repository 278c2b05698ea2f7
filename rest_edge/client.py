"""A small client of the inference service: the only module of the edge that calls gRPC.

Failed RPCs come out as :class:`rest_edge.errors.RequestError` (status, type, code and param
per the gRPC→HTTP table), so resources never see ``grpc.RpcError``.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.v1 import inference_pb2 as pb
from inference_service.v1 import inference_pb2_grpc as pb_grpc

from rest_edge import errors

log = logging.getLogger("rest_edge")

DEFAULT_TARGET = "127.0.0.1:50051"


def error_from_rpc(err: grpc.RpcError) -> errors.RequestError:
    """The RequestError of a failed RPC (stub errors are also ``grpc.Call`` objects)."""

    def attr(name: str):
        fn = getattr(err, name, None)
        try:
            return fn() if callable(fn) else None
        except Exception:  # a call object that cannot tell
            return None

    return errors.from_grpc(attr("code"), attr("details"), attr("trailing_metadata"))


class GenerateCall:
    """An in-flight Generate RPC: iterate for responses, ``cancel()`` to stop it."""

    def __init__(self, call):
        self._call = call

    def __iter__(self) -> Iterator[pb.GenerateResponse]:
        return self

    def __next__(self) -> pb.GenerateResponse:
        try:
            return next(self._call)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def cancel(self) -> bool:
        """Cancel the RPC; a no-op (False) when it already ended."""
        return self._call.cancel()


class EmbedCall:
    """An in-flight Embed RPC: ``result()`` waits for the answer, ``cancel()`` stops it."""

    def __init__(self, future):
        self._future = future

    def result(self) -> pb.EmbedResponse:
        try:
            return self._future.result()
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        except grpc.FutureCancelledError:  # cancelled here, before the service answered
            raise errors.from_grpc(grpc.StatusCode.CANCELLED, "the call was cancelled") from None

    def cancel(self) -> bool:
        """Cancel the RPC; a no-op (False) when it already ended."""
        return self._future.cancel()


class InferenceClient:
    """Generate / Embed / ListModels / health of one inference service, over one channel.

    The channel is created here (after gunicorn forked, as ``create_app`` runs in the worker)
    and connects lazily on the first call. Channels and stubs are thread-safe: one client
    serves all threads of a worker.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        channel: Optional[grpc.Channel] = None,
        list_timeout: float = 10.0,
        health_timeout: float = 2.0,
    ):
        self.target = target
        self._channel = channel if channel is not None else grpc.insecure_channel(
            target, options=[("grpc.primary_user_agent", "rest-edge")]
        )
        self._stub = pb_grpc.InferenceServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._list_timeout = list_timeout
        self._health_timeout = health_timeout

    def generate(self, request: pb.GenerateRequest, timeout: Optional[float] = None) -> GenerateCall:
        """Start a Generate RPC; ``timeout`` is its deadline, for the whole stream."""
        try:
            return GenerateCall(self._stub.Generate(request, timeout=timeout))
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def embed(self, request: pb.EmbedRequest, timeout: Optional[float] = None) -> EmbedCall:
        """Start an Embed RPC; ``timeout`` is its deadline."""
        try:
            return EmbedCall(self._stub.Embed.future(request, timeout=timeout))
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    def list_models(self, timeout: Optional[float] = None) -> list[pb.ModelInfo]:
        try:
            resp = self._stub.ListModels(pb.ListModelsRequest(), timeout=timeout or self._list_timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None
        return list(resp.models)

    def health(self, timeout: Optional[float] = None) -> bool:
        """True when the service answers the standard health check (service "") with SERVING."""
        try:
            resp = self._health.Check(health_pb2.HealthCheckRequest(service=""),
                                      timeout=timeout or self._health_timeout)
        except grpc.RpcError as err:
            log.info("health check of %s failed: %s", self.target, getattr(err, "code", lambda: err)())
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self._channel.close()
