"""Pure-Python twin of the compiled core `fastguard._core`: same names, same results.

This module is the executable definition of fastguard's rate-limit math and the oracle of the property tests.
Read it to learn what the C does; `_core.pyx` implements exactly these rules with int64/int128 arithmetic.

Conventions shared with the core
--------------------------------
* Time is int64 nanoseconds since the epoch. A `now=` given in float seconds becomes `floor(now * 1e9)`.
* For each key the table keeps `touched`, the latest time it saw. A call whose time is earlier is decided as if
  no time had passed (time going backwards never refills a limit).
* C = the limit's count, P = its period in ns, k = the cost of the hit (an int >= 0).
* A hit is admitted only if every limit of the limiter admits it; then it is counted in all of them, and a denied
  hit is counted in none. The Decision describes the limit with the lowest remaining (a tie: the longer period).
* `remaining` is after the hit when it is admitted, and as it stands when denied (or for `peek`).
* `reset_after` is the time until the limit is wholly replenished if no more hits come (0 when it already is).
* `retry_after` is 0 when allowed, else the earliest time at which the same hit would be admitted by every limit
  (infinite when k > C: it can never be admitted).
* `peek(key)` answers for a hit of cost 1 without recording anything.

Table: at most `max_keys` entries. A new key in a full table evicts one entry: the table looks at the next
(up to) 8 entries after a rotating hand, in storage order, and takes the first whose state is fresh at now
(it would decide exactly like a new key), else the least recently touched one (the first of equals).
Removing a key moves the last entry into its place. The compiled core does the same per shard, and uses a
single shard below 4096 keys, so for small tables the two evict the same keys.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import Any

from fastguard.limits import Limit, decision_headers

__all__ = ["Decision", "Table", "ALGORITHMS", "EVICTION_SAMPLE", "key_id"]

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket", "gcra")
#: Entries examined per eviction.
EVICTION_SAMPLE = 8
#: Costs above this are clamped (they exceed every count, so the answer does not change).
MAX_COST = 2**62
#: Largest accepted time: 2**62 ns (year 2116); sums inside the core stay within int64.
MAX_NOW_NS = 2**62
INF = math.inf
NEVER = -1  # retry time in ns meaning "never admissible"


def now_ns_from(now: Any) -> int:
    """`now` (float epoch seconds, or None for the wall clock) as int64 nanoseconds. Raises ValueError/TypeError."""
    if now is None:
        return time.time_ns()
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"now must be epoch seconds as a float, not {type(now).__name__}")
    try:
        ns = float(now) * 1e9
    except OverflowError:
        ns = INF
    if not math.isfinite(ns) or ns < 0 or ns >= MAX_NOW_NS:
        raise ValueError(f"now must be epoch seconds between 0 and 2**62 ns, got {now!r}")
    return math.floor(ns)


def cost_from(cost: Any) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int):
        raise TypeError(f"cost must be an int, not {type(cost).__name__}")
    if cost < 0:
        raise ValueError(f"cost must not be negative, got {cost}")
    return min(cost, MAX_COST)


def key_id(key: Any) -> bytes:
    """The identity of a key: its bytes (a str's UTF-8). Raises TypeError for anything else."""
    if type(key) is str:
        return key.encode("utf-8")
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        return str(key).encode("utf-8")
    if isinstance(key, bytes):
        return bytes(key)
    raise TypeError(f"rate-limit key must be str or bytes, not {type(key).__name__}")


def _seconds(ns: int) -> float:
    return INF if ns == NEVER else float(ns) / 1e9


# ---------------------------------------------------------------------------------------------------------------
# The four algorithms. Each works on its own words of the entry (a list slice) and offers:
#   roll(words, now)          -> the words as they stand at `now` (never stored: every reader rolls first)
#   admits(w, now, k)         -> bool
#   consume(w, now, k)        -> words after admitting cost k
#   remaining(w, now)         -> int
#   reset_after(w, now)       -> ns until wholly replenished
#   retry_after(w, now, k)    -> ns until cost k would be admitted (NEVER if k > C); called only when denied
#   fresh(w, now)             -> the words decide exactly like a new key's
# ---------------------------------------------------------------------------------------------------------------

class FixedWindow:
    """Fixed windows aligned to multiples of P since the epoch. Words: [window index, count in it]."""

    words = 2
    new = (-1, 0)

    def __init__(self, count: int, period_ns: int) -> None:
        self.C, self.P = count, period_ns

    def roll(self, w: list[int], now: int) -> list[int]:
        win = now // self.P
        return [w[0], w[1]] if win == w[0] else [win, 0]

    def admits(self, w: list[int], now: int, k: int) -> bool:
        return w[1] + k <= self.C

    def consume(self, w: list[int], now: int, k: int) -> list[int]:
        return [w[0], w[1] + k]

    def remaining(self, w: list[int], now: int) -> int:
        return self.C - w[1]

    def reset_after(self, w: list[int], now: int) -> int:
        return (w[0] + 1) * self.P - now if w[1] > 0 else 0

    def retry_after(self, w: list[int], now: int, k: int) -> int:
        return NEVER if k > self.C else (w[0] + 1) * self.P - now

    def fresh(self, w: list[int], now: int) -> bool:
        return w[1] == 0


class SlidingWindow:
    """The two-window counter. Words: [window index, count in it (cur), count in the window before (prev)].

    With e = now - window start: estimate = prev * (P - e) / P + cur; a hit of cost k is admitted when
    estimate + k <= C. Everything is compared multiplied by P, so it is exact in integers.
    """

    words = 3
    new = (-2, 0, 0)

    def __init__(self, count: int, period_ns: int) -> None:
        self.C, self.P = count, period_ns

    def roll(self, w: list[int], now: int) -> list[int]:
        win = now // self.P
        if win == w[0]:
            return [w[0], w[1], w[2]]
        if win == w[0] + 1:
            return [win, 0, w[1]]
        return [win, 0, 0]

    def _weighted_prev(self, w: list[int], now: int) -> int:
        # prev * (P - e), in count * ns
        return w[2] * (self.P - (now - w[0] * self.P))

    def admits(self, w: list[int], now: int, k: int) -> bool:
        return self._weighted_prev(w, now) + (w[1] + k) * self.P <= self.C * self.P

    def consume(self, w: list[int], now: int, k: int) -> list[int]:
        return [w[0], w[1] + k, w[2]]

    def remaining(self, w: list[int], now: int) -> int:
        room = self.C * self.P - self._weighted_prev(w, now) - w[1] * self.P
        return room // self.P if room > 0 else 0

    def reset_after(self, w: list[int], now: int) -> int:
        if w[1] > 0:
            return (w[0] + 2) * self.P - now
        if w[2] > 0:
            return (w[0] + 1) * self.P - now
        return 0

    def retry_after(self, w: list[int], now: int, k: int) -> int:
        C, P = self.C, self.P
        if k > C:
            return NEVER
        win, cur, prev = w
        e = now - win * P
        if cur + k <= C:
            # Later in this window: the smallest t with prev * (P - e - t) <= (C - cur - k) * P.
            return (P - e) - ((C - cur - k) * P) // prev
        # In the next window, where prev' = cur and cur' = 0: the smallest e' with cur * (P - e') <= (C - k) * P.
        return (P - e) + max(0, P - ((C - k) * P) // cur)

    def fresh(self, w: list[int], now: int) -> bool:
        return w[1] == 0 and w[2] == 0


class TokenBucket:
    """Token bucket of capacity C refilled at C/P tokens per ns, starting full, fractional tokens exact.

    Words: [full_at, frac]: the bucket is full at time full_at + frac / C ns (frac in [0, C)).
    The deficit D = max(0, (full_at - now) * C + frac) is in units of 1/C ns; tokens = C - D / P.
    A hit of cost k is admitted when D + k * P <= C * P.
    """

    words = 2
    new = (0, 0)

    def __init__(self, count: int, period_ns: int) -> None:
        self.C, self.P = count, period_ns

    def deficit(self, w: list[int], now: int) -> int:
        d = (w[0] - now) * self.C + w[1]
        return d if d > 0 else 0

    def roll(self, w: list[int], now: int) -> list[int]:
        return [w[0], w[1]]

    def admits(self, w: list[int], now: int, k: int) -> bool:
        return self.deficit(w, now) + k * self.P <= self.C * self.P

    def consume(self, w: list[int], now: int, k: int) -> list[int]:
        d = self.deficit(w, now) + k * self.P
        return [now + d // self.C, d % self.C]

    def remaining(self, w: list[int], now: int) -> int:
        return (self.C * self.P - self.deficit(w, now)) // self.P

    def reset_after(self, w: list[int], now: int) -> int:
        return -(-self.deficit(w, now) // self.C)

    def retry_after(self, w: list[int], now: int, k: int) -> int:
        if k > self.C:
            return NEVER
        return -(-(self.deficit(w, now) + (k - self.C) * self.P) // self.C)

    def fresh(self, w: list[int], now: int) -> bool:
        return self.deficit(w, now) == 0


class GCRA:
    """Generic cell rate algorithm: one timestamp, the theoretical arrival time (TAT).

    Emission interval T = ceil(P / C) ns (rounded up, so the rate never exceeds C per P), burst C like the bucket:
    with D = max(0, TAT - now), a hit of cost k is admitted when D + k * T <= C * T; then TAT = now + D + k * T.
    Words: [tat].
    """

    words = 1
    new = (0,)

    def __init__(self, count: int, period_ns: int) -> None:
        self.C = count
        self.T = -(-period_ns // count)
        self.L = count * self.T

    def roll(self, w: list[int], now: int) -> list[int]:
        return [w[0]]

    def _d(self, w: list[int], now: int) -> int:
        return w[0] - now if w[0] > now else 0

    def admits(self, w: list[int], now: int, k: int) -> bool:
        return self._d(w, now) + k * self.T <= self.L

    def consume(self, w: list[int], now: int, k: int) -> list[int]:
        return [now + self._d(w, now) + k * self.T]

    def remaining(self, w: list[int], now: int) -> int:
        return (self.L - self._d(w, now)) // self.T

    def reset_after(self, w: list[int], now: int) -> int:
        return self._d(w, now)

    def retry_after(self, w: list[int], now: int, k: int) -> int:
        return NEVER if k > self.C else self._d(w, now) + k * self.T - self.L

    def fresh(self, w: list[int], now: int) -> bool:
        return self._d(w, now) == 0


_ALGORITHM_CLASSES = {"fixed_window": FixedWindow, "sliding_window": SlidingWindow,
                      "token_bucket": TokenBucket, "gcra": GCRA}


class Decision:
    """One rate-limit decision. Times in float seconds; `retry_after` is 0.0 when allowed, inf when never."""

    __slots__ = ("allowed", "limit", "remaining", "reset_after", "retry_after", "period", "limits", "remainings")

    allowed: bool
    limit: int
    remaining: int
    reset_after: float
    retry_after: float
    period: float
    limits: tuple[Limit, ...]
    remainings: tuple[int, ...]

    def headers(self, style: str = "ietf") -> dict[str, str]:
        """Response headers: "ietf" (RateLimit-*) or "kong" (X-RateLimit-*-<Window> plus RateLimit-*)."""
        return decision_headers(self, style)

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return (f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
                f"reset_after={self.reset_after:.3f}, retry_after={self.retry_after:.3f})")


class Table:
    """The key table and the decision rules (see the module docstring)."""

    def __init__(self, algorithm: str, limits: Sequence[Limit], max_keys: int) -> None:
        if algorithm not in _ALGORITHM_CLASSES:
            raise ValueError(f"unknown algorithm {algorithm!r}: use one of {', '.join(ALGORITHMS)}")
        if isinstance(max_keys, bool) or not isinstance(max_keys, int):
            raise TypeError(f"max_keys must be an int, not {type(max_keys).__name__}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.algorithm = algorithm
        self.limits = tuple(limits)
        self.max_keys = max_keys
        cls = _ALGORITHM_CLASSES[algorithm]
        self._algs = [cls(lim.count, lim.period_ns) for lim in self.limits]
        self._periods = [lim.period_ns for lim in self.limits]
        self._words = cls.words
        self._new_words = list(cls.new) * len(self.limits)
        self._index: dict[Any, int] = {}
        self._arena: list[list[int]] = []   # entry: [id, touched, words of limit 0, words of limit 1, ...]
        self._hand = 0
        self._hits = self._denials = self._evictions = 0
        self._lock = threading.Lock()  # one decision at a time, like a shard lock of the core

    # -- the decision ---------------------------------------------------------------------------------------
    def _decide(self, entry: list[Any] | None, now: int, k: int,
                commit: bool) -> tuple[Decision, bool, list[list[int]]]:
        if entry is not None and entry[1] > now:
            now = entry[1]  # time went backwards for this key: decide as if no time had passed
        words = self._words
        stored = entry[2:] if entry is not None else self._new_words
        rolled = [alg.roll(stored[i * words:(i + 1) * words], now) for i, alg in enumerate(self._algs)]
        admits = [alg.admits(w, now, k) for alg, w in zip(self._algs, rolled, strict=True)]
        allowed = all(admits)
        if allowed and commit:
            after = [alg.consume(w, now, k) for alg, w in zip(self._algs, rolled, strict=True)]
        else:
            after = rolled
        remainings = [alg.remaining(w, now) for alg, w in zip(self._algs, after, strict=True)]
        best = 0
        for i in range(1, len(remainings)):
            if remainings[i] < remainings[best] or (remainings[i] == remainings[best]
                                                    and self._periods[i] > self._periods[best]):
                best = i
        retry = 0
        if not allowed:
            for alg, w, ok in zip(self._algs, rolled, admits, strict=True):
                if not ok:
                    r = alg.retry_after(w, now, k)
                    if r == NEVER or retry == NEVER:
                        retry = NEVER
                    elif r > retry:
                        retry = r
        if commit and entry is not None:
            entry[1] = now
            if allowed:
                entry[2:] = [x for w in after for x in w]
        d = Decision()
        d.allowed = allowed
        d.limit = self.limits[best].count
        d.remaining = remainings[best]
        d.reset_after = _seconds(self._algs[best].reset_after(after[best], now))
        d.retry_after = _seconds(retry)
        d.period = self.limits[best].period
        d.limits = self.limits
        d.remainings = tuple(remainings)
        return d, allowed, after

    def _hit_id(self, kid: Any, k: int, now: int) -> Decision:
        pos = self._index.get(kid)
        entry = self._arena[pos] if pos is not None else None
        d, allowed, after = self._decide(entry, now, k, True)
        self._hits += 1
        if not allowed:
            self._denials += 1
        elif entry is None:
            # A new key gets an entry only when its hit counts (a denied newcomer leaves nothing behind).
            self._insert(kid, now, [x for w in after for x in w])
        return d

    # -- public methods, same signatures as the compiled core ------------------------------------------------
    def hit(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Decision:
        """Count a hit of `cost` against `key` if every limit admits it. Raises TypeError/ValueError on bad input."""
        kid, k, t = key_id(key), cost_from(cost), now_ns_from(now)
        with self._lock:
            return self._hit_id(kid, k, t)

    def peek(self, key: str | bytes, now: float | None = None) -> Decision:
        """The decision a hit of cost 1 would get now, recording nothing."""
        kid = key_id(key)
        t = now_ns_from(now)
        with self._lock:
            pos = self._index.get(kid)
            d, _, _ = self._decide(self._arena[pos] if pos is not None else None, t, 1, False)
        return d

    def reset(self, key: str | bytes) -> None:
        """Forget `key` (its next hit starts fresh)."""
        kid = key_id(key)
        with self._lock:
            pos = self._index.pop(kid, None)
            if pos is not None:
                self._remove_at(pos)

    def hit_many(self, keys: Any, costs: Any, now: float | None) -> tuple[Any, Any, Any, Any]:
        """Decide keys in order: numpy uint64 ids or a list of str/bytes; costs an int64 array or None.

        Returns numpy arrays (allowed bool, remaining int64, retry_after float64 s, reset_after float64 s).
        """
        import numpy as np

        t = now_ns_from(now)
        n = len(keys)
        allowed = np.zeros(n, dtype=bool)
        remaining = np.zeros(n, dtype=np.int64)
        retry = np.zeros(n, dtype=np.float64)
        reset = np.zeros(n, dtype=np.float64)
        if isinstance(keys, np.ndarray):
            ids: list[Any] = [int(x) for x in keys]
        else:
            ids = [key_id(key) for key in keys]
        cost_list = [1] * n if costs is None else [min(int(c), MAX_COST) for c in costs]
        for i in range(n):
            with self._lock:
                d = self._hit_id(ids[i], cost_list[i], t)
            allowed[i], remaining[i], retry[i], reset[i] = d.allowed, d.remaining, d.retry_after, d.reset_after
        return allowed, remaining, retry, reset

    def stats(self) -> dict[str, Any]:
        """Counters and sizes. `bytes` estimates what the compiled core would hold for these keys."""
        entry_bytes = 8 * (2 + self._words * len(self._algs))
        return {
            "keys": len(self._arena), "capacity": self.max_keys, "evictions": self._evictions,
            "hits": self._hits, "denials": self._denials, "shards": 1,
            "bytes": entry_bytes * len(self._arena), "entry_bytes": entry_bytes,
            "algorithm": self.algorithm, "compiled": False,
        }

    # -- table maintenance -----------------------------------------------------------------------------------
    def _fresh(self, entry: list[Any], now: int) -> bool:
        t = max(now, entry[1])
        words = self._words
        for i, alg in enumerate(self._algs):
            w = alg.roll(entry[2 + i * words:2 + (i + 1) * words], t)
            if not alg.fresh(w, t):
                return False
        return True

    def _insert(self, kid: Any, now: int, words: list[int]) -> None:
        entry = [kid, now, *words]
        n = len(self._arena)
        if n < self.max_keys:
            self._index[kid] = n
            self._arena.append(entry)
            return
        sample = min(EVICTION_SAMPLE, n)
        victim = -1
        oldest = -1
        for j in range(sample):
            pos = (self._hand + j) % n
            if self._fresh(self._arena[pos], now):
                victim = pos
                break
            if oldest < 0 or self._arena[pos][1] < self._arena[oldest][1]:
                oldest = pos
        if victim < 0:
            victim = oldest
        self._hand = (self._hand + sample) % n
        del self._index[self._arena[victim][0]]
        self._evictions += 1
        self._arena[victim] = entry
        self._index[kid] = victim

    def _remove_at(self, pos: int) -> None:
        last = self._arena.pop()
        if pos < len(self._arena):
            self._arena[pos] = last
            self._index[last[0]] = pos
        if self._hand >= len(self._arena):
            self._hand = 0
