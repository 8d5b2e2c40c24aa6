"""The Kong plugins through real plugin servers: events per second and p50 / p99 per request.

Each fastguard plugin against the floor (a kong-pdk plugin doing one PDK call), on the stock kong-pdk server
(`kong-python-pluginserver -d`, threaded mode) and on `fastguard kong-server`, at concurrency 1 and 4 (that many
Kong-side client threads, each on its own connection). The client is the tests' Kong side (fastguard.kong.client):
its own cost is in every figure alike. Smaller times are better; more events per second are better.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path

import pytest

from fastguard.kong import PLUGIN_DIR
from fastguard.kong.client import KongClient, fastguard_server
from fastguard.testing.servers import stock_server
from fastguard.testing.tokens import jwk, sign

from .conftest import QUICK

FLOOR = str(Path(__file__).with_name("kong_floor.py"))
#: docs/kong.md's worked example of your own plugin (a generator of PDK calls), served with --module
#: examples/kong/api_key_guard.py (installed as fastguard._examples, so the benchmark runs where fastguard is installed)
EXAMPLE = str(resources.files("fastguard._examples").joinpath("kong", "api_key_guard.py"))
EVENTS = 300 if QUICK else 1500
JWKS = json.dumps({"keys": [jwk("RSA", kid="rsa1", alg="RS256")]})
TOKEN = sign({"iss": "https://idp.example", "sub": "alice", "exp": int(time.time()) + 3600}, "RS256",
             {"alg": "RS256", "kid": "rsa1"})
CASES = {
    "floor (1 PDK call)": ("kong-floor", {}, {}),
    "fastguard-rate-limiting": ("fastguard-rate-limiting", {"second": 10**9},
                                {"kong.client.get_consumer": {"id": "c-1"}}),
    "fastguard-rate-limiting, hidden headers": ("fastguard-rate-limiting",
                                                {"second": 10**9, "hide_client_headers": True},
                                                {"kong.client.get_consumer": {"id": "c-1"}}),
    # token in a header, uri_param_names [] (Kong's default ["jwt"] adds a get_query round trip: docs/kong.md)
    "fastguard-jwt": ("fastguard-jwt", {"jwks": JWKS, "uri_param_names": []},
                      {"kong.request.get_headers": {"authorization": f"Bearer {TOKEN}"}}),
    "fastguard": ("fastguard", {"jwks": JWKS, "second": 10**9, "uri_param_names": []},
                  {"kong.request.get_headers": {"authorization": f"Bearer {TOKEN}"}}),
    "your own plugin (--module, generator)": ("api-key-guard", {"jwks": JWKS, "issuer": "https://idp.example",
                                                                "per_minute": 10**9},
                                              {"kong.request.get_headers": {"authorization": f"Bearer {TOKEN}",
                                                                            "x-api-key": "k-1"}}),
}


@pytest.fixture(scope="module")
def servers():
    folder = tempfile.mkdtemp(prefix="fg-kong-bench-")
    plugin_dir = os.path.join(folder, "plugins")
    shutil.copytree(PLUGIN_DIR, plugin_dir)
    shutil.copy(FLOOR, os.path.join(plugin_dir, "kong-floor.py"))
    shutil.copy(EXAMPLE, os.path.join(plugin_dir, "api-key-guard.py"))
    running = {"stock kong-pdk": {}, "fastguard kong-server": {}}
    stock = stock_server(plugin_dir, folder, "stock")
    ours: dict[str, object] = {}  # one fastguard kong-server per plugin, as Kong runs them
    for case, (name, _, _) in CASES.items():
        running["stock kong-pdk"][case] = stock
        if name not in ours:
            extra = {"kong-floor": ("--module", FLOOR), "api-key-guard": ("--module", EXAMPLE)}.get(name, ())
            ours[name] = fastguard_server(name, folder, *extra)
        running["fastguard kong-server"][case] = ours[name]
    yield running
    stopped = set()
    for by_case in running.values():
        for server in by_case.values():
            if id(server) not in stopped:
                stopped.add(id(server))
                server.stop()
    shutil.rmtree(folder, ignore_errors=True)


def _load(socket_path: str, name: str, config: dict, pdk: dict, concurrency: int) -> dict:
    clients = [KongClient(socket_path, connections=1) for _ in range(concurrency)]
    iid = clients[0].start(name, config)
    for _ in range(20):  # warm up (caches, connections)
        clients[0].event(iid, pdk)
    latencies: list[float] = []
    lock = threading.Lock()

    def work(client: KongClient, n: int) -> None:
        mine = []
        for _ in range(n):
            t0 = time.perf_counter()
            outcome = client.event(iid, pdk)
            mine.append(time.perf_counter() - t0)
            assert outcome.status == 200, outcome
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(c, EVENTS // concurrency)) for c in clients]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for c in clients:
        c.close()
    latencies.sort()
    return {"events_per_s": len(latencies) / elapsed, "p50_us": statistics.median(latencies) * 1e6,
            "p99_us": latencies[int(len(latencies) * 0.99) - 1] * 1e6, "events": len(latencies)}


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("server_kind", ["stock kong-pdk", "fastguard kong-server"])
@pytest.mark.parametrize("case", list(CASES))
def test_kong_events(benchmark, servers, server_kind, case, concurrency):
    name, config, pdk = CASES[case]
    server = servers[server_kind][case]
    result = {}

    def run() -> None:
        result.update(_load(server.socket, name, config, pdk, concurrency))

    benchmark.group = "kong events"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(ops=result["events"], contender=case, algorithm=server_kind, server=server_kind,
                                case=case, concurrency=concurrency, **result)
