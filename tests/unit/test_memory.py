"""The table stays within max_keys, and within 64 bytes per key for one limit."""

import tracemalloc

import numpy as np
import pytest
from support import PURE_ONLY

import fastguard as fg

pytestmark = pytest.mark.skipif(PURE_ONLY, reason="memory bounds are the compiled table's")


def test_ten_million_distinct_keys_stay_within_max_keys():
    max_keys = 200_000
    tracemalloc.start()
    try:
        lim = fg.RateLimiter("10/minute", algorithm="sliding_window", max_keys=max_keys)
        base = tracemalloc.get_traced_memory()[0]
        now = 864_000.0
        for start in range(0, 10_000_000, 500_000):
            ids = np.arange(start, start + 500_000, dtype=np.uint64)
            assert lim.hit_many(ids, now=now).allowed.all()  # an evicted key never costs a new key its hit
            now += 0.05
        del ids
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    st = lim.stats()
    assert st["keys"] <= max_keys + st["shards"]
    assert st["evictions"] >= 10_000_000 - max_keys - st["shards"]
    assert st["bytes"] <= 64 * max_keys + 64 * 1024
    assert grown <= st["bytes"] + 1024 * 1024   # what tracemalloc saw the core allocate is what it reports


def test_a_spray_of_ten_million_keys_with_bans_stays_within_max_keys():
    max_keys = 100_000
    lim = fg.RateLimiter("1/minute", algorithm="fixed_window", max_keys=max_keys, ban_after=1, ban_for=600)
    now = 864_000.0
    for start in range(0, 10_000_000, 1_000_000):
        ids = np.repeat(np.arange(start // 2, (start + 1_000_000) // 2, dtype=np.uint64), 2)  # the 2nd hit bans
        assert lim.hit_many(ids, now=now).allowed.sum() == 500_000
        now += 0.05
    st = lim.stats()
    assert st["keys"] <= max_keys + st["shards"]
    assert st["bans"] == 5_000_000 and st["entry_bytes"] == 8 * (2 + 2 + 3)  # 10M hits, 5M distinct keys
    assert st["bytes"] <= st["entry_bytes"] * (max_keys + st["shards"]) * 5 // 3 + 64 * 1024  # slots >= 60% full


def test_string_key_spray_is_bounded_too():
    lim = fg.RateLimiter("1/second", algorithm="fixed_window", max_keys=5_000)
    for round_ in range(20):
        keys = [f"attacker-{round_}-{i}" for i in range(10_000)]
        lim.hit_many(keys, now=864_000.0 + round_)
    st = lim.stats()
    assert st["keys"] <= 5_000 + st["shards"] and st["evictions"] >= 195_000 - st["shards"]


@pytest.mark.parametrize("alg", fg.ALGORITHMS)
def test_at_most_64_bytes_per_key_for_one_limit(alg):
    """At every size from 100k to 1.2M keys (growth steps included), not only at a lucky one."""
    lim = fg.RateLimiter("100/minute", algorithm=alg, max_keys=2_000_000)
    worst = 0.0
    for start in range(0, 1_200_000, 20_000):
        lim.hit_many(np.arange(start, start + 20_000, dtype=np.uint64), now=864_000.0)
        st = lim.stats()
        if st["keys"] >= 100_000:
            worst = max(worst, st["bytes"] / st["keys"])
    assert st["keys"] == 1_200_000
    assert worst <= 64, worst
