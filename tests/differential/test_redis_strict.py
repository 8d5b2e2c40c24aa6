"""Strict cluster mode against a real redis-server: the script decides exactly as fastguard._pure does."""

from __future__ import annotations

import math
import random
import time
import uuid
from typing import Any

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastguard as fg
from fastguard import _pure
from fastguard.limits import limit_from_ns
from fastguard.redis import RedisStore
from fastguard.redis.store import SCRIPT
from fastguard.redis.strict import fast_arithmetic

# Limit sets that take the script's fast path (periods of whole ms up to 366 days, counts up to 10^9: three-limb
# wide integers) and its exact bignum path (sub-ms periods, periods past 366 days, counts past 10^9).
YEAR = 366 * 86_400
LIMIT_SETS = {
    "fast-one": [fg.Limit(3, 1)],
    "fast-two": [fg.Limit(5, 60), fg.Limit(2, 1)],
    "fast-ms": [fg.Limit(4, 0.25), fg.Limit(10, 3)],
    "fast-odd-ms": [fg.Limit(3, 1.5), fg.Limit(7, 0.007)],
    "fast-big": [fg.Limit(100, 86_400), fg.Limit(7, 2)],
    "fast-hour-day": [fg.Limit(5000, 3600), fg.Limit(1000, 86_400)],
    "fast-huge": [fg.Limit(10**9, YEAR), fg.Limit(3, YEAR), fg.Limit(10**9, 0.001)],
    "fast-edges": [fg.Limit(999_999_937, 104 * 86_400 + 0.001), fg.Limit(2, 365 * 86_400 + 0.999)],
    "exact-us": [fg.Limit(3, 1e-6), fg.Limit(2, 1e-3)],
    "exact-frac-ms": [fg.Limit(3, 1.0005), fg.Limit(7, 3)],
    "exact-huge": [fg.Limit(1000, 86_400), fg.Limit(9_000_000_000, 365 * 86_400), fg.Limit(2**53, 3)],
    "exact-long": [fg.Limit(5, YEAR + 0.001)],
    "exact-count": [fg.Limit(10**9 + 1, 60)],
}


def test_the_limit_sets_cover_both_paths():
    paths = {name: all(fast_arithmetic(lim) for lim in lims) for name, lims in LIMIT_SETS.items()}
    assert {v for k, v in paths.items() if k.startswith("fast")} == {True}
    assert {v for k, v in paths.items() if k.startswith("exact")} == {False}


def fields(d):
    return (d.allowed, d.limit, d.remaining, d.reset_after, d.retry_after, d.period, d.remainings)


def store_for(server) -> RedisStore:
    # A prefix per test: nothing one test wrote is read by another.
    return RedisStore(redis.Redis(port=server.port), prefix=f"t{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["standalone", "cluster"])
def any_store(request):
    """A fresh-prefixed store on the standalone server, then on the 3-master cluster."""
    if request.param == "standalone":
        return store_for(request.getfixturevalue("redis_server"))
    cluster = request.getfixturevalue("redis_cluster")
    return RedisStore.from_url(cluster.url, prefix=f"t{uuid.uuid4().hex[:12]}")


STEPS = st.lists(
    st.tuples(
        st.integers(0, 3),                                   # which key
        st.sampled_from([0, 1, 1, 1, 2, 3, 5, 10**6, 2**62]),  # cost
        st.sampled_from([0, 0, 1, 7, 999_999, 10**6, 10**8, 333_333_333, 10**9, 1_500_000_001, 3 * 10**9,
                         60 * 10**9, 86_400 * 10**9, -1, -10**9]),  # ns to the next step (negative: clock skew)
        st.booleans(),                                       # peek first
    ),
    min_size=1, max_size=60)


@pytest.mark.parametrize("algorithm", fg.ALGORITHMS)
@pytest.mark.parametrize("limit_set", sorted(LIMIT_SETS))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS, start=st.integers(0, 2**61))
def test_redis_decides_exactly_like_the_reference(redis_server, algorithm, limit_set, steps, start):
    limits = LIMIT_SETS[limit_set]
    remote = fg.RateLimiter(limits, algorithm=algorithm, store=store_for(redis_server))
    local = fg.RateLimiter(limits, algorithm=algorithm, _core=_pure)
    t = start
    for key_index, cost, dt, peek_first in steps:
        t = min(max(t + dt, 0), 2**62 - 1)
        now = t / 1e9
        key = f"key-{key_index}"
        if peek_first:
            assert fields(remote.peek(key, now=now)) == fields(local.peek(key, now=now))
        assert fields(remote.hit(key, cost, now=now)) == fields(local.hit(key, cost, now=now))
    assert remote.stats()["redis_errors"] == 0


