"""The verified-token cache and the verify hot path (twin of fastguard/core/caches.pxi)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from fastguard._pure.arguments import now_ns_from


class TokenCache:
    """Verdicts by exact token, each usable for `now` in [valid_from, valid_until) (ns); at most `capacity`.

    get(token, now) -> the stored value, or None (a miss; an entry outside its time window is dropped).
    contains(token, now) -> whether get would hit (counts and changes nothing).
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

    def contains(self, token: Any, now: Any = None) -> bool:
        """Whether get(token, now) would hit, without counting, touching or dropping anything."""
        t = now_ns_from(now)
        key = self._key(token)
        with self._lock:
            entry = self._entries.get(key) if key is not None else None
        return entry is not None and entry[1] <= t < entry[2]

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
