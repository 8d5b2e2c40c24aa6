"""Behaviour of RateLimiter, run against the compiled core and the pure twin (fixture `make`)."""

import math

import numpy as np
import pytest

import fastguard as fg

ALGS = fg.ALGORITHMS
T0 = 864_000.0  # ten days after the epoch: whole days, and floats still resolve nanoseconds here


def allowed_count(lim, key, times, cost=1):
    return sum(lim.hit(key, cost=cost, now=t).allowed for t in times)


# -- each algorithm's rule ----------------------------------------------------------------------------------------

def test_fixed_window_boundaries(make):
    lim = make("3/second", "fixed_window")
    assert [lim.hit("k", now=T0 + 0.999).allowed for _ in range(4)] == [True, True, True, False]
    d = lim.hit("k", now=T0 + 0.999)
    assert d.retry_after == pytest.approx(0.001) and d.reset_after == pytest.approx(0.001)
    assert lim.hit("k", now=T0 + 1.0).allowed  # the next window starts exactly at the boundary
    assert lim.hit("k", now=T0 + 1.0).remaining == 1


def test_sliding_window_estimate(make):
    lim = make("10/second", "sliding_window")
    assert allowed_count(lim, "k", [T0 + 0.5] * 12) == 10
    # At T0+1.25 the previous window weighs 0.75: estimate 7.5, so 2 more fit (9.5 + 1 > 10 refuses the third).
    d = lim.peek("k", now=T0 + 1.25)
    assert d.remaining == 2
    assert allowed_count(lim, "k", [T0 + 1.25] * 3) == 2
    # Denied at 1.25 with cur=2, prev=10: wait until prev*(1-e) <= 10-2-1 => e >= 0.3, i.e. 0.05 s.
    assert lim.hit("k", now=T0 + 1.25).retry_after == pytest.approx(0.05)
    # Two windows later everything is gone.
    assert lim.peek("k", now=T0 + 3.0).remaining == 10


def test_token_bucket_keeps_fractions_exactly(make):
    lim = make("3/second", "token_bucket")  # one token per 333_333_333.33 ns
    assert allowed_count(lim, "k", [T0] * 4) == 3
    d = lim.hit("k", now=T0)
    assert not d.allowed and d.retry_after == pytest.approx(1 / 3, abs=1e-9)
    # 1/3 s minus one nanosecond is not enough, 1/3 s rounded up is.
    assert not lim.hit("k", now=T0 + 0.333333332).allowed
    assert lim.hit("k", now=T0 + 0.333333334).allowed
    # 3 x 1/3 s refill exactly 3 tokens although 1/3 s is not a whole number of ns: no drift after 3000 cycles.
    lim2 = make("3/second", "token_bucket")
    t = T0
    admitted = 0
    for _ in range(3000):
        admitted += allowed_count(lim2, "k", [t] * 3)
        t += 1.0
    assert admitted == 9000


def test_gcra_paces_at_the_emission_interval(make):
    lim = make("4/second", "gcra")  # T = 250 ms, burst 4
    assert allowed_count(lim, "k", [T0] * 5) == 4
    assert lim.hit("k", now=T0).retry_after == pytest.approx(0.25)
    assert not lim.hit("k", now=T0 + 0.2499).allowed
    assert lim.hit("k", now=T0 + 0.25).allowed


def test_bucket_and_gcra_agree_when_the_interval_is_whole(make):
    a, b = make("5/second", "token_bucket"), make("5/second", "gcra")
    for i in range(200):
        t = T0 + (i * 37 % 101) / 100 + i * 0.05
        da, db = a.hit("k", now=t), b.hit("k", now=t)
        assert (da.allowed, da.remaining, da.retry_after) == (db.allowed, db.remaining, db.retry_after)


