"""`fastguard serve --http` behind real gateways: Debian's nginx (auth_request) and Caddy (forward_auth), started
with the configurations docs/side-service.md shows, the domain file the docs show, and an upstream echoing what it
received; the service's own HTTP contract (health, /json, the three ways to name the client's request, bad input);
ext_authz over real gRPC; reloads under wrk load."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

pytest.importorskip("httptools")
grpc = pytest.importorskip("grpc")

from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc  # noqa: E402
from google.rpc import code_pb2  # noqa: E402

from fastguard.testing.servers import free_port  # noqa: E402
from fastguard.testing.side import CaddyServer, EchoUpstream, NginxServer, SideService, docs_block  # noqa: E402
from fastguard.testing.tokens import jwk, sign  # noqa: E402

JWKS = {"keys": [jwk("P-256", kid="k1", alg="ES256", use="sig")]}


def token(sub="alice", **claims):
    body = {"iss": "https://issuer.example", "aud": "api", "sub": sub, "exp": time.time() + 600, **claims}
    return sign(body, "ES256", header={"alg": "ES256", "kid": "k1"})


@pytest.fixture(scope="module")
def config_dir():
    folder = tempfile.mkdtemp(prefix="fg-side-")
    with open(os.path.join(folder, "api.yaml"), "w") as fh:
        fh.write(docs_block("domain"))
    with open(os.path.join(folder, "jwks.json"), "w") as fh:
        json.dump(JWKS, fh)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def side(config_dir):
    s = SideService(config_dir, grpc=True)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def echo():
    e = EchoUpstream()
    yield e
    e.stop()


def call(port, path="/", method="GET", headers=None, body=None, host="127.0.0.1"):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def through(gateway_port, host):
    """The same facts through any gateway (the client is `host`; it claims other addresses)."""
    def call(*args, **kwargs):
        return globals()["call"](*args, host=host, **kwargs)

    status, _, body = call(gateway_port, "/hello", headers={"X-Jwt-Sub": "forged"})
    assert status == 200
    seen = json.loads(body)
    assert seen["path"] == "/hello" and seen["headers"].get("x-jwt-sub", "") == ""   # no identity, no forgery
    status, _, body = call(gateway_port, "/hello", headers={"Authorization": f"Bearer {token('bob')}",
                                                              "X-Jwt-Sub": "forged"})
    assert status == 200 and json.loads(body)["headers"]["x-jwt-sub"] == "bob"
    status, headers, _ = call(gateway_port, "/hello", headers={"Authorization": "Bearer no.such.token"})
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, _ = call(gateway_port, "/hello", headers={"Authorization": f"Bearer {token(aud='other')}"})
    assert status == 403
    # the login limit (10 a minute per client address): a client naming other addresses is still itself
    answers = [call(gateway_port, "/login", "POST", {"X-Forwarded-For": f"10.9.8.{i}", "Content-Length": "0"})
               for i in range(11)]
    assert [a[0] for a in answers] == [200] * 10 + [429]
    assert 1 <= int(answers[-1][1]["retry-after"]) <= 60
    assert call(gateway_port, "/login?x=1", "POST", {"Content-Length": "0"})[0] == 429
    assert call(gateway_port, "/other", "POST", {"Content-Length": "0"})[0] == 200     # another route: not login


@pytest.mark.parametrize("gateway, server, client", [
    ("nginx", NginxServer, "127.0.0.1"),
    ("caddy", CaddyServer, "::1"),      # another client address than nginx's test: a login count of its own
])
def test_through_a_real_gateway_configured_as_the_docs_say(side, echo, gateway, server, client):
    if shutil.which(gateway) is None:
        pytest.skip(f"{gateway} is not installed (apt-get install {gateway})")
    port = free_port()
    running = server(docs_block(gateway, side=side.http_port, gateway=port, upstream=echo.port), port)
    try:
        through(port, client)
    finally:
        running.stop()


def test_health_json_and_the_ways_a_gateway_names_the_request(side):
    status, _, body = call(side.http_port, "/healthcheck")
    assert (status, body) == (200, b"OK")
    body = json.dumps({"domain": "api", "descriptors": [{"entries": [{"key": "remote_address", "value": "1.2.3.4"}]}]})
    status, headers, data = call(side.http_port, "/json", "POST", {"Content-Type": "application/json"}, body)
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(data)["statuses"][0]["currentLimit"] == {"requestsPerUnit": 600, "unit": "MINUTE"}
    assert call(side.http_port, "/json", "POST", body="{nope")[0] == 400
    assert call(side.http_port, "/json", "POST", body=json.dumps({"domain": "api"}))[0] == 400   # no descriptors
    assert call(side.http_port, "/json")[0] == 405
    assert call(side.http_port, "/auth/nosuch", headers={"X-Forwarded-Uri": "/"})[0] == 404
    assert call(side.http_port, "/auth/api")[0] == 400                         # no X-Forwarded-Uri: a config error
    assert call(side.http_port, "/auth/api?via=nginx", headers={"X-Forwarded-Uri": "/"})[0] == 400
    # Envoy ext_authz HTTP: path_prefix /auth/api, then the client's own method and path
    ip = "198.51.100.77"
    statuses = [call(side.http_port, "/auth/api/login?a=b", "POST", {"X-Forwarded-For": ip, "Content-Length": "0"})[0]
                for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    # nginx asks with X-Original-*: over the limit is a 403 saying 429
    status, headers, _ = call(side.http_port, "/auth/api?via=nginx",
                              headers={"X-Original-URI": "/login", "X-Original-Method": "POST", "X-Forwarded-For": ip})
    assert status == 403 and headers["x-ratelimit-status"] == "429" and int(headers["retry-after"]) >= 1
    # Traefik/Caddy/APISIX ask with X-Forwarded-*: the client's own X-Original-URI is not believed there
    status, _, _ = call(side.http_port, "/auth/api", headers={"X-Forwarded-Uri": "/login", "X-Forwarded-Method":
                                                              "POST", "X-Original-URI": "/", "X-Forwarded-For": ip})
    assert status == 429


def raw(port, data, read_until_close=True):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        chunks = b""
        while True:
            try:
                got = s.recv(65536)
            except TimeoutError:
                break
            if not got:
                break
            chunks += got
            if not read_until_close and chunks.count(b"HTTP/1.1") >= 2 and chunks.endswith(b"OK"):
                break
        return chunks


def test_bad_http_is_a_clear_refusal_never_a_crash_or_an_allow(side):
    port = side.http_port
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(150))
    assert raw(port, b"GET /auth/api HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n").startswith(b"HTTP/1.1 431")
    big = b"X-Big: " + b"a" * 40_000 + b"\r\n"
    assert raw(port, b"GET /auth/api HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n").startswith(b"HTTP/1.1 431")
    assert raw(port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 414")
    assert raw(port, b"\x16\x03\x01\x02\x00garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    body = b"{" + b" " * 70_000 + b"}"
    assert raw(port, b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)\
        .startswith(b"HTTP/1.1 413")
    # undecodable bytes in a header the policy reads: decided, not a crash
    answer = raw(port, b"GET /auth/api HTTP/1.1\r\nHost: x\r\nX-Forwarded-Uri: /\r\nAuthorization: Bearer \xff\xfe\r\n"
                       b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 401")
    # pipelined requests are answered in order on one connection
    two = raw(port, b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\nGET /nothing HTTP/1.1\r\nHost: x\r\n"
                    b"Connection: close\r\n\r\n")
    assert two.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 404" in two.split(b"\r\n\r\nOK", 1)[1]
    assert call(port, "/healthcheck")[0] == 200                                  # still serving


def check_request(path, method="GET", headers=None, address="203.0.113.50", domain="api"):
    http_request = attribute_context_pb2.AttributeContext.HttpRequest(method=method, path=path, host="api.example",
                                                                      headers=headers or {})
    attrs = attribute_context_pb2.AttributeContext(request=attribute_context_pb2.AttributeContext.Request(
        http=http_request), context_extensions={"domain": domain} if domain else {})
    attrs.source.address.socket_address.address = address
    return external_auth_pb2.CheckRequest(attributes=attrs)


def test_ext_authz_check_over_grpc(side):
    with grpc.insecure_channel(f"127.0.0.1:{side.grpc_port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        ok = stub.Check(check_request("/x", headers={"authorization": f"Bearer {token('carol')}",
                                                      "x-jwt-sub": "forged"}), timeout=5)
        assert ok.status.code == code_pb2.OK
        assert [(h.header.key, h.header.value) for h in ok.ok_response.headers] == [("x-jwt-sub", "carol")]
        assert "authorization" in ok.ok_response.headers_to_remove         # jwt_authn's forward: false
        assert {h.header.key for h in ok.ok_response.response_headers_to_add} >= {"RateLimit-Limit"}
        anonymous = stub.Check(check_request("/x", headers={"x-jwt-sub": "forged"}, domain=None), timeout=5)
        assert anonymous.status.code == code_pb2.OK and "x-jwt-sub" in anonymous.ok_response.headers_to_remove
        bad = stub.Check(check_request("/x", headers={"authorization": "Bearer a.b.c"}), timeout=5)
        assert bad.status.code == code_pb2.UNAUTHENTICATED and bad.denied_response.status.code == 401
        answers = [stub.Check(check_request("/login", "POST", address="203.0.113.51"), timeout=5) for _ in range(11)]
        assert [a.status.code for a in answers] == [code_pb2.OK] * 10 + [code_pb2.RESOURCE_EXHAUSTED]
        assert answers[-1].denied_response.status.code == 429
        assert "Retry-After" in {h.header.key for h in answers[-1].denied_response.headers}
        unknown = stub.Check(check_request("/x", domain="nosuch"), timeout=5)
        assert unknown.status.code != code_pb2.OK and unknown.denied_response.status.code == 403


WRK_COUNT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) statuses = {} end
function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end
function done(summary, latency, requests)
  local total, out = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do out[#out + 1] = string.format('"%d": %d', k, v) end
  local e = summary.errors
  out[#out + 1] = string.format('"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}',
                                e.connect, e.read, e.write, e.timeout)
  io.write("STATUSES {" .. table.concat(out, ", ") .. "}\\n")
end
"""


