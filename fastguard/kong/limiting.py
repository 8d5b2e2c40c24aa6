"""The rate-limiting half of the plugins: a shared RateLimiter and Kong's answers to its decisions."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import fastguard as fg
from fastguard.identity import rate_limit_key, shared_prefix
from fastguard.kong import registry
from fastguard.kong.pdk import PDKCall, json_exit
from fastguard.kong.schemas import (
    WINDOWS,
    algorithm_from_config,
    limits_from_config,
    redis_url_from_config,
    sync_interval,
)

__all__ = ["Limiting", "Tiered", "rate_limit_key"]

log = logging.getLogger("fastguard.kong")


class Limiting:
    """The rate-limiting half: a shared RateLimiter and the Kong-style answer to a Decision."""

    def __init__(self, cfg: dict[str, Any], entity: str) -> None:
        limits = limits_from_config(cfg)
        algorithm = algorithm_from_config(cfg)
        self.error_code = int(cfg["error_code"])
        self.error_message = cfg["error_message"]
        self.hide = cfg["hide_client_headers"]
        self.fault_tolerant = cfg["fault_tolerant"]
        self.jitter = float(cfg.get("retry_after_jitter_max") or 0)
        url, options = None, {}
        sync = None
        if cfg["policy"] == "redis":
            url, options = redis_url_from_config(cfg["redis"])
            sync = sync_interval(cfg)
        self.ban_status = int(cfg["ban_status"])
        # Instances of one plugin entity share a limiter (Kong starts one per nginx worker); a namespace shares it
        # across entities, in this process and (its Redis prefix) across nodes.
        scope = f"ns:{cfg['namespace']}" if cfg.get("namespace") else entity
        self._key = ("limiter", scope, algorithm, tuple((x.count, x.period_ns) for x in limits), url,
                     tuple(sorted(options.items())), sync, cfg["max_keys"], self.fault_tolerant, cfg["ban_after"],
                     cfg["ban_for"])
        timeout = cfg["redis"]["timeout"] / 1000

        def make() -> fg.RateLimiter | None:
            store = None
            if url is not None:
                from fastguard.redis import RedisStore

                try:
                    store = RedisStore.from_url(url, timeout=timeout, connect_timeout=timeout,
                                                prefix=shared_prefix(scope), **options)
                except ValueError as exc:
                    # A Redis address Kong's schema cannot rule out (an `ip` that is no address): Redis cannot
                    # be reached, which fault_tolerant answers, as for a Redis that is down. Said once, here.
                    log.error("fastguard-rate-limiting (plugin %s): the Redis settings cannot be used (%s); "
                              "every request is answered as fault_tolerant=%s says", entity, exc,
                              self.fault_tolerant)
                    return None
            return fg.RateLimiter(limits, algorithm=algorithm, max_keys=cfg["max_keys"], store=store,
                                  sync=sync, on_error="allow" if self.fault_tolerant else "deny",
                                  ban_after=cfg["ban_after"], ban_for=cfg["ban_for"])

        #: how long this limiter's state matters after its last decision: two of its longest window (a sliding
        #: window still weighs the previous one), or a ban
        self.state_lasts = max([2 * x.period_ns / 1e9 for x in limits] + [float(cfg["ban_for"] or 0)])
        self.limiter: fg.RateLimiter | None = registry.REGISTRY.acquire(self._key, make)
        #: every decision is a Redis round trip (strict mode); local-first decides in process
        self.waits = self.limiter is not None and self.limiter.store is not None and self.limiter.sync is None
        if registry.TRACK is not None and self.limiter is not None:
            registry.TRACK(self.limiter, entity)

    def close(self) -> None:
        registry.REGISTRY.release(self._key)

    def fault_answer(self) -> PDKCall | None:
        """The answer when the event cannot be decided: pass (fault_tolerant) or 500."""
        return None if self.fault_tolerant else json_exit(500, "An unexpected error occurred")

    def answer(self, key: bytes) -> PDKCall | None:
        """The PDK call that ends the rate-limit part: Kong's `kong.response.error` when refused (its body in the
        format the client's Accept asks for), set_headers when allowed (None when the headers are hidden).
        As Kong 3.10's handler: with hide_client_headers a refusal carries no header at all, Retry-After included."""
        if self.limiter is None:
            return self.fault_answer()
        d = self.limiter.hit(key)
        if not d.allowed:
            if not self.fault_tolerant and d.fallback:
                # refused because Redis could not decide (down, a wrong database, auth, TLS, a script error):
                # Kong's answer to a Redis fault is a 500, never a rate limit that is not one
                return json_exit(500, "An unexpected error occurred")
            headers = {} if self.hide else d.headers("kong")
            if not self.hide:
                wait = d.retry_after
                if math.isfinite(wait):
                    if self.jitter:
                        wait += random.uniform(0, self.jitter)
                    headers["Retry-After"] = str(max(1, math.ceil(wait)))
            status = self.ban_status if d.banned else self.error_code
            return ("kong.response.error", [status, self.error_message, headers])
        if self.hide:
            return None
        return ("kong.response.set_headers", [d.headers("kong")])


class Tiered:
    """The plugin's Limiting and, per tier value, one with that tier's windows (`tiers`: a tier without windows
    keeps the plugin's). pick() only chooses which limiter decides: still one compiled decision, no PDK call."""

    def __init__(self, cfg: dict[str, Any], entity: str) -> None:
        self.default = Limiting(cfg, entity)
        self.tiers: dict[str, Limiting] = {}
        try:
            for tier in cfg.get("tiers") or ():
                windows = {name: tier[name] for name, _ in WINDOWS}
                if any(v is not None for v in windows.values()):
                    value = tier["value"]
                    tier_cfg = {**cfg, **windows, "limit": None, "window_size": None,
                                "namespace": cfg["namespace"] and f"{cfg['namespace']}#tier={value}"}
                    self.tiers[value] = Limiting(tier_cfg, f"{entity}#tier={value}")
        except BaseException:
            self.close()
            raise

    @property
    def state_lasts(self) -> float:
        return max(limiting.state_lasts for limiting in (self.default, *self.tiers.values()))

    def pick(self, value: Any) -> Limiting:
        return self.tiers.get(value, self.default) if isinstance(value, str) else self.default

    def close(self) -> None:
        for limiting in (self.default, *self.tiers.values()):
            limiting.close()
