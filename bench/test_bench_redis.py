"""Cluster mode on a real redis-server (started here on a free port): fastguard against a raw redis-py EVALSHA
round trip and against `limits` with its RedisStorage; pipelined `hit_many`; local-first `sync=0.1`.

Figures are per decision (µs for round trips, ns for local-first). Smaller is better, except decisions/s.
"""

from __future__ import annotations

import shutil
import time

import pytest
import redis
from limits import parse as limits_parse
from limits import storage as limits_storage
from limits import strategies as limits_strategies

import fastguard as fg
from fastguard.redis import RedisStore
from fastguard.redis.store import SCRIPT
from fastguard.testing.servers import RedisProcess

from .conftest import alternate, rounds

# Redis is started by the benchmark on a free port: where there is no redis-server (a Kong image), these are skipped
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed (the Redis benchmarks start their own)")

OPS = 1_000
FAST = "100000/minute"          # the script's fast path (whole-ms periods up to 366 days, counts up to 10^9)
EXACT = "10000000000/minute"    # a count past 10^9: the exact bignum path
KEYS = [f"consumer-{i}" for i in range(1000)]  # rotating keys: no limit is exhausted during a run


@pytest.fixture(scope="module")
def server():
    proc = RedisProcess()
    yield proc
    proc.stop()


def _per_op(benchmark, fn, ops=OPS, **info):
    benchmark.extra_info.update(ops=ops, **info)
    benchmark.pedantic(fn, rounds=rounds(15), iterations=1, warmup_rounds=2)


def _loop(hit):
    keys = KEYS

    def run():
        for i in range(OPS):
            hit(keys[i % 1000])

    return run


@pytest.mark.parametrize("alg", ["sliding_window", "token_bucket"])
def test_strict_fastguard(benchmark, server, alg):
    lim = fg.RateLimiter(FAST, algorithm=alg, store=RedisStore.from_url(server.url, prefix="bench"))
    benchmark.group = "redis hit"
    _per_op(benchmark, _loop(lim.hit), contender="fastguard strict", algorithm=alg)
    assert lim.stats()["redis_errors"] == 0


@pytest.mark.parametrize("limit", ["100/minute", "5000/hour", "1000/day", "1000000/hour", "10000000/minute"])
def test_strict_by_limit(benchmark, server, limit):
    """The limits real APIs publish: each is one script call on its fast path (see
    fastguard.redis.strict.fast_arithmetic). Every key has hits in the window before, so each decision weighs
    them (the sliding window's widest arithmetic: count x ns products past 2^53)."""
    lim = fg.RateLimiter(limit, algorithm="sliding_window", store=RedisStore.from_url(server.url, prefix="bench"))
    seconds, micros = redis.Redis(port=server.port).time()
    for key in KEYS:  # the previous window, on the server's clock as the benchmark's calls use it
        lim.hit(key, now=seconds + micros / 1e6 - lim.limits[0].period)
    benchmark.group = "redis hit by limit"
    _per_op(benchmark, _loop(lim.hit), contender=f"fastguard strict {limit}", algorithm="sliding_window",
            fast_path=lim._table.fast)
    assert lim.stats()["redis_errors"] == 0


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    from fastguard.testing.tls import make_certificates

    files = make_certificates(str(tmp_path_factory.mktemp("tls")))
    proc = RedisProcess(tls=files)
    proc.tls_url = f"rediss://127.0.0.1:{proc.tls_port}/0?ssl_ca_certs={files.ca}"
    yield proc
    proc.stop()


def test_strict_fastguard_tls(benchmark, tls_server):
    lim = fg.RateLimiter(FAST, algorithm="sliding_window", store=RedisStore.from_url(tls_server.tls_url,
                                                                                       prefix="bench"))
    benchmark.group = "redis hit over TLS"
    _per_op(benchmark, _loop(lim.hit), contender="fastguard strict, TLS", algorithm="sliding_window")
    assert lim.stats()["redis_errors"] == 0 and lim.stats()["client"] == "fastguard wire"


def test_raw_evalsha_floor_tls(benchmark, tls_server):
    benchmark.group = "redis hit over TLS"
    _evalsha_floor(benchmark, redis.Redis.from_url(tls_server.tls_url), "floor: raw EVALSHA 'return 1', TLS")


def test_strict_fastguard_exact_path(benchmark, server):
    lim = fg.RateLimiter(EXACT, algorithm="sliding_window", store=RedisStore.from_url(server.url, prefix="bench"))
    benchmark.group = "redis hit"
    _per_op(benchmark, _loop(lim.hit), contender="fastguard strict, exact path", algorithm="sliding_window")


def test_raw_evalsha_same_script(benchmark, server):
    """redis-py calling fastguard's own script with the arguments fastguard sends: the cost of the round trip
    and the script, without fastguard's Python around it."""
    store = RedisStore.from_url(server.url, prefix="bench")
    table = fg.RateLimiter(FAST, algorithm="sliding_window", store=store)._table
    client = redis.Redis(port=server.port)
    client.script_load(SCRIPT)
    sha = store.sha
    calls = [(table.name(k), table._args(None, b"1", [1])) for k in KEYS]

    def run():
        for i in range(OPS):
            name, args = calls[i % 1000]
            client.evalsha(sha, 1, name, *args)

    benchmark.group = "redis hit"
    _per_op(benchmark, run, contender="raw EVALSHA, same script", algorithm="sliding_window")


def _floor_loop(client):
    sha = client.script_load("return 1")

    def run():
        for i in range(OPS):
            client.evalsha(sha, 1, KEYS[i % 1000])

    return run