# -- several limits, cost, peek, reset ---------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGS)
def test_several_limits_are_atomic(make, alg):
    lim = make("2/second; 3/minute", alg)
    times = [T0, T0, T0 + 1, T0 + 1, T0 + 2]
    got = [lim.hit("k", now=t).allowed for t in times]
    if alg == "fixed_window":
        assert got == [True, True, True, False, False]
    # A hit refused by one limit is counted in none: the per-second limit still shows its room.
    d = lim.hit("k", now=T0 + 2.5)
    assert not d.allowed and d.limit == 3
    assert sum(got) <= 3


def test_decision_describes_the_most_restrictive_limit(make):
    lim = make("10/second; 12/minute")
    d = lim.hit("k", cost=5, now=T0)
    assert (d.limit, d.remaining, d.remainings) == (10, 5, (5, 7))
    d = lim.hit("k", cost=2, now=T0 + 1)
    assert (d.limit, d.remaining) == (12, 5)  # the minute limit now has the least room
    # A tie on remaining picks the longer period.
    lim = make("5/second; 5/minute")
    d = lim.hit("k", now=T0)
    assert d.remaining == 4 and d.limit == 5 and d.period == 60


@pytest.mark.parametrize("alg", ALGS)
def test_cost_above_the_limit_is_never_admitted(make, alg):
    lim = make("5/second", alg)
    d = lim.hit("k", cost=6, now=T0)
    assert not d.allowed and math.isinf(d.retry_after) and d.remaining == 5
    assert "Retry-After" not in d.headers()
    assert lim.hit("k", cost=2**80, now=T0).allowed is False  # huge costs are fine, and refused
    assert lim.hit("k", cost=5, now=T0).allowed  # nothing was counted by the refusals


@pytest.mark.parametrize("alg", ALGS)
def test_cost_zero_is_admitted_and_counts_nothing(make, alg):
    lim = make("2/second", alg)
    for _ in range(5):
        assert lim.hit("k", cost=0, now=T0).allowed
    assert allowed_count(lim, "k", [T0] * 3) == 2
    assert lim.hit("k", cost=0, now=T0).allowed


@pytest.mark.parametrize("alg", ALGS)
def test_peek_records_nothing(make, alg):
    lim = make("2/second", alg)
    for _ in range(5):
        d = lim.peek("k", now=T0)
        assert d.allowed and d.remaining == 2
    lim.hit("k", now=T0)
    lim.hit("k", now=T0)
    d = lim.peek("k", now=T0)
    assert not d.allowed and d.remaining == 0 and d.retry_after > 0
    assert lim.stats()["keys"] == 1


@pytest.mark.parametrize("alg", ALGS)
def test_reset_forgets_a_key(make, alg):
    lim = make("1/hour", alg)
    assert lim.hit("a", now=T0).allowed and lim.hit("b", now=T0).allowed
    assert not lim.hit("a", now=T0).allowed
    lim.reset("a")
    lim.reset("never-seen")
    assert lim.hit("a", now=T0).allowed
    assert not lim.hit("b", now=T0).allowed
    assert lim.stats()["keys"] == 2


# -- time --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGS)
def test_time_going_backwards_never_refills(make, alg):
    lim = make("5/minute", alg)
    admitted = allowed_count(lim, "k", [T0 + 30] * 10)
    # The clock jumps back across a window boundary and wobbles: no second burst.
    admitted += allowed_count(lim, "k", [T0 - 3600, T0 + 5, T0 - 1, T0 + 29, T0 + 30, 0.0])
    assert admitted == 5


@pytest.mark.parametrize("alg", ALGS)
def test_very_long_idle_is_fresh(make, alg):
    lim = make("3/second; 10/day", alg)
    assert allowed_count(lim, "k", [T0] * 5) == 3
    later = T0 + 50 * 365 * 86400
    d = lim.hit("k", now=later)
    assert d.allowed and d.remainings == (2, 9)


def test_wall_clock_is_used_without_now(make):
    lim = make("2/hour")
    assert lim.hit("k").allowed and lim.hit("k").allowed
    d = lim.hit("k")
    assert not d.allowed and 0 < d.retry_after <= 3600


# -- keys and the table ------------------------------------------------------------------------------------------

