"""`fastguard simulate`: fastguard doing its real job — guarding a Kong route — with no Kong and no Redis needed.

It starts real `fastguard kong-server` processes on temporary sockets and plays Kong's side of the plugin-server
protocol for N requests from M consumers:

* route `/api` runs the `fastguard` plugin: verify the bearer JWT (ES256, keys made at start, served as an inline
  JWKS), then rate-limit by the verified `sub`; a caller denied `ban_after` times within a second is banned for
  `ban_for` seconds (answered 403 meanwhile; with --redis the ban is kept in Redis too);
* route `/login` runs `fastguard-rate-limiting` by client IP.

The traffic mixes valid tokens, tokens of a few abusive consumers who send far more than their limit, expired
tokens, forged tokens (signed with another key under the right kid) and malformed or missing ones. The summary
gives outcomes by route, status and reason, latency per request (p50 / p99, measured on the Kong side, so it
includes the protocol), events per second and PDK calls per request. With `--redis URL` the limits live in Redis
(strict mode) instead of in process.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from fastguard.extras import install_hint

__all__ = ["run", "MIX", "Options"]

MIX = {"valid": 0.72, "abusive": 0.13, "expired": 0.05, "forged": 0.05, "malformed": 0.05}
LOGIN_SHARE = 0.1  # of all requests, to /login


@dataclass
class Options:
    requests: int = 20_000
    consumers: int = 1000
    concurrency: int = 4
    limits: str = "20/second; 600/minute"
    login_limits: str = "5/minute"
    algorithm: str = "sliding_window"
    mix: dict[str, float] | None = None
    redis: str | None = None
    seed: int = 1
    ban_after: int = 20
    ban_for: float = 30.0
    gateway: str | None = None   # "nginx": HTTP through a real nginx + Lua gateway (fastguard.testing.gateway)
    side: str | None = None      # "nginx" / "caddy": HTTP through that gateway asking `fastguard serve`


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _Signer:
    """ES256 keys made at start; tokens signed with `cryptography`, as an identity provider would."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.attacker = ec.generate_private_key(ec.SECP256R1())
        nums = self.key.public_key().public_numbers()
        self.jwks = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "kid": "sim-1", "alg": "ES256", "use": "sig",
                                          "x": _b64(nums.x.to_bytes(32, "big")),
                                          "y": _b64(nums.y.to_bytes(32, "big"))}]})

    def token(self, claims: dict[str, Any], forged: bool = False) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        header = _b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "sim-1"}).encode())
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}".encode()
        der = (self.attacker if forged else self.key).sign(signing_input, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{header}.{payload}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _limit_fields(text: str) -> dict[str, Any]:
    """The plugin's window fields for a limit string: Kong's (`second` ... `year`) when every period is one of its
    windows ("10/second; 200/minute"), else Rate Limiting Advanced's `limit` / `window_size` ("100/5m")."""
    import fastguard as fg

    names = {1: "second", 60: "minute", 3600: "hour", 86_400: "day", 30 * 86_400: "month", 365 * 86_400: "year"}
    parsed = fg.parse_limits(text)
    if all(lim.period == int(lim.period) and int(lim.period) in names for lim in parsed):
        return {names[int(lim.period)]: lim.count for lim in parsed}
    if any(lim.period != int(lim.period) for lim in parsed):
        raise ValueError(f"limits {text!r}: a plugin's windows are whole seconds")
    return {"limit": [lim.count for lim in parsed], "window_size": [int(lim.period) for lim in parsed]}


def _redis_config(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.scheme in ("redis+cluster", "rediss+cluster"):
        cfg: dict[str, Any] = {"cluster_nodes": parts.netloc.rsplit("@", 1)[-1].split(",")}
    elif parts.scheme in ("redis", "rediss"):
        cfg = {"host": parts.hostname or "127.0.0.1", "port": parts.port or 6379,
               "database": int((parts.path or "/0").strip("/") or 0)}
    else:
        raise ValueError(f"--redis takes redis://host:port/db or redis+cluster://host:port,..., not {url!r}")
    if parts.password:
        cfg["password"] = parts.password
    if parts.username:
        cfg["username"] = parts.username
    cfg["ssl"] = parts.scheme.startswith("rediss")
    cfg["timeout"] = 500
    return cfg


def _redis_problem(url: str) -> str | None:
    """Why Redis at `url` cannot be used, or None when it answers a PING (within a second)."""
    try:
        from fastguard.redis import RedisStore

        store = RedisStore.from_url(url, timeout=1.0, connect_timeout=1.0)
        try:
            store.client.ping()
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer: redis-py's, a bad URL, a missing extra
        return f"{type(exc).__name__}: {exc}"
    return None


class _Progress:
    def __init__(self, total: int, out: TextIO, enabled: bool) -> None:
        self.total, self.out, self.enabled = total, out, enabled
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.next_line = 0.25  # without a terminal: a line at each quarter
        self.done = 0
        self.lock = threading.Lock()
        self.t0 = time.perf_counter()

    def add(self, n: int = 1) -> None:
        with self.lock:
            self.done += n

    def draw(self, final: bool = False) -> None:
        if not self.enabled:
            return
        width = 30
        share = self.done / max(self.total, 1)
        filled = int(width * share)
        rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
        line = f"  [{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,} requests, {rate:,.0f}/s"
        if self.tty:
            self.out.write(f"\r{line} " + ("\n" if final else ""))
        elif share >= self.next_line or final:
            while self.next_line <= share:
                self.next_line += 0.25
            self.out.write(line + "\n")
        self.out.flush()


def run(opts: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr, as_json: bool = False) -> dict[str, Any]:
    """Run the simulation; print the summary (or, with as_json, only the JSON summary) and return it."""
    from fastguard.kong.client import KongClient, fastguard_server

    mix = dict(opts.mix or MIX)
    # "login" (the /login traffic) may be weighed with the rest; otherwise it is LOGIN_SHARE of all requests
    login = mix.pop("login", None)
    if login is not None and not login >= 0:
        raise ValueError(f"--mix weights are >= 0, got login={login}")
    api = sum(mix.values())
    login_share = LOGIN_SHARE if login is None else (login / (login + api) if login + api > 0 else 0.0)
    if opts.requests < 1 or opts.consumers < 4 or opts.concurrency < 1:
        raise ValueError("--requests must be at least 1, --consumers at least 4, --concurrency at least 1")
    if any(k not in MIX for k in mix) or any(not v >= 0 for v in mix.values()) or (api <= 0 and login_share < 1):
        raise ValueError(f"--mix takes weights >= 0 for {', '.join(MIX)} and login (some above 0), got {opts.mix}")
    api_limits = _limit_fields(opts.limits)
    login_limits = _limit_fields(opts.login_limits)
    rng = random.Random(opts.seed)
    say = (lambda text: None) if as_json else (lambda text: err.write(text + "\n"))

    t_setup = time.perf_counter()
    signer = _Signer()
    now = int(time.time())
    consumers = [f"consumer-{i:04d}" for i in range(opts.consumers)]
    abusive = consumers[:3]

    def claims(sub: str, exp: int) -> dict[str, Any]:
        return {"iss": "https://idp.simulated", "sub": sub, "aud": "api", "iat": now, "exp": exp}

    tokens = {sub: signer.token(claims(sub, now + 3600)) for sub in consumers}
    expired = {sub: signer.token(claims(sub, now - 120)) for sub in consumers[:20]}
    forged = {sub: signer.token(claims(sub, now + 3600), forged=True) for sub in consumers[:20]}

    if opts.redis:
        try:
            import redis  # noqa: F401 - the plugin servers need it for policy: redis
        except ImportError:
            raise GatewayMissing(f"--redis needs the redis extra: {install_hint('redis')}") from None
    policy: dict[str, Any] = {"policy": "redis", "redis": _redis_config(opts.redis),
                              "fault_tolerant": False} if opts.redis else {}
    say(f"fastguard simulate: {opts.requests:,} requests from {opts.consumers} consumers, concurrency "
        f"{opts.concurrency}, limits {opts.limits} per consumer on /api and {opts.login_limits} per IP on /login "
        f"({opts.algorithm}, {'Redis ' + opts.redis if opts.redis else 'in process'})")
    if opts.redis:
        problem = _redis_problem(opts.redis)
        if problem:  # said even with --json (on stderr): otherwise the summary is a wall of 500s with no reason
            err.write(f"fastguard simulate: Redis at {opts.redis} cannot be reached ({problem}). The plugins run "
                      "with fault_tolerant=false, so every request they cannot decide is answered 500 until it "
                      "answers: start Redis, or leave out --redis.\n")
    if opts.gateway not in (None, "nginx"):
        raise ValueError(f"--gateway takes nginx, not {opts.gateway!r}")
    if opts.side not in (None, "nginx", "caddy"):
        raise ValueError(f"--side takes nginx or caddy, not {opts.side!r}")
    if opts.gateway and opts.side:
        raise ValueError("--gateway (the Kong plugins) and --side (fastguard serve) are two ways to run the same "
                         "traffic: give one")
    if opts.gateway:
        from fastguard.testing.gateway import missing

        if missing():
            raise GatewayMissing(f"--gateway nginx: {missing()}")
    if opts.side:
        from fastguard.testing.side import gateway_missing

        if gateway_missing(opts.side):
            raise GatewayMissing(f"--side {opts.side}: {gateway_missing(opts.side)}")
    servers = []
    gateway: Any = None
    http_port = 0
    ports: list[int] = []
    folder = tempfile.mkdtemp(prefix="fastguard-simulate-")   # after every check: removed by the finally below
    try:
        if opts.side:
            gateway, metrics_port = _side_gateway(opts, signer.jwks, folder)
            http_port = gateway.port
            ports += [metrics_port] if metrics_port else []
            say(f"  started fastguard serve (pid {gateway.side.proc.pid}) and {opts.side} (pid "
                f"{gateway.gateway.proc.pid}) on 127.0.0.1:{http_port}: /api and /login guarded by the domain files "
                f"in {folder}; keys and {len(tokens) + 40} tokens made in {time.perf_counter() - t_setup:.1f} s")
        for name in ("fastguard", "fastguard-rate-limiting") if not opts.side else ():
            server, port = _metered_server(fastguard_server, name, folder)
            servers.append(server)
            ports += [port] if port else []
        bans = {"ban_after": opts.ban_after, "ban_for": opts.ban_for, "ban_status": 403} if opts.ban_after else {}
        api_cfg = {"jwks": signer.jwks, "issuers": ["https://idp.simulated"], "audiences": ["api"],
                   "claims_to_verify": ["exp"], "algorithm": opts.algorithm, **api_limits, **policy, **bans}
        login_cfg = {"limit_by": "ip", "algorithm": opts.algorithm, **login_limits, **policy}
        if servers:
            say(f"  started fastguard kong-server fastguard (pid {servers[0].proc.pid}) and fastguard-rate-limiting "
                f"(pid {servers[1].proc.pid}) on {folder}; keys and {len(tokens) + 40} tokens made in "
                f"{time.perf_counter() - t_setup:.1f} s")
        if opts.gateway:
            from fastguard.testing.gateway import GatewayPlugin, NginxGateway

            # Kong's trusted_ips for the loopback client: /login's callers are told apart by X-Forwarded-For
            gateway = NginxGateway({"simulated-api": GatewayPlugin("fastguard", servers[0].socket, api_cfg),
                                    "simulated-login": GatewayPlugin("fastguard-rate-limiting", servers[1].socket,
                                                                     login_cfg)},
                                   {"/api": ["simulated-api"], "/login": ["simulated-login"]},
                                   trusted_ips=("127.0.0.1",))
            http_port = gateway.port
            say(f"  started nginx (pid {gateway.proc.pid}, {gateway.workers} workers) on {gateway.url}: HTTP from "
                f"here, Kong's side of the protocol in Lua")

        # The plan: every request decided before the run, so threads only play it.
        kinds, weights = zip(*mix.items(), strict=True)
        plan = []
        for _ in range(opts.requests):
            if rng.random() < login_share:
                plan.append(("login", "login", f"198.51.100.{rng.randrange(1, 40)}"))
                continue
            kind = rng.choices(kinds, weights)[0]
            if kind == "abusive":
                plan.append(("api", kind, tokens[rng.choice(abusive)]))
            elif kind == "valid":
                plan.append(("api", kind, tokens[rng.choice(consumers[3:])]))
            elif kind == "expired":
                plan.append(("api", kind, rng.choice(list(expired.values()))))
            elif kind == "forged":
                plan.append(("api", kind, rng.choice(list(forged.values()))))
            else:
                plan.append(("api", kind, rng.choice([None, "not-a-token", "a.b.c", "e30.e30."])))

        results: list[tuple[str, str, int, str, float, int]] = []
        lock = threading.Lock()
        progress = _Progress(len(plan), err, not as_json)
        failures: list[BaseException] = []

        def play(part: list[tuple[str, str, Any]]) -> None:
            if http_port:
                return play_http(part)
            try:
                client = KongClient(servers[0].socket, connections=2)
                login_client = KongClient(servers[1].socket, connections=1)
                api_id = client.start("fastguard", api_cfg, plugin_id="simulated-api")
                login_id = login_client.start("fastguard-rate-limiting", login_cfg, plugin_id="simulated-login")
                mine = []
                for route, kind, arg in part:
                    t0 = time.perf_counter()
                    if route == "login":
                        o = login_client.event(login_id, {"kong.client.get_forwarded_ip": arg})
                    else:
                        headers = {"host": "api.example"}
                        if arg is not None:
                            headers["authorization"] = f"Bearer {arg}"
                        o = client.event(api_id, {"kong.request.get_headers": headers})
                    elapsed = time.perf_counter() - t0
                    reason = "ok" if o.exit is None else _reason(o.exit[1])
                    mine.append((route, kind, o.status, str(reason), elapsed, len(o.calls)))
                    progress.add()
                client.close()
                login_client.close()
                with lock:
                    results.extend(mine)
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                failures.append(exc)

        def play_http(part: list[tuple[str, str, Any]]) -> None:
            import http.client

            try:
                conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)  # one keep-alive client
                mine = []
                for route, kind, arg in part:
                    t0 = time.perf_counter()
                    headers = {"X-Forwarded-For": arg} if route == "login" else \
                        ({"Authorization": f"Bearer {arg}"} if arg is not None else {})
                    conn.request("GET", f"/{route}", headers=headers)
                    r = conn.getresponse()
                    body = r.read()
                    elapsed = time.perf_counter() - t0
                    reason = "ok" if r.status == 200 else _http_reason(body, r.getheader("WWW-Authenticate"))
                    mine.append((route, kind, r.status, str(reason), elapsed, 0))
                    progress.add()
                conn.close()
                with lock:
                    results.extend(mine)
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                failures.append(exc)

        parts = [plan[i::opts.concurrency] for i in range(opts.concurrency)]
        threads = [threading.Thread(target=play, args=(p,), daemon=True) for p in parts]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            progress.draw()
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        progress.draw(final=True)
        if failures:
            raise RuntimeError(f"the simulation failed: {failures[0]!r}") from failures[0]
        server_metrics = _scrape(ports) if ports else None
    finally:
        if gateway is not None:
            gateway.stop()
        for s in servers:
            s.stop()
        shutil.rmtree(folder, ignore_errors=True)

    summary = _summary(results, elapsed, opts)
    summary["server_metrics"] = server_metrics
    if as_json:
        out.write(json.dumps(summary, indent=2) + "\n")
    else:
        _print(summary, out)
    return summary


#: The side service's units, largest first: a period is written in the largest that divides it.
_SIDE_UNITS = (("week", 604_800), ("day", 86_400), ("hour", 3600), ("minute", 60), ("second", 1))


def _side_window(lim: Any) -> dict[str, Any]:
    """One limit as an envoyproxy/ratelimit window (with fastguard's unit_multiplier for periods like 5 minutes)."""
    seconds = lim.period
    if seconds != int(seconds) or seconds < 1:
        raise ValueError(f"limit {lim} has a period the side service cannot say (whole seconds)")
    for unit, size in _SIDE_UNITS:
        if int(seconds) % size == 0:
            times = int(seconds) // size
            return {"unit": unit, "requests_per_unit": lim.count, **({"unit_multiplier": times} if times > 1 else {})}
    raise AssertionError("unreachable: every whole period is seconds")


def _side_rule(text: str, algorithm: str, bans: dict[str, Any]) -> dict[str, Any]:
    import fastguard as fg

    first, *more = [_side_window(lim) for lim in fg.parse_limits(text)]
    return {**first, "algorithm": algorithm, **({"windows": more} if more else {}), **bans}


def _side_gateway(opts: Options, jwks: str, folder: str) -> tuple[Any, int | None]:
    """The Kong routes' policies as side-service domain files (api: the JWT, then a limit per verified sub; login:
    a limit per client address), `fastguard serve` on them and the gateway in front, with metrics when
    prometheus_client is there. The domain files are what an operator would write (docs/side-service.md)."""
    import yaml

    from fastguard.testing.servers import free_port
    from fastguard.testing.side import SideGateway

    bans = {"ban_after": opts.ban_after, "ban_for": opts.ban_for} if opts.ban_after else {}
    api = {"domain": "api",
           "descriptors": [{"key": "sub", "rate_limit": _side_rule(opts.limits, opts.algorithm, bans)}],
           "fastguard": {"jwt": {"issuer": "https://idp.simulated", "audiences": ["api"],
                                 "local_jwks": {"inline_string": jwks},
                                 "claim_to_headers": [{"header_name": "X-Jwt-Sub", "claim_name": "sub"}]},
                         "rate_limits": [{"actions": [{"jwt_claim": {"claim_name": "sub",
                                                                     "descriptor_key": "sub"}}]}]}}
    login = {"domain": "login",
             "descriptors": [{"key": "remote_address",
                              "rate_limit": _side_rule(opts.login_limits, opts.algorithm, {})}],
             "fastguard": {"rate_limits": [{"actions": [{"remote_address": {}}]}]}}
    for doc in (api, login):
        with open(os.path.join(folder, f"{doc['domain']}.yaml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
    args: list[str] = ["--redis", opts.redis] if opts.redis else []
    metrics_port = None
    try:
        import prometheus_client  # noqa: F401

        metrics_port = free_port()
        args += ["--metrics-port", str(metrics_port)]
    except ImportError:
        pass
    return SideGateway(opts.side or "nginx", folder, {"/api": "api", "/login": "login"}, tuple(args)), metrics_port


def _reason(body: Any) -> str:
    """The reason of a refusal: kong.response.error's message (a str), the message of an exit's {"message": ...}
    body (Kong's JSON), or the body itself as JSON."""
    if isinstance(body, str):
        return body
    if isinstance(body, dict) and "message" in body:
        return str(body["message"])
    return json.dumps(body)


def _http_reason(body: bytes, challenge: str | None) -> str:
    """The reason of an HTTP refusal: Kong's JSON message, the side service's text, or — where nginx answered with
    its own page (a 401 from auth_request) — the WWW-Authenticate error_description, else "missing token"."""
    try:
        return _reason(json.loads(body))
    except ValueError:
        pass
    text = body.decode(errors="replace").strip()
    if text.startswith("<"):
        said = re.search(r'error_description="([^"]*)"', challenge or "")
        return said.group(1) if said else ("missing token" if challenge else text[:60])
    return text[:60]


class GatewayMissing(RuntimeError):
    """What this run needs is not installed: a gateway (--gateway, --side) or an extra (--redis); the message says
    what to install."""


def _metered_server(start: Any, name: str, folder: str) -> tuple[Any, int | None]:
    """`fastguard kong-server NAME` with /metrics on a free loopback port (and the port), or without metrics when
    prometheus_client is not installed. A port found free can be taken by another process before the server binds
    it: the server then exits with "Address already in use", and another port is tried."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return start(name, folder), None
    import socket

    taken: RuntimeError | None = None
    for _ in range(5):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        try:
            return start(name, folder, "--metrics-port", str(port)), port
        except RuntimeError as exc:
            if "Address already in use" not in str(exc):
                raise
            taken = exc
    raise taken  # type: ignore[misc]


def _scrape(ports: list[int]) -> dict[str, Any]:
    """The servers' own view, from their /metrics: events by status and time per event per plugin, the limiters'
    decisions and the verifier's outcomes and cache hits."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, Any] = {"events": {}, "event_ms": {}, "decisions": {}, "verifications": {}, "token_cache": {},
                           "bans": {}}
    for port in ports:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for smp in family.samples:
                lab = smp.labels
                if smp.name == "fastguard_kong_events_total":
                    out["events"].setdefault(lab["plugin"], {})[lab["status"]] = int(smp.value)
                elif smp.name == "fastguard_kong_event_seconds_sum":
                    sums[lab["plugin"]] = smp.value
                elif smp.name == "fastguard_kong_event_seconds_count":
                    counts[lab["plugin"]] = smp.value
                elif smp.name == "fastguard_ratelimit_decisions_total":
                    plugin = lab["limiter"].split(":", 1)[0]
                    out["decisions"].setdefault(plugin, {})[lab["outcome"]] = int(smp.value)
                elif smp.name == "fastguard_ratelimit_bans_total":
                    out["bans"][lab["limiter"].split(":", 1)[0]] = int(smp.value)
                elif smp.name == "fastguard_jwt_verifications_total":
                    out["verifications"][lab["outcome"]] = int(smp.value)
                elif smp.name == "fastguard_jwt_cache_requests_total" and lab["cache"] == "tokens":
                    out["token_cache"][lab["result"]] = int(smp.value)
        for plugin, count in counts.items():
            out["event_ms"][plugin] = sums.get(plugin, 0.0) / count * 1e3 if count else 0.0
    return out


def _pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))] if sorted_values else 0.0


