"""Every argument check of the rate limiter, written once: keys, costs, times, algorithms, bans, on_error.

Pure Python: both cores, RateLimiter and the Redis tables call these, so a rule and its message exist once.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ALGORITHMS", "ON_ERROR", "NO_BANS", "MAX_NOW_NS", "MAX_BAN_SECONDS", "check_algorithm", "check_max_keys",
           "check_on_error", "ban_settings", "ban_seconds", "epoch_ns", "checked_cost", "as_integer", "key_bytes"]

#: The algorithms of the rate limiter (fastguard._pure defines each rule).
ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket", "gcra")
#: What a decision does while a store cannot answer: admit, refuse, or ask the in-process core.
ON_ERROR = ("allow", "deny", "local")
#: What ban(), unban() and banned() say on a limiter made without bans.
NO_BANS = "this limiter has no bans: give it ban_after and ban_for, or ban_for alone"
#: The longest ban: 100 years of seconds.
MAX_BAN_SECONDS = 100 * 365 * 86_400


def check_algorithm(algorithm: Any) -> str:
    if not isinstance(algorithm, str) or algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
    return algorithm


def check_max_keys(max_keys: Any) -> int:
    if isinstance(max_keys, bool) or not isinstance(max_keys, int):
        raise TypeError(f"max_keys must be an int, not {type(max_keys).__name__}")
    if max_keys < 1:
        raise ValueError(f"max_keys must be at least 1, got {max_keys}")
    return max_keys


def check_on_error(on_error: Any) -> str:
    if not isinstance(on_error, str) or on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    return on_error


def ban_seconds(seconds: Any) -> float:
    """The length of a ban set with ban(): seconds above 0, at most MAX_BAN_SECONDS."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 < seconds <= MAX_BAN_SECONDS:
        raise ValueError(f"a ban lasts between 0 and 100 years of seconds, got {seconds!r}")
    return float(seconds)


def ban_settings(ban_after: Any, ban_for: Any) -> tuple[int, int]:
    """(ban_after, ban_for in ns), checked: ban_after an int >= 0, ban_for seconds >= 0. Both 0: no bans;
    ban_for alone: only bans set with ban(). Raises TypeError / ValueError naming the argument."""
    if isinstance(ban_after, bool) or not isinstance(ban_after, int):
        raise TypeError(f"ban_after must be an int, not {type(ban_after).__name__}")
    if ban_after < 0 or ban_after > 2**40:
        raise ValueError(f"ban_after must be between 0 and 2**40, got {ban_after}")
    if isinstance(ban_for, bool) or not isinstance(ban_for, (int, float)):
        raise TypeError(f"ban_for must be a number of seconds, not {type(ban_for).__name__}")
    if not 0 <= ban_for <= MAX_BAN_SECONDS:  # also refuses NaN
        raise ValueError(f"ban_for must be between 0 and 100 years of seconds, got {ban_for!r}")
    # any positive ban_for is a ban of at least 1 ns (5e-324 s rounded to 0 ns was refused although Kong's schema,
    # ban_for > 0, accepts it: a config Kong takes must start)
    ban_for_ns = max(1, round(ban_for * 1_000_000_000)) if ban_for > 0 else 0
    if ban_after > 0 and ban_for_ns <= 0:
        raise ValueError("ban_after needs ban_for: how many seconds a ban lasts")
    return ban_after, ban_for_ns


#: Largest accepted time: 2**62 ns (year 2116); sums inside the core stay within int64.
MAX_NOW_NS = 2**62


def epoch_ns(now: Any) -> int:
    """`now=` (epoch seconds, int or float) as int nanoseconds, floor(now * 1e9), exactly as the compiled core
    takes it. Raises TypeError / ValueError (outside 0 .. 2**62 ns, or not finite)."""
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"now must be epoch seconds as a float, not {type(now).__name__}")
    try:
        ns = float(now) * 1e9
    except OverflowError:
        ns = math.inf
    if not math.isfinite(ns) or ns < 0 or ns >= MAX_NOW_NS:
        raise ValueError(f"now must be epoch seconds between 0 and 2**62 ns, got {now!r}")
    return math.floor(ns)


def checked_cost(cost: Any) -> int:
    """A hit's cost: an int >= 0, or any integer type (numpy's) (TypeError / ValueError otherwise)."""
    if isinstance(cost, bool) or not isinstance(cost, int):
        cost = as_integer(cost)
    if cost < 0:
        raise ValueError(f"cost must not be negative, got {cost}")
    return cost


def as_integer(value: Any) -> int:
    """An integer of another type (numpy.int64, ...) as an int; TypeError for bools and non-integers."""
    index = getattr(type(value), "__index__", None)
    if index is None or "bool" in type(value).__name__:
        raise TypeError(f"cost must be an int, not {type(value).__name__}")
    return int(index(value))


def key_bytes(key: Any) -> bytes:
    """A rate-limit key's bytes: a str's UTF-8, or the bytes themselves. TypeError for other types; ValueError for a
    str that is not valid Unicode (a lone surrogate, e.g. from surrogateescape): pass such a key as bytes."""
    if isinstance(key, str):
        try:
            return key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"rate-limit key {key!r} holds a lone surrogate: pass the key as bytes") from None
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"rate-limit key must be str or bytes, not {type(key).__name__}")
