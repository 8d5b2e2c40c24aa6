"""The compiled core and its pure twin decide identically (hypothesis), and basic invariants hold for both."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastguard as fg
from fastguard import _pure
from tests.conftest import PURE_ONLY

pytestmark = pytest.mark.skipif(PURE_ONLY, reason="differential tests need the compiled core")

if not PURE_ONLY:
    from fastguard import _core

LIMIT_SETS = [
    "5/second", "3/2s", "100/minute", "7/second; 20/minute", "1/s", "2/second; 2/5s; 9/minute",
    "1000/hour", "13 per 3 seconds; 40/minute; 200/hour",
]

ops = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "hit", "peek", "reset"]),
        st.sampled_from(["a", "b", "c", "d", "e", "ключ", b"\x00"]),
        st.integers(min_value=0, max_value=12),            # cost
        st.integers(min_value=-2_000_000_000, max_value=3_000_000_000),   # time step in ns (backwards allowed)
    ),
    min_size=1, max_size=120,
)


def _fields(d):
    return (d.allowed, d.limit, d.remaining, d.reset_after, d.retry_after, d.period, d.remainings)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alg=st.sampled_from(fg.ALGORITHMS), limits=st.sampled_from(LIMIT_SETS), seq=ops,
       max_keys=st.sampled_from([2, 3, 5, 1000]), start=st.integers(min_value=0, max_value=10**6))
def test_core_and_pure_decide_identically(alg, limits, seq, max_keys, start):
    parsed = tuple(fg.parse_limits(limits))
    c, p = _core.Table(alg, parsed, max_keys), _pure.Table(alg, parsed, max_keys)
    t = start * 1_000_000_000
    for op, key, cost, step in seq:
        t = max(0, t + step)
        now = t / 1e9
        if op == "hit":
            assert _fields(c.hit(key, cost, now)) == _fields(p.hit(key, cost, now))
        elif op == "peek":
            assert _fields(c.peek(key, now)) == _fields(p.peek(key, now))
        else:
            c.reset(key)
            p.reset(key)
        sc, sp = c.stats(), p.stats()
        assert (sc["keys"], sc["hits"], sc["denials"], sc["evictions"]) == \
               (sp["keys"], sp["hits"], sp["denials"], sp["evictions"])


@settings(max_examples=100, deadline=None)
@given(alg=st.sampled_from(fg.ALGORITHMS), limits=st.sampled_from(LIMIT_SETS),
       ids=st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=200),
       costs=st.lists(st.integers(min_value=0, max_value=6), min_size=200, max_size=200),
       now=st.floats(min_value=0, max_value=4e9, allow_nan=False))
def test_batches_decide_identically(alg, limits, ids, costs, now):
    parsed = tuple(fg.parse_limits(limits))
    keys = np.array(ids, dtype=np.uint64)
    cost_arr = np.array(costs[:len(ids)], dtype=np.int64)
    c, p = _core.Table(alg, parsed, 10_000), _pure.Table(alg, parsed, 10_000)
    for _ in range(2):
        rc, rp = c.hit_many(keys, cost_arr, now), p.hit_many(keys, cost_arr, now)
        for a, b in zip(rc, rp, strict=True):
            assert a.tolist() == b.tolist()


@settings(max_examples=200, deadline=None)
@given(alg=st.sampled_from(fg.ALGORITHMS), count=st.integers(1, 2**53),
       period_ns=st.integers(1, 100 * 365 * 86400 * 10**9),
       cost=st.integers(0, 2**70), t1=st.integers(0, 2**62 - 1), dt=st.integers(0, 2**61))
def test_extreme_values_agree_and_never_overflow(alg, count, period_ns, cost, t1, dt):
    lim = (fg.Limit(count, period_ns / 1e9),)
    if lim[0].period_ns != period_ns:
        period_ns = lim[0].period_ns
    c, p = _core.Table(alg, lim, 10), _pure.Table(alg, lim, 10)
    for now_ns in (t1, min(t1 + dt, 2**62 - 1)):
        now = now_ns / 1e9
        if now * 1e9 >= 2**62:
            continue
        dc, dp = c.hit("k", cost, now), p.hit("k", cost, now)
        assert _fields(dc) == _fields(dp)
        assert 0 <= dc.remaining <= count
        assert dc.reset_after >= 0 and dc.retry_after >= 0
