"""`fastguard serve --config PATH --grpc HOST:PORT`: the side service. Today it answers Envoy's global rate limit
service (gRPC ShouldRateLimit) from envoyproxy/ratelimit domain files; counts are per process."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures

__all__ = ["main"]

log = logging.getLogger("fastguard.side")

#: The largest gRPC message accepted (a rate limit request is a few hundred bytes).
MAX_MESSAGE_BYTES = 64 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastguard serve",
                                     description="Serve rate limit decisions to a gateway: Envoy's global rate "
                                                 "limit service (gRPC), from envoyproxy/ratelimit domain files.")
    parser.add_argument("--config", required=True, help="a domain file, or a folder of *.yaml domain files")
    parser.add_argument("--grpc", required=True, metavar="HOST:PORT",
                        help="where Envoy's RateLimitService is answered, e.g. 127.0.0.1:8081")
    parser.add_argument("--threads", type=int, default=8, help="gRPC worker threads (default 8)")
    parser.add_argument("--max-keys", type=int, default=1_000_000,
                        help="callers counted per rule, most active kept (default 1,000,000)")
    parser.add_argument("--headers", action="store_true",
                        help="add RateLimit-Limit/-Remaining/-Reset to each answer (response_headers_to_add)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads < 1 or args.max_keys < 1:
        parser.error("--threads and --max-keys must be at least 1")
    try:
        import grpc

        from fastguard.side.decide import Decider
        from fastguard.side.policy import PolicyError, load_policies
        from fastguard.side.rls import RateLimitService, add_to_server
    except ImportError as exc:
        parser.exit(2, f"fastguard serve needs its extra: pip install 'fastguard-gateway[serve]' ({exc})\n")
    try:
        domains = load_policies(args.config)
    except PolicyError as exc:
        parser.exit(2, f"fastguard serve: {exc}\n")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.threads),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)])
    add_to_server(RateLimitService(Decider(domains, max_keys=args.max_keys), headers=args.headers), server)
    try:
        port = server.add_insecure_port(args.grpc)
    except RuntimeError as exc:
        parser.exit(2, f"fastguard serve: cannot listen on {args.grpc} ({exc})\n")
    if not port:
        parser.exit(2, f"fastguard serve: cannot listen on {args.grpc}\n")
    server.start()
    print(f"fastguard serve: {len(domains)} domain(s) from {args.config} ({', '.join(sorted(domains))}); "
          f"RateLimitService on {args.grpc}", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait()
    return 0
