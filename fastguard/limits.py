"""Limits: "100/minute; 10/second" -> Limit objects (count per period, in whole nanoseconds).

Pure Python, importing neither core: both `_core` and `_pure` use it, so the rules of a limit exist once.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

__all__ = ["Limit", "parse_limits", "limit_from_ns", "window_name", "unit_seconds", "MAX_LIMITS"]

#: A limiter decides at most this many limits per key (the core keeps them in a fixed C array).
MAX_LIMITS = 8
#: Counts above 2**53 are refused: they would no longer be exact as floats in headers and stats.
MAX_COUNT = 2**53
#: Periods are int64 nanoseconds inside the core; 100 years leaves room for every sum it makes.
MAX_PERIOD_NS = 100 * 365 * 86_400 * 10**9

_UNITS = {
    "second": 1, "seconds": 1, "sec": 1, "secs": 1, "s": 1,
    "minute": 60, "minutes": 60, "min": 60, "mins": 60, "m": 60,
    "hour": 3600, "hours": 3600, "hr": 3600, "hrs": 3600, "h": 3600,
    "day": 86_400, "days": 86_400, "d": 86_400,
    "week": 7 * 86_400, "weeks": 7 * 86_400,
    # Months and years are fixed lengths (30 and 365 days), so windows stay multiples of the period since the epoch.
    "month": 30 * 86_400, "months": 30 * 86_400,
    "year": 365 * 86_400, "years": 365 * 86_400,
}
# Kong names its per-window headers after these units (X-RateLimit-Limit-Minute).
_WINDOW_NAMES = [(365 * 86_400, "Year"), (30 * 86_400, "Month"), (86_400, "Day"), (3600, "Hour"),
                 (60, "Minute"), (1, "Second")]

_LIMIT_RE = re.compile(r"^(\d+)\s*(?:/|\s+per\s+)\s*(\d+)?\s*([A-Za-z]+)$", re.IGNORECASE)


class Limit:
    """`count` admissions per `period` seconds.

    `period_seconds` may be fractional; the core works in whole nanoseconds (`period_ns`).
    Raises ValueError for a count < 1 or > 2**53, or a period that is not positive or longer than 100 years,
    and TypeError for a count that is not an int.
    """

    __slots__ = ("count", "period", "period_ns")
    count: int
    period: float
    period_ns: int

    def __init__(self, count: int, period_seconds: float) -> None:
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"limit count must be an int, not {type(count).__name__}")
        if count < 1:
            raise ValueError(f"limit count must be at least 1, got {count}")
        if count > MAX_COUNT:
            raise ValueError(f"limit count {count} is above the maximum 2**53")
        if isinstance(period_seconds, bool) or not isinstance(period_seconds, (int, float)):
            raise TypeError(f"limit period must be a number of seconds, not {type(period_seconds).__name__}")
        if not math.isfinite(period_seconds) or period_seconds <= 0:
            raise ValueError(f"limit period must be a positive number of seconds, got {period_seconds!r}")
        period_ns = round(period_seconds * 1_000_000_000) if isinstance(period_seconds, float) \
            else period_seconds * 1_000_000_000
        if period_ns < 1:
            raise ValueError(f"limit period {period_seconds!r} s is shorter than one nanosecond")
        if period_ns > MAX_PERIOD_NS:
            raise ValueError(f"limit period {period_seconds!r} s is longer than 100 years")
        object.__setattr__(self, "count", count)
        object.__setattr__(self, "period_ns", period_ns)
        object.__setattr__(self, "period", period_ns / 1e9)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Limit is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Limit):
            return NotImplemented
        return self.count == other.count and self.period_ns == other.period_ns

    def __hash__(self) -> int:
        return hash((self.count, self.period_ns))

    def __repr__(self) -> str:
        return f"Limit({self.count}, {self.period:g})"

    def __str__(self) -> str:
        return f"{self.count}/{window_name(self.period).lower()}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (limit_from_ns, (self.count, self.period_ns))


def limit_from_ns(count: int, period_ns: int) -> Limit:
    """Rebuild a Limit from whole nanoseconds (exact, unlike going through float seconds)."""
    limit = Limit(count, 1)
    object.__setattr__(limit, "period_ns", period_ns)
    object.__setattr__(limit, "period", period_ns / 1e9)
    return limit


@functools.lru_cache(maxsize=1024)  # a handful of periods, asked on every decision's headers
def unit_seconds(unit: str) -> int:
    """The length of a named unit ("second", "minute", "hour", "day", "week", "month" = 30 days, "year" = 365
    days; plurals and short forms too), or ValueError."""
    seconds = _UNITS.get(unit.lower()) if isinstance(unit, str) else None
    if seconds is None:
        raise ValueError(f"unknown time unit {unit!r}: second, minute, hour, day, week, month or year")
    return seconds


def window_name(period_seconds: float) -> str:
    """Kong-style name of a window: "Minute" for 60 s, "5Minutes" for 300 s, "1.5Seconds" otherwise."""
    for unit_seconds, name in _WINDOW_NAMES:
        if period_seconds >= unit_seconds and period_seconds % unit_seconds == 0:
            n = int(period_seconds // unit_seconds)
            return name if n == 1 else f"{n}{name}s"
    return f"{period_seconds:g}Seconds"


def parse_limits(text: str | Limit | list[Limit] | tuple[Limit, ...]) -> list[Limit]:
    """Parse `"100/minute; 10/second"` into Limits.

    Grammar per part: `N/unit`, `N/Munit` (`100/5m`), `N per unit`, `N per M units` (`10 per 2 seconds`);
    units second minute hour day month year (and s m h d); parts joined by `;` or `,`.
    Month = 30 days and year = 365 days. Raises ValueError naming the part that is wrong.
    A Limit or a list of Limits is returned as a list unchanged (after checks).
    """
    if isinstance(text, Limit):
        limits = [text]
    elif isinstance(text, (list, tuple)):
        limits = list(text)
        for item in limits:
            if not isinstance(item, Limit):
                raise TypeError(f"expected Limit objects, got {type(item).__name__}")
    elif isinstance(text, str):
        if not text.strip():
            raise ValueError("no limit given: write e.g. '100/minute; 10/second'")
        parts = [p.strip() for p in re.split(r"[;,]", text)]
        if len(parts) > 1 and not parts[-1]:
            parts.pop()  # one trailing separator is harmless
        limits = []
        for part in parts:
            if not part:
                raise ValueError(f"empty limit in {text!r} (two separators in a row?)")
            limits.append(_parse_one(part, text))
    else:
        raise TypeError(f"limits must be a string like '100/minute', not {type(text).__name__}")
    if not limits:
        raise ValueError("at least one limit is required")
    if len(limits) > MAX_LIMITS:
        raise ValueError(f"{len(limits)} limits given; a limiter decides at most {MAX_LIMITS} per key")
    return limits


def _parse_one(part: str, whole: str) -> Limit:
    m = _LIMIT_RE.match(part)
    if m is None:
        raise ValueError(f"malformed limit {part!r} in {whole!r}: expected 'N/unit', 'N/Munit' or 'N per M units'")
    count_text, mult_text, unit_text = m.groups()
    unit = _UNITS.get(unit_text.lower())
    if unit is None:
        raise ValueError(f"unknown unit {unit_text!r} in limit {part!r}: use second, minute, hour, day, month, "
                         "year (or s, m, h, d)")
    count = int(count_text)
    if count < 1:
        raise ValueError(f"limit {part!r}: the count must be at least 1")
    mult = int(mult_text) if mult_text is not None else 1
    if mult < 1:
        raise ValueError(f"limit {part!r}: the period multiplier must be at least 1")
    try:
        return Limit(count, mult * unit)
    except ValueError as exc:
        raise ValueError(f"limit {part!r}: {exc}") from None
