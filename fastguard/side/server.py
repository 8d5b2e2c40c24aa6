"""`fastguard serve --config PATH --grpc HOST:PORT`: the side service. Today it answers Envoy's global rate limit
service (gRPC ShouldRateLimit) from envoyproxy/ratelimit domain files; counts are per process."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from typing import Any

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
    parser.add_argument("--reload-interval", type=float, default=1.0,
                        help="seconds between looks at the config for changes (default 1; SIGHUP reloads at once)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads < 1 or args.max_keys < 1 or not args.reload_interval > 0:
        parser.error("--threads and --max-keys must be at least 1, --reload-interval above 0")
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
    service = RateLimitService(Decider(domains, max_keys=args.max_keys), headers=args.headers)
    add_to_server(service, server)
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
    reload_now = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: reload_now.set())
    decider = service.decider
    threading.Thread(target=_watch, args=(args.config, decider, stop, reload_now, args.reload_interval),
                     name="config-watch", daemon=True).start()
    stop.wait()
    server.stop(grace=2).wait()
    return 0


def _stamp(path: str) -> tuple[tuple[str, int, int], ...]:
    """What changes when a domain file is written, added or removed: names, sizes and modification times."""
    names = [path]
    if os.path.isdir(path):
        names = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".yaml", ".yml")))
    out = []
    for name in names:
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def _watch(path: str, decider: Any, stop: threading.Event, reload_now: threading.Event, interval: float) -> None:
    """Reload the domains when the config changes (or on SIGHUP): the new version is validated whole before it
    replaces the running one; one that does not load leaves the running policy in place, with one log line."""
    from fastguard.side.policy import PolicyError, load_policies

    seen = _stamp(path)
    while not stop.is_set():
        forced = reload_now.wait(interval)
        reload_now.clear()
        stamp = _stamp(path)
        if stamp == seen and not forced:
            continue
        seen = stamp
        try:
            domains = load_policies(path)
        except PolicyError as exc:
            log.error("fastguard serve: the new configuration is not used (%s); the running one stays", exc)
            continue
        kept = decider.swap(domains)
        log.warning("fastguard serve: configuration reloaded: %d domain(s) (%s); %d rule(s) kept their counts",
                    len(domains), ", ".join(sorted(domains)), kept)
