"""fastguard.metrics: exact counts in the Prometheus text format, parsed by prometheus_client's own parser."""

from __future__ import annotations

import gc
import json
import time
import urllib.request
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import fastguard as fg
import fastguard.metrics as fm
from fastguard.redis import RedisStore
from fastguard.testing.tokens import SECRET, sign


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def scrape(registry: CollectorRegistry) -> dict:
    return samples(generate_latest(registry).decode())


@pytest.fixture
def registry():
    reg = CollectorRegistry()
    fm._register(reg)
    return reg


def test_limiter_counts_are_exact(registry, make):
    lim = make("3/minute", algorithm="sliding_window", max_keys=100)
    fm.track(lim, "api")
    for i in range(5):
        lim.hit("a", now=60.0 + i)
    lim.hit("b", now=61.0)
    lim.hit_many(["c", "c", "c", "c"], now=62.0)
    got = scrape(registry)
    assert got[("fastguard_ratelimit_decisions_total", (("limiter", "api"), ("outcome", "allowed")))] == 3 + 1 + 3
    assert got[("fastguard_ratelimit_decisions_total", (("limiter", "api"), ("outcome", "denied")))] == 2 + 1
    assert got[("fastguard_ratelimit_keys", (("limiter", "api"),))] == 3
    assert got[("fastguard_ratelimit_capacity", (("limiter", "api"),))] == 100
    assert got[("fastguard_ratelimit_evictions_total", (("limiter", "api"),))] == 0
    fm.untrack("api")


def test_verifier_counts_are_exact(registry):
    v = fg.JWTVerifier(fg.KeySet.from_secret(SECRET), required_claims=())
    fm.track(v, "idp")
    now = int(time.time())
    good = sign({"sub": "a", "exp": now + 60})
    v.verify(good)
    v.verify(good)                    # a cache hit
    expired = sign({"sub": "a", "exp": now - 60})
    for _ in range(3):                # verified once, then answered by the failure cache
        with pytest.raises(fg.ExpiredToken):
            v.verify(expired)
    with pytest.raises(fg.InvalidSignature):
        v.verify(good[:-4] + "AAAA")
    got = scrape(registry)
    label = (("outcome", "valid"), ("verifier", "idp"))
    assert got[("fastguard_jwt_verifications_total", label)] == 2
    assert got[("fastguard_jwt_verifications_total", (("outcome", "expired"), ("verifier", "idp")))] == 3
    assert got[("fastguard_jwt_verifications_total", (("outcome", "signature"), ("verifier", "idp")))] == 1
    assert got[("fastguard_jwt_cache_requests_total", (("cache", "tokens"), ("result", "hit"),
                                                       ("verifier", "idp")))] == 1
    assert got[("fastguard_jwt_cache_requests_total", (("cache", "failures"), ("result", "hit"),
                                                       ("verifier", "idp")))] == 2
    assert got[("fastguard_jwt_cache_entries", (("cache", "tokens"), ("verifier", "idp")))] == 1
    fm.untrack("idp")


def test_redis_faults_are_counted(registry):
    from fastguard.testing.servers import free_port

    lim = fg.RateLimiter("5/minute", store=RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0"),
                         on_error="deny")
    fm.track(lim, "shared")
    for _ in range(4):
        lim.hit("k")
    got = scrape(registry)
    assert got[("fastguard_redis_up", (("limiter", "shared"),))] == 0
    assert got[("fastguard_redis_fallbacks_total", (("limiter", "shared"),))] == 4
    assert got[("fastguard_redis_errors_total", (("limiter", "shared"),))] >= 1
    assert got[("fastguard_ratelimit_decisions_total", (("limiter", "shared"), ("outcome", "denied")))] == 4
    fm.untrack("shared")


def test_tracked_objects_are_held_weakly_and_checked(registry):
    lim = fg.RateLimiter("1/s")
    fm.track(lim, "temporary")
    assert ("fastguard_ratelimit_keys", (("limiter", "temporary"),)) in scrape(registry)
    del lim
    gc.collect()
    assert ("fastguard_ratelimit_keys", (("limiter", "temporary"),)) not in scrape(registry)
    with pytest.raises(TypeError):
        fm.track(object(), "x")
    with pytest.raises(ValueError):
        fm.track(fg.RateLimiter("1/s"), "")


