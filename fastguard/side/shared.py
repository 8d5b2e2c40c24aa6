"""Counts shared through Redis (`fastguard serve --redis URL`): a domain's `fastguard.counts` block and the stores
its rules count in.

    fastguard:
      counts:
        namespace: api              # a Kong plugin with `namespace: api` shares these counts (default: own)
        on_error: allow             # while Redis cannot answer: allow (default), deny, or local (in-process counts)
        kong_keys: {remote_address: ip, api_key: header}   # count this entry's value as Kong's limit_by does

A rule's counts live under the RateLimiter key layout (fastguard.redis.RedisStore), with the prefix Kong's plugins
use for a namespace (fastguard.identity.shared_prefix). A descriptor whose last entry is named in `kong_keys` counts
under Kong's key for that identity (`ip:<address>`, `header:<value>`, ...): with the same namespace, algorithm and
windows, the side service and the Kong plugin decrement one count. Every other descriptor counts under its entries.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastguard.arguments import ON_ERROR
from fastguard.identity import IDENTIFIER_KINDS, rate_limit_key, shared_prefix
from fastguard.side.policy import Domain, Match, PolicyError

__all__ = ["Counts", "Stores"]

_KEYS = frozenset(("namespace", "on_error", "kong_keys"))


@dataclass(frozen=True)
class Counts:
    """How a domain's rules count: where in Redis, and what they do while Redis cannot answer."""

    scope: str                                  # "ns:<namespace>" or "domain:<name>"
    on_error: str = "allow"
    kong_keys: tuple[tuple[str, str], ...] = ()  # descriptor key -> Kong identifier kind

    @classmethod
    def of(cls, domain: Domain) -> Counts:
        """The domain's `fastguard.counts` block (PolicyError naming the field otherwise)."""
        where = f"{domain.source}: fastguard.counts"
        block = domain.extra.get("counts") if isinstance(domain.extra, Mapping) else None
        if block is None:
            return cls(f"domain:{domain.name}")
        if not isinstance(block, Mapping):
            raise PolicyError(where, "a mapping with namespace, on_error, kong_keys")
        unknown = set(block) - _KEYS
        if unknown:
            raise PolicyError(where, f"unknown key {sorted(map(str, unknown))[0]!r} (namespace, on_error, kong_keys)")
        namespace = block.get("namespace")
        if namespace is not None and (not isinstance(namespace, str) or not namespace):
            raise PolicyError(f"{where}.namespace", f"a non-empty string, got {namespace!r}")
        on_error = block.get("on_error", "allow")
        if on_error not in ON_ERROR:
            raise PolicyError(f"{where}.on_error", f"one of {', '.join(ON_ERROR)}, got {on_error!r}")
        kong = block.get("kong_keys") or {}
        if not isinstance(kong, Mapping):
            raise PolicyError(f"{where}.kong_keys", "a mapping from descriptor key to Kong identifier")
        for key, kind in kong.items():
            if kind not in IDENTIFIER_KINDS:
                raise PolicyError(f"{where}.kong_keys.{key}", f"one of {', '.join(IDENTIFIER_KINDS)}, got {kind!r}")
        scope = f"ns:{namespace}" if namespace else f"domain:{domain.name}"
        return cls(scope, on_error, tuple(sorted((str(k), v) for k, v in kong.items())))

    @property
    def prefix(self) -> str:
        return shared_prefix(self.scope)

    def key(self, match: Match) -> bytes:
        """The key a rule counts a request descriptor under: Kong's (`ip:<address>`...) for a `kong_keys` entry,
        else its entries (a share_threshold pattern in place of the value it matched), each string prefixed by its
        length: unambiguous whatever the characters, a lone surrogate from undecodable input kept, and never one of
        Kong's keys (those begin with a letter, these with a digit). A format, not JSON: made per decision."""
        counted = match.counted
        if self.kong_keys:
            last_key, last_value = counted[-1]
            for name, kind in self.kong_keys:
                if name == last_key:
                    return rate_limit_key(kind, last_value)
        if len(counted) == 1:
            k, v = counted[0]
            text = f"{len(k)}:{k}{len(v)}:{v}"
        else:
            text = "".join(f"{len(k)}:{k}{len(v)}:{v}" for k, v in counted)
        return text.encode("utf-8", "surrogatepass")


class Stores:
    """The Redis stores of `--redis URL`: one per prefix, made on first use, sharing the URL's client.
    `sync`: None decides every hit in Redis (strict), seconds decides in process and exchanges counts that often
    (local-first). Raises ValueError for a URL that cannot be used (said at start, not at the first request)."""

    def __init__(self, url: str, *, sync: float | None = None, timeout: float = 0.25) -> None:
        from fastguard.redis.url import client_from_url

        self.url, self.sync, self.timeout = url, sync, timeout
        self._client, self._connect = client_from_url(url, timeout=timeout, connect_timeout=timeout)
        self._stores: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def strict(self) -> bool:
        """Every decision is a Redis round trip (callers on an event loop hand it to a thread)."""
        return self.sync is None

    def store(self, prefix: str) -> Any:
        s = self._stores.get(prefix)
        if s is None:
            from fastguard.redis import RedisStore

            with self._lock:
                s = self._stores.get(prefix)
                if s is None:
                    s = self._stores[prefix] = RedisStore(self._client, prefix=prefix, _connect=self._connect)
        return s

    def close(self) -> None:
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for s in stores:
            s.close()
