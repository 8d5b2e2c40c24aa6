"""The four algorithms over one limit's words of state (twin of fastguard/core/algorithms.pxi)."""

from __future__ import annotations

from fastguard._pure.arguments import NEVER

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


ALGORITHM_CLASSES = {"fixed_window": FixedWindow, "sliding_window": SlidingWindow,
                      "token_bucket": TokenBucket, "gcra": GCRA}
