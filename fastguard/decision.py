"""What a decision looks like to a caller: the response headers of a Decision, and BatchDecision.

Pure Python: both cores and the Redis tables use these, so the header rules exist once.
"""

from __future__ import annotations

import math
from typing import Any

from fastguard.extras import install_hint
from fastguard.limits import window_name

__all__ = ["decision_headers", "window_reset", "BatchDecision", "numpy"]

#: What to install for hit_many (the only part of fastguard that needs numpy).
NUMPY_EXTRA = install_hint("batch")


def numpy() -> Any:
    """The numpy module, imported on first use: only hit_many needs it (its results are numpy arrays), so a plugin
    server or a `hit`-only service neither installs nor loads it."""
    try:
        import numpy as np
    except ImportError as exc:
        raise ImportError(f"hit_many works on numpy arrays, and numpy is not installed: {NUMPY_EXTRA}") from exc
    return np


def _ceil_seconds(seconds: float) -> int:
    return int(math.ceil(seconds)) if seconds > 0 else 0


def window_reset(decision: Any) -> float:
    """Seconds until the window of the limit a decision describes resets, never more than that window (Kong's and
    Rate Limiting Advanced's RateLimit-Reset): fixed window, its end; sliding window, the end of the current window
    (a key's state outlives it: the previous window still weighs); token bucket, until the bucket is full again;
    GCRA, until the key is as fresh as a new one. `reset_after` itself is when the key's state is forgotten."""
    reset = decision.reset_after
    if reset > decision.period:     # only a sliding window's state outlives its window (by at most one window)
        reset -= decision.period
    return reset


def decision_headers(decision: Any, style: str = "ietf") -> dict[str, str]:
    """Response headers for a Decision.

    "ietf": RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (whole seconds, rounded up, never more than the
    window: see window_reset), plus Retry-After
    when denied (at least 1 s; left out when the hit can never be admitted, its cost exceeding the limit).
    "kong": X-RateLimit-Limit-<Window> and X-RateLimit-Remaining-<Window> for every limit, plus the IETF ones.
    """
    if style not in ("ietf", "kong"):
        raise ValueError(f"unknown header style {style!r}: use 'ietf' or 'kong'")
    headers: dict[str, str] = {}
    if style == "kong":
        for limit, remaining in zip(decision.limits, decision.remainings, strict=True):
            name = window_name(limit.period)
            headers[f"X-RateLimit-Limit-{name}"] = str(limit.count)
            headers[f"X-RateLimit-Remaining-{name}"] = str(remaining)
    headers["RateLimit-Limit"] = str(decision.limit)
    headers["RateLimit-Remaining"] = str(decision.remaining)
    headers["RateLimit-Reset"] = str(_ceil_seconds(window_reset(decision)))
    if not decision.allowed and math.isfinite(decision.retry_after):
        headers["Retry-After"] = str(max(1, _ceil_seconds(decision.retry_after)))
    return headers


class BatchDecision:
    """The decisions of `hit_many`, one entry per key, in order.

    allowed: numpy bool; remaining: int64; retry_after and reset_after: float64 seconds (inf: never admissible).
    """

    __slots__ = ("allowed", "remaining", "retry_after", "reset_after")

    def __init__(self, allowed: Any, remaining: Any, retry_after: Any, reset_after: Any) -> None:
        self.allowed = allowed
        self.remaining = remaining
        self.retry_after = retry_after
        self.reset_after = reset_after

    def __len__(self) -> int:
        return len(self.allowed)

    def __repr__(self) -> str:
        n = len(self.allowed)
        return f"<BatchDecision {n} keys, {int(self.allowed.sum())} allowed>"
