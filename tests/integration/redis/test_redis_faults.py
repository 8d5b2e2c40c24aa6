"""Redis faults with real servers: refused, killed, restarted, hung; Cluster redirections and a dead master."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from redis.crc import key_slot

import fastguard as fg
from fastguard.redis import RedisStore

HERE = Path(__file__).parent


def closed_port_url() -> str:
    from fastguard.testing.servers import free_port

    return f"redis://127.0.0.1:{free_port()}/0"


def state_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fastguard.redis"]


@pytest.mark.parametrize("on_error", ["allow", "deny", "local"])
def test_refused_connections_follow_on_error_and_never_raise(on_error, caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    lim = fg.RateLimiter("2/minute", algorithm="fixed_window", store=RedisStore.from_url(closed_port_url()),
                         on_error=on_error)
    got = [lim.hit("k", now=120.0) for _ in range(4)]
    allowed = [d.allowed for d in got]
    expected = {"allow": [True] * 4, "deny": [False] * 4, "local": [True, True, False, False]}[on_error]
    assert allowed == expected
    if on_error == "deny":
        assert got[0].retry_after == 1.0 and got[0].headers()["Retry-After"] == "1"
    if on_error == "local":
        assert got[2].retry_after == 60.0  # the in-process core's own answer
    b = lim.hit_many(["a", "b", "a"], now=120.0)
    assert len(b.allowed) == 3
    assert lim.peek("k", now=120.0) is not None
    st = lim.stats()
    assert st["redis_up"] is False and st["redis_errors"] >= 1 and st["fallbacks"] == 4 + 3 + 1
    assert "ConnectionError" in st["last_error"]
    assert len(state_lines(caplog)) == 1  # one line for the change of state, none per request


def test_an_outage_is_not_retried_on_every_request():
    lim = fg.RateLimiter("2/minute", store=RedisStore.from_url(closed_port_url()), on_error="allow")
    t0 = time.monotonic()
    for _ in range(2000):
        lim.hit("k")
    spent = time.monotonic() - t0
    st = lim.stats()
    # Backoff: 20 ms doubling to 0.4 s, so a few attempts in this short loop, not 2000.
    assert st["redis_errors"] <= 2 + spent / 0.02
    assert st["fallbacks"] == 2000


def test_killed_then_restarted_redis_is_used_again_within_a_second(fresh_redis, caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    store = RedisStore.from_url(fresh_redis.url, timeout=0.2)
    lim = fg.RateLimiter("3/hour", algorithm="fixed_window", store=store, on_error="local")
    assert [lim.hit("k").allowed for _ in range(2)] == [True, True]
    fresh_redis.kill()
    during = [lim.hit("other").allowed for _ in range(5)]
    assert during == [True, True, True, False, False]  # decided by the in-process table
    assert lim.stats()["redis_up"] is False
    fresh_redis.start()  # an empty Redis on the same port: no script, no state
    t0 = time.monotonic()
    while not lim.stats()["redis_up"]:
        lim.hit("probe")
        assert time.monotonic() - t0 < 1.0, "decisions were not strict again within 1 s"
        time.sleep(0.005)
    assert [lim.hit("fresh").allowed for _ in range(4)] == [True, True, True, False]
    assert state_lines(caplog) == [state_lines(caplog)[0], state_lines(caplog)[1]]
    assert "unreachable" in state_lines(caplog)[0] and "again" in state_lines(caplog)[1]
    assert lim.stats()["state_changes"] == 2


def test_a_hung_redis_costs_one_timeout_then_falls_back(fresh_redis):
    lim = fg.RateLimiter("5/minute", store=RedisStore.from_url(fresh_redis.url, timeout=0.15), on_error="deny")
    assert lim.hit("k").allowed
    fresh_redis.pause()
    try:
        t0 = time.monotonic()
        d = lim.hit("k")
        first = time.monotonic() - t0
        assert not d.allowed and 0.1 < first < 1.0
        t0 = time.monotonic()
        for _ in range(100):
            assert not lim.hit("k").allowed
        assert time.monotonic() - t0 < 0.5  # within the backoff nothing waits on the socket
        assert "Timeout" in lim.stats()["last_error"]
    finally:
        fresh_redis.resume()
    deadline = time.monotonic() + 2
    while not lim.hit("k2").allowed:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_hit_many_during_an_outage_uses_the_local_table():
    lim = fg.RateLimiter("1/minute", store=RedisStore.from_url(closed_port_url()), on_error="local")
    b = lim.hit_many(np.array([1, 2, 1], dtype=np.uint64), now=60.0)
    assert b.allowed.tolist() == [True, True, False]
    assert lim.stats()["fallbacks"] == 3


# -- Redis Cluster ---------------------------------------------------------------------------------------------
@pytest.fixture
def own_cluster():
    from fastguard.testing.servers import RedisClusterProcesses

    cluster = RedisClusterProcesses(3)
    yield cluster
    cluster.stop()


def keys_on_two_nodes(cluster, store) -> tuple[str, str]:
    """Two keys whose slots belong to different masters."""
    first = f"user-{0}"
    node = cluster.node_of_slot(key_slot(fg.RateLimiter("1/s", store=store)._table.name(first)))
    for i in range(1, 200):
        other = f"user-{i}"
        if cluster.node_of_slot(key_slot(fg.RateLimiter("1/s", store=store)._table.name(other))) is not node:
            return first, other
    raise AssertionError("all keys on one node")


def test_a_dead_master_stops_only_its_own_slots(own_cluster):
    store = RedisStore.from_url(own_cluster.url, timeout=0.3)
    lim = fg.RateLimiter("2/hour", algorithm="token_bucket", store=store, on_error="deny")
    a, b = keys_on_two_nodes(own_cluster, store)
    assert lim.hit(a).allowed
    victim = own_cluster.node_of_slot(key_slot(lim._table.name(a)))
    victim.kill()
    assert not lim.hit(a).allowed  # its master is gone: on_error="deny"
    time.sleep(0.45)               # past the backoff: the next call tries the cluster again
    got_b = [lim.hit(b).allowed for _ in range(3)]
    assert got_b == [True, True, False]  # strict: a fallback "deny" would refuse the first two
    assert lim.stats()["redis_errors"] >= 1
    victim.start()
    deadline = time.monotonic() + 10
    while True:
        d = lim.hit(a)
        if lim.stats()["redis_up"]:
            break
        assert time.monotonic() < deadline, lim.stats()
        time.sleep(0.05)
    # The restarted master has no data (no persistence): the key starts again, strictly.
    assert d.allowed and not [lim.hit(a).allowed for _ in range(2)][1]


def test_moved_and_ask_redirections_are_followed(own_cluster):
    store = RedisStore.from_url(own_cluster.url)
    lim = fg.RateLimiter("4/hour", algorithm="fixed_window", store=store)
    batch_store = RedisStore.from_url(own_cluster.url)  # learns its slot map now, before the move
    batch = fg.RateLimiter("4/hour", algorithm="fixed_window", store=batch_store)
    assert batch.hit("warm-up").allowed
    key = "migrating-user"
    name = lim._table.name(key)
    slot = key_slot(name)
    assert [lim.hit(key).allowed for _ in range(2)] == [True, True]
    source = own_cluster.node_of_slot(slot)
    target = next(n for n in own_cluster.nodes if n is not source)
    src, dst = source.client(), target.client()
    src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
    # Mid-migration: the key already moved, the slot not yet -> the source answers ASK.
    dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", name)
    assert lim.hit(key).allowed  # the third hit, through ASK
    # Migration finished -> every node says MOVED for the slot.
    for node in own_cluster.nodes:
        node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
    assert [lim.hit(key).allowed for _ in range(2)] == [True, False]  # the count survived both moves
    assert lim.stats()["redis_errors"] == 0
    # A batch sent with a stale slot map: MOVED, followed.
    assert batch.hit_many([key, "someone-else"]).allowed.tolist() == [False, True]
    assert batch.stats()["redis_errors"] == 0
    assert redis.Redis(port=target.port).exists(name)


# -- many processes, one key -----------------------------------------------------------------------------------
HAMMER = r"""
import sys, threading
import fastguard as fg
from fastguard.redis import RedisStore
url, prefix, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
lim = fg.RateLimiter(f"{limit}/day", algorithm="token_bucket", store=RedisStore.from_url(url, timeout=5, prefix=prefix),
                     on_error="deny")
admitted = [0] * 4
def work(i):
    for _ in range(limit // 2):
        admitted[i] += lim.hit("the-one-key").allowed
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
st = lim.stats()
print(sum(admitted), st["redis_errors"], st["fallbacks"])
"""


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_four_processes_of_four_threads_admit_exactly_the_limit(where, redis_server, redis_cluster):
    url = redis_server.url if where == "standalone" else redis_cluster.url
    limit = 150
    prefix = f"hammer{time.time_ns()}"
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, url, prefix, str(limit)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(int(r[0]) for r in results) == limit  # 4 x 4 x 75 = 1200 attempts
    assert all(r[1] == "0" and r[2] == "0" for r in results)
