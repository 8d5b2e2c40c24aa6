"""The floor of the gRPC side-service benchmark: the same grpcio server flavour as `fastguard serve --grpc`
(a thread pool of 8, the published Envoy stubs) whose ShouldRateLimit returns a constant OK.

    python -m bench.side_floor PORT
"""

from __future__ import annotations

import signal
import sys
import threading
from concurrent import futures

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

OK = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


class Floor(rls_pb2_grpc.RateLimitServiceServicer):
    def ShouldRateLimit(self, request, context):  # noqa: N802 - the proto's name
        return OK


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


if __name__ == "__main__":
    main()
