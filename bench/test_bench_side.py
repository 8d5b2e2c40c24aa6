"""The side service, measured as a gateway uses it.

HTTP: one nginx worker with `auth_request`, wrk at 32 connections, the protected location proxying to an upstream
server block of the same nginx. Cases: no auth; the floor (auth_request to an nginx server block answering 204:
the subrequest's own cost); a minimal asyncio server answering with one RateLimiter.hit (bench/side_minimal.py: a
reference, not a product); `fastguard serve` limiting by client address, verifying a JWT (cached), both; and the
limit with `--workers 2`; and the same three guards as fastguard's Kong plugins on `fastguard kong-server` behind the
same nginx binary with one worker and lua-nginx-module playing Kong's side (fastguard.testing.gateway), where a
Kong user would run them. Per case: requests/s, p50/p99, and the guard's CPU per decision (process CPU time over the
run / requests: the side service, or the plugin server).

gRPC: ShouldRateLimit decisions/s from a grpcio client keeping 64 calls in flight, against `fastguard serve --grpc`
and against the framework's floor (bench/side_floor.py: the same server flavour — grpcio's asyncio server —
answering a constant OK; grpcio's thread-pool server too, for context); p99 at half of fastguard's peak rate.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pytest

pytest.importorskip("httptools")
grpc = pytest.importorskip("grpc")

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: E402

from fastguard.kong.client import fastguard_server  # noqa: E402
from fastguard.testing.gateway import GatewayPlugin, NginxGateway, missing  # noqa: E402
from fastguard.testing.servers import free_port  # noqa: E402
from fastguard.testing.side import NginxServer, SideService, nginx_auth_location  # noqa: E402
from fastguard.testing.tokens import jwk, sign  # noqa: E402

from .conftest import QUICK  # noqa: E402
from .test_bench_gateway import _cpu_seconds, _wrk  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None or shutil.which("wrk") is None,
                                reason="nginx and wrk are needed (apt-get install nginx wrk)")

SECONDS = int(os.environ.get("FASTGUARD_BENCH_GATEWAY_SECONDS", 3 if QUICK else 8))
HUGE = 10**9
JWKS = {"keys": [jwk("P-256", kid="k1", alg="ES256", use="sig")]}
TOKEN = sign({"iss": "https://idp.example", "sub": "alice", "exp": int(time.time()) + 7200}, "ES256",
             header={"alg": "ES256", "kid": "k1"})
DOMAINS = {
    "limit": {"rate_limits": [{"actions": [{"remote_address": {}}]}]},
    "jwt": {"jwt": {"issuer": "https://idp.example", "local_jwks": {"filename": "jwks.json"},
                    "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}]}},
    "both": {"jwt": {"issuer": "https://idp.example", "local_jwks": {"filename": "jwks.json"},
                     "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}]},
             "rate_limits": [{"actions": [{"remote_address": {}}]}]},
}


def _domain_file(name: str, block: dict) -> str:
    return json.dumps({"domain": name, "descriptors": [
        {"key": "remote_address", "rate_limit": {"unit": "second", "requests_per_unit": HUGE}}],
        "fastguard": block})   # JSON is YAML


def _nginx_conf(side_port: int, upstream_port: int, floor_port: int, minimal_port: int, port: int,
                unix_path: str) -> str:
    routes = [(name, "side", name) for name in DOMAINS] + [("limit_unix", "side_unix", "limit")]
    locations = "".join(f"""
    location /{name} {{
        auth_request /_auth_{name};
        auth_request_set $fg_sub $upstream_http_x_jwt_sub;
        proxy_set_header X-Jwt-Sub $fg_sub;
        proxy_set_header Connection "";     # a location's own proxy_set_header: the server's are not inherited
        proxy_pass http://up;
    }}{nginx_auth_location(f"/_auth_{name}", upstream, domain)}""" for name, upstream, domain in routes)
    return f"""