def _summary(results: list[tuple[str, str, int, str, float, int]], elapsed: float, opts: Options) -> dict[str, Any]:
    outcomes = Counter((r[0], r[2], r[3]) for r in results)
    by_kind = Counter((r[1], r[2]) for r in results)
    latencies = sorted(r[4] for r in results)
    routes = {}
    for route in ("api", "login"):
        lat = sorted(r[4] for r in results if r[0] == route)
        calls = [r[5] for r in results if r[0] == route]
        routes[route] = {"requests": len(lat), "p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3,
                         "pdk_calls_per_request": None if opts.gateway or opts.side else
                         (statistics.fmean(calls) if calls else 0.0)}
    return {
        "requests": len(results),
        "seconds": elapsed,
        "events_per_second": len(results) / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": _pct(latencies, 0.5) * 1e3, "p99": _pct(latencies, 0.99) * 1e3},
        # through a gateway the PDK calls are nginx's: the servers' /metrics count the events instead
        "pdk_calls_per_request": None if opts.gateway or opts.side else (
            statistics.fmean(r[5] for r in results) if results else 0.0),
        "gateway": opts.gateway,
        "side": opts.side,
        "outcomes": [{"route": route, "status": status, "reason": reason, "count": n}
                     for (route, status, reason), n in sorted(outcomes.items(), key=lambda kv: -kv[1])],
        "by_traffic": [{"traffic": kind, "status": status, "count": n}
                       for (kind, status), n in sorted(by_kind.items())],
        "routes": routes,
        "config": {"limits": opts.limits, "login_limits": opts.login_limits, "algorithm": opts.algorithm,
                   "ban_after": opts.ban_after, "ban_for": opts.ban_for,
                   "consumers": opts.consumers, "concurrency": opts.concurrency, "redis": opts.redis,
                   "mix": opts.mix or MIX},
        "pid": os.getpid(),
    }