def test_non_ascii_keys(make):
    lim = make("1/minute")
    assert lim.hit("ключ-🔑", now=T0).allowed
    assert not lim.hit("ключ-🔑".encode(), now=T0).allowed  # a str is its UTF-8 bytes
    assert lim.hit("ключ-🔐", now=T0).allowed
    assert lim.hit("", now=T0).allowed and lim.hit(b"\x00\xff", now=T0).allowed
    assert lim.hit("x" * 10_000, now=T0).allowed and not lim.hit("x" * 10_000, now=T0).allowed


@pytest.mark.parametrize("alg", ALGS)
def test_eviction_at_max_keys_prefers_expired_then_oldest(make, alg):
    lim = make("1/second", alg, max_keys=4)
    for i, key in enumerate("abcd"):
        assert lim.hit(key, now=T0 + i * 0.1).allowed
    # Nothing expired yet: the least recently touched key ("a") goes.
    assert lim.hit("e", now=T0 + 0.5).allowed
    st = lim.stats()
    assert st["keys"] == 4 and st["evictions"] == 1
    assert lim.hit("a", now=T0 + 0.6).allowed  # "a" was forgotten (and now evicts "b")
    assert not lim.hit("c", now=T0 + 0.6).allowed  # "c" was kept
    # Ten seconds later every state has expired: new keys take their places, nothing of value lost.
    for i in range(20):
        lim.hit(f"new{i}", now=T0 + 10)
    st = lim.stats()
    assert st["keys"] == 4 and st["evictions"] == 22


def test_denied_newcomer_takes_no_room(make):
    lim = make("5/second", max_keys=10)
    for i in range(100):
        assert not lim.hit(f"k{i}", cost=6, now=T0).allowed
    assert lim.stats()["keys"] == 0


def test_stats_count_decisions(make):
    lim = make("1/minute", max_keys=100)
    lim.hit("a", now=T0)
    lim.hit("a", now=T0)
    lim.peek("a", now=T0)
    st = lim.stats()
    assert (st["hits"], st["denials"], st["keys"], st["capacity"]) == (2, 1, 1, 100)
    assert st["entry_bytes"] == 32 and st["algorithm"] == "fixed_window"


# -- bad input ---------------------------------------------------------------------------------------------------

def test_bad_input_is_refused_clearly(make):
    lim = make("5/second")
    with pytest.raises(ValueError, match="cost must not be negative"):
        lim.hit("k", cost=-1)
    with pytest.raises(TypeError, match="cost must be an int"):
        lim.hit("k", cost=1.5)
    with pytest.raises(TypeError, match="cost must be an int"):
        lim.hit("k", cost=True)
    with pytest.raises(TypeError, match="key must be str or bytes, not int"):
        lim.hit(42)
    with pytest.raises(TypeError, match="key must be str or bytes, not NoneType"):
        lim.peek(None)
    with pytest.raises(TypeError, match="key must be str or bytes"):
        lim.reset(3.0)
    with pytest.raises(ValueError, match="now must be epoch seconds"):
        lim.hit("k", now=-1.0)
    with pytest.raises(ValueError, match="now must be epoch seconds"):
        lim.hit("k", now=math.nan)
    with pytest.raises(ValueError, match="now must be epoch seconds"):
        lim.hit("k", now=10**400)
    with pytest.raises(TypeError, match="now must be epoch seconds"):
        lim.hit("k", now="soon")
    with pytest.raises(ValueError, match="lone surrogate: pass the key as bytes") as caught:
        lim.hit("\ud800")  # a lone surrogate has no UTF-8 bytes
    assert type(caught.value) is ValueError   # a clear error, not a bare UnicodeEncodeError
    assert lim.stats()["hits"] == 0
    assert lim.hit(b"\xed\xa0\x80").allowed   # its bytes are a key like any other


