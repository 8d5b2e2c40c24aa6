"""RateLimiter: a set of limits, an algorithm, and a table that keeps the counters.

The table is the compiled core's (`fastguard._core.Table`) unless a store is given. `hit`, `peek` and `reset`
are the table's own methods bound onto the limiter, so a call costs no Python frame of ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastguard.arguments import ALGORITHMS, ban_settings, check_algorithm, check_max_keys, check_on_error
from fastguard.decision import BatchDecision, numpy
from fastguard.limits import Limit, parse_limits
from fastguard.tables import SharedTable, Store, StoreStats, Table

__all__ = ["RateLimiter", "ALGORITHMS"]

_MAX_COST = 2**62
#: The longest interval of exchanging counts with a store (local-first mode), seconds.
MAX_SYNC_SECONDS = 3600




class RateLimiter:
    """Decide hits against one or more limits per key, atomically.

    limits: "100/minute; 10/second", a Limit, or a list of Limits (at most 8).
    algorithm: "fixed_window" | "sliding_window" | "token_bucket" | "gcra" (see fastguard._pure for each rule).
    max_keys: the most keys held at once; a new key in a full table evicts an expired or long-unused one.
    store: None for the in-process compiled table, or a shared store such as fastguard.redis.RedisStore.
    sync: with a store, None decides every hit in the store (strict); a number of seconds decides in process and
        exchanges counts with the store that often (local-first; see fastguard.redis.SyncTable for the error bound).
    on_error: with a store, what a decision does while the store cannot answer: "allow", "deny" or "local"
        (decide in process). Decisions never raise for store faults; stats() counts them.
    ban_after, ban_for: a key denied ban_after times within one period of its shortest-period limit is banned
        for ban_for seconds: refused at once (Decision.banned, Retry-After = the ban's remainder) without looking
        at its limits. ban_for alone allows bans set with ban(). Bans live in the key table (bounded by max_keys;
        a banned key is never evicted for a fresh one first). With a Redis store a ban is written to Redis once
        (every node honours it) and each node answers it from its own core, without a round trip, until it ends.

    ban(key, seconds, now=None), unban(key), banned(key, now=None) -> seconds left (0.0 when not banned)

    hit(key, cost=1, now=None) -> Decision        key: str or bytes; cost: int >= 0; now: epoch seconds
    peek(key, now=None) -> Decision               what a hit of cost 1 would get, recording nothing
    reset(key) -> None                            forget the key
    Raises ValueError / TypeError naming the problem for bad limits, algorithm, max_keys, key, cost or now.
    """

    __slots__ = ("limits", "algorithm", "max_keys", "store", "sync", "on_error", "ban_after", "ban_for", "_table",
                 "hit", "peek", "reset", "__weakref__")

    def __init__(self, limits: str | Limit | Sequence[Limit], algorithm: str = "sliding_window",
                 max_keys: int = 1_000_000, store: Store | None = None, *, sync: float | None = None,
                 on_error: str = "allow", ban_after: int = 0, ban_for: float = 0.0, _core: Any = None) -> None:
        check_algorithm(algorithm)
        check_max_keys(max_keys)
        check_on_error(on_error)
        if sync is not None:
            if isinstance(sync, bool) or not isinstance(sync, (int, float)) or not 0 < sync <= MAX_SYNC_SECONDS:
                raise ValueError(f"sync must be None or seconds between 0 and {MAX_SYNC_SECONDS}, got {sync!r}")
            if store is None:
                raise ValueError("sync needs a store (it is the interval of exchanging counts with it)")
        self.limits: list[Limit] = parse_limits(limits)
        self.algorithm = algorithm
        self.max_keys = max_keys
        self.store = store
        self.sync = sync
        self.on_error = on_error
        ban_settings(ban_after, ban_for)  # checked here, whatever the store
        self.ban_after, self.ban_for = ban_after, ban_for
        self._table: Table
        if store is not None:
            if not callable(getattr(store, "table", None)):
                raise TypeError(f"store must provide table(algorithm, limits, max_keys); got {type(store).__name__}")
            self._table = store.table(algorithm, tuple(self.limits), max_keys, sync=sync, on_error=on_error,
                                      ban_after=ban_after, ban_for=ban_for)
            if not isinstance(self._table, SharedTable):
                raise TypeError(f"{type(store).__name__}.table() returned {type(self._table).__name__}, which lacks "
                                "the methods of fastguard.tables.SharedTable")
        else:
            if _core is None:
                from fastguard.corechoice import core as _core
            self._table = _core.Table(algorithm, tuple(self.limits), max_keys, ban_after, ban_for)
        self.hit = self._table.hit
        self.peek = self._table.peek
        self.reset = self._table.reset

    def hit_many(self, keys: Any, costs: Any = None, now: float | None = None) -> BatchDecision:
        """Decide many hits, in order, all at time `now` -> BatchDecision of numpy arrays.

        keys: a 1-D numpy array of unsigned (or non-negative signed) integer ids, used as they are, or a sequence
        of str/bytes keys (hashed like `hit`'s). An id and a key never share state except by a 2**-64 chance.
        costs: None (all 1) or integers >= 0, one per key.
        Needs numpy (ImportError saying what to install otherwise).
        """
        np = numpy()
        if isinstance(keys, np.ndarray):
            if keys.ndim != 1:
                raise ValueError(f"keys must be 1-D, got an array of shape {keys.shape}")
            if keys.dtype.kind == "u":
                keys = np.ascontiguousarray(keys, dtype=np.uint64)
            elif keys.dtype.kind == "i":
                if keys.size and keys.min() < 0:
                    raise ValueError("integer key ids must not be negative")
                keys = np.ascontiguousarray(keys, dtype=np.uint64)
            elif keys.dtype.kind in "OSU":
                keys = keys.tolist()
            else:
                raise TypeError(f"keys must be integer ids or str/bytes, not an array of {keys.dtype}")
        elif isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
            raise TypeError(f"keys must be a list of str/bytes or a numpy array of ids, not {type(keys).__name__}")
        if costs is not None:
            arr = np.asarray(costs)
            if arr.ndim != 1 or len(arr) != len(keys):
                raise ValueError(f"costs must be 1-D with one entry per key ({len(keys)}), got shape {arr.shape}")
            if arr.size and arr.dtype.kind not in "iu":
                raise TypeError(f"costs must be integers, not {arr.dtype}")
            if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
                raise ValueError("cost must not be negative")
            if arr.dtype.kind == "u" and arr.size and arr.max() > _MAX_COST:
                arr = np.minimum(arr, _MAX_COST)
            costs = np.ascontiguousarray(arr, dtype=np.int64)
        return BatchDecision(*self._table.hit_many(keys, costs, now))

    def stats(self) -> StoreStats:
        """The table's stats (fastguard.tables.TableStats: keys, capacity, evictions, hits, denials, bans, bytes,
        algorithm, compiled; with a store also StoreStats), plus bytes_per_key (bytes / max(keys, 1))."""
        st: Any = dict(self._table.stats())
        st["bytes_per_key"] = st["bytes"] / max(st["keys"], 1)
        return st

    @property
    def store_up(self) -> bool:
        """False while the store cannot be reached (decisions then follow on_error); True without a store."""
        return self._table.up if isinstance(self._table, SharedTable) else True

    def ban(self, key: str | bytes, seconds: float, now: float | None = None) -> None:
        """Ban `key` for `seconds` from `now`. ValueError when the limiter was made without ban_after/ban_for."""
        self._table.ban(key, seconds, now)

    def unban(self, key: str | bytes) -> None:
        """Lift `key`'s ban (and forget the denials counting towards one)."""
        self._table.unban(key)

    def banned(self, key: str | bytes, now: float | None = None) -> float:
        """Seconds left of `key`'s ban at `now`, 0.0 when it is not banned."""
        return self._table.banned(key, now)

    def close(self) -> None:
        """Stop what the store runs for this limiter (the sync thread of local-first mode, after a last push)."""
        if isinstance(self._table, SharedTable):
            self._table.close()

    def __enter__(self) -> RateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        text = "; ".join(str(lim) for lim in self.limits)
        return f"RateLimiter({text!r}, algorithm={self.algorithm!r}, max_keys={self.max_keys})"
