"""Sentinel: a strict limiter on the master of a Sentinel-monitored service, through a real failover."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis
from support.hostile_proxy import HostileProxy

import fastguard as fg
from fastguard.redis import RedisStore
from fastguard.testing.servers import SentinelGroup


@pytest.fixture
def group():
    g = SentinelGroup()
    yield g
    g.stop()


def test_strict_decisions_survive_a_failover_and_keep_replicated_state(group):
    store = RedisStore.from_url(group.url, prefix=f"s{uuid.uuid4().hex[:8]}", timeout=0.3, connect_timeout=0.3)
    # An hour's window: a failover (seconds) that crossed a minute's boundary restarted the count (a flaky test)
    lim = fg.RateLimiter("5/hour", algorithm="fixed_window", store=store, on_error="deny")
    assert [lim.hit("kept").allowed for _ in range(3)] == [True] * 3
    assert lim.stats()["client"] == "fastguard wire" and lim.stats()["redis_up"]
    first = group.master_address()
    # Wait until the replica has the writes (what a failover keeps), then kill the master.
    redis.Redis(port=first[1]).execute_command("WAIT", 1, 2000)
    group.master.kill()
    t0 = time.monotonic()
    gap_start = gap_end = None
    while time.monotonic() - t0 < 30:
        d = lim.hit(f"probe-{time.monotonic_ns()}")   # a fresh key each time: strict answers allow it
        if not lim.stats()["redis_up"] and gap_start is None:
            gap_start = time.monotonic()
        if d.allowed and lim.stats()["redis_up"] and gap_start is not None:
            gap_end = time.monotonic()
            break
        time.sleep(0.01)
    assert gap_start is not None and gap_end is not None, lim.stats()
    assert group.master_address() != first
    # Strict again on the new master, with the state that was replicated: 3 used of 5.
    assert [lim.hit("kept").allowed for _ in range(3)] == [True, True, False]
    print(f"decision gap during the failover: {gap_end - gap_start:.2f} s")
    lim.close()


def test_a_sentinel_client_given_directly(group):
    from redis.sentinel import Sentinel

    sentinel = Sentinel([("127.0.0.1", p) for p, _ in group.sentinels], socket_timeout=0.5)
    lim = fg.RateLimiter("2/minute", algorithm="gcra", store=RedisStore(sentinel.master_for(group.service,
                                                                                            socket_timeout=0.5)))
    assert [lim.hit("k").allowed for _ in range(3)] == [True, True, False]
    assert lim.stats()["client"] == "fastguard wire"


def test_bad_sentinel_urls_are_refused():
    for url in ("redis+sentinel://127.0.0.1:26379", "redis+sentinel://127.0.0.1/svc", "redis+sentinel://h:1/a/b/c"):
        with pytest.raises(ValueError):
            RedisStore.from_url(url)


@pytest.mark.parametrize("garbage", [b"*1\r\n$9\r\n127.0.0.1\r\n", b":5\r\n"])
def test_a_sentinel_answering_garbage_is_a_fault_with_its_backoff(garbage, caplog):
    """A sentinel reply that is not an address made redis-py raise AttributeError / TypeError out of hit(), past
    the store's backoff: a traceback per request. Now it is Redis that cannot be reached: on_error decides, one
    log line, and the next discovery only after the backoff."""
    import fastguard.redis.wire as wire

    g = SentinelGroup(replicas=0, sentinels=1)
    proxy = HostileProxy(g.sentinels[0][0])
    try:
        url = f"redis+sentinel://127.0.0.1:{proxy.port}/{g.service}"
        lim = fg.RateLimiter("5/minute", algorithm="fixed_window", on_error="deny",
                             store=RedisStore.from_url(url, prefix=f"t{uuid.uuid4().hex[:8]}", timeout=1))
        assert lim.hit("a").remaining == 4
        caplog.set_level(logging.WARNING, logger="fastguard.redis")
        wire._generation += 1               # every lean connection is made again: the master is asked for
        proxy.replace_next(garbage)
        d = lim.hit("a")                    # must not raise
        assert not d.allowed and lim.stats()["redis_up"] is False and lim.stats()["redis_errors"] == 1
        for _ in range(5):
            lim.hit("a")                    # within the backoff: no discovery, no new line
        lines = [r for r in caplog.records if r.name == "fastguard.redis"]
        assert len(lines) == 1 and "Sentinel discovery failed" in lines[0].getMessage() and not lines[0].exc_info
        deadline = time.monotonic() + 3
        while not lim.stats()["redis_up"]:  # past the backoff, the sentinel is asked again and answers
            d = lim.hit("a")
            assert time.monotonic() < deadline, lim.stats()
            time.sleep(0.05)
        assert d.allowed
        lim.close()
    finally:
        proxy.stop()
        g.stop()
