"""`fastguard serve --redis`: counts shared by workers, nodes and front ends in a real Redis, shared with a Kong
plugin of the same namespace (a real plugin server, driven as Kong drives it), and on_error while Redis is down."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
import uuid

import pytest

pytest.importorskip("httptools")
pytest.importorskip("redis")

from fastguard.kong.client import fastguard_server  # noqa: E402
from fastguard.testing.servers import free_port  # noqa: E402
from fastguard.testing.side import SideService  # noqa: E402

CLIENT = "203.0.113.7"


def domain(name: str, count: int, counts: str = "", unit: str = "minute") -> str:
    return f"""
domain: {name}
descriptors:
  - key: remote_address
    rate_limit: {{unit: {unit}, requests_per_unit: {count}}}
fastguard:
  rate_limits: [{{actions: [{{remote_address: {{}}}}]}}]
{counts}
"""


def ask(side: SideService, name: str, client: str = CLIENT) -> int:
    """One forward-auth question on a new connection (so --workers spreads them), from `client` via loopback."""
    conn = http.client.HTTPConnection("127.0.0.1", side.http_port, timeout=10)
    try:
        conn.request("GET", f"/auth/{name}", headers={"X-Forwarded-Uri": "/", "X-Forwarded-For": client})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def rls(side: SideService, name: str, client: str = CLIENT) -> int:
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{side.grpc_port}") as ch:
        req = rls_pb2.RateLimitRequest(domain=name, descriptors=[{"entries": [{"key": "remote_address",
                                                                               "value": client}]}])
        return rls_pb2_grpc.RateLimitServiceStub(ch).ShouldRateLimit(req, timeout=10).overall_code


def test_workers_and_front_ends_share_one_count(tmp_path, redis_server):
    """Two worker processes and a second service (gRPC RLS): one strict count of 10 per minute, exactly."""
    name = f"d{uuid.uuid4().hex[:8]}"
    (tmp_path / "d.yaml").write_text(domain(name, 10))
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    workers = SideService(str(tmp_path), args=("--workers", "2", "--redis", url), http_port=free_port())
    other = SideService(str(tmp_path), grpc=True, args=("--redis", url))
    try:
        assert "counts are per process" not in workers.log()
        http_answers = [ask(workers, name) for _ in range(8)]
        grpc_answers = [rls(other, name) for _ in range(4)]
        assert http_answers == [200] * 8, workers.log()
        assert grpc_answers == [1, 1, 2, 2]                  # OK, OK, then OVER_LIMIT: 10 in all
        assert [ask(workers, name) for _ in range(6)] == [429] * 6
        assert ask(workers, name, "198.51.100.1") == 200     # another caller, its own count
        assert "counts in Redis (strict)" in other.log()
    finally:
        workers.stop()
        other.stop()


def test_a_kong_plugin_and_the_side_service_share_one_count(tmp_path, redis_server):
    """Kong's fastguard-rate-limiting (limit_by ip, namespace N, policy redis) and a domain with the same namespace
    whose remote_address counts as Kong's `ip`: one count of 4 per minute, decremented by both."""
    ns = f"shared-{uuid.uuid4().hex[:6]}"
    name = f"d{uuid.uuid4().hex[:8]}"
    counts = f"  counts: {{namespace: {ns}, kong_keys: {{remote_address: ip}}}}"
    (tmp_path / "d.yaml").write_text(domain(name, 4, counts))
    (tmp_path / "kong").mkdir()
    kong = fastguard_server("fastguard-rate-limiting", str(tmp_path / "kong"))
    side = SideService(str(tmp_path), args=("--redis", f"redis://127.0.0.1:{redis_server.port}/0"))
    client = kong.client()
    try:
        iid = client.start("fastguard-rate-limiting", {
            "minute": 4, "limit_by": "ip", "namespace": ns, "policy": "redis", "fault_tolerant": False,
            "redis": {"host": "127.0.0.1", "port": redis_server.port, "timeout": 2000}})
        pdk = {"kong.client.get_forwarded_ip": CLIENT}
        first = client.event(iid, pdk)
        assert first.status == 200 and first.headers["X-RateLimit-Remaining-Minute"] == "3"
        assert [ask(side, name), ask(side, name)] == [200, 200]
        assert client.event(iid, pdk).status == 200          # the 4th request, through Kong
        assert client.event(iid, pdk).status == 429          # Kong's count saw the side service's two
        assert ask(side, name) == 429                        # and the side service saw Kong's
        other = {"kong.client.get_forwarded_ip": "198.51.100.9"}
        assert client.event(iid, other).status == 200 and ask(side, name, "198.51.100.9") == 200
        # without kong_keys the domain counts under its own key: not Kong's
        (tmp_path / "d.yaml").write_text(domain(name, 4, f"  counts: {{namespace: {ns}}}"))
        side.reload()
        assert ask(side, name) == 200
    finally:
        client.close()
        kong.stop()
        side.stop()


