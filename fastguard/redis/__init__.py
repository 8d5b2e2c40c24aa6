"""fastguard.redis: the rate limiter on a shared Redis (standalone or Redis Cluster).

    from fastguard.redis import RedisStore
    store = RedisStore.from_url("redis://127.0.0.1:6379/0")      # or "redis+cluster://h1:7000,h2:7001"
    lim = fastguard.RateLimiter("100/minute", store=store, sync=None, on_error="allow")

`sync=None` (strict): every decision is one atomic server-side script call with the in-process core's rules.
`sync=seconds` (local-first): the in-process core decides and a background thread exchanges counts with Redis.
See `RedisStore` for both, and for what happens while Redis is unreachable.
"""

from fastguard.arguments import ON_ERROR
from fastguard.redis.store import RedisStore
from fastguard.redis.strict import StrictTable
from fastguard.redis.sync import SyncTable

__all__ = ["RedisStore", "StrictTable", "SyncTable", "ON_ERROR"]
