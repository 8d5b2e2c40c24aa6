"""The `fastguard` command.

    fastguard simulate             the main job: plugin servers guarding a simulated Kong route (extra: kong)
    fastguard bench [--quick]      the comparison benchmarks and their budgets (--check), a report and a PNG chart
    fastguard verify TOKEN|-       verify a JWT (- reads it from stdin) against a JWKS, a secret or a PEM key
    fastguard demo                 the limiter deciding a scripted burst of traffic, then a million-key batch
    fastguard kong-server NAME     serve one fastguard plugin to Kong (see docs/kong.md; extra: kong)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import fastguard as fg
from fastguard.extras import install_hint


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
    from fastguard.decision import numpy

    try:
        np = numpy()
    except ImportError as exc:
        out.write(f"  skipped: {exc}\n")
        return 0

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


def _simulate(args: argparse.Namespace) -> int:
    from fastguard.simulate import MIX, Options, run

    mix = None
    if args.mix:
        mix = {}
        for part in args.mix.split(","):
            name, sep, value = part.partition("=")
            if not sep or name.strip() not in (*MIX, "login"):
                raise ValueError(f"--mix takes name=weight pairs for {', '.join(MIX)} and login, got {part!r}")
            try:
                mix[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"--mix weight {value!r} for {name.strip()} is not a number") from None
        mix = {**dict.fromkeys(MIX, 0.0), **mix}
    opts = Options(requests=args.requests, consumers=args.consumers, concurrency=args.concurrency,
                   limits=args.limits, login_limits=args.login_limits, algorithm=args.algorithm, mix=mix,
                   redis=args.redis, seed=args.seed, ban_after=args.ban_after, ban_for=args.ban_for,
                   gateway=args.gateway, side=args.side)
    from fastguard.simulate import GatewayMissing

    try:
        run(opts, as_json=args.json)
    except GatewayMissing as exc:
        sys.stderr.write(f"fastguard simulate {exc}\n")
        return 2
    except ImportError as exc:
        sys.stderr.write(f"fastguard simulate needs the Kong extra: {install_hint('kong')} ({exc})\n")
        return 2
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json

    sources = [x for x in (args.jwks, args.secret, args.secret_file, args.pem) if x is not None]
    if len(sources) != 1:
        raise _Usage("give exactly one of --jwks, --secret, --secret-file, --pem")
    try:
        if args.jwks is not None:
            if args.jwks.startswith(("https://", "http://")):
                keys: fg.KeySet | fg.RemoteKeySet = fg.RemoteKeySet(args.jwks)
                logging.getLogger("fastguard").setLevel(logging.ERROR)   # the failure is said below, once
                if not keys.refresh():      # no key set: the environment's problem, not the token's (exit 2)
                    raise _Usage(f"--jwks {args.jwks}: the key set cannot be fetched ({keys.last_error})")
            else:
                with open(args.jwks, "rb") as fh:
                    keys = fg.KeySet.from_jwks(fh.read())
        elif args.secret is not None:
            keys = fg.KeySet.from_secret(args.secret.encode("utf-8"), alg=args.alg or "HS256")
        elif args.secret_file is not None:
            with open(args.secret_file, "rb") as fh:
                keys = fg.KeySet.from_secret(fh.read(), alg=args.alg or "HS256")
        else:
            if not os.path.isfile(args.pem):
                raise _Usage(f"--pem {args.pem}: no such file")
            with open(args.pem, "rb") as fh:
                keys = fg.KeySet.from_pem(fh.read(), alg=args.alg) if args.alg else fg.KeySet.from_pem(fh.read())
        verifier = fg.JWTVerifier(keys, issuer=args.issuer, audience=args.audience, leeway=args.leeway,
                                  required_claims=())
    except OSError as exc:
        raise _Usage(f"cannot read the key: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise _Usage(f"unusable key: {exc}") from None
    token = args.token
    if token == "-":  # from standard input: a token on the command line ends up in shell history and `ps`
        token = sys.stdin.read()
    try:
        claims = verifier.verify(token.strip())
    except fg.InvalidToken as exc:
        sys.stdout.write(json.dumps({"valid": False, "code": exc.code, "message": str(exc)}) + "\n")
        return 1
    sys.stdout.write(json.dumps(dict(claims), indent=2, sort_keys=True) + "\n")
    return 0


class _Usage(Exception):
    """A wrong or missing argument: exit status 2 with its message."""


def _bench(args: argparse.Namespace) -> int:
    from fastguard.benchrun import run_bench

    return run_bench(out=args.out, quick=args.quick, keyword=args.keyword, check=args.check)


def _bans(args: argparse.Namespace) -> int:
    import json

    try:
        from fastguard.redis import RedisStore
        from fastguard.redis.bans import lift_ban, limiter_namespaces, list_bans, prefixes, set_ban
    except ImportError as exc:
        sys.stderr.write(f"fastguard bans needs the Redis extra: {install_hint('redis')} ({exc})\n")
        return 2
    if args.action != "list" and not args.key:
        raise _Usage(f"{args.action} needs a key")
    if args.action == "ban" and args.seconds is None:
        raise _Usage("ban needs the seconds the ban lasts: fastguard bans ban KEY SECONDS")
    glob = "*" in args.prefix
    if glob and args.limits:
        raise _Usage("--limits names one limiter: give one --prefix with it, not a pattern")
    store = RedisStore.from_url(args.redis, prefix=args.prefix.replace("*", "_") if glob else args.prefix,
                                timeout=5, connect_timeout=5)
    try:
        # a pattern (`fg-kong-*`: every Kong plugin) is the prefixes whose limiters have decided (one SCAN)
        found = limiter_namespaces(store.client, args.prefix) if glob else None
        stores = [RedisStore(store.client, prefix=p) for p in prefixes(found)] if found is not None else [store]
        if args.action == "list":
            bans = [(s.prefix, b) for s in stores for b in list_bans(s)]
            if args.json:
                print(json.dumps([{**b.as_dict(), "prefix": p} for p, b in bans]))
            elif not bans:
                print(f"no active bans under {args.prefix!r}")
            else:
                print(f"{'key':<32} {'left':>10}  {'started by':<24} {'prefix':<28} limiter")
                for p, b in bans:
                    tier = f" (tier {b.tier})" if b.tier is not None else ""
                    print(f"{b.key:<32} {b.seconds_left:>9.1f}s  {b.started_by:<24} {p:<28} {b.algorithm} "
                          f"{b.limits}{tier}")
        elif args.action == "unban":
            n = sum(lift_ban(s, args.key) for s in stores)
            print(json.dumps({"key": args.key, "lifted": n}) if args.json else f"{args.key}: lifted {n} ban(s)")
        else:
            try:
                seconds = float(args.seconds)
            except ValueError:
                raise _Usage(f"a ban lasts a number of seconds, got {args.seconds!r}") from None
            if not stores:
                raise _Usage(f"no limiter has decided under a prefix matching {args.prefix!r} yet, so none would "
                             "honour the ban")
            names = [n for s in stores for n in set_ban(s, args.key, seconds, args.limits, args.algorithm,
                                                          args.local_first, found)]
            print(json.dumps({"key": args.key, "seconds": seconds, "names": names}) if args.json
                  else f"{args.key}: banned for {seconds:g} s in {len(names)} limiter(s): {', '.join(names)}")
    except fg.StoreError as exc:
        sys.stderr.write(f"fastguard bans: {exc}\n")
        return 1
    finally:
        store.close()
    return 0


def _whole(low: int | None = None) -> Any:
    """An argparse type: a whole number, at least `low` (argparse's error names the option, exit status 2)."""
    def parse(text: str) -> int:
        try:
            n = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a whole number, got {text!r}") from None
        if low is not None and n < low:
            raise argparse.ArgumentTypeError(f"at least {low}, got {n}")
        return n
    parse.__name__ = "whole number"
    return parse


def _seconds(positive: bool = False) -> Any:
    """An argparse type: finite seconds, >= 0 (> 0 when `positive`)."""
    def parse(text: str) -> float:
        try:
            x = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"a number of seconds, got {text!r}") from None
        if not math.isfinite(x) or x < 0 or (positive and x == 0):
            raise argparse.ArgumentTypeError(f"{'above 0' if positive else 'at least 0'} and finite, got {text}")
        return x
    parse.__name__ = "seconds"
    return parse