@pytest.mark.parametrize("on_error, expected", [("deny", [503, 503]), ("allow", [200, 200, 200]),
                                                ("local", [200, 200, 429])])
def test_on_error_while_redis_is_down(tmp_path, fresh_redis, on_error, expected):
    """A domain's on_error decides while Redis cannot answer: deny is a 503 (forward-auth; nginx makes it a 500,
    never a 429 that is not one) and OVER_LIMIT over RLS; allow lets through; local counts in process."""
    name = f"d{uuid.uuid4().hex[:8]}"
    (tmp_path / "d.yaml").write_text(domain(name, 2, f"  counts: {{on_error: {on_error}}}"))
    side = SideService(str(tmp_path), grpc=True, args=("--redis", f"redis://127.0.0.1:{fresh_redis.port}/0",
                                                       "--redis-timeout", "200"))
    try:
        assert ask(side, name) == 200                        # Redis up
        fresh_redis.kill()
        answers = [ask(side, name, "192.0.2.44") for _ in range(len(expected))]
        assert answers == expected, side.log()
        assert rls(side, name, "192.0.2.45") == (2 if on_error == "deny" else 1)
        fresh_redis.start()
        deadline = time.monotonic() + 20                     # back to shared counts once Redis answers
        while time.monotonic() < deadline and ask(side, name, "192.0.2.46") != 200:
            time.sleep(0.2)
        assert ask(side, name, "192.0.2.47") == 200
    finally:
        side.stop()


def test_local_first_shares_counts_between_processes(tmp_path, redis_server):
    """--sync: decisions in process, counts exchanged every 0.2 s: a caller spent on one process is refused by the
    other once the other has exchanged its count of that caller (a caller new to a process is decided locally first:
    local-first's error bound, fastguard.redis.SyncTable)."""
    name = f"d{uuid.uuid4().hex[:8]}"
    (tmp_path / "d.yaml").write_text(domain(name, 5))
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    a = SideService(str(tmp_path), args=("--redis", url, "--sync", "0.2"))
    b = SideService(str(tmp_path), args=("--redis", url, "--sync", "0.2"))
    try:
        assert [ask(a, name) for _ in range(5)] == [200] * 5
        admitted, deadline = 0, time.monotonic() + 15
        while ask(b, name) == 200:                           # until b has exchanged its count of the caller
            admitted += 1
            assert time.monotonic() < deadline, b.log()
            time.sleep(0.1)
        assert admitted <= 5, admitted                       # a few sync intervals' worth at most, not a new limit
        assert ask(a, name) == 429
        assert "local-first, sync every 0.2 s" in a.log()
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("args, says", [
    (("--redis", "http://127.0.0.1:1"), "--redis cannot be used"),
    (("--sync", "1"), "--sync needs --redis"),
    (("--redis", "redis://127.0.0.1:1", "--sync", "0"), "--sync is seconds"),
    (("--redis", "redis://127.0.0.1:1", "--redis-timeout", "-5"), "--redis-timeout is milliseconds"),
])
def test_bad_redis_options_are_refused_at_start(tmp_path, args, says):
    (tmp_path / "d.yaml").write_text(domain("edge", 5))
    out = subprocess.run([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(tmp_path), "--http",
                          "127.0.0.1:0", "--workers", "1", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