def _print(s: dict[str, Any], out: TextIO) -> None:
    w = out.write
    side = (f"HTTP client side, through {s['side']} and fastguard serve" if s.get("side") else
            "HTTP client side, through nginx" if s.get("gateway") else "Kong side, protocol included")
    calls = "" if s["pdk_calls_per_request"] is None else f"; {s['pdk_calls_per_request']:.2f} PDK calls per request"
    w(f"\n{s['requests']:,} requests in {s['seconds']:.2f} s: {s['events_per_second']:,.0f} "
      f"{'requests' if s.get('gateway') or s.get('side') else 'events'}/s; latency per request "
      f"p50 {s['latency_ms']['p50']:.2f} ms, "
      f"p99 {s['latency_ms']['p99']:.2f} ms ({side}){calls}\n\n")
    w(f"{'route':<7} {'status':>6} {'count':>8} {'share':>7}  reason\n")
    for o in s["outcomes"]:
        w(f"{o['route']:<7} {o['status']:>6} {o['count']:>8,} {o['count'] / s['requests']:>7.1%}  {o['reason']}\n")
    w("\nby kind of traffic:\n")
    kinds: dict[str, Counter[int]] = {}
    for row in s["by_traffic"]:
        kinds.setdefault(row["traffic"], Counter())[row["status"]] = row["count"]
    for kind, statuses in kinds.items():
        total = sum(statuses.values())
        parts = ", ".join(f"{status}: {n:,}" for status, n in sorted(statuses.items()))
        w(f"  {kind:<10} {total:>7,} requests -> {parts}\n")
    w("\nper route:\n")
    for route, r in s["routes"].items():
        calls = "" if r["pdk_calls_per_request"] is None else \
            f", {r['pdk_calls_per_request']:.2f} PDK calls per request"
        w(f"  /{route:<6} {r['requests']:>7,} requests, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms{calls}\n")
    m = s.get("server_metrics")
    if m:
        w("\nthe side service's own metrics (its /metrics page):\n" if s.get("side") else
          "\nthe plugin servers' own metrics (their /metrics pages):\n")
        for plugin, statuses in sorted(m["events"].items()):
            parts = ", ".join(f"{st}: {n:,}" for st, n in sorted(statuses.items()))
            w(f"  {plugin:<24} events {parts}; {m['event_ms'].get(plugin, 0.0):.3f} ms in the server per event\n")
        for plugin, d in sorted(m["decisions"].items()):
            bans = m["bans"].get(plugin, 0)
            w(f"  {plugin:<24} limiter: {d.get('allowed', 0):,} allowed, {d.get('denied', 0):,} denied"
              + (f", {bans:,} callers banned (answered {429 if s.get('side') else 403} while banned)" if bans else "")
              + "\n")
        if m["verifications"]:
            parts = ", ".join(f"{k}: {v:,}" for k, v in sorted(m["verifications"].items(), key=lambda kv: -kv[1]))
            cache = m["token_cache"]
            total = cache.get("hit", 0) + cache.get("miss", 0)
            w(f"  {'fastguard':<24} JWT: {parts}; token cache hit rate "
              f"{cache.get('hit', 0) / total if total else 0:.1%}\n")