def test_serve_exposes_metrics_over_http():
    from fastguard.testing.servers import free_port

    port = free_port()
    registry = CollectorRegistry()
    lim = fm.track(fg.RateLimiter("2/minute"), "http-api", registry=registry)
    lim.hit("x")
    server = fm.serve(port, registry=registry)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    got = samples(text)
    assert got[("fastguard_ratelimit_decisions_total", (("limiter", "http-api"), ("outcome", "allowed")))] == 1
    fm.untrack("http-api")


def test_kong_server_serves_event_and_limiter_metrics(tmp_path):
    from fastguard.kong.client import fastguard_server
    from fastguard.testing.servers import free_port

    port = free_port()
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--metrics-port", str(port))
    try:
        client = server.client()
        pid = str(uuid.uuid4())
        iid = client.start("fastguard-rate-limiting", {"minute": 3}, plugin_id=pid)
        statuses = [client.event(iid, {"kong.client.get_consumer": {"id": "c"}}).status for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        client.close()
    finally:
        server.stop()
    got = samples(text)
    plugin = (("plugin", "fastguard-rate-limiting"),)
    assert got[("fastguard_kong_events_total", (*plugin, ("status", "200")))] == 3
    assert got[("fastguard_kong_events_total", (*plugin, ("status", "429")))] == 2
    assert got[("fastguard_kong_event_seconds_count", plugin)] == 5
    label = (("limiter", f"fastguard-rate-limiting:{pid}"), ("outcome", "denied"))
    assert got[("fastguard_ratelimit_decisions_total", label)] == 2
    json.dumps(sorted(map(str, got)))  # every sample parsed


def test_redis_call_latency_is_a_histogram(registry, redis_server):
    lim = fg.RateLimiter("100/minute", store=RedisStore.from_url(redis_server.url, prefix=f"m{uuid.uuid4().hex}"))
    fm.track(lim, "timed")
    for _ in range(7):
        lim.hit("k")
    lim.hit_many([f"u{i}" for i in range(600)])  # 3 script calls
    got = scrape(registry)
    assert got[("fastguard_redis_call_seconds_count", (("limiter", "timed"),))] == 7 + 3
    assert got[("fastguard_redis_call_seconds_bucket", (("le", "+Inf"), ("limiter", "timed")))] == 10
    assert 0 < got[("fastguard_redis_call_seconds_sum", (("limiter", "timed"),))] < 10
    fm.untrack("timed")


def test_a_new_registry_gets_the_collector_even_where_an_old_one_lived():
    """Regression: registries were remembered by id(), which a new registry can reuse once the old one is gone;
    the new one then never got the collector and scraped nothing."""
    lim = fm.track(fg.RateLimiter("1/s"), "reused")
    for _ in range(50):
        reg = CollectorRegistry()
        fm._register(reg)
        assert ("fastguard_ratelimit_keys", (("limiter", "reused"),)) in scrape(reg)
        del reg
        gc.collect()
    fm.untrack("reused")
    del lim


def test_idle_connections_to_metrics_hold_no_thread_of_the_plugin_server(tmp_path):
    """Each connection to prometheus_client's server got a thread of its own, kept while the connection stayed
    open and silent: 200 idle connections to an exposed port were 200 threads of the plugin server (and a way to
    take every thread it may start). Now at most a few scrapes at once, each timed out; the rest refused."""
    import socket as sockets

    from fastguard.kong.client import fastguard_server
    from fastguard.testing.servers import free_port

    port = free_port()
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--metrics-port", str(port))
    idle = []
    try:
        client = server.client()
        threads_before = client.status()["Threads"]
        for _ in range(200):
            idle.append(sockets.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)
        assert client.status()["Threads"] <= threads_before + 8      # was one per connection: 200 more
        for s in idle:
            s.close()
        idle.clear()
        deadline = time.monotonic() + 15                # the idle ones time out or are refused: scrapes work
        while True:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert "fastguard_kong" in text or "python_info" in text
        client.close()
    finally:
        for s in idle:
            s.close()
        server.stop()
