"""The `fastguard` command.

    fastguard demo                 the limiter deciding a scripted burst of traffic, then a million-key batch
    fastguard kong-server NAME     serve one fastguard plugin to Kong (see docs/kong.md; needs fastguard[kong])
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import fastguard as fg


def _demo(args: argparse.Namespace) -> int:
    out = sys.stdout
    mode = "compiled core" if fg.COMPILED else "pure-Python core (FASTGUARD_NO_EXTENSIONS)"
    out.write(f"fastguard {fg.__version__} demo, {mode}\n\n")
    lim = fg.RateLimiter(args.limits, algorithm=args.algorithm)
    limits_text = "; ".join(str(x) for x in lim.limits)
    out.write(f"Limiter: {limits_text} ({args.algorithm}). One client sends {args.requests} requests, "
              f"one every {args.gap * 1000:g} ms (simulated clock):\n\n")
    out.write(f"{'t (s)':>7}  {'decision':<8}  {'limit':>5}  {'remaining':>9}  {'retry after':>11}  headers\n")
    t = 864_000.0  # a simulated clock (now=): the demo is the same on every run
    allowed = 0
    for i in range(args.requests):
        d = lim.hit("client-1", now=t + i * args.gap)
        allowed += d.allowed
        hdr = ", ".join(f"{k}: {v}" for k, v in d.headers().items())
        verdict = "allow" if d.allowed else "DENY"
        retry = f"{d.retry_after:.3f} s" if not d.allowed else "-"
        out.write(f"{i * args.gap:7.2f}  {verdict:<8}  {d.limit:>5}  {d.remaining:>9}  {retry:>11}  {hdr}\n")
    out.write(f"\n{allowed} of {args.requests} admitted.\n")

    n = args.keys
    out.write(f"\nBatch: {n:,} hits over {n // 2:,} distinct numeric ids with hit_many (wall clock):\n")
    import numpy as np

    batch_lim = fg.RateLimiter("1/minute", algorithm=args.algorithm, max_keys=max(n, 1))
    ids = np.random.default_rng(1).integers(0, max(n // 2, 1), n, dtype=np.uint64)
    t0 = time.perf_counter()
    result = batch_lim.hit_many(ids)
    elapsed = time.perf_counter() - t0
    stats = batch_lim.stats()
    out.write(f"  {int(result.allowed.sum()):,} admitted, {int((~result.allowed).sum()):,} denied "
              f"(repeat ids within the minute) in {elapsed * 1000:.1f} ms = {elapsed / max(n, 1) * 1e9:.0f} ns/hit\n")
    out.write(f"  table: {stats['keys']:,} keys, {stats['bytes'] / 2**20:.1f} MiB "
              f"({stats['bytes_per_key']:.0f} bytes/key), {stats['shards']} shards\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastguard", description="Rate limiting for API gateways.")
    parser.add_argument("--version", action="version", version=f"fastguard {fg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show the limiter deciding a burst of traffic")
    demo.add_argument("--limits", default="5/second; 12/minute", help="limits (default: %(default)s)")
    demo.add_argument("--algorithm", default="sliding_window", choices=fg.ALGORITHMS)
    demo.add_argument("--requests", type=int, default=20, help="requests from the client (default: %(default)s)")
    demo.add_argument("--gap", type=float, default=0.1, help="seconds between requests (default: %(default)s)")
    demo.add_argument("--keys", type=int, default=1_000_000, help="size of the batch part (default: %(default)s)")
    demo.set_defaults(func=_demo)
    sub.add_parser("kong-server", help="serve one fastguard plugin to Kong: fastguard kong-server NAME --socket PATH "
                                       "(or --dump); see fastguard kong-server --help", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kong-server"]:
        # Its own parser (fastguard.kong.server): the entry point Kong's start_cmd / query_cmd run.
        try:
            from fastguard.kong.server import main as kong_server
        except ImportError as exc:
            sys.stderr.write(f"fastguard kong-server needs kong-pdk: pip install 'fastguard[kong]' ({exc})\n")
            return 2
        return kong_server(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "requests", 1) < 0 or getattr(args, "keys", 1) < 0 or getattr(args, "gap", 1.0) < 0:
        parser.error("--requests, --keys and --gap must not be negative")
    try:
        return int(args.func(args))
    except (ValueError, TypeError) as exc:
        parser.exit(2, f"fastguard: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
