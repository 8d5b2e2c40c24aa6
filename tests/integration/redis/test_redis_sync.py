"""Local-first cluster mode (sync=seconds) against a real redis-server, with several processes as gateway nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
import redis

import fastguard as fg
from fastguard.redis import RedisStore, SyncTable


def make_store(server, **kw) -> RedisStore:
    return RedisStore.from_url(server.url, prefix=f"s{uuid.uuid4().hex[:12]}", **kw)


def counter_total(store: RedisStore) -> int:
    return sum(int(store.client.get(k)) for k in store.client.scan_iter(match=f"{store.prefix}:*"))


def test_two_nodes_in_one_process_share_counts(redis_server):
    store = make_store(redis_server)
    # sync=60: the threads stay out of the way; each exchange is made here with sync_now().
    with fg.RateLimiter("10/hour", algorithm="fixed_window", store=store, sync=60) as a, \
            fg.RateLimiter("10/hour", algorithm="fixed_window", store=store, sync=60) as b:
        assert isinstance(a._table, SyncTable)
        assert all(a.hit("k").allowed for _ in range(7))
        assert a._table.sync_now()                 # pushes 7
        assert b.hit("k").allowed                  # b has not met "k": its own view says 1 of 10
        assert b._table.sync_now()                 # pushes 1, learns the 7 of the other node
        assert b.stats()["charged"] == 7
        assert [b.hit("k").allowed for _ in range(3)] == [True, True, False]
        assert a.peek("k").remaining == 3          # a does not know yet
        assert b._table.sync_now()                 # pushes b's 2 more
        assert a._table.sync_now()
        assert a.stats()["charged"] == 3
        assert not a.hit("k").allowed
        assert a.peek("k").remaining == 0
    assert counter_total(store) == 10


def test_hit_is_the_local_compiled_method(redis_server):
    with fg.RateLimiter("5/minute", store=make_store(redis_server), sync=0.1) as lim:
        assert lim.hit == lim._table._local.hit  # no Python frame of ours per decision
        if fg.COMPILED:
            assert type(lim.hit).__name__ == "builtin_function_or_method"


def test_close_pushes_what_is_left(redis_server):
    store = make_store(redis_server)
    lim = fg.RateLimiter("100/hour", store=store, sync=60)  # the thread would not run again for a minute
    for i in range(30):
        lim.hit(f"user{i % 3}")
    lim.close()
    assert counter_total(store) == 30
    assert lim.stats()["pending_keys"] == 0


def test_hit_many_counts_are_shared_and_ids_are_refused(redis_server):
    store = make_store(redis_server)
    with fg.RateLimiter("3/hour", algorithm="token_bucket", store=store, sync=30) as lim:
        b = lim.hit_many(["a", "b", "a", "a", "a"], costs=[1, 2, 1, 1, 1])
        assert b.allowed.tolist() == [True, True, True, True, False]
        with pytest.raises(TypeError, match="str/bytes keys"):
            lim.hit_many(np.array([1, 2], dtype=np.uint64))
    assert counter_total(store) == 5


def wait_for(condition, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not within 10 s"
        time.sleep(0.01)


def test_an_outage_loses_no_counts(fresh_redis, caplog):
    store = make_store(fresh_redis, timeout=0.1)
    lim = fg.RateLimiter("1000/hour", store=store, sync=0.05, on_error="local")
    for _ in range(5):
        lim.hit("k")
    wait_for(lambda: lim.stats()["pushed"] == 5)              # the 5 reached Redis (however slow the machine)
    fresh_redis.kill()
    for _ in range(7):
        assert lim.hit("k").allowed  # decisions go on in process, never waiting for Redis
    wait_for(lambda: lim.stats()["redis_up"] is False)       # the exchange found Redis gone
    fresh_redis.start()
    deadline = time.monotonic() + 3
    while lim.stats()["pending_keys"] or not lim.stats()["redis_up"]:
        assert time.monotonic() < deadline, lim.stats()
        time.sleep(0.05)
    lim.close()
    # The restarted server lost the first 5 (no persistence); the 7 admitted during the outage reached it.
    assert counter_total(store) == 7


def test_deny_while_redis_is_down(fresh_redis):
    lim = fg.RateLimiter("1000/hour", store=make_store(fresh_redis, timeout=0.1), sync=0.05, on_error="deny")
    assert lim.hit("k").allowed
    time.sleep(0.15)
    fresh_redis.kill()
    deadline = time.monotonic() + 3
    while lim.hit("k").allowed:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    d = lim.hit("k")
    assert not d.allowed and d.retry_after == 1.0
    assert lim.stats()["fallbacks"] >= 1
    lim.close()


NODE = r"""
import json, sys, time
import fastguard as fg
from fastguard.redis import RedisStore
url, prefix, start, seconds, gap = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
lim = fg.RateLimiter("60/hour", algorithm="token_bucket", store=RedisStore.from_url(url, prefix=prefix), sync=0.1)
time.sleep(max(0.0, start - time.time()))
attempts = admitted = 0
t0 = time.time()
while time.time() - t0 < seconds:
    attempts += 1
    admitted += lim.hit("shared-key").allowed
    time.sleep(gap)
