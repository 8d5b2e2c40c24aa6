"""One rate limit request (a domain, its descriptors, hits) → one answer per descriptor and an overall code, on
fastguard's compiled decisions. Every front end of the side service (Envoy's RLS, ext_authz, forward-auth) comes
through here.

As envoyproxy/ratelimit (src/service/ratelimit.go): a descriptor with no rule is OK; `unlimited` is OK with
2^32 - 1 remaining; a rule named in another matched rule's `replaces` is dropped; `shadow_mode` is decided and
counted but never refuses; the overall code is OVER_LIMIT when any enforced descriptor is. Unlike it, a refused
request counts in none of its descriptors (its STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT, always): the descriptors are
decided together, under the domain's lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastguard.decision import window_reset
from fastguard.ratelimit import RateLimiter
from fastguard.side.policy import MAX_UINT32, Domain, Match, Rule
from fastguard.side.shared import Counts, Stores

__all__ = ["OK", "OVER_LIMIT", "Status", "Verdict", "Decider", "MAX_REQUEST_DESCRIPTORS", "MAX_ENTRIES"]

#: Envoy's RateLimitResponse.Code values.
OK, OVER_LIMIT = 1, 2
#: A request with more descriptors, or a descriptor with more entries, is refused whole (never an allow by
#: accident, never unbounded work): Envoy sends a handful.
MAX_REQUEST_DESCRIPTORS = 256
MAX_ENTRIES = 64


@dataclass(slots=True)   # made per request: a frozen init costs a setattr per field
class Status:
    """One descriptor's answer (Envoy's DescriptorStatus): `rule` None when no limit applies."""

    code: int
    rule: Rule | None = None
    remaining: int = 0
    reset_seconds: int = 0
    retry_after: float = 0.0
    shadowed: bool = False      # over its limit, but in shadow mode: OK
    banned: bool = False
    fault: bool = False         # refused because the shared store cannot answer (on_error: deny)


@dataclass(slots=True)   # made per request: a frozen init costs a setattr per field
class Verdict:
    overall: int
    statuses: tuple[Status, ...]

    @property
    def allowed(self) -> bool:
        return self.overall == OK

    @property
    def fault(self) -> bool:
        """Refused only because the shared store cannot answer (a domain with on_error: deny)."""
        return self.overall == OVER_LIMIT and any(s.fault for s in self.statuses)

    @property
    def retry_after(self) -> float:
        """Seconds until every refusing descriptor admits again (0.0 when allowed)."""
        return max((s.retry_after for s in self.statuses if s.code == OVER_LIMIT), default=0.0)

    def tightest(self) -> Status | None:
        """The limited descriptor closest to its limit (for RateLimit-* headers), a refusing one first."""
        if len(self.statuses) == 1:
            s = self.statuses[0]
            return s if s.rule is not None and not s.rule.unlimited else None
        limited = [s for s in self.statuses if s.rule is not None and not s.rule.unlimited]
        return min(limited, key=lambda s: (s.code != OVER_LIMIT, s.remaining), default=None)


class Decider:
    """Decisions for a set of domains: one RateLimiter per rule (at most `max_keys` callers each), made when the
    rule first decides; in process, or with `stores` in Redis under each domain's `fastguard.counts`."""

    def __init__(self, domains: Mapping[str, Domain], max_keys: int = 1_000_000, stores: Stores | None = None) -> None:
        self.domains = dict(domains)
        self.counts = {name: Counts.of(d) for name, d in self.domains.items()}
        self.max_keys = max_keys
        self.stores = stores
        self._limiters: dict[tuple[Any, ...], RateLimiter] = {}   # by (rule signature, counts): kept on reload
        self._by_rule: dict[Rule, RateLimiter] = {}                # the same, by Rule object: emptied on a swap
        self._locks: dict[str, threading.Lock] = {name: threading.Lock() for name in self.domains}
        self._make_lock = threading.Lock()
        #: called with (rule, limiter) when a rule's limiter is made (the metrics export it)
        self.on_new_limiter: Callable[[Rule, RateLimiter], Any] | None = None

    @property
    def waits(self) -> bool:
        """Every decision is a Redis round trip (strict mode): an event loop hands decisions to a thread."""
        return self.stores is not None and self.stores.strict

    def limiter(self, rule: Rule, counts: Counts) -> RateLimiter:
        """The rule's limiter. A rule belongs to one domain, whose counts change only with a swap: looked up by the
        Rule object (hashed by identity), not by a (signature, counts) tuple hashed per decision."""
        lim = self._by_rule.get(rule)
        if lim is not None:
            return lim
        key = (rule.signature, counts)
        with self._make_lock:
            lim = self._limiters.get(key)
            if lim is None:
                store = self.stores.store(counts.prefix) if self.stores is not None else None
                lim = RateLimiter(list(rule.limits), algorithm=rule.algorithm, max_keys=self.max_keys,
                                  ban_after=rule.ban_after, ban_for=rule.ban_for, store=store,
                                  sync=self.stores.sync if store is not None else None, on_error=counts.on_error)
                self._limiters[key] = lim
                if self.on_new_limiter is not None:
                    self.on_new_limiter(rule, lim)
            self._by_rule[rule] = lim
        return lim

    def swap(self, domains: Mapping[str, Domain]) -> int:
        """Decide with these domains from now on (a reload: validated whole by the caller). A rule that did not
        change — same place, same limits, algorithm and bans — keeps its counts; the others start afresh. How many
        rules kept their counts."""
        counts = {name: Counts.of(d) for name, d in domains.items()}
        keep = {(r.signature, counts[name]) for name, d in domains.items() for r in d.rules()}
        with self._make_lock:
            for name in domains:
                self._locks.setdefault(name, threading.Lock())
            # a request sees the old domains or the new ones (counts first: a new domain's are there before it)
            self.counts = {**self.counts, **counts}
            self.domains = dict(domains)
            self.counts = counts
            kept = {k: v for k, v in self._limiters.items() if k in keep}
            self._limiters = kept
            self._by_rule = {}
        return len(kept)

    def decide(self, domain: str, descriptors: Sequence[Sequence[tuple[str, str]]],
               hits: int | Sequence[int] = 1, now: float | None = None,
               overrides: Sequence[Rule | None] | None = None) -> Verdict:
        """The answer to ShouldRateLimit(domain, descriptors, hits_addend): `hits` for all descriptors or one per
        descriptor (0 counts as 1); `overrides`: per descriptor, a rule that replaces the configuration's (Envoy's
        per-descriptor `limit`), counted per its entries."""
        if len(descriptors) == 1 and overrides is None:      # the common case, without the general bookkeeping
            entries = descriptors[0]
            dom = self.domains.get(domain)
            m = dom.match(entries) if dom is not None and entries and len(entries) <= MAX_ENTRIES else None
            rule = m.rule if m is not None else None
            # (a rule's `replaces` only drops other descriptors' rules; unlimited, shadow and blocked: below)
            if rule is not None and not (rule.unlimited or rule.shadow or rule.blocked):
                n = hits if isinstance(hits, int) else hits[0]
                counts = self.counts.get(domain) or Counts(f"domain:{domain}")
                with self._lock(domain):
                    status = self._hit(m, n or 1, now, counts)  # type: ignore[arg-type]
                return Verdict(status.code, (status,))
        if len(descriptors) > MAX_REQUEST_DESCRIPTORS or any(len(d) > MAX_ENTRIES for d in descriptors):
            return Verdict(OVER_LIMIT, tuple(Status(OVER_LIMIT) for _ in descriptors))
        each = [hits or 1] * len(descriptors) if isinstance(hits, int) else [h or 1 for h in hits]
        dom = self.domains.get(domain)
        matches: list[Match | None] = [
            Match(overrides[i], tuple(d)) if overrides is not None and overrides[i] is not None
            else dom.match(d) if dom is not None and d else None
            for i, d in enumerate(descriptors)]
        replacing = {name for m in matches if m is not None for name in m.rule.replaces}
        statuses: list[Status | None] = [None] * len(matches)
        enforced, shadowed = [], []
        for i, m in enumerate(matches):
            rule = m.rule if m is not None else None
            if rule is None or (rule.name is not None and rule.name in replacing):
                statuses[i] = Status(OK)
            elif rule.unlimited:
                statuses[i] = Status(OK, rule, MAX_UINT32)
            elif rule.shadow:
                shadowed.append(i)
            else:
                enforced.append(i)
        if enforced or shadowed:
            counts = self.counts.get(domain) or Counts(f"domain:{domain}")
            with self._lock(domain):
                self._enforce(enforced, matches, statuses, each, now, counts)
                for i in shadowed:
                    s = self._hit(matches[i], each[i], now, counts)  # type: ignore[arg-type]
                    statuses[i] = s if s.code == OK else Status(OK, s.rule, 0, s.reset_seconds, 0.0, True, s.banned)
        done = tuple(s for s in statuses if s is not None)
        return Verdict(OVER_LIMIT if any(s.code == OVER_LIMIT for s in done) else OK, done)

    def _lock(self, domain: str) -> threading.Lock:
        lock = self._locks.get(domain)
        if lock is None:   # an unknown domain with an override: a lock of its own
            with self._make_lock:
                lock = self._locks.setdefault(domain, threading.Lock())
        return lock

    def _enforce(self, indexes: list[int], matches: list[Match | None], statuses: list[Status | None],
                 hits: list[int], now: float | None, counts: Counts) -> None:
        """Decide the enforced descriptors together: all count, or (one refuses) none counts. With Redis, each
        descriptor's own decision is atomic; the peek-then-hit of several is atomic in this process only."""
        if len(indexes) == 1 and not matches[indexes[0]].rule.blocked:  # type: ignore[union-attr]
            statuses[indexes[0]] = self._hit(matches[indexes[0]], hits[indexes[0]], now,  # type: ignore[arg-type]
                                             counts)
            return
        looks = {}
        for i in indexes:
            m = matches[i]
            assert m is not None
            if m.rule.blocked:
                looks[i] = None
                continue
            looks[i] = self.limiter(m.rule, counts).peek(counts.key(m), now=now)
        admits = all(d is not None and not d.banned and d.remaining >= hits[i] for i, d in looks.items())
        for i in indexes:
            m, d = matches[i], looks[i]
            assert m is not None
            if d is None:                                   # requests_per_unit: 0
                statuses[i] = Status(OVER_LIMIT, m.rule, 0, 0, math.inf)
            elif admits or d.banned or d.remaining < hits[i]:  # counted, or refused (counts towards a ban)
                statuses[i] = self._hit(m, hits[i], now, counts)
            else:                                           # would admit, but another refuses: not counted
                statuses[i] = Status(OK, m.rule, d.remaining, math.ceil(window_reset(d)))

    def _hit(self, m: Match, hits: int, now: float | None, counts: Counts) -> Status:
        if m.rule.blocked:
            return Status(OVER_LIMIT, m.rule, 0, 0, math.inf)
        d = self.limiter(m.rule, counts).hit(counts.key(m), hits, now=now)
        if d.allowed:
            return Status(OK, m.rule, d.remaining, math.ceil(window_reset(d)))
        # refused by on_error="deny" because Redis could not decide: not a rate limit
        return Status(OVER_LIMIT, m.rule, 0, math.ceil(window_reset(d)), d.retry_after, banned=d.banned,
                      fault=d.fallback)

    def close(self) -> None:
        """Close the shared stores (at exit)."""
        if self.stores is not None:
            self.stores.close()