def test_pair_strict_vs_evalsha(benchmark, server):
    """The strict-mode ratio budget (≤ 1.1× a raw EVALSHA), both measured in alternation."""
    lim = fg.RateLimiter(FAST, algorithm="sliding_window", store=RedisStore.from_url(server.url, prefix="bench"))
    floor = _floor_loop(redis.Redis(port=server.port))
    alternate(benchmark, "redis strict", {"fastguard": _loop(lim.hit), "floor": floor}, OPS, rounds(15))


def test_pair_strict_vs_evalsha_tls(benchmark, tls_server):
    lim = fg.RateLimiter(FAST, algorithm="sliding_window", store=RedisStore.from_url(tls_server.tls_url,
                                                                                       prefix="bench"))
    alternate(benchmark, "redis strict tls", {"fastguard": _loop(lim.hit),
                                              "floor": _floor_loop(redis.Redis.from_url(tls_server.tls_url))},
              OPS, rounds(15))


def _evalsha_floor(benchmark, client, contender):
    """The floor: one redis-py EVALSHA round trip of a script that returns at once."""
    sha = client.script_load("return 1")

    def run():
        for i in range(OPS):
            client.evalsha(sha, 1, KEYS[i % 1000])

    _per_op(benchmark, run, contender=contender, algorithm="-")


def test_raw_evalsha_floor(benchmark, server):
    benchmark.group = "redis hit"
    _evalsha_floor(benchmark, redis.Redis(port=server.port), "floor: raw EVALSHA 'return 1'")


@pytest.mark.parametrize("alg", ["fixed_window", "sliding_window"])
def test_limits_redis(benchmark, server, alg):
    store = limits_storage.RedisStorage(f"redis://127.0.0.1:{server.port}")
    cls = {"fixed_window": limits_strategies.FixedWindowRateLimiter,
           "sliding_window": limits_strategies.SlidingWindowCounterRateLimiter}[alg]
    limiter, item = cls(store), limits_parse(FAST)
    benchmark.group = "redis hit"
    _per_op(benchmark, _loop(lambda key: limiter.hit(item, key)), contender="limits RedisStorage", algorithm=alg)


@pytest.mark.parametrize("alg", ["sliding_window", "token_bucket"])
def test_pipelined_hit_many(benchmark, server, alg):
    lim = fg.RateLimiter(FAST, algorithm=alg, store=RedisStore.from_url(server.url, prefix="bench"))
    keys = [f"batch-{i}" for i in range(10_000)]
    benchmark.group = "redis hit_many"
    benchmark.extra_info.update(ops=len(keys), contender="fastguard strict hit_many", algorithm=alg)
    benchmark.pedantic(lambda: lim.hit_many(keys), rounds=rounds(8), iterations=1, warmup_rounds=1)
    assert lim.stats()["redis_errors"] == 0


@pytest.mark.parametrize("mode", ["in process", "sync=0.1"])
def test_local_first(benchmark, server, mode):
    store = RedisStore.from_url(server.url, prefix="bench") if mode != "in process" else None
    lim = fg.RateLimiter("1000000000/minute", algorithm="sliding_window", store=store,
                         sync=0.1 if store else None)
    hit = lim.hit
    ops = 100_000
    keys = KEYS

    def run():
        for i in range(ops):
            hit(keys[i % 1000])

    benchmark.group = "local-first"
    benchmark.extra_info.update(ops=ops, contender=f"fastguard {mode}", algorithm="sliding_window")
    benchmark.pedantic(run, rounds=rounds(20), iterations=1, warmup_rounds=2)
    if store:
        time.sleep(0.25)
        assert lim.stats()["syncs"] > 0 and lim.stats()["redis_errors"] == 0
        lim.close()



def test_local_first_under_a_key_spray(benchmark, server):
    """300,000 distinct callers through a local-first limiter holding 10,000 keys: the bookkeeping of what was shared
    and each exchange stay within max_keys, so the exchange (sync lag) stays well under the sync interval."""
    import threading

    store = RedisStore.from_url(server.url, prefix="bench-spray")
    lim = fg.RateLimiter("10/minute", algorithm="sliding_window", store=store, sync=0.2, max_keys=10_000)
    hit = lim.hit
    keys = [f"spray-{i}" for i in range(300_000)]
    lags: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            lags.append(lim.stats()["sync_lag"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    def run():
        for key in keys:
            hit(key)

    benchmark.group = "local-first key spray"
    benchmark.pedantic(run, rounds=rounds(3), iterations=1, warmup_rounds=0)
    time.sleep(0.5)
    done.set()
    watcher.join()
    st = lim.stats()
    benchmark.extra_info.update(ops=len(keys), contender="fastguard sync=0.2, 300k callers, max_keys 10k",
                                algorithm="sliding_window", max_sync_lag_s=max(lags, default=0.0),
                                shared_keys=st["shared_keys"], sync_interval_s=0.2)
    assert st["shared_keys"] <= 10_000 and st["redis_errors"] == 0 and st["redis_up"]
    lim.close()


@pytest.mark.parametrize("mode", ["in process", "strict Redis"])
def test_banned_key(benchmark, server, mode):
    """A banned key: in process, and in cluster mode where the ban lives in Redis but is answered locally."""
    store = RedisStore.from_url(server.url, prefix="bench-ban") if mode != "in process" else None
    lim = fg.RateLimiter("1/minute", algorithm="sliding_window", store=store, ban_after=1, ban_for=600)
    lim.hit("mallory")
    assert lim.hit("mallory").banned
    hit = lim.hit
    ops = 20_000

    def run():
        for _ in range(ops):
            hit("mallory")

    benchmark.group = "banned key"
    benchmark.extra_info.update(ops=ops, contender=f"fastguard {mode}", algorithm="sliding_window")
    benchmark.pedantic(run, rounds=rounds(10), iterations=1, warmup_rounds=1)
    assert lim.hit("mallory").banned