def test_bad_configuration_is_refused_clearly(make, impl):
    with pytest.raises(ValueError, match="unknown algorithm 'leaky'"):
        make("1/s", "leaky")
    with pytest.raises(ValueError, match="count must be at least 1"):
        make("0/s")
    with pytest.raises(ValueError, match="malformed limit"):
        make("ten/s")
    with pytest.raises(ValueError, match="max_keys must be at least 1"):
        make("1/s", max_keys=0)
    with pytest.raises(TypeError, match="max_keys must be an int"):
        make("1/s", max_keys=10.0)
    with pytest.raises(TypeError, match="store must provide table"):
        fg.RateLimiter("1/s", store=object())


# -- hit_many ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGS)
def test_hit_many_equals_hits_in_order(make, alg):
    keys = [f"user{i % 7}" for i in range(60)]
    costs = np.array([i % 3 for i in range(60)], dtype=np.int64)
    one, many = make("5/second; 8/minute", alg), make("5/second; 8/minute", alg)
    b = many.hit_many(keys, costs, now=T0)
    singles = [one.hit(k, cost=int(c), now=T0) for k, c in zip(keys, costs, strict=True)]
    assert b.allowed.tolist() == [d.allowed for d in singles]
    assert b.remaining.tolist() == [d.remaining for d in singles]
    assert b.retry_after.tolist() == [d.retry_after for d in singles]
    assert b.reset_after.tolist() == [d.reset_after for d in singles]
    assert b.allowed.dtype == bool and b.remaining.dtype == np.int64 and b.retry_after.dtype == np.float64


def test_hit_many_numpy_ids(make):
    lim = make("3/minute", max_keys=10_000)
    ids = np.repeat(np.arange(1000, dtype=np.uint64), 5)
    b = lim.hit_many(ids, now=T0)
    assert b.allowed.reshape(1000, 5).sum(axis=1).tolist() == [3] * 1000
    assert lim.stats()["keys"] == 1000
    signed = lim.hit_many(np.arange(1000, dtype=np.int64), now=T0)  # non-negative int64 ids are the same ids
    assert not signed.allowed.any()
    assert len(lim.hit_many(np.array([], dtype=np.uint64), now=T0)) == 0


def test_hit_many_bad_input(make):
    lim = make("3/minute")
    with pytest.raises(ValueError, match="must not be negative"):
        lim.hit_many(np.array([1, -2]))
    with pytest.raises(ValueError, match="must not be negative"):
        lim.hit_many(["a", "b"], costs=[1, -1])
    with pytest.raises(ValueError, match="one entry per key"):
        lim.hit_many(["a", "b"], costs=[1])
    with pytest.raises(TypeError, match="costs must be integers"):
        lim.hit_many(["a"], costs=[1.5])
    with pytest.raises(TypeError, match="key must be str or bytes"):
        lim.hit_many(["a", 3])
    with pytest.raises(TypeError, match="keys must be"):
        lim.hit_many("abc")
    with pytest.raises(TypeError, match="keys must be integer ids"):
        lim.hit_many(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="1-D"):
        lim.hit_many(np.zeros((2, 2), dtype=np.uint64))


# -- accuracy ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ALGS)
def test_steady_90_percent_is_never_denied_after_the_first_window(make, alg):
    lim = make("100/10s", alg)
    gap = 10 / 90  # 90 % of the allowed rate, evenly spaced
    denied_late = [i for i in range(2000) if not lim.hit("k", now=T0 + i * gap).allowed and i * gap >= 10]
    assert denied_late == []


@pytest.mark.parametrize("alg", ALGS)
def test_200_percent_is_admitted_at_no_more_than_the_limit(make, alg):
    lim = make("50/second", alg)
    gap = 1 / 100
    times = [T0 + 0.003 + i * gap for i in range(3000)]  # 30 s at twice the rate
    admitted_at = [t for t in times if lim.hit("k", now=t).allowed]
    # In every window of one period (any start) at most C, plus the burst C for bucket/GCRA at the very start,
    # plus sliding window's estimate tolerance; overall rate never above the limit.
    assert len(admitted_at) <= 50 * 30 + 50
    for start in np.arange(T0, T0 + 29, 0.37):
        in_window = sum(1 for t in admitted_at if start <= t < start + 1)
        bound = 50 if alg == "fixed_window" and (start - T0) % 1 == 0 else 100
        assert in_window <= bound
    # And it is not wildly conservative either: at least 90 % of the allowed rate gets through.
    assert len(admitted_at) >= 0.9 * 50 * 30


