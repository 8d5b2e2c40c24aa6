"""What users would otherwise write or pick, for the comparison runs."""

from __future__ import annotations

import time


class DictTokenBucket:
    """The pure-Python token bucket a careful user writes: a dict of (tokens, last) per key."""

    __slots__ = ("capacity", "rate", "buckets")

    def __init__(self, capacity: int, period: float) -> None:
        self.capacity = float(capacity)
        self.rate = capacity / period
        self.buckets: dict[str, tuple[float, float]] = {}

    def hit(self, key: str, cost: float = 1.0) -> bool:
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.rate)
        if tokens >= cost:
            self.buckets[key] = (tokens - cost, now)
            return True
        self.buckets[key] = (tokens, now)
        return False