elapsed = time.time() - t0
lag = lim.stats()["sync_lag"]
lim.close()
print(json.dumps({"attempts": attempts, "admitted": admitted, "elapsed": elapsed, "lag": lag}))
"""


def test_three_nodes_overshoot_within_the_stated_bound(redis_server):
    """3 processes, each offering ~50 hits/s for 3 s to one key limited to 60/hour (a token bucket: the count is
    the whole budget here). Alone, each node would admit 60 (180 in all). The docstring's bound:
    admitted <= count + (nodes - 1) * rate * (2 * sync + round trip)."""
    prefix = f"bound{uuid.uuid4().hex[:8]}"
    start = time.time() + 1.5  # all three start together, after their imports
    procs = [subprocess.Popen([sys.executable, "-c", NODE, redis_server.url, prefix, str(start), "3", "0.02"],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    runs = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    admitted = sum(r["admitted"] for r in runs)
    rate = max(r["attempts"] / r["elapsed"] for r in runs)  # offered rate bounds the admitted rate
    rtt = max(r["lag"] for r in runs)
    bound = 60 + (3 - 1) * rate * (2 * 0.1 + rtt)
    print(f"admitted {admitted} of {sum(r['attempts'] for r in runs)} offered; bound {bound:.1f} (rate {rate:.1f}/s)")
    assert 60 <= admitted <= bound
    assert bound < 3 * 60  # the bound says something: without sync the three would admit 180
    client = redis.Redis(port=redis_server.port)
    total = sum(int(client.get(k)) for k in client.scan_iter(match=f"{prefix}:*"))
    assert total == admitted  # every admitted hit reached Redis


def test_two_nodes_share_counts_through_a_redis_cluster(redis_cluster):
    prefix = f"c{uuid.uuid4().hex[:10]}"
    store_a = RedisStore.from_url(redis_cluster.url, prefix=prefix)
    store_b = RedisStore.from_url(redis_cluster.url, prefix=prefix)
    with fg.RateLimiter("6/hour", algorithm="token_bucket", store=store_a, sync=60) as a, \
            fg.RateLimiter("6/hour", algorithm="token_bucket", store=store_b, sync=60) as b:
        keys = [f"user-{i}" for i in range(20)]  # spread over the cluster's slots and masters
        for key in keys:
            assert [a.hit(key).allowed for _ in range(4)] == [True] * 4
        assert a._table.sync_now()
        for key in keys:
            assert b.hit(key).allowed  # b has not met the key yet
        assert b._table.sync_now()
        assert b.stats()["charged"] == 4 * len(keys)
        for key in keys:
            assert [b.hit(key).allowed for _ in range(2)] == [True, False]  # 4 + 1 + 1 = 6
        assert b.stats()["redis_errors"] == 0 and a.stats()["redis_errors"] == 0


def test_local_first_nodes_share_bans_through_redis(redis_server):
    store = make_store(redis_server)
    with fg.RateLimiter("1/minute", store=store, sync=60, ban_after=1, ban_for=120) as a, \
            fg.RateLimiter("1/minute", store=store, sync=60, ban_after=1, ban_for=120) as b:
        assert b.hit("k").allowed                 # b meets the key (one admitted hit of its own)
        assert a.hit("k").allowed and a.hit("k").banned
        assert a._table.sync_now()               # a writes its ban
        assert b._table.sync_now()               # b reads it
        assert 118 < b.banned("k") <= 120 and b.hit("k").banned
