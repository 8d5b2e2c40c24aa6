"""Redis mode under hostile input: keys that break hash tags, replies that are not the script's, one key's bad
data, partial exchange failures and key sprays in local-first mode. Real redis-servers throughout; the garbage
comes from a relay in front of a real server (tests/hostile_proxy.py)."""

from __future__ import annotations

import logging
import threading
import time
import uuid

import pytest
from redis.crc import key_slot
from support.hostile_proxy import HostileProxy

import fastguard as fg
from fastguard.redis import RedisStore
from fastguard.redis.store import tagged

HOSTILE_KEYS = ["", "}", "}x", "{", "{}", "a}b", "}{", "{a}", "x{y}z", "~ban", "\x00", "a" * 300, "é}"]


def unique(prefix: str = "h") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# -- 2. every key maps to one slot with its companions ---------------------------------------------------------------
@pytest.mark.parametrize("key", HOSTILE_KEYS + [b"\xff}", b""])
def test_a_key_and_its_ban_and_deny_companions_share_one_slot(key):
    name = b"fg:v1:f:3/60000000000:" + tagged(key)
    assert len({key_slot(name), key_slot(name + b"~ban"), key_slot(name + b"~deny")}) == 1
    sync_base = b"fg:v1:sync:3/60:" + tagged(key) + b":"
    assert key_slot(sync_base + b"123") == key_slot(sync_base[:-1] + b"~ban")


def test_names_of_different_keys_never_collide():
    keys = [*HOSTILE_KEYS, "#" + tagged("")[2:18].decode(), "#x", "x}", "}:", "}:x", ":"]
    names = set()
    for k in keys:
        for suffix in (b"", b"~ban", b"~deny", b":17"):
            names.add(tagged(k) + suffix)
    assert len(names) == 4 * len(set(keys))


