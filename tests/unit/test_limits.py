"""Limit strings, Limit objects and header rendering (pure Python, shared by both cores)."""

import math

import pytest

import fastguard as fg
from fastguard.decision import decision_headers
from fastguard.limits import window_name


@pytest.mark.parametrize("text, expected", [
    ("100/minute", [(100, 60)]),
    ("100/minute; 10/second", [(100, 60), (10, 1)]),
    ("100/minute, 10/second", [(100, 60), (10, 1)]),
    ("100/5m", [(100, 300)]),
    ("10 per 2 seconds", [(10, 2)]),
    ("10 per second", [(10, 1)]),
    ("5/h;7/d", [(5, 3600), (7, 86400)]),
    ("1/month; 2/year", [(1, 30 * 86400), (2, 365 * 86400)]),
    ("3/S", [(3, 1)]),
    ("  4 / 10 minutes ;", [(4, 600)]),
])
def test_parse_grammar(text, expected):
    assert [(lim.count, lim.period) for lim in fg.parse_limits(text)] == expected


@pytest.mark.parametrize("text, fragment", [
    ("100/fortnight", "unknown unit 'fortnight'"),
    ("100", "malformed limit '100'"),
    ("abc/minute", "malformed limit 'abc/minute'"),
    ("0/minute", "count must be at least 1"),
    ("10/0m", "multiplier must be at least 1"),
    ("10/s;;5/m", "empty limit"),
    ("", "no limit"),
    ("   ", "no limit"),
    ("-1/minute", "malformed limit '-1/minute'"),
    ("1/s;2/s;3/s;4/s;5/s;6/s;7/s;8/s;9/s", "at most 8"),
    ("1/s; 10/bogus", "unknown unit 'bogus' in limit '10/bogus'"),
])
def test_parse_errors_name_the_part(text, fragment):
    with pytest.raises(ValueError) as info:
        fg.parse_limits(text)
    assert fragment in str(info.value)


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        fg.parse_limits(100)
    with pytest.raises(TypeError):
        fg.parse_limits([fg.Limit(1, 1), "2/s"])


@pytest.mark.parametrize("count, period, exc", [
    (0, 1, ValueError), (-5, 1, ValueError), (1.5, 1, TypeError), (True, 1, TypeError), (2**53 + 1, 1, ValueError),
    (1, 0, ValueError), (1, -1, ValueError), (1, math.inf, ValueError), (1, math.nan, ValueError),
    (1, 101 * 365 * 86400, ValueError), (1, "60", TypeError), (1, 1e-10, ValueError),
])
def test_limit_validation(count, period, exc):
    with pytest.raises(exc):
        fg.Limit(count, period)


def test_limit_value_semantics():
    a, b = fg.Limit(10, 60), fg.Limit(10, 60.0)
    assert a == b and hash(a) == hash(b)
    assert a.period_ns == 60 * 10**9
    assert fg.Limit(3, 0.5).period_ns == 500_000_000
    assert str(a) == "10/minute" and repr(a) == "Limit(10, 60)"
    with pytest.raises(AttributeError):
        a.count = 5


def test_window_names():
    assert window_name(1) == "Second"
    assert window_name(60) == "Minute"
    assert window_name(300) == "5Minutes"
    assert window_name(86400) == "Day"
    assert window_name(30 * 86400) == "Month"
    assert window_name(365 * 86400) == "Year"
    assert window_name(1.5) == "1.5Seconds"


class _D:
    def __init__(self, allowed, retry_after):
        self.allowed, self.limit, self.remaining = allowed, 10, 0 if not allowed else 3
        self.reset_after, self.retry_after, self.period = 12.2, retry_after, 60.0
        self.limits, self.remainings = (fg.Limit(10, 60), fg.Limit(100, 3600)), (3, 50)


def test_headers_styles():
    h = decision_headers(_D(True, 0.0))
    assert h == {"RateLimit-Limit": "10", "RateLimit-Remaining": "3", "RateLimit-Reset": "13"}
    h = decision_headers(_D(False, 0.2), "kong")
    assert h["X-RateLimit-Limit-Minute"] == "10" and h["X-RateLimit-Remaining-Hour"] == "50"
    assert h["Retry-After"] == "1"  # at least one second, rounded up
    assert "Retry-After" not in decision_headers(_D(False, math.inf))  # never admissible: no retry hint
    with pytest.raises(ValueError, match="unknown header style"):
        decision_headers(_D(True, 0.0), "xml")


def test_limits_pickle_exactly():
    import pickle

    for lim in (fg.Limit(7, 1.000000001), fg.Limit(3, 0.1), fg.Limit(100, 86400)):
        back = pickle.loads(pickle.dumps(lim))
        assert back == lim and back.period_ns == lim.period_ns
