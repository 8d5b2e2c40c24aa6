"""Whether Redis answers: which errors are faults of the store, which of one key's data, and the backoff."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError

from fastguard.corechoice import core
from fastguard.errors import StoreError

__all__ = ["FAULTS", "Health", "key_fault", "store_errors", "on_error_decision", "BACKOFF_FIRST", "BACKOFF_MAX",
           "DENY_RETRY_AFTER"]

log = logging.getLogger("fastguard.redis")

#: What counts as "Redis cannot answer" (redis-py raises RedisClusterException, not a RedisError, when it cannot
#: reach any node of a cluster).
FAULTS = (RedisError, RedisClusterException, OSError)
#: Reconnect backoff: first retry after 20 ms, doubling to at most 0.4 s, so a recovered Redis is used within 1 s.
BACKOFF_FIRST = 0.02
BACKOFF_MAX = 0.4
#: Retry-After of a refusal while Redis cannot answer (on_error="deny"): about when it is tried again.
DENY_RETRY_AFTER = 1.0


def on_error_decision(limits: Any, allowed: bool) -> Any:
    """The decision on_error makes while Redis cannot decide (strict and local-first alike): admitted with every
    limit's full count ("allow"), or refused with Retry-After DENY_RETRY_AFTER ("deny"); `fallback` says so."""
    lim = limits[0]
    wait = 0.0 if allowed else DENY_RETRY_AFTER
    return core.Decision.of(allowed=allowed, limit=lim.count, remaining=lim.count if allowed else 0,
                            reset_after=wait, retry_after=wait, period=lim.period, limits=tuple(limits),
                            remainings=[x.count for x in limits] if allowed else [0] * len(limits), fallback=True)


@contextmanager
def store_errors(what: str) -> Iterator[None]:
    """A store operation that must not silently do nothing (reset, ban, unban): a Redis fault becomes StoreError,
    with the backend's exception as its cause."""
    try:
        yield
    except FAULTS as exc:
        raise StoreError(f"{what}: Redis could not carry it out ({type(exc).__name__}: {exc})") from exc


def key_fault(exc: BaseException) -> bool:
    """Whether a failed call failed because of the data of the keys it was given (the script raised, a key holds
    another type): that decision falls back, the store stays up. Server states (LOADING, READONLY, BUSY, OOM,
    NOAUTH, CLUSTERDOWN...) and unreachable servers are faults of the store."""
    return isinstance(exc, ResponseError) and not isinstance(exc, NoScriptError) \
        and str(exc).startswith(("ERR", "WRONGTYPE"))


class Health:
    """Whether Redis answers, with reconnect backoff and one log line per change of state.

    While down, calls go to the fallback without touching the network until the backoff expires; then one caller
    probes (the others keep falling back) and the first success ends the outage.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self.up = True
        self.retry_at = 0.0
        self.backoff = BACKOFF_FIRST
        self.errors = 0
        self.fallbacks = 0
        self.changes = 0
        self.last_error = ""
        self._key_log_at = 0.0
        self._lock = threading.Lock()

    def may_try(self) -> bool:
        if self.up:
            return True
        with self._lock:
            t = time.monotonic()
            if t < self.retry_at:
                return False
            self.retry_at = t + self.backoff  # this caller probes; the others fall back meanwhile
            return True

    def failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            if self.up:
                self.up = False
                self.changes += 1
                self.backoff = BACKOFF_FIRST
                log.warning("fastguard: Redis unreachable for %s (%s); deciding by on_error until it answers",
                            self.what, self.last_error)
            else:
                self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            self.retry_at = time.monotonic() + self.backoff

    def key_failed(self, exc: BaseException) -> None:
        """A call failed for its own keys' data: counted and logged (at most once a second), no change of state."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        t = time.monotonic()
        if t >= self._key_log_at:
            self._key_log_at = t + 1.0
            log.warning("fastguard: Redis refused one decision for %s (%s); that decision follows on_error",
                        self.what, self.last_error)

    def succeeded(self) -> None:
        if self.up:
            return
        with self._lock:
            if not self.up:
                self.up = True
                self.changes += 1
                log.warning("fastguard: Redis answers again for %s; decisions use it again", self.what)

    def stats(self) -> dict[str, Any]:
        return {"redis_up": self.up, "redis_errors": self.errors, "fallbacks": self.fallbacks,
                "state_changes": self.changes, "last_error": self.last_error}