def test_decisions_release_what_they_hold(make):
    """Dropped Decisions give back their reference to the limiter's limits (no leak per call)."""
    import sys

    lim = make("5/second; 7/minute")
    limits = lim._table.limits
    before = sys.getrefcount(limits)
    for i in range(20_000):
        lim.hit(f"k{i % 50}", now=T0 + i * 0.01)
        lim.peek("k1", now=T0 + i * 0.01)
    lim.hit_many([f"k{i}" for i in range(100)], now=T0 + 500)
    assert sys.getrefcount(limits) == before
    kept = lim.hit("k1", now=T0 + 600)
    assert sys.getrefcount(limits) == before + 1 and kept.limits is limits


@pytest.mark.parametrize("alg", ["fixed_window", "sliding_window"])
def test_a_peek_ahead_in_time_never_resets_the_window(make, alg):
    """Regression (found by the differential test): a peek at a later time must not roll the stored windows, or a
    hit whose clock is earlier (but not before the key's last hit) sees them reset and bursts past the limit."""
    lim = make("3/second", alg)
    assert lim.hit("k", now=T0 + 0.5).allowed and lim.hit("k", now=T0 + 0.5).allowed
    assert lim.peek("k", now=T0 + 1.2).remaining == {"fixed_window": 3, "sliding_window": 1}[alg]
    assert lim.hit("k", now=T0 + 0.6).remaining == 0          # third and last of this window
    assert not lim.hit("k", now=T0 + 0.7).allowed


# -- charge and the hit journal (what local-first cluster mode builds on) -------------------------------------------
@pytest.mark.parametrize("algorithm", fg.ALGORITHMS)
def test_charge_counts_in_every_limit_up_to_exhausted(impl, algorithm):
    table = impl.Table(algorithm, tuple(fg.parse_limits("10/minute; 4/second")), 100)
    table.charge("k", 3, now=100.0)
    assert table.peek("k", now=100.0).remainings == (7, 1)
    table.charge("k", 50, now=100.0)  # each limit takes what it can: the minute 7, the second 1
    assert table.peek("k", now=100.0).remainings == (0, 0)
    assert not table.hit("k", now=100.0).allowed
    assert table.stats()["hits"] == 1  # a charge is not a decision


def test_charge_of_nothing_stores_no_key(impl):
    table = impl.Table("fixed_window", (fg.Limit(5, 60),), 100)
    table.charge("k", 0, now=1.0)
    assert table.stats()["keys"] == 0
    table.charge("k", 1, now=1.0)
    assert table.stats()["keys"] == 1


def test_charge_checks_its_arguments(impl):
    table = impl.Table("gcra", (fg.Limit(5, 60),), 100)
    with pytest.raises(TypeError):
        table.charge(7, 1)
    with pytest.raises(ValueError):
        table.charge("k", -1)


def test_the_journal_holds_hits_only_while_recording(impl):
    table = impl.Table("token_bucket", (fg.Limit(2, 60),), 100)
    table.hit("before", now=1.0)
    table.record_hits(True)
    for key, cost in [("a", 1), (b"b", 0), ("a", 1), ("a", 1), ("c", 2), ("d", 3)]:
        table.hit(key, cost, now=1.0)
    # Admitted cost summed per key; a key that was hit but only refused (or cost 0) is there with 0.
    assert sorted(table.drain_hits(), key=repr) == [("a", 2), ("c", 2), ("d", 0), (b"b", 0)]
    assert table.drain_hits() == []
    table.record_hits(False)
    table.hit("d", now=1.0)
    assert table.drain_hits() == []


def test_the_journal_grows_and_sums_per_key(impl):
    table = impl.Table("fixed_window", (fg.Limit(10**9, 60),), 100_000)
    table.record_hits(True)
    for i in range(6000):
        table.hit(f"k{i % 3000}", 1 if i < 3000 else 2, now=1.0)  # each key twice, costs 1 then 2
    drained = dict(table.drain_hits())
    assert len(drained) == 3000 and set(drained.values()) == {3}
    assert table.drain_hits() == []



