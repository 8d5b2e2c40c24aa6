"""In-process rate limiting: fastguard against `limits` (MemoryStorage) and a pure-Python dict token bucket.

Every figure is the mean time of one decision inside a loop of OPS calls (the loop's own cost included for all
contenders alike). Smaller is better. Budgets (docs/design.md) are checked by bench/report.py from these results.
"""

from __future__ import annotations

import contextlib
import threading
import time
import tracemalloc

import numpy as np
import pytest
from limits import parse as limits_parse
from limits import storage as limits_storage
from limits import strategies as limits_strategies

import fastguard as fg

from .competitors import DictTokenBucket
from .conftest import alternate, rounds

OPS = 10_000
N_KEYS = 1_000_000
HUGE = "10000000/minute"  # every hit of a run admitted: the path users care about
KEYS = [f"consumer-{i}" for i in range(N_KEYS)]


def _per_op(benchmark, fn, ops=OPS, **info):
    benchmark.extra_info.update(ops=ops, **info)
    benchmark.pedantic(fn, rounds=rounds(30), iterations=1, warmup_rounds=2)


def _limits(strategy: str):
    store = limits_storage.MemoryStorage()
    cls = {"fixed_window": limits_strategies.FixedWindowRateLimiter,
           "sliding_window": limits_strategies.SlidingWindowCounterRateLimiter}[strategy]
    limiter, item = cls(store), limits_parse(HUGE)
    return lambda key: limiter.hit(item, key)


# -- hot key -----------------------------------------------------------------------------------------------------

def _hot(hit):
    """A loop of OPS hits on one key."""
    def run():
        for _ in range(OPS):
            hit("consumer-42")
    return run


@pytest.mark.parametrize("alg", fg.ALGORITHMS)
def test_hot_fastguard(benchmark, alg):
    benchmark.group = "hot key"
    _per_op(benchmark, _hot(fg.RateLimiter(HUGE, algorithm=alg).hit), contender="fastguard", algorithm=alg)


@pytest.mark.parametrize("alg", ["fixed_window", "sliding_window"])
def test_hot_limits(benchmark, alg):
    benchmark.group = "hot key"
    _per_op(benchmark, _hot(_limits(alg)), contender="limits", algorithm=alg)


@pytest.mark.parametrize("alg", ["fixed_window", "sliding_window"])
def test_pair_hot_vs_limits(benchmark, alg):
    """The hot-key ratio budget (≥ 25× `limits`), both measured in alternation."""
    ours, theirs = fg.RateLimiter(HUGE, algorithm=alg).hit, _limits(alg)

    alternate(benchmark, f"hot {alg}", {"fastguard": _hot(ours), "limits": _hot(theirs)}, OPS, rounds(30))


@contextlib.contextmanager
def _tracked(name: str):
    """A fixed-window limiter's hit, exported by fastguard.metrics and scraped every 0.1 s while in use."""
    from prometheus_client import CollectorRegistry, generate_latest

    import fastguard.metrics as fm

    registry = CollectorRegistry()
    lim = fm.track(fg.RateLimiter(HUGE, algorithm="fixed_window"), name, registry=registry)
    stop = threading.Event()

    def scrape() -> None:
        while not stop.wait(0.1):
            generate_latest(registry)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        yield lim.hit
    finally:
        stop.set()
        scraper.join()
        fm.untrack(name)


def test_hot_fastguard_tracked(benchmark):
    """The same hot hit with the limiter exported by fastguard.metrics and scraped every 0.1 s meanwhile."""
    benchmark.group = "hot key"
    with _tracked("bench") as hit:
        _per_op(benchmark, _hot(hit), contender="fastguard, metrics on", algorithm="fixed_window")


def test_pair_hot_metrics(benchmark):
    """The metrics budget (on ≤ 1.05× off): a tracked limiter, scraped every 0.1 s, next to an untracked one."""
    plain = fg.RateLimiter(HUGE, algorithm="fixed_window").hit
    with _tracked("bench-pair") as tracked:
        alternate(benchmark, "hot metrics", {"off": _hot(plain), "on": _hot(tracked)}, OPS, rounds(30))


def test_hot_pyrate(benchmark):
    """pyrate-limiter's in-memory bucket (a sliding log), non-blocking."""
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    limiter = Limiter(InMemoryBucket([Rate(10**9, Duration.MINUTE)]))

    def run():
        for _ in range(OPS):
            limiter.try_acquire("consumer-42", blocking=False)

    benchmark.group = "hot key"
    _per_op(benchmark, run, contender="pyrate-limiter", algorithm="sliding_window")


def test_hot_dict_bucket(benchmark):
    hit = DictTokenBucket(10**9, 60).hit

    def run():
        for _ in range(OPS):
            hit("consumer-42")

    benchmark.group = "hot key"
    _per_op(benchmark, run, contender="dict token bucket", algorithm="token_bucket")


