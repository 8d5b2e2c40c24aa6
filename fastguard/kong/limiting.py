"""The rate-limiting half of the plugins: a shared RateLimiter and Kong's answers to its decisions."""

from __future__ import annotations

import json
from typing import Any

import fastguard as fg
from fastguard.kong import registry
from fastguard.kong.fields import ConfigError
from fastguard.kong.pdk import PDKCall, json_exit
from fastguard.kong.schemas import limits_from_config, redis_url_from_config

__all__ = ["Limiting", "rate_limit_key"]


def rate_limit_key(kind: str, value: Any) -> bytes:
    """A rate-limit key from a value Kong sent, whatever its type. Kong's strings are bytes (the plugin server
    decodes them with surrogateescape, a msgpack bin arrives as bytes), so a key is made of those bytes: undecodable
    bytes still name a caller. Never raises: an error here would be answered by fault_tolerant, i.e. let through."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    elif value is None:
        raw = b""
    else:  # a number, or a JSON-like structure (a claim): its compact JSON, anything else its repr
        raw = json.dumps(value, separators=(",", ":"), default=repr).encode("utf-8", "surrogateescape")
    return kind.encode() + b":" + raw


class Limiting:
    """The rate-limiting half: a shared RateLimiter and the Kong-style answer to a Decision."""

    def __init__(self, cfg: dict[str, Any], entity: str) -> None:
        limits = limits_from_config(cfg)
        self.error_code = int(cfg["error_code"])
        self.error_message = cfg["error_message"]
        self.hide = cfg["hide_client_headers"]
        self.fault_tolerant = cfg["fault_tolerant"]
        url = None
        sync = None
        if cfg["policy"] == "redis":
            url = redis_url_from_config(cfg["redis"])
            sync = cfg["sync_rate"] if cfg["sync_rate"] and cfg["sync_rate"] > 0 else None
        if cfg["ban_after"] and not cfg["ban_for"]:
            raise ConfigError("ban_for", "ban_after needs ban_for: how many seconds a ban lasts")
        self.ban_status = int(cfg["ban_status"])
        self._key = ("limiter", entity, cfg["algorithm"], tuple((x.count, x.period_ns) for x in limits), url, sync,
                     cfg["max_keys"], self.fault_tolerant, cfg["ban_after"], cfg["ban_for"])
        timeout = cfg["redis"]["timeout"] / 1000

        def make() -> fg.RateLimiter:
            store = None
            if url is not None:
                from fastguard.redis import RedisStore

                store = RedisStore.from_url(url, timeout=timeout, connect_timeout=timeout,
                                            prefix=f"fg-kong-{entity}".replace(" ", "_").replace("{", "(")
                                            .replace("}", ")"))
            return fg.RateLimiter(limits, algorithm=cfg["algorithm"], max_keys=cfg["max_keys"], store=store,
                                  sync=sync, on_error="allow" if self.fault_tolerant else "deny",
                                  ban_after=cfg["ban_after"], ban_for=cfg["ban_for"])

        self.limiter: fg.RateLimiter = registry.REGISTRY.acquire(self._key, make)
        if registry.TRACK is not None:
            registry.TRACK(self.limiter, entity)

    def close(self) -> None:
        registry.REGISTRY.release(self._key)

    def fault_answer(self) -> PDKCall | None:
        """The answer when the event cannot be decided: pass (fault_tolerant) or 500."""
        return None if self.fault_tolerant else json_exit(500, "An unexpected error occurred")

    def answer(self, key: bytes) -> PDKCall | None:
        """The PDK call that ends the rate-limit part: exit when refused, set_headers when allowed (None when the
        headers are hidden)."""
        d = self.limiter.hit(key)
        if not d.allowed:
            if not self.fault_tolerant and not self.limiter.store_up:
                return json_exit(500, "An unexpected error occurred")
            headers = {} if self.hide else d.headers("kong")
            if "Retry-After" not in headers and d.retry_after != float("inf"):
                headers["Retry-After"] = str(max(1, int(-(-d.retry_after // 1))))
            if d.banned:  # Retry-After: what is left of the ban
                return json_exit(self.ban_status, self.error_message, headers)
            return json_exit(self.error_code, self.error_message, headers)
        if self.hide:
            return None
        return ("kong.response.set_headers", [d.headers("kong")])