@pytest.mark.parametrize("key", ["", "}", "}x", "{}", "a}b"])
def test_keys_with_an_empty_hash_tag_are_limited_on_a_cluster_with_bans(redis_cluster, key, caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    store = RedisStore.from_url(redis_cluster.url, prefix=unique())
    lim = fg.RateLimiter("3/minute", algorithm="fixed_window", store=store, on_error="allow",
                         ban_after=5, ban_for=60)
    got = [lim.hit(key).allowed for _ in range(6)]
    assert got == [True, True, True, False, False, False]
    st = lim.stats()
    assert st["redis_up"] is True and st["redis_errors"] == 0, st
    # Everyone else is still decided strictly by Redis.
    other = unique("k")
    assert [lim.hit(other).allowed for _ in range(4)] == [True, True, True, False]
    lim.close()


def test_one_keys_bad_data_fails_that_decision_only(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    store = RedisStore.from_url(redis_server.url, prefix=unique())
    lim = fg.RateLimiter("2/minute", algorithm="sliding_window", store=store, on_error="allow", ban_after=3,
                         ban_for=60)
    assert [lim.hit("poisoned").allowed for _ in range(2)] == [True, True]
    store.client.lpush(lim._table.name("poisoned") + b"~deny", "x")   # the script's INCR fails: WRONGTYPE
    assert lim.hit("poisoned").allowed                                 # on_error for this decision
    st = lim.stats()
    assert st["redis_up"] is True and st["redis_errors"] == 1 and "WRONGTYPE" in st["last_error"], st
    assert [lim.hit("healthy").allowed for _ in range(3)] == [True, True, False]   # strict, not "allow all"
    assert lim.hit_many(["healthy2", "healthy2", "healthy2"]).allowed.tolist() == [True, True, False]
    assert lim.stats()["redis_up"] is True
    lim.close()


# -- 3. garbage from Redis is a fault like a refused connection ------------------------------------------------------
GARBAGE = {
    "simple string": b"+OK\r\n",
    "integer": b":1\r\n",
    "nil": b"$-1\r\n",
    "empty array": b"*0\r\n",
    "short array": b"*2\r\n:1\r\n:1\r\n",
    "resp3 map": b"%1\r\n+a\r\n:1\r\n",
    "resp3 double": b",1.5\r\n",
    "text in place of an integer": b"*5\r\n:1\r\n:1\r\n:0\r\n:0\r\n$3\r\nabc\r\n",
    "unknown code": b"*5\r\n:7\r\n:1\r\n:0\r\n:0\r\n:1\r\n",
    "limit index out of range": b"*5\r\n:1\r\n:0\r\n:0\r\n:0\r\n:1\r\n",
    "not RESP": b"\x00\xffgarbage\r\n",
}


@pytest.fixture
def proxy(redis_server):
    p = HostileProxy(redis_server.port)
    yield p
    p.stop()


@pytest.mark.parametrize("on_error", ["allow", "deny"])
@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_a_garbled_reply_follows_on_error_and_the_next_reply_is_read_again(proxy, kind, on_error, caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    store = RedisStore.from_url(proxy.url, prefix=unique(), timeout=1)
    lim = fg.RateLimiter("3/minute", algorithm="fixed_window", store=store, on_error=on_error)
    key = unique("k")
    assert lim.hit(key).remaining == 2                   # the script is loaded and the socket warm
    proxy.replace_next(GARBAGE[kind])
    d = lim.hit(key)                                     # Redis counted it; the reply is lost
    assert d.allowed is (on_error == "allow")
    st = lim.stats()
    assert st["redis_up"] is False and st["redis_errors"] == 1 and st["fallbacks"] == 1, st
    deadline = time.monotonic() + 3
    while not lim.stats()["redis_up"]:                   # past the backoff, Redis decides again
        d = lim.hit(key)
        assert time.monotonic() < deadline, lim.stats()
        time.sleep(0.03)
    assert d.allowed and d.remaining == 0                # the third hit Redis counted: strict again
    assert not lim.hit(key).allowed
    # Down, then up: two lines (from this thread: other tests' sync threads may log meanwhile).
    mine = [r for r in caplog.records if r.name == "fastguard.redis" and r.thread == threading.get_ident()]
    assert len(mine) == 2, [r.getMessage() for r in mine]
    lim.close()


@pytest.mark.parametrize("kind", ["short array", "not RESP", "simple string"])
def test_garbled_replies_to_peek_and_hit_many_follow_on_error(proxy, kind):
    store = RedisStore.from_url(proxy.url, prefix=unique(), timeout=1)
    lim = fg.RateLimiter("3/minute", algorithm="token_bucket", store=store, on_error="local")
    assert lim.hit("warm").allowed
    proxy.replace_next(GARBAGE[kind])
    assert lim.peek("p").allowed                          # the in-process core answers (on_error="local")
    time.sleep(0.5)
    assert lim.hit("warm").allowed                        # Redis again
    proxy.replace_next(GARBAGE[kind])
    batch = lim.hit_many(["a", "b", "a"])
    assert batch.allowed.tolist() == [True, True, True]
    assert lim.stats()["redis_errors"] == 2
    lim.close()


def test_a_garbled_sync_reply_keeps_the_deltas_for_the_next_exchange(proxy, redis_server):
    store = RedisStore.from_url(proxy.url, prefix=unique(), timeout=1)
    lim = fg.RateLimiter("100/hour", store=store, sync=60)
    for _ in range(4):
        lim.hit("k")
    assert lim._table.sync_now()
    for _ in range(3):
        lim.hit("k")
    proxy.replace_next(GARBAGE["short array"])
    assert lim._table.sync_now() is False
    assert lim.stats()["pending_keys"] == 1
    time.sleep(0.5)
    assert lim._table.sync_now()
    total = sum(int(store.client.get(k)) for k in store.client.scan_iter(match=f"{store.prefix}:*"))
    # Redis applied the garbled exchange, but its answer was lost: the delta is pushed again. A lost answer can
    # only over-count (the conservative side), never lose a hit.
    assert total == 4 + 3 + 3
    lim.close()


# -- 2. a partial failure of an exchange re-queues only what failed --------------------------------------------------
def test_a_failed_batch_of_an_exchange_is_retried_alone(redis_cluster):
    store = RedisStore.from_url(redis_cluster.url, prefix=unique())
    lim = fg.RateLimiter("1000/hour", store=store, sync=60)
    table = lim._table
    good, bad = "good", "bad"
    assert key_slot(table._base(good)) != key_slot(table._base(bad))
    for _ in range(5):
        lim.hit(good)
        lim.hit(bad)
    bad_counter = table._base(bad) + str(table._epoch()).encode()
    store.client.lpush(bad_counter, "x")     # INCRBY on a list fails: only that slot's batch
    assert table.sync_now() is False
    st = lim.stats()
    assert st["redis_up"] is True and st["pending_keys"] == 1
    good_counter = table._base(good) + str(table._epoch()).encode()
    assert int(store.client.get(good_counter)) == 5
    store.client.delete(bad_counter)
    lim.hit(good)
    assert table.sync_now() is True
    assert int(store.client.get(good_counter)) == 6      # not 11: the good batch was not pushed twice
    assert int(store.client.get(bad_counter)) == 5
    lim.close()


# -- 4. local-first bookkeeping stays within max_keys under a key spray ----------------------------------------------
def test_a_key_spray_keeps_sync_memory_and_exchanges_within_max_keys(redis_server):
    store = RedisStore.from_url(redis_server.url, prefix=unique())
    lim = fg.RateLimiter("10/minute", store=store, sync=60, max_keys=1000)
    table = lim._table
    for round_ in range(3):
        for i in range(20_000):
            lim.hit(f"spray-{round_}-{i}")
        assert table.sync_now()
        st = lim.stats()
        assert st["shared_keys"] <= 1000 and st["pending_keys"] == 0, st
        assert len(table._seen) <= 1000
    # Exchanges carry at most max_keys keys: the counters in Redis come from at most 3 x 1000 keys.
    assert sum(1 for _ in store.client.scan_iter(match=f"{store.prefix}:*", count=10_000)) <= 3000
    assert lim.stats()["unshared"] >= 3 * 19_000
    lim.close()


def test_a_key_spray_during_an_outage_keeps_pending_within_max_keys(fresh_redis):
    store = RedisStore.from_url(fresh_redis.url, prefix=unique(), timeout=0.1)
    lim = fg.RateLimiter("10/minute", store=store, sync=60, max_keys=500, on_error="local")
    for _ in range(20):
        lim.hit("busy")
    fresh_redis.kill()
    table = lim._table
    for round_ in range(4):
        for i in range(2_000):
            lim.hit(f"spray-{round_}-{i}")
        assert table.sync_now() is False
        assert lim.stats()["pending_keys"] <= 500
    assert table._pending[table._base("busy")] == 10   # the largest delta is kept
    lim.close()


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_a_redis_that_trickles_its_reply_is_a_fault_within_the_timeout(proxy, on_error):
    """A reply that arrives a byte at a time (each read in time, the whole never): before, every decision hung
    as long as the server liked (no fault, no backoff); `timeout` now bounds the whole call."""
    store = RedisStore.from_url(proxy.url, prefix=unique(), timeout=0.5)
    lim = fg.RateLimiter("3/minute", algorithm="fixed_window", store=store, on_error=on_error)
    assert lim.hit("warm").allowed                       # the script is loaded and the socket warm
    proxy.trickle = 0.4                                  # a byte every 0.4 s: each read under the 0.5 s timeout
    started = time.monotonic()
    d = lim.hit("k")
    took = time.monotonic() - started
    assert d.allowed is (on_error == "allow")
    st = lim.stats()
    assert st["redis_up"] is False and st["redis_errors"] == 1, st
    assert took < 4.0, took              # bounded by the timeout (+ a read), not by the reply (~10 s trickled)
    started = time.monotonic()
    lim.hit("k")                                         # in the backoff: decided without waiting on Redis
    assert time.monotonic() - started < 1.0
    proxy.trickle = None
    lim.close()
