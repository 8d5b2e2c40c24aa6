"""Process-wide state shared by every instance of one plugin entity (Kong starts one instance per nginx worker)."""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["Registry", "REGISTRY", "TRACK", "entity_of"]


class Registry:
    """Limiters and verifiers by (plugin entity, the settings that give them their state). A config change that
    keeps those settings keeps the state; instances are counted, and the last close lets the state go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[Any, ...], list[Any]] = {}  # key -> [object, users, closed on the last release]

    def acquire(self, key: tuple[Any, ...], make: Any, owns: bool = True) -> Any:
        """The object for `key` (made by `make()` for its first user). The last release closes it (its `close()`),
        unless `owns` is false: an object whose close() would close what other entries share (a verifier whose key
        set is shared per jwks_uri)."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = [make(), 0, owns]
            item[1] += 1
            return item[0]

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return
            item[1] -= 1
            if item[1] <= 0:
                del self._items[key]
                close = getattr(item[0], "close", None) if item[2] else None
                if close is not None:
                    close()

    def __len__(self) -> int:
        return len(self._items)


REGISTRY = Registry()
#: Set by `fastguard kong-server --metrics-port`: fastguard.metrics.track, called for each shared limiter/verifier.
TRACK: Any = None


def entity_of(config: dict[str, Any]) -> str:
    """The plugin entity an instance belongs to: Kong's `__plugin_id`, else `__key__`, else the scope ids."""
    for name in ("__plugin_id", "__key__"):
        if config.get(name):
            return str(config[name])
    return "|".join(str(config.get(n) or "") for n in ("route_id", "service_id", "consumer_id")) or "global"