# -- bans -----------------------------------------------------------------------------------------------------------
def test_a_key_over_ban_after_is_refused_for_exactly_ban_for_then_admitted(impl):
    lim = fg.RateLimiter("2/10s; 100/hour", algorithm="fixed_window", ban_after=3, ban_for=60, _core=impl)
    t = 1000.0
    got = [lim.hit("k", now=t) for _ in range(5)]
    assert [d.allowed for d in got] == [True, True, False, False, False]
    assert [d.banned for d in got] == [False, False, False, False, True]   # the third denial starts the ban
    assert got[-1].retry_after == 60.0 and got[-1].headers()["Retry-After"] == "60"
    assert lim.banned("k", now=t + 10) == 50.0
    during = lim.hit("k", now=t + 59.999)
    assert not during.allowed and during.banned and during.remaining == 0 and during.limit == 2
    assert abs(during.retry_after - 0.001) < 1e-9
    assert lim.peek("k", now=t + 30).banned
    after = lim.hit("k", now=t + 60)
    assert after.allowed and not after.banned and lim.banned("k", now=t + 60) == 0.0
    assert lim.stats()["bans"] == 1


def test_denials_count_within_the_window_of_the_shortest_limit_only(impl):
    lim = fg.RateLimiter("1/second; 50/minute", algorithm="sliding_window", ban_after=3, ban_for=30, _core=impl)
    lim.hit("k", now=10.0)
    assert not lim.hit("k", now=10.1).allowed
    assert not lim.hit("k", now=10.2).allowed            # 2 denials within 1 s
    assert lim.hit("k", now=12.5).allowed                # a later window: admitted, and the count starts over
    assert not lim.hit("k", now=12.6).banned
    assert lim.banned("k", now=12.6) == 0.0


def test_manual_bans_and_unban(impl):
    lim = fg.RateLimiter("5/minute", ban_for=1, _core=impl)   # ban_for alone: manual bans only
    lim.ban("intruder", 120, now=100.0)
    assert lim.banned("intruder", now=100.0) == 120.0
    d = lim.hit("intruder", now=150.0)
    assert d.banned and d.retry_after == 70.0
    lim.unban("intruder")
    assert lim.hit("intruder", now=150.0).allowed
    assert all(lim.hit("other", now=150.0).allowed for _ in range(5))
    assert not lim.hit("other", now=150.0).banned        # no ban_after: denials never ban


def test_ban_arguments_are_checked(impl):
    with pytest.raises(ValueError, match="ban_after needs ban_for"):
        fg.RateLimiter("1/s", ban_after=3, _core=impl)
    with pytest.raises(TypeError, match="ban_after must be an int"):
        fg.RateLimiter("1/s", ban_after=2.5, ban_for=1, _core=impl)
    with pytest.raises(ValueError, match="ban_for must be between"):
        fg.RateLimiter("1/s", ban_after=1, ban_for=-1, _core=impl)
    with pytest.raises(ValueError, match="ban_for must be between"):
        fg.RateLimiter("1/s", ban_after=1, ban_for=float("nan"), _core=impl)
    plain = fg.RateLimiter("1/s", _core=impl)
    with pytest.raises(ValueError, match="no bans"):
        plain.ban("k", 10)
    with pytest.raises(ValueError, match="no bans"):
        plain.banned("k")
    banning = fg.RateLimiter("1/s", ban_for=1, _core=impl)
    with pytest.raises(ValueError, match="a ban lasts"):
        banning.ban("k", 0)


