"""The seam between RateLimiter and whatever keeps its counters: the table protocol and its statistics.

A RateLimiter asks its store for a table (`Store.table(...)`) — or makes the in-process core's — and from then on
only calls the methods of `Table`. Three kinds exist: the compiled (or pure) core's `Table`, and in
fastguard.redis the strict `StrictTable` (one script call per decision) and the local-first `SyncTable`. Every
one's `stats()` is a `TableStats`, plus the `StoreStats` keys for tables on a shared store;
`tests/integration/redis/test_tables.py` runs each kind through these types, and fastguard.metrics reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypedDict, runtime_checkable

__all__ = ["Table", "SharedTable", "Store", "TableStats", "StoreStats", "TABLE_STATS", "STORE_STATS"]


class TableStats(TypedDict):
    """What every table reports (counts since it was made)."""

    algorithm: str
    compiled: bool          # the compiled core decides (in process, or as the fallback / local table)
    keys: int               # keys held in process
    capacity: int           # max_keys
    evictions: int
    hits: int               # decisions made
    denials: int            # decisions that refused
    bans: int               # bans started
    bytes: int              # memory of the in-process key table


class StoreStats(TableStats, total=False):
    """What a table on a shared store reports besides (both modes, unless marked)."""

    store: str              # "redis" | "redis-cluster"
    mode: str               # "strict" | "sync"
    on_error: str
    redis_up: bool
    redis_errors: int
    fallbacks: int          # decisions made by on_error
    state_changes: int
    last_error: str
    redis_calls: int        # strict: script calls
    redis_decisions: int    # strict: decisions Redis made
    redis_call_seconds: dict[str, Any]   # strict: {"buckets": [(upper bound s, count)], "sum": s}
    syncs: int              # sync: exchanges that succeeded
    sync_lag: float         # sync: duration of the last exchange, s
    pushed: int             # sync: admitted cost sent to Redis
    charged: int            # sync: other nodes' cost charged here
    pending_keys: int       # sync: keys with cost waiting to be sent
    shared_keys: int        # sync: keys in the bookkeeping of what was shared (at most max_keys)
    unshared: int           # sync: admitted cost left out past max_keys keys


#: The keys and types of each, for checks.
TABLE_STATS: dict[str, type] = {"algorithm": str, "compiled": bool, "keys": int, "capacity": int, "evictions": int,
                                "hits": int, "denials": int, "bans": int, "bytes": int}
STORE_STATS: dict[str, type] = {"store": str, "mode": str, "on_error": str, "redis_up": bool, "redis_errors": int,
                                "fallbacks": int, "state_changes": int, "last_error": str}


@runtime_checkable
class Table(Protocol):
    """The methods a RateLimiter calls on its table (fastguard._core.Table has them all)."""

    def hit(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Any: ...

    def peek(self, key: str | bytes, now: float | None = None) -> Any: ...

    def reset(self, key: str | bytes) -> None: ...

    def hit_many(self, keys: Any, costs: Any, now: float | None) -> tuple[Any, Any, Any, Any]: ...

    def stats(self) -> TableStats: ...

    def ban(self, key: str | bytes, seconds: float, now: float | None = None) -> None: ...

    def unban(self, key: str | bytes) -> None: ...

    def banned(self, key: str | bytes, now: float | None = None) -> float: ...


@runtime_checkable
class SharedTable(Table, Protocol):
    """A table on a shared store: it knows whether the store answers, and has a background to stop."""

    @property
    def up(self) -> bool: ...

    def close(self) -> None: ...


class Store(Protocol):
    """What `RateLimiter(store=...)` needs: a factory of tables (fastguard.redis.RedisStore is one)."""

    def table(self, algorithm: str, limits: Sequence[Any], max_keys: int, *, sync: float | None, on_error: str,
              ban_after: int = 0, ban_for: float = 0.0) -> SharedTable: ...
