"""Decision and Table: the decisions, bans and the journal of one key table (twin of fastguard/core/table.pxi,
keytable.pxi and bans.pxi)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from fastguard._pure.algorithms import ALGORITHM_CLASSES
from fastguard._pure.arguments import (
    EVICTION_SAMPLE,
    EVICTION_SCAN,
    MAX_COST,
    NEVER,
    SHARD_HEADER_BYTES,
    SHARDS,
    SMALL_TABLE,
    cost_from,
    key_id,
    now_ns_from,
    seconds,
)
from fastguard._pure.keytable import Shard, table_hash
from fastguard.arguments import NO_BANS, ban_seconds, ban_settings, check_algorithm, check_max_keys
from fastguard.decision import decision_headers, numpy
from fastguard.limits import MAX_LIMITS, Limit


class Decision:
    """One rate-limit decision. Times in float seconds; `retry_after` is 0.0 when allowed, inf when never.
    `fallback`: made by on_error because the shared store could not decide (never set by the in-process table)."""

    __slots__ = ("allowed", "banned", "fallback", "limit", "remaining", "reset_after", "retry_after", "period",
                 "limits", "remainings")

    allowed: bool
    banned: bool
    fallback: bool
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
    def of(*, allowed: bool, limit: int, remaining: int, reset_after: float, retry_after: float, period: float,
           limits: tuple[Limit, ...], remainings: Sequence[int], banned: bool = False,
           fallback: bool = False) -> Decision:
        """A Decision made elsewhere (a cluster store, a fallback). Raises ValueError on mismatched lengths."""
        if len(limits) > MAX_LIMITS or len(remainings) != len(limits):
            raise ValueError(f"a Decision holds 1 to {MAX_LIMITS} limits with one remaining each")
        d = Decision()
        d.allowed, d.banned, d.limit, d.remaining = bool(allowed), bool(banned), int(limit), int(remaining)
        d.fallback = bool(fallback)
        d.reset_after, d.retry_after, d.period = float(reset_after), float(retry_after), float(period)
        d.limits, d.remainings = limits, tuple(int(r) for r in remainings)
        return d

    def __bool__(self) -> bool:
        return self.allowed

    def __repr__(self) -> str:
        return (f"Decision(allowed={self.allowed}, limit={self.limit}, remaining={self.remaining}, "
                f"reset_after={self.reset_after:.3f}, retry_after={self.retry_after:.3f}"
                f"{', banned=True' if self.banned else ''}{', fallback=True' if self.fallback else ''})")


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
        cls = ALGORITHM_CLASSES[algorithm]
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
        self.journal_dropped = 0                          # hits not journaled: max_keys other keys were already

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
            lim = self.limits[self._ban_limit]
            d = Decision.of(allowed=False, limit=lim.count, remaining=0, reset_after=seconds(left),
                            retry_after=seconds(left), period=lim.period, limits=self.limits,
                            remainings=[0] * len(self.limits), banned=True)
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
        d.fallback = False
        d.limit = self.limits[best].count
        d.remaining = remainings[best]
        d.reset_after = seconds(self._algs[best].reset_after(after[best], now))
        d.retry_after = seconds(retry)
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
            d.retry_after = seconds(self._ban_for)
            d.reset_after = max(d.reset_after, seconds(self._ban_for))

    # -- bans -----------------------------------------------------------------------------------------------
    def _check_bans(self) -> None:
        if not self._bans:
            raise ValueError(NO_BANS)

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

    def unban_all(self) -> None:
        """Lift every ban (and forget the denials counting towards one)."""
        self._check_bans()
        with self._lock:
            for shard in self._shards:
                for entry in shard.slots:
                    if entry is not None:
                        entry[-3] = entry[-1] = 0

    def banned(self, key: str | bytes, now: float | None = None) -> float:
        """Seconds left of `key`'s ban at `now` (0.0 when not banned)."""
        t = now_ns_from(now)
        with self._lock:
            _, entry = self._ban_entry(key, t, False)
            return seconds(entry[-1] - t) if entry is not None and entry[-1] > t else 0.0

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
                        self.journal_dropped += 1
                else:
                    slot[1] = min(slot[1] + c, MAX_COST)
            return d

    def record_hits(self, on: bool) -> None:
        """Start (True) or stop (False) keeping a journal of hits for drain_hits()."""
        self._recording = bool(on)

    def drain_hits(self) -> list[tuple[Any, int]]:
        """The keys `hit()` saw since the last drain with their summed admitted cost (0 for a key only denied): a
        list of (key, cost) in no particular order (one entry per key id, the first key object seen standing for
        it; at most max_keys, `journal_dropped` counts the hits of keys past that), and an empty journal."""
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
        np = numpy()

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