def _limits_text(text: str) -> str:
    """An argparse type: limits as parse_limits reads them ("100/minute; 10/second", "100/5m")."""
    try:
        fg.parse_limits(text)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


_limits_text.__name__ = "limits"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastguard",
        description="Rate limiting and JWT verification for API gateways, and Kong plugins that use them "
                    "(fastguard kong-server). Start with: fastguard simulate")
    parser.add_argument("--version", action="version", version=f"fastguard {fg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="show the limiter deciding a burst of traffic")
    demo.add_argument("--limits", type=_limits_text, default="5/second; 12/minute",
                      help="limits (default: %(default)s)")
    demo.add_argument("--algorithm", default="sliding_window", choices=fg.ALGORITHMS)
    demo.add_argument("--requests", type=_whole(1), default=20,
                      help="requests from the client (default: %(default)s)")
    demo.add_argument("--gap", type=_seconds(), default=0.1, help="seconds between requests (default: %(default)s)")
    demo.add_argument("--keys", type=_whole(1), default=1_000_000, help="size of the batch part (default: %(default)s)")
    demo.set_defaults(func=_demo)

    sim = sub.add_parser("simulate", help="real plugin servers guarding a simulated Kong route (the main job)")
    sim.add_argument("--requests", type=_whole(1), default=20_000, help="requests to play (default: %(default)s)")
    sim.add_argument("--consumers", type=_whole(4), default=1000, help="distinct JWT subjects (default: %(default)s)")
    sim.add_argument("--concurrency", type=_whole(1), default=4, help="Kong-side threads (default: %(default)s)")
    sim.add_argument("--limits", type=_limits_text, default="20/second; 600/minute",
                     help="per consumer on /api, any periods: '100/5m' (default: %(default)s)")
    sim.add_argument("--login-limits", type=_limits_text, default="5/minute",
                     help="per IP on /login (default: %(default)s)")
    sim.add_argument("--algorithm", default="sliding_window", choices=fg.ALGORITHMS)
    sim.add_argument("--mix", help="traffic weights, e.g. valid=0.7,abusive=0.15,expired=0.05,forged=0.05,"
                                   "malformed=0.05")
    sim.add_argument("--redis", metavar="URL", help="keep the counts in Redis: redis://host:port/db or "
                                                    "redis+cluster://host:port,...")
    sim.add_argument("--seed", type=_whole(), default=1,
                     help="random seed of the traffic plan (default: %(default)s)")
    sim.add_argument("--ban-after", type=_whole(0), default=20,
                     help="denials within a second that ban a caller on /api (0: no bans; default: %(default)s)")
    sim.add_argument("--ban-for", type=_seconds(positive=True), default=30.0,
                     help="seconds a ban lasts (default: %(default)s)")
    sim.add_argument("--gateway", choices=["nginx"], help="send the traffic as HTTP through a real nginx + Lua "
                                                          "gateway playing Kong (needs nginx-lua installed)")
    sim.add_argument("--side", choices=["nginx", "caddy"],
                     help="the same traffic as HTTP through a real nginx (auth_request) or Caddy (forward_auth) asking "
                          "fastguard serve, with the same policies as domain files (needs that gateway installed "
                          "and the serve extra)")
    sim.add_argument("--json", action="store_true", help="print only the summary, as JSON (progress on stderr)")
    sim.set_defaults(func=_simulate)

    ver = sub.add_parser("verify", help="verify a JWT and print its claims (exit 0 valid, 1 invalid, 2 usage)")
    ver.add_argument("token", help="the token, or - to read it from standard input (keeps it out of shell "
                                   "history and ps)")
    ver.add_argument("--jwks", metavar="FILE|URL", help="a JWKS file, or an http(s) URL")
    ver.add_argument("--secret", metavar="TEXT", help="HMAC key: the UTF-8 bytes of TEXT")
    ver.add_argument("--secret-file", metavar="FILE", help="HMAC key: the bytes of FILE")
    ver.add_argument("--pem", metavar="FILE", help="a public key in PEM")
    ver.add_argument("--alg", help="the algorithm of a --secret/--secret-file/--pem key (default HS256 for secrets)")
    ver.add_argument("--issuer", action="append", help="accepted iss (repeatable)")
    ver.add_argument("--audience", action="append", help="accepted aud (repeatable)")
    ver.add_argument("--leeway", type=_seconds(), default=0.0, help="seconds of clock skew allowed (default 0)")
    ver.set_defaults(func=_verify)

    ben = sub.add_parser("bench", help="run the benchmarks and write report.md and chart.png (the bench extra); "
                                       "--check judges the budgets")
    ben.add_argument("--out", default="bench/results", help="folder for the report (default: %(default)s)")
    ben.add_argument("--quick", action="store_true", help="fewer rounds and a subset: under 2 minutes")
    ben.add_argument("-k", dest="keyword", help="only benchmarks matching this pytest -k expression")
    ben.add_argument("--check", action="store_true", help="exit 1 when a budget judged in this run is missed "
                                                          "(each a ratio or figure measured in the same run)")
    ben.set_defaults(func=_bench)
    bans = sub.add_parser("bans", help="list, set and lift bans in a shared Redis (every node honours them)")
    bans.add_argument("action", choices=("list", "ban", "unban"))
    bans.add_argument("key", nargs="?", help="the key to ban or unban (as the limiter sees it, e.g. ip:10.0.0.1)")
    bans.add_argument("seconds", nargs="?", help="how long a ban lasts")
    bans.add_argument("--redis", required=True, help="redis://, rediss://, redis+cluster://... (as RedisStore)")
    bans.add_argument("--prefix", default="fg",
                      help="the limiters' key prefix (default: %(default)s; a Kong plugin's is fg-kong-<plugin id>, "
                           "or fg-kong-ns:<namespace>; `*` matches any run of characters: 'fg-kong-*' is every "
                           "plugin's). A prefix covers its tiers, <prefix>#tier=<value>")
    bans.add_argument("--limits", type=_limits_text,
                      help="ban: only the limiter with these limits (default: every limiter that has decided under "
                           "the prefix, whatever its algorithm, limits or ban_after)")
    bans.add_argument("--algorithm", choices=fg.ALGORITHMS,
                      help="ban with --limits: the limiter's algorithm (the Kong plugins default to fixed_window)")
    bans.add_argument("--local-first", action="store_true", help="ban: the limiter runs in local-first mode (sync)")
    bans.add_argument("--json", action="store_true", help="print JSON")
    bans.set_defaults(func=_bans)
    sub.add_parser("serve", help="answer a gateway's rate limit calls (Envoy's RateLimitService over gRPC) from "
                                 "envoyproxy/ratelimit domain files; see fastguard serve --help", add_help=False)
    sub.add_parser("kong-server", help="serve one fastguard plugin to Kong: fastguard kong-server NAME --socket PATH "
                                       "(or --dump); see fastguard kong-server --help", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # The reader went away (`fastguard kong-server NAME --dump | head`): stop quietly, as `cat` does. Python
        # would report the failed flush at exit, so stdout points at /dev/null from here on.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose pipe closed


def _main(argv: list[str]) -> int:
    if argv[:1] == ["serve"]:
        from fastguard.side.server import main as serve  # its own parser, like kong-server's

        return serve(argv[1:])
    if argv[:1] == ["kong-server"]:
        # Its own parser (fastguard.kong.server): the entry point Kong's start_cmd / query_cmd run.
        try:
            from fastguard.kong.server import main as kong_server
        except ImportError as exc:
            sys.stderr.write(f"fastguard kong-server needs kong-pdk: {install_hint('kong')} ({exc})\n")
            return 2
        return kong_server(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, _Usage) as exc:
        parser.exit(2, f"fastguard {args.command}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