upstream side {{ server 127.0.0.1:{side_port}; keepalive 64; }}
upstream side_unix {{ server unix:{unix_path}; keepalive 64; }}
upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
upstream floor {{ server 127.0.0.1:{floor_port}; keepalive 64; }}
upstream minimal {{ server 127.0.0.1:{minimal_port}; keepalive 64; }}
server {{ listen 127.0.0.1:{upstream_port}; location / {{ return 200 "ok"; }} }}
server {{ listen 127.0.0.1:{floor_port}; location / {{ return 204; }} }}
server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /none {{ proxy_pass http://up; }}
    location /floor {{ auth_request /_floor; proxy_pass http://up; }}
    location /minimal {{ auth_request /_minimal; proxy_pass http://up; }}
    location = /_minimal {{
        internal;
        proxy_pass http://minimal;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location = /_floor {{
        internal;
        proxy_pass http://floor;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
    }}{locations}
    location = /__nginx_up {{ return 200; }}
}}"""


@pytest.fixture(scope="module", params=[1, 2], ids=["1 worker", "2 workers"])
def stack(request):
    folder = tempfile.mkdtemp(prefix="fg-side-bench-")
    with open(os.path.join(folder, "jwks.json"), "w") as fh:
        json.dump(JWKS, fh)
    for name, block in DOMAINS.items():
        with open(os.path.join(folder, f"{name}.yaml"), "w") as fh:
            fh.write(_domain_file(name, block))
    os.chmod(folder, 0o755)                         # nginx's workers reach the Unix socket in it
    workers = request.param
    side = SideService(folder, args=("--workers", str(workers)) if workers > 1 else (), http_port=free_port())
    unix_path = os.path.join(folder, "side.sock")
    side_unix = SideService(folder, unix=unix_path) if workers == 1 else None
    port, minimal_port = free_port(), free_port()
    minimal = subprocess.Popen([sys.executable, "-m", "bench.side_minimal", str(minimal_port)],
                               cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.monotonic() + 30
    while True:                                     # the reference answers before nginx sends it anything
        try:
            socket.create_connection(("127.0.0.1", minimal_port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and minimal.poll() is None, "bench.side_minimal did not start"
            time.sleep(0.05)
    nginx = NginxServer(_nginx_conf(side.http_port, free_port(), free_port(), minimal_port, port, unix_path), port)
    nginx.url = f"http://127.0.0.1:{port}"
    nginx.minimal = minimal
    nginx.side_unix = side_unix
    yield side, nginx, workers
    nginx.stop()
    minimal.terminate()
    minimal.wait(10)
    side.stop()
    if side_unix is not None:
        side_unix.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _side_pids(side: SideService) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(side.proc.pid)], capture_output=True, text=True).stdout
    return [side.proc.pid, *map(int, out.split())]


CASES = ["no auth", "floor (auth_request to nginx 204)", "minimal asyncio + RateLimiter.hit (reference)",
         "fastguard: limit by IP", "fastguard: limit by IP, Unix socket", "fastguard: JWT (cached)",
         "fastguard: JWT + limit"]
PATHS = dict(zip(CASES, ["/none", "/floor", "/minimal", "/limit", "/limit_unix", "/jwt", "/both"], strict=True))


@pytest.mark.parametrize("case", CASES)
def test_side_http(benchmark, stack, case):
    side, nginx, workers = stack
    if workers > 1 and case != "fastguard: limit by IP":
        pytest.skip("--workers 2 is measured on the limit alone")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    url = nginx.url + PATHS[case]
    _wrk(url, 32, headers, 2)                       # connections, caches (not counted)
    pids = [nginx.minimal.pid] if case.startswith("minimal") else \
        [nginx.side_unix.proc.pid] if case.endswith("Unix socket") else _side_pids(side)
    result: dict = {}

    def run() -> None:
        cpu = _cpu_seconds(*pids)
        result.update(_wrk(url, 32, headers, SECONDS))
        if case.startswith(("fastguard", "minimal")):
            result["side_cpu_us_per_decision"] = (_cpu_seconds(*pids) - cpu) / result["requests"] * 1e6

    benchmark.group = "side http"
    benchmark.pedantic(run, rounds=1, iterations=1)
    label = case if workers == 1 else f"{case}, --workers 2"
    benchmark.extra_info.update(ops=result["requests"], contender=label, algorithm="-", case=label, **result)


#: The Kong path's plugins for the same three guards: limit by client address, the JWT (cached), both (the combined
#: plugin limits by the verified sub: the cheapest key it offers after a verified token).
KONG_CASES = {
    "Kong path: limit by IP": ("fastguard-rate-limiting", {"second": HUGE, "limit_by": "ip"}),
    "Kong path: JWT (cached)": ("fastguard-jwt", {"jwks": json.dumps(JWKS), "uri_param_names": []}),
    "Kong path: JWT + limit": ("fastguard", {"jwks": json.dumps(JWKS), "second": HUGE, "uri_param_names": []}),
}


@pytest.fixture(scope="module")
def kong_path():
    if missing() is not None:
        pytest.skip(missing())
    folder = tempfile.mkdtemp(prefix="fg-side-kong-")
    servers = {name: fastguard_server(name, folder) for name, _ in KONG_CASES.values()}
    plugins = {f"e{i}": GatewayPlugin(name, servers[name].socket, cfg)
               for i, (name, cfg) in enumerate(KONG_CASES.values())}
    gw = NginxGateway(plugins, {f"/e{i}": [f"e{i}"] for i in range(len(KONG_CASES))}, workers=1)
    gw.servers = servers
    yield gw
    gw.stop()
    for server in servers.values():
        server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("case", list(KONG_CASES))
def test_side_http_kong_path(benchmark, kong_path, case):
    name, _ = KONG_CASES[case]
    url = f"{kong_path.url}/e{list(KONG_CASES).index(case)}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    _wrk(url, 32, headers, 2)
    pid = kong_path.servers[name].proc.pid
    result: dict = {}

    def run() -> None:
        cpu = _cpu_seconds(pid)
        result.update(_wrk(url, 32, headers, SECONDS))
        result["side_cpu_us_per_decision"] = (_cpu_seconds(pid) - cpu) / result["requests"] * 1e6

    benchmark.group = "side http"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert "fastguard gateway: plugin" not in kong_path.error_log()   # every request decided by its plugin
    benchmark.extra_info.update(ops=result["requests"], contender=case, algorithm="-", case=case, **result)


def _request() -> object:
    return rls_pb2.RateLimitRequest(domain="limit", descriptors=[ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="remote_address", value="10.0.0.1")])])


def _drive(port: int, seconds: float, in_flight: int = 64, rate: float | None = None) -> dict:
    """Calls for `seconds` with `in_flight` outstanding (or paced at `rate`/s): decisions/s and latency."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = rls_pb2_grpc.RateLimitServiceStub(channel)
    req = _request()
    latencies: list[float] = []
    lock = threading.Lock()
    slots = threading.Semaphore(in_flight)
    end = time.perf_counter() + seconds
    count = 0

    def done(fut: object, started: float) -> None:
        with lock:
            latencies.append(time.perf_counter() - started)
        slots.release()

    began = time.perf_counter()
    while (now := time.perf_counter()) < end:
        if rate is not None:
            due = began + count / rate
            if due > now:
                time.sleep(due - now)
        slots.acquire()
        started = time.perf_counter()
        fut = stub.ShouldRateLimit.future(req, timeout=5)
        fut.add_done_callback(lambda f, s=started: done(f, s))
        count += 1
    for _ in range(in_flight):
        slots.acquire()
    elapsed = time.perf_counter() - began
    channel.close()
    latencies.sort()
    return {"decisions_per_s": len(latencies) / elapsed, "requests": len(latencies),
            "p50_ms": statistics.median(latencies) * 1e3, "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3}


@pytest.fixture(scope="module")
def grpc_servers():
    folder = tempfile.mkdtemp(prefix="fg-side-grpc-")
    with open(os.path.join(folder, "limit.yaml"), "w") as fh:
        fh.write(_domain_file("limit", DOMAINS["limit"]))
    side = SideService(folder, grpc=True)
    floors = {}
    for flavour in ("aio", "threads"):
        port = free_port()
        floors[flavour] = (port, subprocess.Popen([sys.executable, "-m", "bench.side_floor", str(port), flavour],
                                                  cwd=os.path.dirname(os.path.dirname(__file__))))
    yield side, floors
    for _, proc in floors.values():
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    side.stop()
    shutil.rmtree(folder, ignore_errors=True)


GRPC_CASES = ["grpc floor (constant OK)", "grpc floor, thread-pool server (context)", "fastguard serve --grpc",
              "fastguard at half its peak"]


@pytest.mark.parametrize("case", GRPC_CASES)
def test_side_grpc(benchmark, grpc_servers, case):
    side, floors = grpc_servers
    if case.startswith("grpc floor"):
        port, proc = floors["threads" if "thread-pool" in case else "aio"]
        pids = [proc.pid]
    else:
        port, pids = side.grpc_port, [side.proc.pid]
    _drive(port, 1)
    result: dict = {}

    def run() -> None:
        rate = None
        if case == "fastguard at half its peak":
            rate = _drive(port, 2)["decisions_per_s"] / 2
        cpu = _cpu_seconds(*pids)
        result.update(_drive(port, SECONDS, rate=rate))
        result["server_cpu_us_per_decision"] = (_cpu_seconds(*pids) - cpu) / result["requests"] * 1e6

    benchmark.group = "side grpc"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(ops=result["requests"], contender=case, algorithm="-", case=case, **result)
