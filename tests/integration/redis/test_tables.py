"""The seam between RateLimiter and its tables: every kind of table has the methods of fastguard.tables.Table and
reports stats() of the types fastguard.tables declares (which fastguard.metrics reads)."""

from __future__ import annotations

import uuid

import pytest

import fastguard as fg
from fastguard import _pure
from fastguard.redis import RedisStore
from fastguard.tables import STORE_STATS, TABLE_STATS, SharedTable, Table


def _check(stats: dict, types: dict) -> None:
    for key, kind in types.items():
        assert key in stats, f"stats() lacks {key!r}"
        assert isinstance(stats[key], kind) and (kind is bool or not isinstance(stats[key], bool)), \
            f"stats()[{key!r}] is {stats[key]!r}, not {kind.__name__}"


def _limiters(redis_server, redis_cluster):
    def store(url):
        return RedisStore.from_url(url, prefix=f"t{uuid.uuid4().hex[:10]}")

    for bans in ({}, {"ban_after": 3, "ban_for": 60}):
        yield "compiled", fg.RateLimiter("5/minute", **bans)
        yield "pure", fg.RateLimiter("5/minute", _core=_pure, **bans)
        yield "strict", fg.RateLimiter("5/minute", store=store(redis_server.url), **bans)
        yield "strict cluster", fg.RateLimiter("5/minute", store=store(redis_cluster.url), **bans)
        yield "sync", fg.RateLimiter("5/minute", store=store(redis_server.url), sync=60, **bans)


def test_every_table_kind_meets_the_protocol_and_the_stats_types(redis_server, redis_cluster):
    kinds = set()
    for kind, lim in _limiters(redis_server, redis_cluster):
        kinds.add(kind)
        table = lim._table
        assert isinstance(table, Table), kind
        shared = kind not in ("compiled", "pure")
        assert isinstance(table, SharedTable) is shared, kind
        for key in ("a", b"b", "a"):
            lim.hit(key)
        lim.peek("a")
        lim.hit_many(["c", "c"])
        st = lim.stats()
        _check(st, TABLE_STATS)
        assert st["hits"] >= 5 and st["capacity"] == lim.max_keys, (kind, st)
        if shared:
            _check(st, STORE_STATS)
            assert st["redis_up"] is True and lim.store_up, (kind, st)
        if lim.ban_for:
            lim.ban("m", 10)
            assert lim.banned("m") > 0
            lim.unban("m")
        else:
            with pytest.raises(ValueError, match="no bans"):
                lim.ban("m", 10)
        lim.close()
    assert kinds == {"compiled", "pure", "strict", "strict cluster", "sync"}