def test_python_call_floor(benchmark):
    """A call of a C function with one argument: what no Python-callable limiter can beat."""
    nop = id

    def run():
        for _ in range(OPS):
            nop("consumer-42")

    benchmark.group = "hot key"
    _per_op(benchmark, run, contender="floor: id(key)", algorithm="-")


# -- 1M distinct keys ---------------------------------------------------------------------------------------------

def _over_keys(hit, benchmark, **info):
    for key in KEYS:  # every key is in the table before timing
        hit(key)
    order = np.random.default_rng(7).permutation(N_KEYS)
    chunks = [[KEYS[i] for i in order[s:s + OPS]] for s in range(0, N_KEYS, OPS)]
    state = {"n": 0}

    def run():
        chunk = chunks[state["n"] % len(chunks)]
        state["n"] += 1
        for key in chunk:
            hit(key)

    benchmark.group = "1M keys"
    _per_op(benchmark, run, **info)


@pytest.mark.parametrize("alg", fg.ALGORITHMS)
def test_million_fastguard(benchmark, alg):
    _over_keys(fg.RateLimiter(HUGE, algorithm=alg, max_keys=2 * N_KEYS).hit, benchmark,
               contender="fastguard", algorithm=alg)


@pytest.mark.parametrize("alg", ["fixed_window", "sliding_window"])
def test_million_limits(benchmark, alg):
    _over_keys(_limits(alg), benchmark, contender="limits", algorithm=alg)


def test_million_dict_bucket(benchmark):
    _over_keys(DictTokenBucket(10**9, 60).hit, benchmark, contender="dict token bucket", algorithm="token_bucket")


# -- hit_many ------------------------------------------------------------------------------------------------------

BATCH = 100_000


def _batches(n_batches=10):
    rng = np.random.default_rng(11)
    return [rng.integers(0, N_KEYS, BATCH, dtype=np.uint64) for _ in range(n_batches)]


@pytest.mark.parametrize("alg", ["sliding_window", "token_bucket"])
def test_hit_many_fastguard(benchmark, alg):
    lim = fg.RateLimiter(HUGE, algorithm=alg, max_keys=2 * N_KEYS)
    lim.hit_many(np.arange(N_KEYS, dtype=np.uint64))
    batches = _batches()
    state = {"n": 0}

    def run():
        lim.hit_many(batches[state["n"] % len(batches)])
        state["n"] += 1

    benchmark.group = "hit_many (numpy ids, 1M keys)"
    _per_op(benchmark, run, ops=BATCH, contender="fastguard", algorithm=alg)


def test_hit_many_two_threads(benchmark, record_property):
    """Throughput of two threads calling hit_many at once, against one thread, same table, same run."""
    lim = fg.RateLimiter(HUGE, algorithm="sliding_window", max_keys=2 * N_KEYS)
    lim.hit_many(np.arange(N_KEYS, dtype=np.uint64))
    batches = _batches(20)

    def work(share):
        for b in share:
            lim.hit_many(b)

    def timed(n_threads):
        shares = [batches[i::n_threads] for i in range(n_threads)]
        threads = [threading.Thread(target=work, args=(s,)) for s in shares]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - t0

    one = min(timed(1) for _ in range(5))
    two = min(timed(2) for _ in range(5))
    benchmark.extra_info.update(contender="fastguard", algorithm="sliding_window", one_thread_s=one,
                                two_threads_s=two, speedup=one / two, ops=len(batches) * BATCH)
    benchmark.group = "hit_many two threads"
    benchmark.pedantic(lambda: timed(2), rounds=3, iterations=1)


# -- memory --------------------------------------------------------------------------------------------------------

def _bytes_per_key(make_and_fill, n):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        keep = make_and_fill(n)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    del keep
    return grown / n


@pytest.mark.parametrize("contender", ["fastguard", "limits", "dict token bucket"])
def test_bytes_per_key(benchmark, contender):
    n = 200_000
    keys = KEYS[:n]  # key strings exist already: only what the limiter adds is counted

    def fill(count):
        if contender == "fastguard":
            lim = fg.RateLimiter("100/minute", algorithm="sliding_window", max_keys=count)
            for k in keys:
                lim.hit(k)
            return lim
        if contender == "limits":
            hit = _limits("sliding_window")
        else:
            hit = DictTokenBucket(100, 60).hit
        for k in keys:
            hit(k)
        return hit

    per_key = _bytes_per_key(fill, n)
    benchmark.extra_info.update(contender=contender, algorithm="sliding_window", bytes_per_key=per_key)
    benchmark.group = "bytes per key"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)


def test_million_floor_dict_get(benchmark):
    """A plain dict lookup of the same keys in the same order: the memory-latency floor of any per-key state."""
    table = dict.fromkeys(KEYS, 1)
    _over_keys(table.get, benchmark, contender="floor: dict.get(key)", algorithm="-")
