"""The BanGate of cluster mode (twin of fastguard/core/bangate.pxi); the ban rules themselves are Table's
(table.py: _decide and _hit_id)."""

from __future__ import annotations

from typing import Any

from fastguard._pure.arguments import cost_from, now_ns_from
from fastguard._pure.table import Decision, Table


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
            return Decision.of(allowed=False, limit=lim.count, remaining=0, reset_after=left, retry_after=left,
                               period=lim.period, limits=tb.limits, remainings=[0] * len(tb.limits), banned=True)
        return self.slow(key, cost, now)
