"""The floor of the gRPC side-service benchmark: grpcio's server with the published Envoy stubs whose
ShouldRateLimit returns a constant OK. `aio` (the flavour `fastguard serve --grpc` runs: grpcio's asyncio server on
uvloop when installed) or `threads` (grpcio's thread-pool server, 8 threads: for context).

    python -m bench.side_floor PORT [aio|threads]
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


class AsyncFloor(rls_pb2_grpc.RateLimitServiceServicer):
    async def ShouldRateLimit(self, request, context):  # noqa: N802 - the proto's name
        return OK


def threads(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)


async def aio(port: int) -> None:
    import asyncio

    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(AsyncFloor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    done = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, done.set)
    await done.wait()
    await server.stop(0)


if __name__ == "__main__":
    port, flavour = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "aio"
    if flavour == "threads":
        threads(port)
    else:
        from fastguard.side.server import _run_loop

        _run_loop(aio(port))
