"""The compiled core and its pure twin decide identically (hypothesis), and basic invariants hold for both."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import PURE_ONLY

import fastguard as fg
from fastguard import _pure

pytestmark = pytest.mark.skipif(PURE_ONLY, reason="differential tests need the compiled core")

if not PURE_ONLY:
    from fastguard import _core

LIMIT_SETS = [
    "5/second", "3/2s", "100/minute", "7/second; 20/minute", "1/s", "2/second; 2/5s; 9/minute",
    "1000/hour", "13 per 3 seconds; 40/minute; 200/hour",
]

ops = st.lists(
    st.tuples(
        st.sampled_from(["hit", "hit", "hit", "hit", "peek", "reset", "charge", "ban"]),
        st.sampled_from(["a", "b", "c", "d", "e", "ключ", b"\x00"]),
        st.integers(min_value=0, max_value=12),            # cost
        st.integers(min_value=-2_000_000_000, max_value=3_000_000_000),   # time step in ns (backwards allowed)
    ),
    min_size=1, max_size=120,
)


def _fields(d):
    return (d.allowed, d.banned, d.limit, d.remaining, d.reset_after, d.retry_after, d.period, d.remainings)


BAN_SETTINGS = [(0, 0.0), (0, 0.0), (2, 3.0), (3, 0.5), (1, 60.0), (0, 5.0)]  # (ban_after, ban_for)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alg=st.sampled_from(fg.ALGORITHMS), limits=st.sampled_from(LIMIT_SETS), seq=ops,
       max_keys=st.sampled_from([2, 3, 5, 1000]), start=st.integers(min_value=0, max_value=10**6),
       bans=st.sampled_from(BAN_SETTINGS))
def test_core_and_pure_decide_identically(alg, limits, seq, max_keys, start, bans):
    parsed = tuple(fg.parse_limits(limits))
    c, p = _core.Table(alg, parsed, max_keys, *bans), _pure.Table(alg, parsed, max_keys, *bans)
    with_bans = bans != (0, 0.0)
    c.record_hits(True)
    p.record_hits(True)
    t = start * 1_000_000_000
    for op, key, cost, step in seq:
        t = max(0, t + step)
        now = t / 1e9
        if op == "hit":
            assert _fields(c.hit(key, cost, now)) == _fields(p.hit(key, cost, now))
        elif op == "peek":
            assert _fields(c.peek(key, now)) == _fields(p.peek(key, now))
        elif op == "charge":
            c.charge(key, cost, now)
            p.charge(key, cost, now)
        elif op == "ban" and with_bans:
            seconds = 0.5 + cost
            if cost % 3 == 0:
                c.unban(key)
                p.unban(key)
            else:
                c.ban(key, seconds, now)
                p.ban(key, seconds, now)
            assert c.banned(key, now) == p.banned(key, now)
        elif op == "ban":
            with pytest.raises(ValueError, match="no bans"):
                c.ban(key, 1.0, now)
            with pytest.raises(ValueError, match="no bans"):
                p.ban(key, 1.0, now)
        else:
            c.reset(key)
            p.reset(key)
        sc, sp = c.stats(), p.stats()
        sp["compiled"] = True
        assert sc == sp
    assert sorted(c.drain_hits(), key=repr) == sorted(p.drain_hits(), key=repr)
    assert c.drain_hits() == p.drain_hits() == []


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


@settings(max_examples=15, deadline=None)
@given(alg=st.sampled_from(fg.ALGORITHMS), seed=st.integers(0, 2**32 - 1))
def test_sharded_tables_evict_identically(alg, seed):
    """64 shards, a spray of keys beyond max_keys, resets and reuse: same decisions, same evictions, same stats."""
    import random

    rng = random.Random(seed)
    limits = tuple(fg.parse_limits("3/second; 10/minute"))
    c, p = _core.Table(alg, limits, 4096), _pure.Table(alg, limits, 4096)
    t = 1_000_000_000_000
    for i in range(6000):
        t += rng.randrange(0, 50_000_000)
        key = f"k{rng.randrange(8000)}" if i % 3 else rng.randrange(3000).to_bytes(2, "little")
        if i % 97 == 0:
            c.reset(key)
            p.reset(key)
            continue
        cost = rng.randrange(3)
        assert _fields(c.hit(key, cost, t / 1e9)) == _fields(p.hit(key, cost, t / 1e9))
    ids = np.array([rng.randrange(10_000) for _ in range(3000)], dtype=np.uint64)
    for a, b in zip(c.hit_many(ids, None, t / 1e9), p.hit_many(ids, None, t / 1e9), strict=True):
        assert a.tolist() == b.tolist()
    sc, sp = c.stats(), p.stats()
    sp["compiled"] = True
    assert sc == sp and sc["evictions"] > 0 and sc["shards"] == 64


def test_siphash_matches_the_reference_vector():
    """SipHash-2-4 of the paper's test input (key 00..0f, message 00..0e) is 0xa129ca6149be45e5; the core uses the
    same rounds with c=1, d=3, and the property tests above show the two implementations place keys identically."""
    key = bytes(range(16))
    k0, k1 = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    assert _pure.siphash(bytes(range(15)), k0, k1, 2, 4) == 0xA129CA6149BE45E5


B64URL_AND_MORE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="
claim_values = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                         st.none(), st.text(max_size=5), st.lists(st.text(max_size=3), max_size=3),
                         st.sampled_from([1_800_000_000, 1_800_000_000.5, 1_799_999_999]))


@settings(max_examples=400, deadline=None)
@given(claims=st.dictionaries(st.sampled_from(["exp", "nbf", "iat", "iss", "sub", "jti", "aud", "x"]), claim_values),
       now=st.integers(0, 2**62 - 1), leeway=st.sampled_from([0, 5_000_000_000]),
       issuers=st.sampled_from([None, frozenset(["a"]), frozenset(["a", "b"])]),
       audiences=st.sampled_from([None, frozenset(["api"])]),
       max_lifetime=st.sampled_from([None, 3_600_000_000_000]),
       required=st.sampled_from([(), ("exp",), ("exp", "sub")]))
def test_claim_rules_agree(claims, now, leeway, issuers, audiences, max_lifetime, required):
    def run(mod):
        try:
            return mod.check_claims(dict(claims), now, leeway, required, issuers, audiences, max_lifetime)
        except fg.InvalidToken as exc:
            return type(exc)

    assert run(_core) == run(_pure)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=40) | st.text(alphabet=B64URL_AND_MORE, max_size=40).map(str.encode))
def test_base64url_and_compact_parsing_agree(data):
    def run(fn):
        try:
            return fn(data)
        except ValueError:
            return "ValueError"

    assert run(_core.b64url_decode) == run(_pure.b64url_decode)
    assert run(_core.parse_compact) == run(_pure.parse_compact)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)


@settings(max_examples=500, deadline=None)
@given(value=st.dictionaries(st.text(max_size=6), json_values, max_size=6), ascii_only=st.booleans(),
       compact=st.booleans())
def test_json_parsers_agree_on_valid_json(value, ascii_only, compact):
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":") if compact else None)
    data = text.encode("utf-8", "surrogatepass")
    assert _json_outcome(_core, data) == _json_outcome(_pure, data)


@settings(max_examples=800, deadline=None)
@given(data=st.binary(max_size=60) | st.text(alphabet='{}[]":,.-+eE0123456789 \\u\\nabtrfls\u00e9\ud800',
                                             max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_json_parsers_agree_on_any_bytes(data):
    assert _json_outcome(_core, data) == _json_outcome(_pure, data)


def _json_outcome(mod, data):
    try:
        return "ok", repr(mod.parse_json_object(data))
    except ValueError:
        return "ValueError", None


def test_json_depth_limit_is_the_same():
    ok = b'{"a":' * 255 + b"1" + b"}" * 255
    deep = b'{"a":' * 257 + b"1" + b"}" * 257
    for mod in (_core, _pure):
        assert mod.parse_json_object(ok)
        with pytest.raises(ValueError):
            mod.parse_json_object(deep)
