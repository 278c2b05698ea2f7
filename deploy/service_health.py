"""Container health check of the inference service over the gRPC health protocol.

    python service_health.py [--address HOST:PORT] [--service NAME] [--timeout SECONDS]

Exits 0 when ``grpc.health.v1.Health/Check`` answers SERVING, 1 otherwise (NOT_SERVING while
the model loads and while draining after SIGTERM, or no answer). The address defaults to
127.0.0.1 at the port of ``INFERENCE_ADDRESS`` (the image sets ``0.0.0.0:50051``). Docker's
HEALTHCHECK and compose use it; Kubernetes probes gRPC health natively (``grpc: {port: 50051}``).
Needs only grpcio and grpcio-health-checking, which every install of the project has.
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def default_address() -> str:
    port = os.environ.get("INFERENCE_ADDRESS", "127.0.0.1:50051").rpartition(":")[2] or "50051"
    return f"127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=default_address())
    parser.add_argument("--service", default="", help="the health service name ('' is the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    with grpc.insecure_channel(args.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"{args.address}: {error.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