def test_the_ban_gate_answers_banned_keys_and_hands_on_the_others(impl):
    calls = []

    def slow(key, cost, now):
        calls.append((key, cost, now))
        return "slow"

    bans = impl.Table("fixed_window", (fg.Limit(5, 60),), 100, 0, 1.0)
    gate = impl.BanGate(bans, slow)
    bans.ban("mallory", 30, now=100.0)
    d = gate("mallory", now=110.0)
    assert d.banned and not d.allowed and d.retry_after == 20.0 and d.remainings == (0,)
    assert gate("alice", 2, now=110.0) == "slow" and calls == [("alice", 2, 110.0)]
    assert gate("mallory", now=130.0) == "slow"  # the ban ended
    assert gate.answered == 1
    with pytest.raises(ValueError):
        gate("mallory", -1, now=110.0)
    with pytest.raises(ValueError, match="no bans"):
        impl.BanGate(impl.Table("fixed_window", (fg.Limit(5, 60),), 100), slow)


def test_the_journal_holds_at_most_max_keys_keys(impl):
    table = impl.Table("fixed_window", (fg.Limit(5, 60),), 10)
    table.record_hits(True)
    for i in range(25):
        table.hit(f"spray-{i}", now=1.0)
    table.hit("spray-0", now=1.0)   # a journaled key still sums
    hits = dict(table.drain_hits())
    assert len(hits) == 10 and table.journal_dropped == 15
    assert sum(hits.values()) == 11


# -- eviction under a key spray: bans and exhausted keys are the last to go --------------------------------------------
def test_a_ban_survives_a_spray_of_twice_max_keys_fresh_callers(impl):
    lim = fg.RateLimiter("5/minute", algorithm="fixed_window", max_keys=1000, ban_after=3, ban_for=3600, _core=impl)
    lim.ban("attacker", 3600, now=100.0)
    for _ in range(4):
        lim.hit("repeat", now=100.0)
    for _ in range(4):                       # banned by ban_after: 4 denials within the window
        lim.hit("repeat", now=100.0)
    assert lim.banned("repeat", now=100.0) > 0
    for i in range(2000):
        lim.hit(f"spray-{i}", now=101.0)
    for key in ("attacker", "repeat"):
        d = lim.hit(key, now=102.0)
        assert not d.allowed and d.banned, key
    assert lim.stats()["keys"] <= 1000


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket", "gcra"])
def test_the_batch_path_evicts_as_the_single_path_does(impl, algorithm):
    """hit_many over a spray of 2 x max_keys fresh callers: a ban survives every one of 40 sprays, and the table
    is left exactly as the same hits one by one leave it (same evictions, same decision for every key)."""
    pytest.importorskip("numpy")
    import numpy as np

    for seed in range(4 if impl.__name__.startswith("fastguard._pure") else 40):
        tables = []
        for batch in (False, True):
            lim = fg.RateLimiter("5/minute", algorithm=algorithm, max_keys=200, ban_after=3, ban_for=3600,
                                 _core=impl)
            lim.ban("attacker", 3600, now=100.0)
            for _ in range(8):
                lim.hit("repeat", now=100.0)     # banned by ban_after
            spray = [f"spray-{seed}-{i}" for i in np.random.default_rng(seed).permutation(400)]
            if batch:
                lim.hit_many(spray, now=101.0)
            else:
                for key in spray:
                    lim.hit(key, now=101.0)
            assert lim.banned("attacker", now=102.0) > 0 and lim.banned("repeat", now=102.0) > 0, (seed, batch)
            st = lim.stats()
            tables.append(((st["keys"], st["evictions"]),
                           [lim.peek(key, now=102.0).remaining for key in ["attacker", "repeat", *spray]]))
        assert tables[0] == tables[1], seed
    ids = np.random.default_rng(7).integers(0, 2**63, 400, dtype=np.uint64)   # numpy ids: the same rule
    lim = fg.RateLimiter("5/minute", algorithm=algorithm, max_keys=200, ban_after=3, ban_for=3600, _core=impl)
    lim.ban("attacker", 3600, now=100.0)
    lim.hit_many(ids, now=101.0)
    assert lim.banned("attacker", now=102.0) > 0