def test_twenty_reloads_under_wrk_lose_no_request_and_answer_no_5xx(config_dir, echo, tmp_path):
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        pytest.skip("nginx and wrk are needed (apt-get install nginx wrk)")
    folder = tmp_path / "domains"
    shutil.copytree(config_dir, folder)
    side = SideService(str(folder), args=("--reload-interval", "0.05"))
    port = free_port()
    nginx = NginxServer(docs_block("nginx", side=side.http_port, gateway=port, upstream=echo.port), port)
    script = tmp_path / "count.lua"
    script.write_text(WRK_COUNT)
    try:
        wrk = subprocess.Popen(["wrk", "-t1", "-c8", "-d6s", "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/login"],
                               stdout=subprocess.PIPE, text=True)
        path = folder / "api.yaml"
        text = path.read_text()
        for i in range(20):
            time.sleep(0.2)
            limit = 10 + i % 2         # the login limit changes every time: a new rule each reload
            path.write_text(text.replace("requests_per_unit: 10,", f"requests_per_unit: {limit},"))
        out, _ = wrk.communicate(timeout=60)
        statuses = json.loads(out.split("STATUSES ", 1)[1].splitlines()[0])
        errors = statuses.pop("errors")
        assert errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}, errors   # no request lost
        assert set(statuses) <= {"200", "429"}, statuses        # and none answered 5xx
        assert sum(statuses.values()) > 100
        assert side.log().count("configuration reloaded") >= 10
        assert side.proc.poll() is None
    finally:
        nginx.stop()
        side.stop()


