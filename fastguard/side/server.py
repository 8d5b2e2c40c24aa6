"""`fastguard serve`: the side service. Envoy's RateLimitService and ext_authz over gRPC, forward-auth and
envoyproxy/ratelimit's /json over HTTP, from envoyproxy/ratelimit domain files (see docs/side-service.md)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from fastguard.extras import install_hint

__all__ = ["main"]

log = logging.getLogger("fastguard.side")

#: The largest gRPC message accepted (a rate limit request is a few hundred bytes, a Check a few KiB).
MAX_MESSAGE_BYTES = 64 * 1024
_WORKER_ENV = "FASTGUARD_SERVE_WORKER"


def _address(text: str, parser: argparse.ArgumentParser, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        parser.error(f"{what} is HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080, got {text!r}")
    return host or "0.0.0.0", int(port)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fastguard serve",
        description="Serve rate limit and JWT decisions to any gateway: Envoy's RateLimitService and ext_authz "
                    "(gRPC), forward-auth for nginx auth_request, Traefik, Caddy, APISIX and Envoy's HTTP ext_authz, "
                    "envoyproxy/ratelimit's POST /json and GET /healthcheck (HTTP). Policies are envoyproxy/ratelimit "
                    "domain files, loaded unchanged; their fastguard: block holds the HTTP side.")
    p.add_argument("--config", required=True, help="a domain file, or a folder of *.yaml domain files")
    p.add_argument("--http", metavar="HOST:PORT",
                   help="forward-auth, /json and /healthcheck, e.g. 127.0.0.1:8080, or unix:/run/fastguard.sock (a "
                        "gateway on the same host: nginx `server unix:...`, Caddy `unix//...`; cheaper than TCP)")
    p.add_argument("--socket-mode", default="660", metavar="OCTAL",
                   help="with --http unix:PATH, the socket's permissions (default 660: the gateway's user must be in "
                        "this process's group; 666 lets every local user ask)")
    p.add_argument("--grpc", metavar="HOST:PORT",
                   help="Envoy's RateLimitService and Authorization (ext_authz), e.g. 127.0.0.1:8081")
    p.add_argument("--redis", metavar="URL",
                   help="count in Redis, shared by every worker and node (and by a Kong plugin with the same "
                        "namespace): redis://host:port/db, rediss://, unix://, redis+cluster://, redis+sentinel://")
    p.add_argument("--sync", type=float, metavar="SECONDS",
                   help="with --redis: decide in process and exchange counts with Redis this often (local-first); "
                        "default: every decision in Redis (strict)")
    p.add_argument("--redis-timeout", type=float, default=250, metavar="MS",
                   help="with --redis: the deadline of each Redis call, in milliseconds (default 250); past it a "
                        "decision follows the domain's fastguard.counts.on_error")
    p.add_argument("--workers", type=int, default=1,
                   help="processes sharing the ports (SO_REUSEPORT; default 1). Without --redis counts are per "
                        "process")
    p.add_argument("--threads", type=int, default=8,
                   help="threads per process for decisions that wait: Redis in strict mode, a key set's download "
                        "(default 8); everything else is answered on the event loop")
    p.add_argument("--max-connections", type=int, default=10_000,
                   help="open HTTP connections per process; past it a new one is answered 503 (default 10,000)")
    p.add_argument("--max-keys", type=int, default=1_000_000,
                   help="callers counted per rule, most active kept (default 1,000,000)")
    p.add_argument("--headers", action="store_true",
                   help="RLS answers carry RateLimit-Limit/-Remaining/-Reset (response_headers_to_add)")
    p.add_argument("--reload-interval", type=float, default=1.0,
                   help="seconds between looks at the config for changes (default 1; SIGHUP reloads at once)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics on 127.0.0.1:PORT (extra: metrics)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.http and not args.grpc:
        parser.error("give --http HOST:PORT, --grpc HOST:PORT or both")
    if min(args.threads, args.max_keys, args.workers, args.max_connections) < 1 or not args.reload_interval > 0:
        parser.error("--threads, --workers, --max-keys and --max-connections must be at least 1, "
                     "--reload-interval above 0")
    http: tuple[str, int | str] | None = None
    if args.http and args.http.startswith("unix:"):
        if not args.http[5:]:
            parser.error("--http unix:PATH needs the socket's path, e.g. unix:/run/fastguard.sock")
        if args.workers > 1:
            parser.error("--workers above 1 needs --http HOST:PORT: processes cannot share a Unix socket's path")
        http = ("unix", args.http[5:])
        try:
            args.socket_mode = int(args.socket_mode, 8)
        except ValueError:
            parser.error(f"--socket-mode is octal permissions such as 660, got {args.socket_mode!r}")
        if not 0 <= args.socket_mode <= 0o777:
            parser.error(f"--socket-mode is octal permissions such as 660, got {args.socket_mode:o}")
    elif args.http:
        http = _address(args.http, parser, "--http")
    grpc_at = _address(args.grpc, parser, "--grpc") if args.grpc else None
    if args.workers > 1 and ((http and http[1] == 0) or (grpc_at and grpc_at[1] == 0)):
        parser.error("--workers above 1 needs fixed ports: the processes share them")
    if args.redis is None and args.sync is not None:
        parser.error("--sync needs --redis URL")
    if args.sync is not None and not 0 < args.sync <= 3600:
        parser.error(f"--sync is seconds between exchanges with Redis, above 0 and at most 3600, got {args.sync}")
    if not 0 < args.redis_timeout <= 60_000:
        parser.error(f"--redis-timeout is milliseconds above 0 and at most 60000, got {args.redis_timeout}")
    try:
        from fastguard.side.gate import Side
        from fastguard.side.policy import PolicyError
    except ImportError as exc:
        parser.exit(2, f"fastguard serve needs its extra: {install_hint('serve')} ({exc})\n")
    try:
        domains, http_side = Side.load(args.config)
    except PolicyError as exc:
        parser.exit(2, f"fastguard serve: {exc}\n")
    stores = None
    if args.redis is not None:      # checked here, once: a worker that cannot start would be started forever
        try:
            from fastguard.side.shared import Stores

            stores = Stores(args.redis, sync=args.sync, timeout=args.redis_timeout / 1000)
        except ImportError as exc:
            parser.exit(2, f"fastguard serve --redis needs its extra: {install_hint('redis')} ({exc})\n")
        except ValueError as exc:
            parser.exit(2, f"fastguard serve: --redis cannot be used ({exc})\n")
    if args.workers > 1 and os.environ.get(_WORKER_ENV) is None:
        return _supervise(args, argv if argv is not None else sys.argv[2:])
    return _worker(args, parser, domains, http_side, http, grpc_at, stores)


def _supervise(args: Any, argv: list[str]) -> int:
    """Start `--workers` processes on the same ports, pass signals on, start again one that dies."""
    if args.redis is None:
        print(f"fastguard serve: {args.workers} worker processes share the ports; counts are per process (each "
              f"limit admits up to {args.workers}x its count in all; --redis URL shares them)", file=sys.stderr,
              flush=True)
    cmd = [sys.executable, "-m", "fastguard", "serve", *argv]
    env = {**os.environ, _WORKER_ENV: "1"}
    stop = threading.Event()
    children: list[subprocess.Popen[bytes]] = [subprocess.Popen(cmd, env=env) for _ in range(args.workers)]

    def forward(sig: int, _: Any) -> None:
        if sig != signal.SIGHUP:
            stop.set()
        for c in children:
            if c.poll() is None:
                c.send_signal(sig)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while not stop.is_set():
        for i, c in enumerate(children):
            if c.poll() is not None and not stop.is_set():
                log.error("fastguard serve: worker %d exited with %s; starting it again", c.pid, c.returncode)
                time.sleep(1.0)
                children[i] = subprocess.Popen(cmd, env=env)
        stop.wait(0.5)
    for c in children:
        try:
            c.wait(timeout=10)
        except subprocess.TimeoutExpired:
            c.kill()
    return 0


def _worker(args: Any, parser: argparse.ArgumentParser, domains: Any, http_side: Any,
            http: tuple[str, int | str] | None, grpc_at: tuple[str, int] | None, stores: Any) -> int:
    """One process: the HTTP listener and the gRPC services on one event loop (a decision that waits — Redis in
    strict mode, a key set's download — goes to one of `--threads` threads), the config watched by a thread."""
    from fastguard.side.gate import Side
    from fastguard.side.rls import RateLimitService

    side = Side(domains, max_keys=args.max_keys, stores=stores)
    if args.metrics_port is not None:
        _metrics(side, args.metrics_port, parser)
    rls = RateLimitService(side.decider, headers=args.headers)
    shared = args.workers > 1
    stop = threading.Event()
    reload_now = threading.Event()
    threading.Thread(target=_watch, args=(args.config, side, stop, reload_now, args.reload_interval),
                     name="config-watch", daemon=True).start()

    async def run() -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        from fastguard.side.http import serve_http

        loop = asyncio.get_running_loop()
        loop.set_default_executor(ThreadPoolExecutor(args.threads, thread_name_prefix="fastguard-wait"))
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        loop.add_signal_handler(signal.SIGHUP, reload_now.set)
        listening, listener, server = [], None, None
        if grpc_at is not None:
            server = await _grpc(side, rls, grpc_at, shared, parser)
            listening.append(f"gRPC RateLimitService + Authorization on {args.grpc}")
        if http is not None:
            try:
                if http[0] == "unix":
                    listener = await serve_http(side, rls, unix_path=str(http[1]),
                                                max_connections=args.max_connections)
                    os.chmod(str(http[1]), args.socket_mode)
                    where = f"unix:{http[1]}"
                else:
                    listener = await serve_http(side, rls, http[0], int(http[1]), reuse_port=shared,
                                                max_connections=args.max_connections)
                    where = f"{http[0]}:{listener.sockets[0].getsockname()[1]}"
            except OSError as exc:
                parser.exit(2, f"fastguard serve: cannot listen on {args.http} ({exc})\n")
            listening.append(f"HTTP on {where}")
        _started(domains, args.config, listening, args)
        await done.wait()
        if listener is not None:
            listener.close()
            if http is not None and http[0] == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(str(http[1]))
        if server is not None:
            await server.stop(grace=2)

    _run_loop(run())
    stop.set()
    side.decider.close()
    return 0


def _run_loop(main: Any) -> None:
    """Run the HTTP listener's loop: uvloop's when installed (the serve extra has it: measured ~12 % less CPU per
    forward-auth decision than asyncio's own loop, bench/test_bench_side.py), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        asyncio.run(main)
        return
    uvloop.run(main)


def _started(domains: Any, config: str, listening: list[str], args: Any) -> None:
    counts = "counts in process" if args.redis is None else \
        f"counts in Redis ({'strict' if args.sync is None else f'local-first, sync every {args.sync:g} s'})"
    print(f"fastguard serve: {len(domains)} domain(s) from {config} ({', '.join(sorted(domains))}); "
          f"{'; '.join(listening)}; {counts}", file=sys.stderr, flush=True)


async def _grpc(side: Any, rls: Any, at: tuple[str, int], shared: bool, parser: argparse.ArgumentParser) -> Any:
    """grpcio's asyncio server on the running loop: measured faster for these services than its thread-pool server
    (bench/test_bench_side.py), and one loop with the HTTP listener instead of a second set of threads."""
    import grpc

    from fastguard.side import authz
    from fastguard.side import rls as rls_module

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 1 if shared else 0)])
    rls_module.add_to_server(rls, server)
    authz.add_to_server(authz.AuthorizationService(side), server)
    where = f"[{at[0]}]:{at[1]}" if ":" in at[0] else f"{at[0]}:{at[1]}"
    try:
        port = server.add_insecure_port(where)
    except RuntimeError as exc:
        parser.exit(2, f"fastguard serve: cannot listen on {where} ({exc})\n")
    if not port:
        parser.exit(2, f"fastguard serve: cannot listen on {where}\n")
    await server.start()
    return server


def _metrics(side: Any, port: int, parser: argparse.ArgumentParser) -> None:
    """/metrics: every rule's limiter under its descriptor path (domain.key_value...), as fastguard.metrics names."""
    try:
        import fastguard.metrics as fm
    except ImportError as exc:
        parser.exit(2, f"fastguard serve: --metrics-port {exc}\n")
    side.decider.on_new_limiter = lambda rule, limiter: fm.track(limiter, rule.path)
    try:
        fm.serve(port)
    except OSError as exc:
        parser.exit(2, f"fastguard serve: cannot serve metrics on 127.0.0.1:{port} ({exc})\n")


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


def _watch(path: str, side: Any, stop: threading.Event, reload_now: threading.Event, interval: float) -> None:
    """Reload the domains when the config changes (or on SIGHUP): the new version is validated whole before it
    replaces the running one; one that does not load leaves the running policy in place, with one log line."""
    from fastguard.side.gate import Side
    from fastguard.side.policy import PolicyError

    seen = _stamp(path)
    while not stop.is_set():
        forced = reload_now.wait(interval)
        reload_now.clear()
        stamp = _stamp(path)
        if stamp == seen and not forced:
            continue
        seen = stamp
        try:
            domains, http = Side.load(path)
        except PolicyError as exc:
            log.error("fastguard serve: the new configuration is not used (%s); the running one stays", exc)
            continue
        kept = side.swap(domains, http)
        log.warning("fastguard serve: configuration reloaded: %d domain(s) (%s); %d rule(s) kept their counts",
                    len(domains), ", ".join(sorted(domains)), kept)
