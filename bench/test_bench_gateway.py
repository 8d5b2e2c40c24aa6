"""HTTP through a real gateway (nginx + lua-nginx-module playing Kong's side: fastguard.testing.gateway), with wrk:
no plugin, nginx's own `limit_req`, a rate limiter in Lua on an nginx shared dict (what Kong's bundled
rate-limiting does with the local policy), and fastguard's three plugins on `fastguard kong-server` and on the stock
kong-pdk server. Per case and connection count: requests/s, p50/p99 latency, and the CPU per request of the plugin
server and of the nginx worker (process CPU time over the run): where a request's time goes; and the plugin server's
resident memory after the run. Then a soak per fastguard plugin: after a warm-up, SOAK seconds of wrk at 64
connections, the plugin server's resident memory read every second (no growth is the budget). Skipped with a reason
when nginx-lua or wrk is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from fastguard.kong import PLUGIN_DIR
from fastguard.kong.client import fastguard_server
from fastguard.testing.gateway import GatewayPlugin, NginxGateway, missing
from fastguard.testing.servers import stock_server
from fastguard.testing.tokens import jwk, sign

from .conftest import QUICK

pytestmark = pytest.mark.skipif(missing() is not None or shutil.which("wrk") is None,
                                reason=missing() or "wrk is not installed (apt-get install wrk)")

JWKS = json.dumps({"keys": [jwk("RSA", kid="rsa1", alg="RS256")]})
TOKEN = sign({"iss": "https://idp.example", "sub": "alice", "exp": int(time.time()) + 3600}, "RS256",
             {"alg": "RS256", "kid": "rsa1"})
SECONDS = int(os.environ.get("FASTGUARD_BENCH_GATEWAY_SECONDS", 3 if QUICK else 8))
WARM_UP = min(SECONDS, 2)
SOAK = int(os.environ.get("FASTGUARD_BENCH_SOAK_SECONDS", 60))
HUGE = 10**9  # limits no request reaches: every answer is the allow path
#: plugin cases: name, config (token in a header: uri_param_names [] — docs/kong.md)
PLUGIN_CASES = {
    "fastguard-rate-limiting": ("fastguard-rate-limiting", {"second": HUGE, "limit_by": "ip"}),
    "fastguard-jwt": ("fastguard-jwt", {"jwks": JWKS, "uri_param_names": []}),
    "fastguard": ("fastguard", {"jwks": JWKS, "second": HUGE, "uri_param_names": []}),
}
#: a fixed window per key in an nginx shared dict, in Lua: Kong's rate-limiting with policy local
LUA_LIMITER = """access_by_lua_block {
                local dict = ngx.shared.fg_lua_bench
                local key = ngx.var.remote_addr .. ":" .. math.floor(ngx.now())
                local n = dict:incr(key, 1, 0, 2)
                if n > 1000000000 then return ngx.exit(429) end
            }"""


@pytest.fixture(scope="module")
def gateway():
    folder = tempfile.mkdtemp(prefix="fg-gateway-bench-")
    ours = {name: fastguard_server(name, folder) for name, _ in PLUGIN_CASES.values()}
    plugin_dir = os.path.join(folder, "plugins")
    shutil.copytree(PLUGIN_DIR, plugin_dir)
    stock = stock_server(plugin_dir, folder, "stock")
    plugins, routes = {}, {}
    for name, config in PLUGIN_CASES.values():
        for kind, server in (("ours", ours[name]), ("stock", stock)):
            entity = f"{kind}-{name}"
            plugins[entity] = GatewayPlugin(name, server.socket, config)
            routes[f"/{entity}"] = [entity]
    gw = NginxGateway(plugins, routes, workers=1,
                      raw_locations={"/none": "", "/limit_req": "limit_req zone=fg_bench burst=100000 nodelay;",
                                     "/lua": LUA_LIMITER},
                      http_extra="limit_req_zone $binary_remote_addr zone=fg_bench:10m rate=100000000r/s; "
                                 "lua_shared_dict fg_lua_bench 10m;")
    gw.servers = {"ours": ours, "stock": stock}
    yield gw
    gw.stop()
    for server in [*ours.values(), stock]:
        server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _cpu_seconds(*pids: int) -> float:
    """User + system CPU time of these processes (seconds)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def _wrk(url: str, connections: int, headers: dict[str, str], seconds: int = SECONDS) -> dict:
    args = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=SECONDS + 60, check=True).stdout
    assert "Non-2xx" not in out and "Socket errors" not in out and " 0 requests in" not in out, out
    return {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
            "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))}


CASES = ["no plugin", "nginx limit_req", "Lua shared-dict limiter",
         *(f"{case} ({kind})" for case in PLUGIN_CASES for kind in ("fastguard kong-server", "stock kong-pdk"))]


#: connection counts: the plugin server must not lose requests/s from the fewest to the most
CONNECTIONS = [8, 32, 64]


@pytest.mark.parametrize("connections", CONNECTIONS)
@pytest.mark.parametrize("case", CASES)
def test_gateway_http(benchmark, gateway, case, connections):
    path = {"no plugin": "/none", "nginx limit_req": "/limit_req", "Lua shared-dict limiter": "/lua"}.get(case)
    server = None
    if path is None:
        name, kind = case.rsplit(" (", 1)
        kind = "ours" if kind.startswith("fastguard") else "stock"
        path = f"/{kind}-{name}"
        server = gateway.servers["ours"][name] if kind == "ours" else gateway.servers["stock"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    _wrk(gateway.url + path, connections, headers, WARM_UP)  # connections, instances, token caches (not counted)
    result: dict = {}

    workers = gateway.worker_pids()

    def run() -> None:
        cpu = _cpu_seconds(server.proc.pid) if server else 0.0
        nginx = _cpu_seconds(*workers)
        result.update(_wrk(gateway.url + path, connections, headers))
        # nginx's side (HTTP, the Lua runloop: msgpack packing, cosockets) next to the plugin server's
        result["gateway_cpu_us_per_request"] = (_cpu_seconds(*workers) - nginx) / result["requests"] * 1e6
        if server:
            result["server_cpu_us_per_request"] = (_cpu_seconds(server.proc.pid) - cpu) / result["requests"] * 1e6
            result["server_rss_mib"] = server.rss() / 2**20

    benchmark.group = "gateway http"
    benchmark.pedantic(run, rounds=1, iterations=1)
    # every request decided by its plugin: an RPC error would have been proxied unchecked (Kong's fail-open)
    assert "fastguard gateway: plugin" not in gateway.error_log(), gateway.error_log()[-2000:]
    benchmark.extra_info.update(ops=result["requests"], contender=case, algorithm="-", case=case,
                                connections=connections, **result)


@pytest.mark.parametrize("plugin", list(PLUGIN_CASES))
def test_gateway_soak(benchmark, gateway, plugin):
    """After a warm-up at 64 connections, SOAK seconds more: the plugin server's resident memory sampled every
    second. Growth is the last sample less the first (a server that keeps a buffer per connection, or per burst,
    grows through a soak however fast the machine is)."""
    server, path = gateway.servers["ours"][plugin], f"/ours-{plugin}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    _wrk(gateway.url + path, 64, headers, max(WARM_UP, 5))
    result: dict = {}

    def run() -> None:
        samples = [server.rss()]
        load = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{SOAK}s", "-H", f"Authorization: Bearer {TOKEN}",
                                 gateway.url + path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while load.poll() is None:
            time.sleep(1)
            samples.append(server.rss())
        out = load.stdout.read()
        assert load.returncode == 0 and "Non-2xx" not in out and "Socket errors" not in out, out
        result.update(requests=int(re.search(r"(\d+) requests in", out).group(1)), soak_s=SOAK,
                      rss_first_mib=samples[0] / 2**20, rss_last_mib=samples[-1] / 2**20,
                      rss_max_mib=max(samples) / 2**20, growth_mib=(samples[-1] - samples[0]) / 2**20)

    benchmark.group = "gateway soak"
    benchmark.pedantic(run, rounds=1, iterations=1)
    assert "fastguard gateway: plugin" not in gateway.error_log(), gateway.error_log()[-2000:]
    benchmark.extra_info.update(ops=result["requests"], contender=plugin, algorithm="-", case=plugin, **result)