def test_a_slow_request_gets_408_and_an_idle_connection_is_closed(monkeypatch, config_dir):
    """The connection's one timer: a request not finished in REQUEST_TIMEOUT is answered 408, a connection idle for
    IDLE_TIMEOUT is closed, and a connection that keeps working is never cut short."""
    import asyncio

    from fastguard.side import http as side_http
    from fastguard.side.gate import Side
    from fastguard.side.rls import RateLimitService

    monkeypatch.setattr(side_http, "REQUEST_TIMEOUT", 0.4)
    monkeypatch.setattr(side_http, "IDLE_TIMEOUT", 0.6)
    domains, _ = Side.load(config_dir)
    side = Side(domains)

    async def scenario():
        server = await side_http.serve_http(side, RateLimitService(side.decider), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        slow_r, slow_w = await asyncio.open_connection("127.0.0.1", port)
        slow_w.write(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")          # never finished
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", port)
        busy_r, busy_w = await asyncio.open_connection("127.0.0.1", port)
        answers = 0
        for _ in range(10):                                                # 1.5 s of work, 0.15 s apart
            busy_w.write(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n")
            await busy_r.readuntil(b"\r\n\r\nOK")
            answers += 1
            await asyncio.sleep(0.15)
        slow = await asyncio.wait_for(slow_r.read(), 2)
        idle = await asyncio.wait_for(idle_r.read(), 2)
        server.close()
        return slow, idle, answers

    slow, idle, answers = asyncio.run(scenario())
    assert slow.startswith(b"HTTP/1.1 408") and idle == b"" and answers == 10


def test_connections_past_the_cap_are_answered_503_and_closed(config_dir):
    """max_connections bounds what one process holds: the connection past it is answered 503 and closed, the open
    ones keep working, and a connection closed makes room for a new one."""
    import asyncio

    from fastguard.side import http as side_http
    from fastguard.side.gate import Side
    from fastguard.side.rls import RateLimitService

    domains, _ = Side.load(config_dir)
    side = Side(domains)
    health = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n"

    async def scenario():
        server = await side_http.serve_http(side, RateLimitService(side.decider), "127.0.0.1", 0, max_connections=2)
        port = server.sockets[0].getsockname()[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        extra_r, extra_w = await asyncio.open_connection("127.0.0.1", port)
        refused = await asyncio.wait_for(extra_r.read(), 5)
        held[0][1].write(health)
        served = await asyncio.wait_for(held[0][0].readuntil(b"\r\n\r\nOK"), 5)
        held[1][1].close()
        await asyncio.sleep(0.2)
        again_r, again_w = await asyncio.open_connection("127.0.0.1", port)
        again_w.write(health)
        admitted = await asyncio.wait_for(again_r.readuntil(b"\r\n\r\nOK"), 5)
        server.close()
        return refused, served, admitted

    refused, served, admitted = asyncio.run(scenario())
    assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused
    assert served.startswith(b"HTTP/1.1 200") and admitted.startswith(b"HTTP/1.1 200")


def test_a_remote_key_set_is_fetched_off_the_loop_within_its_deadline(tmp_path):
    """remote_jwks: the first check of a token waits on the download on a thread (the loop keeps answering), a
    slow IdP answers 401 once http_uri.timeout has passed, never a hang and never an allow."""
    from support.jwks_server import JWKSServer

    idp = JWKSServer()
    idp.keys = JWKS["keys"]
    (tmp_path / "api.yaml").write_text(f"""
domain: api
descriptors:
  - key: sub
    rate_limit: {{unit: minute, requests_per_unit: 100}}
fastguard:
  jwt:
    issuer: https://issuer.example
    audiences: [api]
    remote_jwks: {{http_uri: {{uri: "{idp.url}", cluster: idp, timeout: 1s}}, cache_duration: 300s}}
  rate_limits: [{{actions: [{{jwt_claim: {{claim_name: sub, descriptor_key: sub}}}}]}}]
""")
    side = SideService(str(tmp_path))
    try:
        auth = {"X-Forwarded-Uri": "/", "Authorization": f"Bearer {token('dave')}"}
        idp.delay = 0.5
        assert call(side.http_port, "/auth/api", headers=auth)[0] == 200          # fetched on a thread
        assert call(side.http_port, "/auth/api", headers=auth)[0] == 200          # cached: on the loop
        slow = SideService(str(tmp_path))
        try:
            import threading

            idp.delay = 3.0                                                         # past the 1 s deadline
            started, got = time.monotonic(), []
            waiting = threading.Thread(target=lambda: got.append(call(slow.http_port, "/auth/api", headers=auth)))
            waiting.start()
            time.sleep(0.2)
            assert call(slow.http_port, "/healthcheck")[0] == 200                  # the loop is not waiting
            assert time.monotonic() - started < 0.9
            waiting.join(10)
            assert got[0][0] == 401 and time.monotonic() - started < 2.5
        finally:
            slow.stop()
    finally:
        side.stop()
        idp.stop()
