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

Table: at most `max_keys` entries, in 1 shard (below 4096 keys) or 64. A key's id is SipHash-1-3 of its bytes
(numpy ids are used as they are); its shard and home slot come from mix64(id ^ secret). A shard is an array of
entries stored in place, linear probing, at most 3/4 full (it grows by 1.1875x). A new key in a full table evicts:
among the next 8 occupied slots after a rotating hand, the first whose state is fresh at now (it would decide
exactly like a new key, so nothing is lost), else the least recently touched one (the first of equals).
This module mirrors the core's table step by step, with the same secrets (fastguard._secret), so the two place,
find and evict the same keys and report the same stats.
"""

from __future__ import annotations

import base64
import json
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from fastguard._secret import MIX_SEED, SIP_K0, SIP_K1
from fastguard.arguments import ALGORITHMS as _ALGORITHMS
from fastguard.arguments import (
    MAX_NOW_NS,
    ban_seconds,
    ban_settings,
    check_algorithm,
    check_max_keys,
    checked_cost,
    epoch_ns,
    key_bytes,
)
from fastguard.decision import decision_headers
from fastguard.limits import MAX_LIMITS, Limit

__all__ = ["Decision", "Table", "BanGate", "ALGORITHMS", "EVICTION_SAMPLE", "EVICTION_SCAN", "key_id", "siphash",
           "mix64", "b64url_decode", "split_token", "parse_compact", "TokenCache", "CachedVerify", "check_claims",
           "parse_json_object"]

ALGORITHMS = _ALGORITHMS  # fastguard.arguments, re-exported as both cores do
#: Occupied slots examined per eviction.
EVICTION_SAMPLE = 8
#: While only banned entries are seen, an eviction looks at up to this many.
EVICTION_SCAN = 72
#: Tables for fewer keys than this have one shard, larger ones SHARDS (the core locks each shard separately).
SMALL_TABLE = 4096
SHARDS = 64
#: Slots of a shard's first array; the bytes of a shard's header in the core (for `stats()["bytes"]`).
MIN_SLOTS = 8
SHARD_HEADER_BYTES = 128
#: Costs above this are clamped (they exceed every count, so the answer does not change).
MAX_COST = 2**62
INF = math.inf
NEVER = -1  # retry time in ns meaning "never admissible"


def now_ns_from(now: Any) -> int:
    """`now` (float epoch seconds, or None for the wall clock) as int64 nanoseconds. Raises ValueError/TypeError."""
    return time.time_ns() if now is None else epoch_ns(now)


def cost_from(cost: Any) -> int:
    return min(checked_cost(cost), MAX_COST)


def key_id(key: Any) -> int:
    """The identity of a key: SipHash-1-3 of its bytes (a str's UTF-8). Raises TypeError for anything else."""
    return siphash(key_bytes(key), SIP_K0, SIP_K1)


_M64 = 2**64 - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash(data: bytes, k0: int, k1: int, c_rounds: int = 1, d_rounds: int = 3) -> int:
    """SipHash-c-d of `data` under the 128-bit key (k0, k1); 1-3 by default, as the core uses."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    whole = len(data) & ~7
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        rounds(c_rounds)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= b
    rounds(c_rounds)
    v0 ^= b
    v2 ^= 0xFF
    rounds(d_rounds)
    return v0 ^ v1 ^ v2 ^ v3


def mix64(x: int) -> int:
    """The murmur3 64-bit finalizer: a bijection that spreads ids over the table."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


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

    __slots__ = ("allowed", "banned", "limit", "remaining", "reset_after", "retry_after", "period", "limits",
                 "remainings")

    allowed: bool
    banned: bool
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

    @staticmethod
    def of(allowed: bool, limit: int, remaining: int, reset_after: float, retry_after: float, period: float,
           limits: tuple[Limit, ...], remainings: Sequence[int], banned: bool = False) -> Decision:
        """A Decision made elsewhere (a cluster store, a fallback). Raises ValueError on mismatched lengths."""
        if len(limits) > MAX_LIMITS or len(remainings) != len(limits):
            raise ValueError(f"a Decision holds 1 to {MAX_LIMITS} limits with one remaining each")
        d = Decision()
        d.allowed, d.banned, d.limit, d.remaining = bool(allowed), bool(banned), int(limit), int(remaining)
        d.reset_after, d.retry_after, d.period = float(reset_after), float(retry_after), float(period)
        d.limits, d.remainings = limits, tuple(int(r) for r in remainings)
        return d

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return (f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
                f"reset_after={self.reset_after:.3f}, retry_after={self.retry_after:.3f}"
                f"{', banned=True' if self.banned else ''})")


class Shard:
    """One shard of the table: `cap` slots of entries stored in place, linear probing, at most 3/4 occupied.

    An entry is [key id, touched, words of limit 0, words of limit 1, ...]; an empty slot is None.
    """

    __slots__ = ("slots", "cap", "n", "hand", "hits", "denials", "evictions", "bans")

    def __init__(self) -> None:
        self.slots: list[list[Any] | None] = []
        self.cap = self.n = self.hand = 0
        self.hits = self.denials = self.evictions = self.bans = 0

    def home(self, h: int) -> int:
        return (h * self.cap) >> 64   # multiply-shift: h is uniform in [0, 2**64)

    def find(self, kid: int, h: int) -> tuple[bool, int]:
        """(found, slot): the key's slot, or the empty slot where it would go."""
        pos = self.home(h)
        while True:
            e = self.slots[pos]
            if e is None:
                return False, pos
            if e[0] == kid:
                return True, pos
            pos = pos + 1 if pos + 1 < self.cap else 0

    def unslot(self, hole: int) -> None:
        """Backward-shift deletion: entries later in the probe run move back into the hole."""
        j = hole
        while True:
            j = j + 1 if j + 1 < self.cap else 0
            e = self.slots[j]
            if e is None:
                break
            home = self.home(table_hash(e[0]))
            stays = (hole < home <= j) if hole <= j else (home > hole or home <= j)
            if stays:
                continue
            self.slots[hole] = e
            hole = j
        self.slots[hole] = None

    def grow(self) -> None:
        """Before adding an entry that would leave the shard over 3/4 full: rehash into 1.1875x the slots."""
        if (self.n + 1) * 4 <= self.cap * 3:
            return
        cap = max(self.cap + self.cap * 3 // 16, MIN_SLOTS)
        while (self.n + 1) * 4 > cap * 3:
            cap += 1
        old = self.slots
        self.slots = [None] * cap
        self.cap = cap
        self.hand = 0
        for e in old:
            if e is not None:
                _, pos = self.find(e[0], table_hash(e[0]))
                self.slots[pos] = e


def table_hash(kid: int) -> int:
    """The position hash of a key id (keyed, so ids chosen by outsiders cannot crowd one place)."""
    return mix64(kid ^ MIX_SEED)


class Table:
    """The key table and the decision rules (see the module docstring)."""

    def __init__(self, algorithm: str, limits: Sequence[Limit], max_keys: int, ban_after: int = 0,
                 ban_for: float = 0.0) -> None:
        check_algorithm(algorithm)
        check_max_keys(max_keys)
        if max_keys > 2**40:
            raise ValueError(f"max_keys {max_keys} is above the table's maximum 2**40")
        self.algorithm = algorithm
        self.limits = tuple(limits)
        if not 1 <= len(self.limits) <= MAX_LIMITS:
            raise ValueError(f"a table decides 1 to {MAX_LIMITS} limits, got {len(self.limits)}")
        self.max_keys = max_keys
        cls = _ALGORITHM_CLASSES[algorithm]
        self._algs = [cls(lim.count, lim.period_ns) for lim in self.limits]
        self._periods = [lim.period_ns for lim in self.limits]
        self._words = cls.words
        self._stride = 2 + cls.words * len(self.limits)
        self._nw = cls.words * len(self.limits)  # limit words of an entry, after [kid, touched]
        self._new_words = list(cls.new) * len(self.limits)
        # Bans: 3 more words per entry, after the limits: denials, the start of their window, banned until (ns).
        self._ban_after, self._ban_for = ban_settings(ban_after, ban_for)
        self._bans = self._ban_after > 0 or self._ban_for > 0
        self._ban_limit = min(range(len(self.limits)), key=lambda j: self.limits[j].period_ns)
        self._ban_window = self.limits[self._ban_limit].period_ns
        if self._bans:
            self._stride += 3
        self._shards = [Shard() for _ in range(1 if max_keys < SMALL_TABLE else SHARDS)]
        self._total = 0
        self._lock = threading.Lock()  # one decision at a time (the core has a lock per shard)
        self._recording = False
        self._journal: dict[int, list[Any]] = {}  # key id -> [key, summed admitted cost]; at most max_keys
        self.jdropped = 0                          # hits not journaled: max_keys other keys were already

    def _shard(self, h: int) -> Shard:
        return self._shards[h & (len(self._shards) - 1)]

    # -- the decision ---------------------------------------------------------------------------------------
    def _decide(self, entry: list[Any] | None, now: int, k: int,
                commit: bool) -> tuple[Decision, bool, list[list[int]]]:
        if entry is not None and entry[1] > now:
            now = entry[1]  # time went backwards for this key: decide as if no time had passed
        if self._bans and entry is not None and entry[-1] > now:
            # Banned: refused without looking at the limits, until the ban ends.
            if commit:
                entry[1] = now
            left = entry[-1] - now
            d = Decision.of(False, self.limits[self._ban_limit].count, 0, _seconds(left), _seconds(left),
                            self.limits[self._ban_limit].period, self.limits, [0] * len(self.limits), banned=True)
            return d, False, []
        words = self._words
        stored = entry[2:2 + self._nw] if entry is not None else self._new_words
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
                entry[2:2 + self._nw] = [x for w in after for x in w]
        d = Decision()
        d.allowed = allowed
        d.banned = False
        d.limit = self.limits[best].count
        d.remaining = remainings[best]
        d.reset_after = _seconds(self._algs[best].reset_after(after[best], now))
        d.retry_after = _seconds(retry)
        d.period = self.limits[best].period
        d.limits = self.limits
        d.remainings = tuple(remainings)
        return d, allowed, after

    def _count_denial(self, shard: Shard, entry: list[Any], now: int, d: Decision) -> None:
        """ban_after denials within the window of the shortest-period limit (from the first of them) start a ban
        of ban_for; the denial that starts it says so (banned, retry after the whole ban)."""
        if entry[-3] == 0 or now - entry[-2] >= self._ban_window:
            entry[-3], entry[-2] = 0, now
        entry[-3] += 1
        if entry[-3] >= self._ban_after:
            entry[-3] = 0
            entry[-1] = now + self._ban_for
            shard.bans += 1
            d.banned = True
            d.retry_after = _seconds(self._ban_for)
            d.reset_after = max(d.reset_after, _seconds(self._ban_for))

    # -- bans -----------------------------------------------------------------------------------------------
    def _check_bans(self) -> None:
        if not self._bans:
            raise ValueError("this table has no bans: make it with ban_after (and ban_for), or ban_for alone")

    def _ban_entry(self, key: Any, now: int, create: bool) -> tuple[Shard, list[Any] | None]:
        self._check_bans()
        kid = key_id(key)
        h = table_hash(kid)
        shard = self._shard(h)
        entry = self._entry(shard, kid, h)
        if entry is None and create:
            self._insert(shard, kid, h, now, list(self._new_words))
            entry = self._entry(shard, kid, h)
        return shard, entry

    def ban(self, key: str | bytes, seconds: float, now: float | None = None) -> None:
        """Ban `key` for `seconds` from `now` (it is refused without looking at its limits until then)."""
        t = now_ns_from(now)
        self._check_bans()
        seconds = ban_seconds(seconds)
        with self._lock:
            shard, entry = self._ban_entry(key, t, True)
            assert entry is not None
            entry[-1] = t + round(seconds * 1_000_000_000)
            entry[-3] = 0
            shard.bans += 1

    def unban(self, key: str | bytes) -> None:
        """Lift `key`'s ban and forget the denials counting towards one."""
        with self._lock:
            _, entry = self._ban_entry(key, 0, False)
            if entry is not None:
                entry[-3] = entry[-1] = 0

    def banned(self, key: str | bytes, now: float | None = None) -> float:
        """Seconds left of `key`'s ban at `now` (0.0 when not banned)."""
        t = now_ns_from(now)
        with self._lock:
            _, entry = self._ban_entry(key, t, False)
            return _seconds(entry[-1] - t) if entry is not None and entry[-1] > t else 0.0

    @staticmethod
    def _entry(shard: Shard, kid: int, h: int) -> list[Any] | None:
        """The key's entry, or None when the shard does not hold it."""
        if shard.n == 0:
            return None
        found, pos = shard.find(kid, h)
        return shard.slots[pos] if found else None

    def _hit_id(self, kid: int, k: int, now: int) -> Decision:
        h = table_hash(kid)
        shard = self._shard(h)
        entry = self._entry(shard, kid, h)
        d, allowed, after = self._decide(entry, now, k, True)
        shard.hits += 1
        if not allowed:
            shard.denials += 1
            if self._ban_after > 0 and entry is not None and not d.banned:
                self._count_denial(shard, entry, max(now, entry[1]), d)
        elif entry is None:
            # A new key gets an entry only when its hit counts (a denied newcomer leaves nothing behind).
            self._insert(shard, kid, h, now, [x for w in after for x in w])
        return d

    # -- public methods, same signatures as the compiled core ------------------------------------------------
    def hit(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Decision:
        """Count a hit of `cost` against `key` if every limit admits it. Raises TypeError/ValueError on bad input."""
        kid, k, t = key_id(key), cost_from(cost), now_ns_from(now)
        with self._lock:
            d = self._hit_id(kid, k, t)
            if self._recording:
                c = k if d.allowed else 0
                slot = self._journal.get(kid)
                if slot is None:
                    if len(self._journal) < self.max_keys:
                        self._journal[kid] = [key, c]
                    else:
                        self.jdropped += 1
                else:
                    slot[1] = min(slot[1] + c, MAX_COST)
            return d

    def record_hits(self, on: bool) -> None:
        """Start (True) or stop (False) keeping a journal of hits for drain_hits()."""
        self._recording = bool(on)

    def drain_hits(self) -> list[tuple[Any, int]]:
        """The keys `hit()` saw since the last drain with their summed admitted cost (0 for a key only denied): a
        list of (key, cost) in no particular order (one entry per key id, the first key object seen standing for
        it; at most max_keys, `jdropped` counts the hits of keys past that), and an empty journal."""
        with self._lock:
            out, self._journal = self._journal, {}
            return [(key, cost) for key, cost in out.values()]

    def charge(self, key: str | bytes, cost: int, now: float | None = None) -> None:
        """Count `cost` against every limit of `key` without deciding, each limit taking as much as it can admit
        (its `remaining`, so none goes past exhausted): what other nodes admitted, in local-first cluster mode.
        A key that takes nothing and was not held is not added."""
        kid, k, t = key_id(key), cost_from(cost), now_ns_from(now)
        h = table_hash(kid)
        with self._lock:
            shard = self._shard(h)
            entry = self._entry(shard, kid, h)
            if entry is not None and entry[1] > t:
                t = entry[1]
            words = self._words
            stored = entry[2:2 + self._nw] if entry is not None else self._new_words
            out: list[int] = []
            counted = False
            for i, alg in enumerate(self._algs):
                w = alg.roll(stored[i * words:(i + 1) * words], t)
                c = min(k, alg.remaining(w, t))
                if c > 0:
                    w = alg.consume(w, t, c)
                    counted = True
                out += w
            if entry is not None:
                entry[1] = t
                entry[2:2 + self._nw] = out
            elif counted:
                self._insert(shard, kid, h, t, out)

    def peek(self, key: str | bytes, now: float | None = None) -> Decision:
        """The decision a hit of cost 1 would get now, recording nothing."""
        kid = key_id(key)
        t = now_ns_from(now)
        h = table_hash(kid)
        with self._lock:
            d, _, _ = self._decide(self._entry(self._shard(h), kid, h), t, 1, False)
        return d

    def reset(self, key: str | bytes) -> None:
        """Forget `key` (its next hit starts fresh)."""
        kid = key_id(key)
        h = table_hash(kid)
        with self._lock:
            shard = self._shard(h)
            if shard.n == 0:
                return
            found, pos = shard.find(kid, h)
            if found:
                shard.unslot(pos)
                shard.n -= 1
                self._total -= 1

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
        """Counters and sizes, as the compiled core reports them (bytes: what its slot arrays would take)."""
        slots = sum(sh.cap for sh in self._shards)
        return {
            "keys": sum(sh.n for sh in self._shards), "capacity": self.max_keys,
            "evictions": sum(sh.evictions for sh in self._shards), "hits": sum(sh.hits for sh in self._shards),
            "denials": sum(sh.denials for sh in self._shards), "bans": sum(sh.bans for sh in self._shards),
            "shards": len(self._shards), "slots": slots,
            "bytes": len(self._shards) * SHARD_HEADER_BYTES + slots * self._stride * 8,
            "entry_bytes": self._stride * 8, "algorithm": self.algorithm, "compiled": False,
        }

    # -- table maintenance -----------------------------------------------------------------------------------
    def _fresh(self, entry: list[Any], now: int) -> bool:
        t = max(now, entry[1])
        words = self._words
        for i, alg in enumerate(self._algs):
            w = alg.roll(entry[2 + i * words:2 + (i + 1) * words], t)
            if not alg.fresh(w, t):
                return False
        if self._bans and (entry[-1] > t or (entry[-3] != 0 and t - entry[-2] < self._ban_window)):
            return False  # banned, or denials still counting towards a ban
        return True

    def _exhausted(self, entry: list[Any], now: int) -> bool:
        """True when a hit of cost 1 would be refused now (the key has no capacity left)."""
        t = max(now, entry[1])
        words = self._words
        return not all(alg.admits(alg.roll(entry[2 + i * words:2 + (i + 1) * words], t), t, 1)
                       for i, alg in enumerate(self._algs))

    def _victim(self, shard: Shard, now: int) -> int:
        """The slot to evict. Among the next EVICTION_SAMPLE occupied slots from the clock hand: the first fresh
        entry (evicting it loses nothing); else the lowest by (actively banned, exhausted, least recently touched):
        a ban outlives every key without one, and a key with capacity left loses less when forgotten than an
        exhausted one (whose caller would get a fresh allowance). While every entry looked at is banned, the scan
        goes on, up to EVICTION_SCAN entries, for one that is not; when all of those are banned, the ban that ends
        first goes (a longer scan would make each new key cost the whole shard once most of it is banned)."""
        sample, scan = min(EVICTION_SAMPLE, shard.n), min(EVICTION_SCAN, shard.n)
        pos, seen, best, best_rank = shard.hand, 0, -1, None
        while seen < sample or (best_rank is not None and best_rank[0] and seen < scan):
            e = shard.slots[pos]
            pos = pos + 1 if pos + 1 < shard.cap else 0
            if e is None:
                continue
            seen += 1
            here = pos - 1 if pos > 0 else shard.cap - 1
            if self._fresh(e, now):
                best = here
                break
            banned = self._bans and e[-1] > now
            rank = (True, e[-1], False, 0) if banned else (False, 0, self._exhausted(e, now), e[1])
            if best_rank is None or rank < best_rank:
                best, best_rank = here, rank
        shard.hand = pos
        return best

    def _insert(self, shard: Shard, kid: int, h: int, now: int, words: list[int]) -> None:
        self._total += 1
        if self._total > self.max_keys and shard.n > 0:
            self._total -= 1
            shard.unslot(self._victim(shard, now))
            shard.n -= 1
            shard.evictions += 1
        else:
            shard.grow()
        _, pos = shard.find(kid, h)
        shard.slots[pos] = [kid, now, *words, *([0, 0, 0] if self._bans else [])]
        shard.n += 1


class BanGate:
    """The hit() of a shared (cluster-mode) limiter whose bans a local table knows: a banned key is answered from
    that table, with no round trip; any other key goes to `slow(key, cost, now)`."""

    def __init__(self, table: Table, slow: Any) -> None:
        table._check_bans()
        self.table = table
        self.slow = slow
        self.answered = 0  # banned keys answered here (each one a decision: a denial)

    def __call__(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Decision:
        t = now_ns_from(now)
        cost_from(cost)
        left = self.table.banned(key, t / 1e9) if now is not None else self.table.banned(key)
        if left > 0:
            self.answered += 1
            tb = self.table
            lim = tb.limits[tb._ban_limit]
            return Decision.of(False, lim.count, 0, left, left, lim.period, tb.limits, [0] * len(tb.limits),
                               banned=True)
        return self.slow(key, cost, now)


# ---------------------------------------------------------------------------------------------------------------
# JWS helpers and the verified-token cache (twins of the compiled ones).
# ---------------------------------------------------------------------------------------------------------------
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


def b64url_decode(data: bytes) -> bytes:
    """Strict base64url (RFC 7515 §2): the alphabet only, no padding, no length of 4k+1, unused bits zero.
    Raises ValueError otherwise, so every byte string has exactly one accepted encoding."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("b64url_decode takes bytes")
    n = len(data)
    if _B64URL.fullmatch(data) is None:
        raise ValueError("character outside the base64url alphabet")
    if n % 4 == 1:
        raise ValueError("impossible base64url length")
    if n % 4 == 2 and _B64_VALUES[data[-1]] & 0x0F or n % 4 == 3 and _B64_VALUES[data[-1]] & 0x03:
        raise ValueError("non-zero unused bits (non-canonical base64url)")
    return base64.urlsafe_b64decode(bytes(data) + b"=" * (-n % 4))


def split_token(token: bytes) -> tuple[int, int]:
    """Positions of the two dots of a compact JWS; ValueError unless there are exactly two."""
    first = token.find(b".")
    second = token.find(b".", first + 1) if first >= 0 else -1
    if first < 0 or second < 0 or token.find(b".", second + 1) >= 0:
        raise ValueError("a compact JWS has exactly two dots")
    return first, second


def parse_compact(token: bytes | str) -> tuple[bytes, bytes, bytes, bytes]:
    """(header segment, signing input, payload bytes, signature bytes) of a compact JWS (bytes or an ASCII str);
    ValueError unless it has exactly two dots and canonical base64url payload and signature (the header is the
    caller's)."""
    if isinstance(token, str):
        if not token.isascii():
            raise ValueError("characters outside base64url")
        token = token.encode("ascii")
    first, second = split_token(token)
    return (bytes(token[:first]), bytes(token[:second]), b64url_decode(token[first + 1:second]),
            b64url_decode(token[second + 1:]))


class TokenCache:
    """Verdicts by exact token, each usable for `now` in [valid_from, valid_until) (ns); at most `capacity`.

    get(token, now) -> the stored value, or None (a miss; an entry outside its time window is dropped).
    put(token, value, valid_from_ns, valid_until_ns). A full cache drops its least recently used entry (the core
    approximates that with a CLOCK hand, so the two may pick different victims). Tokens are str (ASCII) or bytes.
    """

    def __init__(self, capacity: int, max_token_bytes: int = 4096) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"cache capacity must be an int >= 0, got {capacity!r}")
        if isinstance(max_token_bytes, bool) or not isinstance(max_token_bytes, int) or max_token_bytes < 0:
            raise ValueError(f"max_token_bytes must be an int >= 0, got {max_token_bytes!r}")
        self.capacity = capacity
        self.max_token_bytes = max_token_bytes
        self._entries: OrderedDict[bytes, tuple[Any, int, int]] = OrderedDict()
        self.hits = self.misses = self.evictions = 0
        self._lock = threading.Lock()

    def _key(self, token: Any) -> bytes | None:
        """The token's bytes, or None: not ASCII/bytes, or longer than max_token_bytes (never stored)."""
        if isinstance(token, (str, bytes, bytearray)) and len(token) > self.max_token_bytes:
            return None
        if isinstance(token, str):
            return token.encode("ascii") if token.isascii() else None
        return bytes(token) if isinstance(token, (bytes, bytearray)) else None

    def get(self, token: Any, now: Any = None) -> Any:
        t = now_ns_from(now)
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key) if key is not None else None
            if entry is None or not entry[1] <= t < entry[2]:
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]

    def put(self, token: Any, value: Any, valid_from_ns: int, valid_until_ns: int) -> None:
        key = self._key(token)
        if key is None or self.capacity == 0:
            return
        with self._lock:
            self._entries[key] = (value, valid_from_ns, valid_until_ns)
            self._entries.move_to_end(key)
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def check_claims(claims: dict[str, Any], now_ns: int, leeway_ns: int, required: tuple[str, ...],
                 issuers: frozenset[str] | None, audiences: frozenset[str] | None,
                 max_lifetime_ns: int | None) -> tuple[int, int]:
    """The JWT claim rules (RFC 7519, RFC 8725): raises an InvalidToken subclass, or returns the window
    [valid_from, valid_until) in ns during which the verdict holds (from nbf and exp, leeway included).

    exp/nbf/iat must be numbers (not bool, finite); iss/sub/jti strings; aud a string or a list of strings.
    Expired when now >= exp + leeway; not yet valid when now < nbf - leeway; iat must not be after now + leeway.
    issuers / audiences: any-of; a token with an aud is refused by a verifier that expects none (RFC 7519 4.1.3).
    Times are compared in nanoseconds: a claim of t seconds is ceil(t * 1e9) ns, clamped to +-2**62.
    """
    from fastguard.errors import ExpiredToken, InvalidAudience, InvalidClaim, InvalidIssuer, MissingClaim, NotYetValid

    times = {}
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            value = claims[name]
            if not (type(value) is int or (type(value) is float and math.isfinite(value))):
                raise InvalidClaim(f"{name} must be a number of seconds")
            if type(value) is float:
                scaled = value * 1e9
                ns = math.ceil(scaled) if math.isfinite(scaled) else (MAX_NOW_NS if scaled > 0 else -MAX_NOW_NS)
            else:
                ns = value * 1_000_000_000
            times[name] = max(-MAX_NOW_NS, min(MAX_NOW_NS, ns))   # clamped to +-2**62 ns, as the core does
    for name in ("iss", "sub", "jti"):
        if name in claims and type(claims[name]) is not str:
            raise InvalidClaim(f"{name} must be a string")
    aud = claims.get("aud")
    if "aud" in claims and type(aud) is not str and not (type(aud) is list and all(type(a) is str for a in aud)):
        raise InvalidClaim("aud must be a string or a list of strings")
    for name in required:
        if name not in claims:
            raise MissingClaim(claim=name)
    valid_from, valid_until = 0, 2**62
    if "exp" in times:
        valid_until = times["exp"] + leeway_ns
        if now_ns >= valid_until:
            raise ExpiredToken("the token has expired")
    if "nbf" in times:
        valid_from = max(0, times["nbf"] - leeway_ns)
        if now_ns < valid_from:
            raise NotYetValid("the token is not valid yet")
    if "iat" in times and times["iat"] > now_ns + leeway_ns:
        raise InvalidClaim("iat is in the future")
    if max_lifetime_ns is not None:
        if "exp" not in times or "iat" not in times:
            raise MissingClaim("max_lifetime needs both iat and exp", claim="iat" if "exp" in times else "exp")
        if times["exp"] - times["iat"] > max_lifetime_ns:
            raise InvalidClaim("the token lives longer than max_lifetime (exp - iat)")
    if issuers is not None:
        if "iss" not in claims:
            raise MissingClaim(claim="iss")
        if claims["iss"] not in issuers:
            raise InvalidIssuer(f"issuer {claims['iss']!r} is not accepted")
    if "aud" in claims or audiences is not None:
        if "aud" not in claims:
            raise MissingClaim(claim="aud")
        if audiences is None or (aud not in audiences if type(aud) is str else audiences.isdisjoint(aud)):
            raise InvalidAudience(f"audience {aud!r} is not accepted")
    return valid_from, min(valid_until, 2**62)


class CachedVerify:
    """JWTVerifier.verify's hot path: while the key set's version is the one the cache was filled under, a cached
    verdict is returned straight from `cache`; anything else goes to `slow(token, now)`."""

    def __init__(self, cache: TokenCache, keys: Any, version: Any, slow: Any) -> None:
        self.cache, self.keys, self.version, self.slow = cache, keys, version, slow

    def __call__(self, token: Any, now: Any = None) -> Any:
        if self.keys.version == self.version:
            claims = self.cache.get(token, now)
            if claims is not None:
                return claims
        return self.slow(token, now)


# ---------------------------------------------------------------------------------------------------------------
# Strict JSON for JOSE headers, JWT payloads and JWKS (the core's parse_json_object is its compiled twin).
# ---------------------------------------------------------------------------------------------------------------
JSON_MAX_DEPTH = 256


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constants)


def _depth(value: Any) -> int:
    """Nesting depth; ValueError for a str holding a lone surrogate (a \\u escape of half a pair), which is no
    character: no UTF-8, msgpack or HTTP header can carry it."""
    if type(value) is dict:
        for name in value:
            _characters(name)
        return 1 + max(map(_depth, value.values()), default=0)
    if type(value) is list:
        return 1 + max(map(_depth, value), default=0)
    if type(value) is str:
        _characters(value)
    return 0


def _characters(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone surrogate in \\u escape") from None


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A JSON object (RFC 8259) from UTF-8 bytes, with the values json.loads gives, but strictly: duplicate member
    names (at any depth), NaN/Infinity, invalid UTF-8, anything but an object at the top, or nesting deeper than
    JSON_MAX_DEPTH raise ValueError."""
    text = bytes(data).decode("utf-8")
    try:
        value = _STRICT_JSON.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if type(value) is not dict:
        raise ValueError("not a JSON object")
    if _depth(value) > JSON_MAX_DEPTH:
        raise ValueError("nested too deeply")
    return value