def test_a_shard_full_of_bans_evicts_the_ban_that_ends_first(impl):
    lim = fg.RateLimiter("5/minute", max_keys=20, ban_for=10_000, _core=impl)
    for i in range(20):
        lim.ban(f"b{i}", 1000 + (i * 7919) % 20 * 10, now=100.0)   # distinct lengths, in shuffled order
    shortest = min(range(20), key=lambda i: (i * 7919) % 20)
    assert lim.hit("newcomer", now=101.0).allowed                  # a newcomer is still stored and limited
    assert lim.banned(f"b{shortest}", now=101.0) == 0.0
    assert all(lim.banned(f"b{i}", now=101.0) > 0 for i in range(20) if i != shortest)
    assert [lim.hit("newcomer", now=101.0).allowed for _ in range(5)] == [True] * 4 + [False]


def test_a_small_spray_resets_almost_no_exhausted_key(impl):
    n = 4000
    lim = fg.RateLimiter("5/hour", algorithm="sliding_window", max_keys=n, _core=impl)
    for i in range(n // 2):                  # half the table: idle callers with capacity left
        lim.hit(f"light-{i}", now=10.0)
    for i in range(n // 2):                  # the other half: exhausted callers
        for _ in range(5):
            lim.hit(f"heavy-{i}", now=10.0)
    for i in range(n // 20):                 # a spray of 5 % of capacity
        lim.hit(f"spray-{i}", now=20.0)
    reset = sum(lim.peek(f"heavy-{i}", now=30.0).allowed for i in range(n // 2))
    # Eviction takes a key with capacity left whenever its sample holds one: an exhausted key goes only when
    # all 8 sampled entries are exhausted (before: 10 % of them were reset by such a spray).
    assert reset <= n // 2 // 100, reset


def test_hit_many_refuses_mappings_and_sets_clearly(impl):
    lim = fg.RateLimiter("5/minute", _core=impl)
    for keys in ({"a": 1, "b": 2}, {"a", "b"}, "ab", b"ab", iter(["a"])):
        with pytest.raises(TypeError, match="keys must be a list"):
            lim.hit_many(keys)
    assert lim.hit_many(("a", "b")).allowed.tolist() == [True, True]


def test_numpy_integer_costs_are_accepted(impl):
    import numpy as np

    lim = fg.RateLimiter("5/minute", _core=impl)
    assert lim.hit("k", np.int64(3), now=1.0).remaining == 2
    assert lim.hit("k", np.uint8(2), now=1.0).remaining == 0
    with pytest.raises(TypeError):
        lim.hit("k", np.bool_(True), now=1.0)
    with pytest.raises(TypeError):
        lim.hit("k", np.float64(1.0), now=1.0)


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket", "gcra"])
def test_ratelimit_reset_never_exceeds_the_window_it_describes(impl, algorithm):
    """Kong reports at most the window: an hourly sliding window once read 6,088 s (its state outlives the window)."""
    lim = fg.RateLimiter("10/hour", algorithm=algorithm, _core=impl)
    start = 3600 * 1000.0
    for i, t in enumerate([start + 100, start + 1800, start + 3599, start + 3700, start + 7000, start + 7300]):
        d = lim.hit("k", 3 if i % 2 else 1, now=t)
        reset = int(d.headers()["RateLimit-Reset"])
        assert 0 <= reset <= 3600, (algorithm, t, d.reset_after, reset)
    if algorithm == "sliding_window":     # the time left in the current window, as Rate Limiting Advanced says
        fresh = fg.RateLimiter("10/hour", algorithm=algorithm, _core=impl)
        fresh.hit("k", now=start + 100)
        assert fresh.hit("k", now=start + 3700).headers()["RateLimit-Reset"] == str(3600 - 100)
        assert fresh.hit("k", now=start + 100 + 3600 * 2).headers()["RateLimit-Reset"] == str(3600 - 100)


def test_a_positive_ban_for_below_a_nanosecond_is_still_a_ban(impl):
    """Kong's schema accepts any ban_for > 0 with ban_after (hypothesis found 5e-324): the limiter must start."""
    lim = fg.RateLimiter("1/s", ban_after=1, ban_for=5e-324, _core=impl)
    assert lim.hit("k", now=100.0).allowed