# The fast path's new ground: any count up to 10^9 and any whole-ms period up to 366 days, several limits at once,
# costs anywhere from 0 to past the count, steps from sub-ms to past the longest period, clock skew.
DAY_MS = 86_400_000
FAST_COUNTS = st.one_of(st.integers(1, 10**9), st.sampled_from([1, 2, 5000, 999_999_999, 10**9]))
FAST_PERIODS_MS = st.one_of(st.integers(1, 366 * DAY_MS),
                            st.sampled_from([1, 7, 1000, 60_000, 3_600_000, DAY_MS, 104 * DAY_MS, 105 * DAY_MS,
                                             365 * DAY_MS, 366 * DAY_MS]))
FAST_LIMITS = st.lists(st.builds(lambda c, ms: limit_from_ns(c, ms * 1_000_000), FAST_COUNTS, FAST_PERIODS_MS),
                       min_size=1, max_size=3)


@pytest.mark.parametrize("algorithm", fg.ALGORITHMS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limits=FAST_LIMITS, data=st.data(),
       start=st.one_of(st.integers(0, 2**61), st.integers(1_700_000_000 * 10**9, 1_800_000_000 * 10**9)))
def test_fast_path_decides_every_realistic_limit_exactly(redis_server, algorithm, limits, start, data):
    assert all(fast_arithmetic(lim) for lim in limits)
    remote = fg.RateLimiter(limits, algorithm=algorithm, store=store_for(redis_server))
    local = fg.RateLimiter(limits, algorithm=algorithm, _core=_pure)
    counts = [lim.count for lim in limits]
    longest = max(lim.period_ns for lim in limits)
    costs = st.one_of(st.integers(0, 3), st.sampled_from(counts), st.integers(0, max(counts) + 2),
                      st.builds(lambda c: c // 2 + 1, st.sampled_from(counts)))
    steps = st.one_of(st.integers(-2 * 10**9, 10**6), st.integers(0, longest // 3), st.integers(0, 3 * longest),
                      st.sampled_from([0, 1, longest - 1, longest, longest + 1]))
    t = start
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        t = min(max(t + data.draw(steps, label="dt"), 0), 2**61)
        now = t / 1e9
        key = f"key-{data.draw(st.integers(0, 1), label='key')}"
        cost = data.draw(costs, label="cost")
        if data.draw(st.booleans(), label="peek"):
            assert fields(remote.peek(key, now=now)) == fields(local.peek(key, now=now))
        assert fields(remote.hit(key, cost, now=now)) == fields(local.hit(key, cost, now=now))
    assert remote.stats()["redis_errors"] == 0


@pytest.mark.parametrize("algorithm", fg.ALGORITHMS)
@pytest.mark.parametrize("limit_set", ["fast-two", "fast-huge", "exact-frac-ms"])
def test_hit_many_matches_the_reference_in_order(any_store, algorithm, limit_set):
    limits = LIMIT_SETS[limit_set]
    remote = fg.RateLimiter(limits, algorithm=algorithm, store=any_store)
    local = fg.RateLimiter(limits, algorithm=algorithm, _core=_pure)
    rng = np.random.default_rng(7)
    now = 1_764_000_000.25
    for _ in range(3):
        keys = [f"u{int(i)}" for i in rng.integers(0, 40, size=700)]  # repeats: order within a key matters
        costs = rng.integers(0, 3, size=700)
        a = remote.hit_many(keys, costs=costs, now=now)
        b = local.hit_many(keys, costs=costs, now=now)
        for name in ("allowed", "remaining", "retry_after", "reset_after"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        ids = rng.integers(0, 50, size=500).astype(np.uint64)
        a = remote.hit_many(ids, now=now)
        b = local.hit_many(ids, now=now)
        assert np.array_equal(a.allowed, b.allowed) and np.array_equal(a.remaining, b.remaining)
        now += 0.4
    assert remote.stats()["redis_errors"] == 0


def test_integer_ids_and_string_keys_do_not_share_state(redis_server):
    lim = fg.RateLimiter("1/hour", algorithm="fixed_window", store=store_for(redis_server))
    assert lim.hit_many(np.array([7], dtype=np.uint64)).allowed[0]
    assert lim.hit("7").allowed


def test_the_server_clock_is_used_without_now(any_store):
    lim = fg.RateLimiter("3/minute", algorithm="sliding_window", store=any_store)
    got = [lim.hit("k").allowed for _ in range(5)]
    assert got == [True, True, True, False, False]
    d = lim.hit("k")
    assert 0 < d.retry_after <= 120 and d.remaining == 0  # a sliding window may wait into the next window
    assert d.headers()["RateLimit-Limit"] == "3"


def test_peek_reset_and_cost(redis_server):
    lim = fg.RateLimiter("10/minute", algorithm="token_bucket", store=store_for(redis_server))
    assert lim.hit("k", cost=7, now=100.0).remaining == 3
    assert lim.peek("k", now=100.0).remaining == 3
    assert lim.peek("k", now=100.0).remaining == 3      # a peek records nothing
    d = lim.hit("k", cost=11, now=100.0)                # more than the count: never admissible
    assert not d.allowed and d.retry_after == math.inf
    lim.reset("k")
    assert lim.hit("k", cost=10, now=100.0).allowed


def test_limiters_with_the_same_limits_share_counts_and_others_do_not(redis_server):
    store = store_for(redis_server)
    a = fg.RateLimiter("2/minute", algorithm="fixed_window", store=store)
    b = fg.RateLimiter("2/minute", algorithm="fixed_window", store=store)  # another gateway node
    c = fg.RateLimiter("3/minute", algorithm="fixed_window", store=store)
    assert a.hit("k", now=60.0).allowed and b.hit("k", now=60.0).allowed
    assert not a.hit("k", now=60.5).allowed
    assert c.hit("k", now=60.5).allowed


def test_states_expire_once_they_would_decide_like_a_new_key(redis_server):
    store = store_for(redis_server)
    lim = fg.RateLimiter("5/second; 100/minute", algorithm="sliding_window", store=store)
    lim.hit("k")
    name = lim._table.name("k")
    ttl_ms = store.client.pttl(name)
    assert 120_000 < ttl_ms <= 121_100  # two of the longest period, plus a second


def test_a_flushed_script_cache_is_reloaded(any_store):
    store = any_store
    lim = fg.RateLimiter("2/minute", store=store)
    assert lim.hit("k", now=10.0).allowed
    store.client.script_flush()
    assert lim.hit("k", now=10.0).allowed
    assert not lim.hit("k", now=10.0).allowed
    st = lim.stats()
    assert st["redis_errors"] == 0 and st["redis_calls"] == 3


def test_bad_input_is_refused_before_any_round_trip(redis_server):
    lim = fg.RateLimiter("2/minute", store=store_for(redis_server))
    with pytest.raises(TypeError, match="str or bytes"):
        lim.hit(5)
    with pytest.raises(ValueError, match="negative"):
        lim.hit("k", cost=-1)
    with pytest.raises(ValueError, match="epoch seconds"):
        lim.hit("k", now=float("nan"))
    assert lim.stats()["redis_calls"] == 0


def test_from_url_forms(redis_server, tmp_path):
    assert not RedisStore.from_url(redis_server.url).cluster
    assert RedisStore.from_url("redis+cluster://127.0.0.1:7000,[::1]:7001").cluster
    rediss = RedisStore.from_url("rediss://127.0.0.1:6380/0")
    assert rediss.client.connection_pool.connection_class.__name__ == "SSLConnection"
    unix = RedisStore.from_url(f"unix://{tmp_path}/redis.sock?db=0")
    assert unix.client.connection_pool.connection_kwargs["path"] == f"{tmp_path}/redis.sock"
    for bad, match in [("http://x", "unsupported"), ("redis+cluster://hostonly", "host:port"),
                       ("127.0.0.1:6379", "unsupported")]:
        with pytest.raises(ValueError, match=match):
            RedisStore.from_url(bad)
    with pytest.raises(ValueError, match="timeout"):
        RedisStore.from_url(redis_server.url, timeout=0)
    with pytest.raises(TypeError, match="redis.Redis"):
        RedisStore(client="redis://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="prefix"):
        RedisStore(redis.Redis(), prefix="a{b}")


def test_limiter_options_are_checked():
    with pytest.raises(ValueError, match="on_error"):
        fg.RateLimiter("1/s", on_error="ignore")
    with pytest.raises(ValueError, match="sync needs a store"):
        fg.RateLimiter("1/s", sync=0.1)
    with pytest.raises(ValueError, match="sync must be"):
        fg.RateLimiter("1/s", store=RedisStore(redis.Redis()), sync=-1)


# -- the lean client (bindings/redis/wire.py) ------------------------------------------------------------------
def test_the_lean_client_serves_plain_tcp_and_unix_sockets_with_auth_and_db(tmp_path):
    from fastguard.testing.servers import RedisProcess

    sock = f"{tmp_path}/r.sock"
    server = RedisProcess(extra=["--unixsocket", sock, "--unixsocketperm", "700"], password="s3cret")
    try:
        urls = (f"redis://:s3cret@127.0.0.1:{server.port}/3", f"unix://:s3cret@{sock}?db=3")
        for i, url in enumerate(urls):
            store = RedisStore.from_url(url, prefix=f"wire{i}")
            assert store.wire is not None
            lim = fg.RateLimiter("2/minute", store=store)
            assert [lim.hit("k", now=60.0).allowed for _ in range(3)] == [True, True, False]
            assert lim.stats()["client"] == "fastguard wire" and lim.stats()["redis_errors"] == 0
            lim.reset("k")
            b = lim.hit_many(["a", "b", "a", "a"], now=60.0)
            assert b.allowed.tolist() == [True, True, True, False]
        keys = redis.Redis(port=server.port, password="s3cret", db=3).keys("wire*")
        assert len(keys) == 4  # "a" and "b" under each prefix; in db 3, not db 0
        bad = fg.RateLimiter("2/minute", store=RedisStore.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0"),
                             on_error="deny")
        assert not bad.hit("k").allowed
        assert "AuthenticationError" in bad.stats()["last_error"] or "WRONGPASS" in bad.stats()["last_error"]
    finally:
        server.stop()


def test_clients_the_lean_client_does_not_serve_use_redis_py():
    assert RedisStore.from_url("rediss://127.0.0.1:6380/0?ssl_validate_ocsp=true").wire is None   # OCSP
    assert RedisStore.from_url("rediss://127.0.0.1:6380/0").wire.tls is not None                  # TLS: lean
    assert RedisStore(redis.Redis(protocol=3)).wire is None
    assert RedisStore.from_url("redis+cluster://127.0.0.1:7000").wire is None


def test_a_forked_child_opens_its_own_connection(redis_server):
    import os

    lim = fg.RateLimiter("1000/minute", store=store_for(redis_server))
    assert lim.hit("parent", now=60.0).allowed  # the parent's socket exists now
    parent_sock = lim.store.wire._local.conn[0]
    pid = os.fork()
    if pid == 0:  # the child: a fresh socket, and decisions that are right
        try:
            ok = [lim.hit("child", now=60.0).remaining for _ in range(50)] == list(range(999, 949, -1))
            ok = ok and lim.store.wire._local.conn[0] is not parent_sock
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    for i in range(50):
        assert lim.hit("parent", now=60.0).remaining == 998 - i
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_stats_carry_the_table_names_of_the_design(redis_server):
    lim = fg.RateLimiter("2/minute", store=store_for(redis_server), max_keys=500)
    for _ in range(3):
        lim.hit("k", now=60.0)
    lim.hit_many(["a", "a", "a"], now=60.0)
    st = lim.stats()
    assert {"keys", "capacity", "evictions", "hits", "denials", "bytes"} <= set(st)
    assert (st["hits"], st["denials"], st["capacity"]) == (6, 2, 500)


# -- bans through Redis ----------------------------------------------------------------------------------------
def test_a_ban_started_on_one_node_is_honoured_by_another_and_answered_locally(redis_server):
    prefix = f"b{uuid.uuid4().hex[:10]}"
    node_a = fg.RateLimiter("2/minute", algorithm="fixed_window", ban_after=2, ban_for=60,
                            store=RedisStore(redis.Redis(port=redis_server.port), prefix=prefix))
    node_b = fg.RateLimiter("2/minute", algorithm="fixed_window", ban_after=2, ban_for=60,
                            store=RedisStore(redis.Redis(port=redis_server.port), prefix=prefix))
    got = [node_a.hit("k") for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, False, False]
    assert [d.banned for d in got] == [False, False, False, True]   # the 2nd denial starts the ban, in Redis
    assert 59 < got[-1].retry_after <= 60
    calls = node_a.stats()["redis_calls"]
    again = node_a.hit("k")
    assert again.banned and node_a.stats()["redis_calls"] == calls   # answered from the core, no round trip
    first_b = node_b.hit("k")                                         # node b learns it from Redis...
    assert first_b.banned and 58 < first_b.retry_after <= 60
    calls_b = node_b.stats()["redis_calls"]
    assert node_b.hit("k").banned and node_b.stats()["redis_calls"] == calls_b  # ...then answers it locally
    assert 58 < node_b.banned("k") <= 60 and node_a.stats()["bans"] == 1
    node_b.unban("k")
    mark = node_a._table.name("k") + b"~ban"   # lifted: a short-lived mark that no node writes the ban back over
    assert redis.Redis(port=redis_server.port).get(mark) == b"lifted"
    deadline = time.monotonic() + 1.0                    # node a drops its cached copy within BANS_POLL
    while node_a.banned("k") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not node_a.hit("k").banned


def test_manual_bans_reach_redis_and_hit_many_sees_them(redis_server):
    lim = fg.RateLimiter("5/minute", ban_for=1, store=store_for(redis_server))
    other = fg.RateLimiter("5/minute", ban_for=1, store=RedisStore(redis.Redis(port=redis_server.port),
                                                                   prefix=lim.store.prefix))
    lim.ban("intruder", 120)
    b = other.hit_many(["intruder", "friend", "intruder"])
    assert b.allowed.tolist() == [False, True, False]
    assert 119 < b.retry_after[0] <= 120


def test_a_known_ban_survives_redis_going_down(fresh_redis):
    lim = fg.RateLimiter("1/minute", ban_after=1, ban_for=300, on_error="allow",
                         store=RedisStore.from_url(fresh_redis.url, timeout=0.2))
    assert lim.hit("k").allowed
    assert lim.hit("k").banned
    fresh_redis.kill()
    for _ in range(3):
        d = lim.hit("k")
        assert d.banned and not d.allowed      # on_error="allow" does not lift a ban this node knows
    assert lim.hit("someone-else").allowed    # ... while other keys follow on_error
    assert lim.stats()["redis_up"] is False


BAN_NODE = r"""
import sys
import fastguard as fg
from fastguard.redis import RedisStore
from fastguard.redis.store import SCRIPT
url, prefix, action = sys.argv[1], sys.argv[2], sys.argv[3]
lim = fg.RateLimiter("100/minute", ban_for=1, store=RedisStore.from_url(url, prefix=prefix))
if action == "ban":
    lim.ban("mallory", 90)
    print("banned")
else:
    d = lim.hit("mallory")
    print(d.banned, round(d.retry_after))
"""


def test_a_ban_set_in_one_process_is_honoured_in_another(redis_server):
    import subprocess
    import sys

    prefix = f"p{uuid.uuid4().hex[:10]}"
    args = [sys.executable, "-c", BAN_NODE, redis_server.url, prefix]
    assert subprocess.run([*args, "ban"], capture_output=True, text=True, timeout=60).stdout.strip() == "banned"
    out = subprocess.run([*args, "hit"], capture_output=True, text=True, timeout=60).stdout.split()
    assert out[0] == "True" and 85 <= int(out[1]) <= 90


# -- the script's wide integers, as written in it, against Python's integers ----------------------------------------
def wide_helpers_lua() -> str:
    source = SCRIPT
    begin = source.index("-- wide integers: begin")
    return source[begin:source.index("-- wide integers: end")]


HARNESS = """
local function s(...)  -- every value as decimal digits (replies of numbers would be truncated to integers)
  local t = {}
  for i, x in ipairs({...}) do t[i] = type(x) == "string" and x or string.format("%d", x) end
  return table.concat(t, " ")
end
local out = {}
for i = 1, #ARGV, 7 do
  local op = ARGV[i]
  local a = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])}
  local b = {tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])}
  local r
  if op == "mul" then r = s(mul(b[1], a[1], a[2], a[3]))
  elseif op == "add" then r = s(add(a[1], a[2], a[3], b[1], b[2], b[3]))
  elseif op == "sub" then r = s(sub(a[1], a[2], a[3], b[1], b[2], b[3]))
  elseif op == "le" then r = le(a[1], a[2], a[3], b[1], b[2], b[3]) and "1" or "0"
  elseif op == "divmod" then r = s(divmod(a[1], a[2], a[3], b[1]))
  elseif op == "ceil_div" then r = s(ceil_div(a[1], a[2], a[3], b[1]))
  elseif op == "quot" then r = s(quot(a[1], a[2], a[3], b[1], b[2], b[3]))
  elseif op == "ns" then r = s(ns(a[1], a[2], a[3]))
  elseif op == "limbs" then r = s(limbs(a[1]))
  else r = s(ms_limbs(a[1], a[2])) end
  out[#out + 1] = r
end
return out
"""


def limbs3(x: int) -> list[int]:
    return [x // 10**12, x // 10**6 % 10**6, x % 10**6]


def wide(parts: list[int]) -> int:
    return parts[0] * 10**12 + parts[1] * 10**6 + parts[2]


COUNT = st.one_of(st.integers(1, 2**31 - 1), st.sampled_from([1, 2, 10**6 - 1, 10**6, 10**9, 10**9 + 1, 2**31 - 1]))
DURATION = st.one_of(st.integers(0, 2**56), st.sampled_from([0, 1, 10**6 - 1, 10**6, 2**53 - 1, 2**53, 2**53 + 1,
                                                             366 * 86_400 * 10**9, 2**56]))
WIDE = st.one_of(st.integers(0, 2**86), st.builds(lambda c, d: c * d, COUNT, DURATION))
OPS = st.one_of(
    st.tuples(st.just("mul"), DURATION, COUNT),
    st.tuples(st.just("add"), WIDE, WIDE),
    st.tuples(st.just("sub"), WIDE, WIDE).map(lambda t: ("sub", max(t[1], t[2]), min(t[1], t[2]))),
    st.tuples(st.just("le"), WIDE, WIDE),
    st.tuples(st.just("le"), WIDE, st.integers(-1, 1)).map(lambda t: ("le", t[1], max(0, t[1] + t[2]))),
    st.tuples(st.just("divmod"), WIDE, COUNT),
    st.tuples(st.just("ceil_div"), WIDE, COUNT),
    # quot: x = q * d + r with q a count, r anywhere in [0, d), its edges included
    st.tuples(st.integers(0, 2**31 - 2), DURATION.map(lambda d: max(d, 1)),
              st.sampled_from(["zero", "one", "last", "any"]),
              st.randoms(use_true_random=False)).map(
        lambda t: ("quot", t[0] * t[1] + {"zero": 0, "one": min(1, t[1] - 1), "last": t[1] - 1,
                                          "any": t[3].randrange(t[1])}[t[2]], t[1])),
    st.tuples(st.just("ns"), st.one_of(WIDE, DURATION, st.integers(2**53 - 10**12, 2**53 + 10**12)), st.just(0)),
    st.tuples(st.just("limbs"), st.integers(0, 2**53 - 1), st.just(0)),
    st.tuples(st.just("ms_limbs"), st.integers(0, 2**53 - 1), st.integers(0, 10**6 - 1)),
)


def expected(op: str, a: int, b: int) -> list[int]:
    if op == "mul":
        return limbs3(a * b)
    if op == "add":
        return limbs3(a + b)
    if op == "sub":
        return limbs3(a - b)
    if op == "le":
        return [int(a <= b)]
    if op == "divmod":
        return [*limbs3(a // b), a % b]
    if op == "ceil_div":
        return limbs3(-(-a // b))
    if op == "quot":
        return [a // b]
    if op == "ns":
        return [a]
    if op == "limbs":
        return limbs3(a)
    return limbs3(a * 10**6 + b)  # ms_limbs(ms, sub-ms ns)


def lua_operands(op: str, a: int, b: int) -> list[int]:
    if op in ("limbs", "ms_limbs"):
        return [a, b, 0, 0, 0, 0]
    if op in ("mul", "divmod", "ceil_div"):
        return [*limbs3(a), b, 0, 0]
    return [*limbs3(a), *limbs3(b)]


def assert_script_computes(client: redis.Redis, cases: list[tuple[str, int, int]]) -> None:
    """Run the cases through the script's helpers in one EVAL; each answer must be Python's."""
    argv: list[Any] = []
    for op, a, b in cases:
        argv += [op, *lua_operands(op, a, b)]
    got = client.eval(wide_helpers_lua() + HARNESS, 0, *argv)
    for (op, a, b), answer in zip(cases, got, strict=True):
        assert [int(x) for x in answer.split()] == expected(op, a, b), (op, a, b)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(OPS, min_size=1, max_size=120))
def test_the_scripts_wide_integers_are_exact(redis_server, cases):
    assert_script_computes(redis.Redis(port=redis_server.port), cases)


def test_the_scripts_wide_integers_are_exact_in_bulk(redis_server):
    """Twenty thousand seeded cases across the whole ranges (hypothesis above favours small values and edges)."""
    client = redis.Redis(port=redis_server.port)
    rng = random.Random(2026)
    cases = []
    for _ in range(2000):
        c, d = rng.randrange(1, 2**31), rng.randrange(1, 2**56)
        x, y = rng.randrange(2**86), rng.randrange(2**86)
        q = rng.randrange(2**31 - 1)
        cases += [("mul", rng.randrange(2**56), c), ("add", x, y), ("sub", max(x, y), min(x, y)), ("le", x, y),
                  ("divmod", x, c), ("ceil_div", x, c), ("quot", q * d + rng.choice([0, d - 1, rng.randrange(d)]), d),
                  ("ns", rng.randrange(2**53 - 10**13, 2**53 + 10**13), 0), ("ns", x, 0),
                  ("ms_limbs", rng.randrange(2**53), rng.randrange(10**6))]
    for at in range(0, len(cases), 2000):
        assert_script_computes(client, cases[at:at + 2000])
