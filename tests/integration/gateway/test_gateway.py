"""A real gateway in the loop: nginx workers (lua-nginx-module, LuaJIT cosockets, lua-MessagePack) play Kong's side
of the plugin-server protocol over HTTP, in front of fastguard's plugin servers (fastguard.testing.gateway)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from fastguard.kong.client import fastguard_server
from fastguard.testing.gateway import GatewayPlugin, NginxGateway, missing
from fastguard.testing.tokens import jwk, sign

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")

JWKS = json.dumps({"keys": [jwk("RSA", kid="rsa1", alg="RS256")]})
NOW = int(time.time())


def token(**claims):
    return sign({"iss": "https://idp.example", "sub": "alice", "exp": NOW + 3600, **claims}, "RS256",
                {"alg": "RS256", "kid": "rsa1"})


def get(gw, path="/", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gw"))
    running = {name: fastguard_server(name, folder) for name in ("fastguard-rate-limiting", "fastguard-jwt",
                                                                 "fastguard")}
    yield running
    for server in running.values():
        server.stop()


@pytest.fixture
def gateway(servers):
    made = []

    def make(plugins, routes, **kw):
        gw = NginxGateway({e: GatewayPlugin(name, servers[name].socket, cfg, **extra)
                           for e, (name, cfg, extra) in plugins.items()}, routes, **kw)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


def test_rate_limiting_allow_then_deny_with_kongs_headers(gateway):
    gw = gateway({"rl": ("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip"}, {})}, {"/": ["rl"]})
    status, headers, body = get(gw)
    assert status == 200 and body == b"upstream ok\n"
    assert headers["X-RateLimit-Limit-Minute"] == "2" and headers["X-RateLimit-Remaining-Minute"] == "1"
    assert get(gw)[0] == 200
    status, headers, body = get(gw)
    assert status == 429 and json.loads(body) == {"message": "API rate limit exceeded"}
    assert int(headers["Retry-After"]) >= 1


def test_limits_are_exact_across_nginx_workers(gateway):
    """N parallel clients over 4 nginx workers (each with its own instances and connections), limit L: exactly L
    requests reach the upstream."""
    gw = gateway({"rl": ("fastguard-rate-limiting", {"hour": 50, "limit_by": "ip"}, {})}, {"/": ["rl"]}, workers=4)
    statuses: list[int] = []
    lock = threading.Lock()

    def client():
        mine = [get(gw)[0] for _ in range(25)]
        with lock:
            statuses.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(statuses)) == [200, 429] and statuses.count(200) == 50, statuses


def test_jwt_and_the_combined_plugin(gateway):
    gw = gateway({"jwt": ("fastguard-jwt", {"jwks": JWKS, "claims_to_headers": {"sub": "X-Subject"}}, {}),
                  "both": ("fastguard", {"jwks": JWKS, "minute": 1}, {})},
                 {"/jwt": ["jwt"], "/both": ["both"]})
    assert get(gw, "/jwt")[0] == 401
    status, headers, body = get(gw, "/jwt", {"Authorization": "Bearer x.y.z"})
    assert status == 401 and json.loads(body) == {"message": "Bad token; invalid JSON"}
    assert headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert get(gw, "/jwt", {"Authorization": f"Bearer {token()}"})[0] == 200
    other = token(sub="bob")
    status, _, body = get(gw, f"/jwt?jwt={other}", {"Authorization": f"Bearer {token()}"})
    assert status == 401 and json.loads(body) == {"message": "Multiple tokens provided"}
    assert [get(gw, "/both", {"Authorization": f"Bearer {token(sub='carol')}"})[0] for _ in range(2)] == [200, 429]


def test_header_bytes_that_are_not_utf8(gateway):
    gw = gateway({"rl": ("fastguard-rate-limiting", {"minute": 1, "limit_by": "header", "header_name": "X-Tenant"},
                         {})}, {"/": ["rl"]})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    statuses = []
    for _ in range(2):
        conn.putrequest("GET", "/")
        conn.putheader("X-Tenant", b"\xff\xfe-tenant")
        conn.endheaders()
        r = conn.getresponse()
        r.read()
        statuses.append(r.status)
    conn.close()
    assert statuses == [200, 429]   # undecodable bytes are still a key: counted, then refused


def test_a_dead_plugin_server_is_proxied_as_kong_does_unless_fail_closed(gateway, tmp_path):
    """Kong logs an RPC error and proxies the request without the plugin (fail open); fail_closed refuses it."""
    server = fastguard_server("fastguard-jwt", str(tmp_path))
    gw = gateway({"open": ("fastguard-jwt", {"jwks": JWKS}, {}), "closed": ("fastguard-jwt", {"jwks": JWKS},
                                                                            {"fail_closed": True})},
                 {"/open": ["open"], "/closed": ["closed"]})
    gw.plugins["open"].socket = gw.plugins["closed"].socket = server.socket
    gw.reload()
    time.sleep(0.5)
    assert get(gw, "/open")[0] == 401 and get(gw, "/closed")[0] == 401
    server.stop()
    assert get(gw, "/open")[0] == 200          # Kong's behaviour: the plugin is skipped, the upstream answers
    assert get(gw, "/closed")[0] == 503
    assert "connecting to" in gw.error_log()
