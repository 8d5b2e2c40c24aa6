"""Strict mode: every decision is one atomic script call on Redis, with the in-process core's rules."""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Sequence
from typing import Any

import redis
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ReadOnlyError, ResponseError

import fastguard
from fastguard import Decision
from fastguard.arguments import NO_BANS, ban_seconds, ban_settings, check_on_error, checked_cost, epoch_ns
from fastguard.corechoice import core
from fastguard.decision import numpy
from fastguard.limits import Limit
from fastguard.redis.health import DENY_RETRY_AFTER, FAULTS, Health, key_fault, on_error_decision, store_errors
from fastguard.redis.store import ALG_CODES, LIFTED, LIFTED_MS, REDIRECTIONS, RedisStore, tagged
from fastguard.tables import StoreStats

try:
    import hiredis

    from fastguard.redis.wire import bulk
except ImportError:  # pragma: no cover - exercised only without hiredis
    hiredis = None

__all__ = ["StrictTable", "BATCH_KEYS", "DENY_RETRY_AFTER", "LATENCY_BUCKETS", "FAST_MAX_COUNT", "FAST_MAX_PERIOD_NS",
           "fast_arithmetic"]

#: Keys per script call in hit_many on a standalone server (one call holds the server for ~this many decisions).
BATCH_KEYS = 256
#: Upper bounds (s) of the buckets of the Redis call latency histogram (stats()["redis_call_seconds"]).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_E9 = 1_000_000_000


#: The script's fast path takes every limit with a period of whole milliseconds up to FAST_MAX_PERIOD_NS and a
#: count up to FAST_MAX_COUNT: its three-limb arithmetic (base 10^6, in doubles) is exact within these bounds.
FAST_MAX_COUNT = 10**9
FAST_MAX_PERIOD_NS = 366 * 86_400 * _E9
_MS = 1_000_000


def fast_arithmetic(lim: Limit) -> bool:
    """Whether the script decides this limit on its fast path (exact wide integers in doubles): the period is whole
    milliseconds, at most 366 days, and the count at most 10^9. Otherwise it uses its exact bignum path."""
    p = lim.period_ns
    return p % _MS == 0 and p <= FAST_MAX_PERIOD_NS and lim.count <= FAST_MAX_COUNT


def _limbs(x: int) -> list[int]:
    """x as the script's three limbs of base 10^6, most significant first."""
    return [x // _MS**2, x // _MS % _MS, x % _MS]


def now_ns(now: Any) -> int | None:
    """`now=` as int nanoseconds, as the in-process core takes it; None stays None (the server's clock)."""
    return None if now is None else epoch_ns(now)


class StrictTable:
    """Strict mode: each hit is one atomic script call deciding every limit of the key with the rules of
    fastguard._pure (bit for bit: the script works in exact integers). One clock for all nodes: Redis TIME,
    or `now=`. While Redis is unreachable each decision follows `on_error` and never raises:
    "allow" admits (remaining reported as the full count), "deny" refuses with Retry-After 1 s, "local" asks an
    in-process table (max_keys entries). Redis is tried again after a backoff of 20 ms doubling to 0.4 s.
    """

    def __init__(self, store: RedisStore, algorithm: str, limits: Sequence[Limit], max_keys: int,
                 on_error: str, ban_after: int = 0, ban_for: float = 0.0) -> None:
        check_on_error(on_error)
        self.ban_after, ban_for_ns = ban_settings(ban_after, ban_for)
        self.ban_for = ban_for
        self.store = store
        self.algorithm = algorithm
        self.limits = tuple(limits)
        self.max_keys = max_keys
        self.on_error = on_error
        self.health = Health(f"{algorithm} {'; '.join(str(lim) for lim in self.limits)}")
        self._prefix = store.namespace(algorithm, self.limits)
        self._counts = [lim.count for lim in self.limits]
        self._max_count = max(self._counts)
        longest = max(lim.period_ns for lim in self.limits)
        # Every state is fresh after 2 periods (sliding window) plus C ns (GCRA); a second of margin.
        ttl_ms = (2 * longest + self._max_count) // 1_000_000 + 1000
        self.fast = all(fast_arithmetic(lim) for lim in self.limits)
        self._head = [ALG_CODES[algorithm]]
        path = b"fast" if self.fast else b"exact"
        self.bans = ban_for_ns > 0
        if self.bans:
            # Bans in Redis too (<key>~ban, <key>~deny): the script answers a banned key without deciding.
            short = min(range(len(self.limits)), key=lambda j: self.limits[j].period_ns)
            path += b":%d:%d:%d:%d" % (self.ban_after, max(1, -(-self.limits[short].period_ns // 1_000_000)),
                                       max(1, round(ban_for_ns / 1_000_000)), short + 1)
        self._tail = [str(ttl_ms).encode(), path, str(len(self.limits)).encode()]
        constants: list[int] = []
        for lim in self.limits:
            c, p = lim.count, lim.period_ns
            t = -(-p // c)
            if self.fast:  # C, P in ms, P as limbs (the lowest is 0), T and L = C * T as limbs, C * P as limbs
                constants += [c, p // _MS, *_limbs(p)[:2], *_limbs(t), *_limbs(c * t), *_limbs(c * p)]
            else:
                constants += [c, p, t, c * t]
        if self.fast:
            words = {"fixed_window": 2, "sliding_window": 3, "token_bucket": 3, "gcra": 2}[algorithm]
            state_fmt = "<" + "d" * (2 + words * len(self.limits))
            const_fmt = "<" + "d" * len(constants)
            self._tail += [state_fmt.encode(), const_fmt.encode(), struct.pack(const_fmt, *constants)]
        else:
            self._tail += [b"", b"", b"", *[str(x).encode() for x in constants]]
        self._hit_now = self._args(None, b"1", [])
        # The common call (a hit at the server's clock) prepacked in RESP around its two variable parts.
        self._packed_head = b"*%d\r\n" % (4 + len(self._hit_now) + 1) + bulk(b"EVALSHA") + bulk(
            store.sha.encode()) + bulk(b"1") if hiredis is not None else b""
        self._packed_mid = b"".join(bulk(a) for a in self._hit_now) if hiredis is not None else b""
        self._local = core.Table(algorithm, self.limits, max_keys, ban_after, ban_for) \
            if on_error == "local" else None
        # Bans this node knows of, answered from the core without a round trip until they end: `hit` is then a
        # compiled gate that answers a banned key itself and hands any other to the remote hit.
        self._banned = core.Table(algorithm, self.limits, max_keys, 0, 1.0) if self.bans else None
        self.bans_started = 0
        # `hit` is the remote call itself (no extra frame), or the gate in front of it when there are bans.
        if self._banned is not None:
            store.watch_bans(self._drop_cached_bans)
        self.hit = core.BanGate(self._banned, self._hit_remote) if self._banned is not None \
            else self._hit_remote
        self.calls = 0
        self.decisions = 0
        self.denials = 0
        # Latency of each script call (one per hit, one per hit_many batch): bucket counts and their sum, kept
        # here in plain ints (a few hundred ns on a call of tens of µs); fastguard.metrics exports a histogram.
        self._latency = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    # -- names and replies ------------------------------------------------------------------------------------
    def name(self, key: Any) -> bytes:
        return self._prefix + tagged(key)

    def id_name(self, kid: int) -> bytes:
        return self._prefix + b"#{" + str(kid).encode() + b"}"

    def _args(self, t: int | None, commit: bytes, costs: list[int]) -> list[Any]:
        cap = self._max_count + 1  # any cost above every count gets the same answer
        when = [b"", b""] if t is None else [str(t // _E9).encode(), str(t % _E9).encode()]
        return [*self._head, *when, commit, *self._tail, *[c if c < cap else cap for c in costs]]

    def _decision(self, r: Any, at: int, key: Any = None) -> Decision:
        """The Decision in reply `r` from position `at`. A reply of any other shape (not the script's: a proxy, a
        wrong server, a garbled stream) raises InvalidResponse, a fault like a refused connection."""
        n = len(self.limits)
        try:
            if type(r) is not list or len(r) < at + 4 + n:
                raise ValueError("short")
            code = int(r[at])
            best = int(r[at + 1]) - 1
            reset = int(r[at + 2])
            retry = int(r[at + 3])
            remainings = [int(x) for x in r[at + 4:at + 4 + n]]
            if not 0 <= code <= 3 or not 0 <= best < n or reset < 0:
                raise ValueError("out of range")
        except (TypeError, ValueError, OverflowError):
            raise InvalidResponse(f"not a reply of the decision script: {r!r:.120}") from None
        lim = self.limits[best]
        if code >= 2:  # banned: ms left of the ban
            left = reset / 1e3
            if code == 3:
                self.bans_started += 1
            if key is not None and self._banned is not None:
                self.store.bans_baseline()
                self._banned.ban(key, left)
            return Decision.of(allowed=False, limit=lim.count, remaining=0, reset_after=left, retry_after=left,
                               period=lim.period, limits=self.limits, remainings=[0] * n, banned=True)
        return Decision.of(allowed=code == 1, limit=lim.count, remaining=remainings[best], reset_after=reset / 1e9,
                           retry_after=math.inf if retry < 0 else retry / 1e9, period=lim.period, limits=self.limits,
                           remainings=remainings)

    # -- while Redis is unreachable --------------------------------------------------------------------------
    def _fallback(self, key: Any, cost: int, now: Any, commit: bool = True) -> Decision:
        self.health.fallbacks += 1
        if self._local is not None:
            d = self._local.hit(key, cost, now) if commit else self._local.peek(key, now)
        else:
            d = self._constant(self.on_error == "allow")
        if commit and not d.allowed:
            self.denials += 1
        return d

    def _constant(self, allowed: bool) -> Decision:
        return on_error_decision(self.limits, allowed)

    # -- the table API (fastguard._core.Table's) -------------------------------------------------------------
    def _hit_remote(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Decision:
        """`hit`: count a hit of `cost` against `key` if every limit admits it (one script call). Never raises for
        Redis faults (see on_error); raises TypeError/ValueError for a bad key, cost or now. With bans, a banned
        key this node knows of is answered by the compiled gate set up in __init__, without Redis."""
        name = self.name(key)
        k = checked_cost(cost)
        t = now_ns(now)
        if not self.health.may_try():
            return self._fallback(key, k, now)
        started = time.perf_counter()
        try:
            wire = self.store.wire_for(name) if t is None else None
            if wire is not None:  # the common call: prepacked, the server's clock
                c = str(k if k <= self._max_count else self._max_count + 1).encode()
                try:
                    r = wire.call(self._packed_head + bulk(name) + self._packed_mid + bulk(c))
                except NoScriptError:
                    r = self.store.call_script([name], self._hit_now + [c])
                except ResponseError as exc:  # a Cluster redirection: redis-py follows it
                    if not (self.store.cluster and str(exc).startswith(REDIRECTIONS)):
                        raise
                    r = self.store.call_script_redis_py([name], self._hit_now + [c])
                except RedisConnectionError:  # a Cluster node went away: redis-py refreshes the slot map
                    if not self.store.cluster:
                        raise
                    r = self.store.call_script_redis_py([name], self._hit_now + [c])
            else:
                r = self.store.call_script([name], self._args(t, b"1", [k]))
            d = self._decision(r, 0, key)
        except FAULTS as exc:
            return self._fault(exc, name, key, k, now)
        self._observe(time.perf_counter() - started)
        self.health.succeeded()
        self.calls += 1
        self.decisions += 1
        if not d.allowed:
            self.denials += 1
        return d

    def _fault(self, exc: BaseException, name: bytes, key: Any, cost: int, now: Any, commit: bool = True) -> Decision:
        """A decision Redis could not make: decided by on_error. A script error caused by this key's data counts
        as an error of this decision only; anything else (unreachable, a reply that is not the script's) marks the
        store down, and a garbled reply also closes the socket it came on (the stream cannot be trusted)."""
        if key_fault(exc):
            self.health.key_failed(exc)
        else:
            if isinstance(exc, (InvalidResponse, ReadOnlyError)):
                self.store.discard(name)   # garbled, or a master that became a replica: reconnect (Sentinel: to
                                           # wherever the master is now)
            self.health.failed(exc)
        return self._fallback(key, cost, now, commit)

    def _observe(self, seconds: float) -> None:
        self._latency_sum += seconds
        for i, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self._latency[i] += 1
                return
        self._latency[-1] += 1

    # -- bans ------------------------------------------------------------------------------------------------------
    def _check_bans(self) -> None:
        if not self.bans:
            raise ValueError(NO_BANS)

    def ban(self, key: str | bytes, seconds: float, now: float | None = None) -> None:
        """Ban `key` for `seconds` on every node: written to Redis (raises StoreError when it cannot be) and kept
        here; a ban that replaces a longer one reaches the nodes that cached that one within BANS_POLL s. `now` is
        accepted for the table API; Redis counts the ban from its own clock."""
        self._check_bans()
        seconds = ban_seconds(seconds)
        with store_errors("ban"):
            self.store.client.set(self.name(key) + b"~ban", b"manual", px=max(1, round(seconds * 1000)))
            self.store.bans_changed()
        self.store.bans_baseline()
        self._banned.ban(key, seconds)
        self.bans_started += 1

    def _drop_cached_bans(self) -> None:
        """An operator lifted or changed a ban somewhere: forget the bans cached here (Redis is asked again)."""
        self._banned.unban_all()

    def unban(self, key: str | bytes) -> None:
        """Lift `key`'s ban in Redis (raises StoreError when it cannot) and here; every node that cached it drops
        it within BANS_POLL s (the store's bans epoch)."""
        self._check_bans()
        name = self.name(key)
        with store_errors("unban"):
            self.store.client.set(name + b"~ban", LIFTED, px=LIFTED_MS)
            self.store.client.delete(name + b"~deny")
            self.store.bans_changed()
        self._banned.unban(key)

    def banned(self, key: str | bytes, now: float | None = None) -> float:
        """Seconds left of `key`'s ban: what this node knows, else Redis's answer (0.0 when not banned or when
        Redis cannot be asked)."""
        self._check_bans()
        left = self._banned.banned(key)
        if left > 0:
            return left
        try:
            ms = self.store.client.pttl(self.name(key) + b"~ban")
            if ms and ms > 0 and self.store.client.get(self.name(key) + b"~ban") == LIFTED:
                return 0.0
        except FAULTS:
            return 0.0
        return ms / 1e3 if ms and ms > 0 else 0.0

    def peek(self, key: str | bytes, now: float | None = None) -> Decision:
        """The decision a hit of cost 1 would get, recording nothing (one script call)."""
        name = self.name(key)
        t = now_ns(now)
        if not self.health.may_try():
            return self._fallback(key, 1, now, commit=False)
        try:
            d = self._decision(self.store.call_script([name], self._args(t, b"0", [1])), 0)
        except FAULTS as exc:
            return self._fault(exc, name, key, 1, now, commit=False)
        self.health.succeeded()
        self.calls += 1
        return d

    def reset(self, key: str | bytes) -> None:
        """Forget `key` everywhere. Raises fastguard.StoreError when Redis cannot be reached (a reset
        that silently did nothing would be a wrong answer)."""
        name = self.name(key)
        if self._local is not None:
            self._local.reset(key)
        with store_errors("reset"):
            self.store.client.delete(name)

    def hit_many(self, keys: Any, costs: Any, now: float | None) -> tuple[Any, Any, Any, Any]:
        """Decide keys in order: BATCH_KEYS keys per script call on a standalone server, streamed so that the
        server decides one batch while this thread packs the next and reads the one before; one call per hash
        slot on a Cluster, in one pipeline. With now=None each script call reads Redis TIME once."""
        np = numpy()
        n = len(keys)
        ids = isinstance(keys, np.ndarray)
        name = self.id_name if ids else self.name
        cost_list = [1] * n if costs is None else [int(c) for c in costs]
        t = now_ns(now)
        allowed = np.zeros(n, dtype=bool)
        remaining = np.zeros(n, dtype=np.int64)
        retry = np.zeros(n, dtype=np.float64)
        reset = np.zeros(n, dtype=np.float64)
        names: list[bytes] = []
        if self.store.cluster:
            names = [name(int(x)) if ids else name(x) for x in keys]
            groups: dict[int, list[int]] = {}
            for i, nm in enumerate(names):
                groups.setdefault(key_slot(nm), []).append(i)
            batches: list[Any] = list(groups.values())
        else:
            batches = [range(i, min(i + BATCH_KEYS, n)) for i in range(0, n, BATCH_KEYS)]
        width = 4 + len(self.limits)
        failed: list[int] = []
        done = 0

        def batch_names(batch: Any) -> list[bytes]:
            if names:
                return [names[i] for i in batch]
            return [name(int(keys[i])) if ids else name(keys[i]) for i in batch]

        def store_reply(batch: Any, r: Any) -> None:
            nonlocal done
            if not isinstance(r, BaseException):
                try:
                    a = np.array([int(x) for x in r] if type(r) is list else None,
                                 dtype=np.int64).reshape(len(batch), width)
                    if ((a[:, 0] < 0) | (a[:, 0] > 3) | (a[:, 1] < 1) | (a[:, 1] > width - 4)).any():
                        raise ValueError("out of range")
                except (TypeError, ValueError, OverflowError):
                    r = InvalidResponse(f"not a reply of the decision script: {r!r:.120}")
                    self.store.discard(batch_names(batch[:1])[0])
            if isinstance(r, BaseException):
                if key_fault(r):
                    self.health.key_failed(r)
                else:
                    self.health.failed(r)
                failed.extend(batch)
                return
            at = batch if not isinstance(batch, range) else slice(batch.start, batch.stop)
            allowed[at] = a[:, 0] == 1
            remaining[at] = a[np.arange(len(a)), 3 + a[:, 1]]
            banned = a[:, 0] >= 2  # banned keys answer in ms
            unit = np.where(banned, 1e3, 1e9)
            reset[at] = a[:, 2] / unit
            retry[at] = np.where(a[:, 3] < 0, math.inf, a[:, 3] / unit)
            self.bans_started += int(np.count_nonzero(a[:, 0] == 3))
            self.calls += 1
            self.denials += int(len(a) - np.count_nonzero(a[:, 0] == 1))
            done += len(a)

        started = time.perf_counter()
        if batches and self.health.may_try():
            # Batches per server: the standalone server, or each Cluster master (by redis-py's slot map).
            per_wire: dict[Any, list[Any]] = {}
            slow: list[Any] = []  # batches redis-py sends (no lean client, a redirection, a NOSCRIPT)
            try:
                for batch in batches:
                    wire = self.store.wire_for(batch_names(batch[:1])[0]) if self.store.cluster else self.store.wire
                    if wire is None:
                        slow.append(batch)
                    else:
                        per_wire.setdefault(wire, []).append(batch)
            except FAULTS:
                per_wire, slow = {}, list(batches)
            for wire, mine in per_wire.items():
                order = iter(mine)

                def packed(mine: list[Any] = mine) -> Any:
                    for batch in mine:
                        yield hiredis.pack_command(("EVALSHA", self.store.sha, len(batch), *batch_names(batch),
                                                    *self._args(t, b"1", [cost_list[i] for i in batch])))

                def handle(r: Any, order: Any = order) -> None:
                    batch = next(order)
                    if isinstance(r, NoScriptError) or (isinstance(r, ResponseError) and self.store.cluster
                                                        and str(r).startswith(REDIRECTIONS)):
                        slow.append(batch)  # sent again below: with the script loaded / where redis-py finds it
                    else:
                        store_reply(batch, r)

                try:
                    wire.stream(packed(), handle)
                except FAULTS as exc:
                    rest = list(order)  # every batch not answered yet
                    if self.store.cluster and isinstance(exc, RedisConnectionError):
                        slow.extend(rest)  # redis-py refreshes the slot map and tries again
                    else:
                        for batch in rest:
                            store_reply(batch, exc)
            if slow:
                replies = self.store.run_scripts([(batch_names(batch),
                                                   self._args(t, b"1", [cost_list[i] for i in batch]))
                                                  for batch in slow], via_redis_py=self.store.cluster)
                for batch, r in zip(slow, replies, strict=True):
                    store_reply(batch, r)
            if done:
                self.health.succeeded()
                per_call = (time.perf_counter() - started) / max(1, len(batches))
                for _ in batches:  # the batches overlap in one stream: each is given its share of the time
                    self._observe(per_call)
            self.decisions += done
        else:
            failed = list(range(n))
        if failed:
            self.health.fallbacks += len(failed)
            if self._local is not None:
                sub_keys = keys[failed] if ids else [keys[i] for i in failed]
                sub_costs = None if costs is None else np.asarray([cost_list[i] for i in failed], dtype=np.int64)
                a, rem, rt, rs = self._local.hit_many(sub_keys, sub_costs, now)
                allowed[failed], remaining[failed], retry[failed], reset[failed] = a, rem, rt, rs
            else:
                d = self._constant(self.on_error == "allow")
                allowed[failed], remaining[failed] = d.allowed, d.remaining
                retry[failed], reset[failed] = d.retry_after, d.reset_after
            self.denials += int(len(failed) - np.count_nonzero(allowed[failed]))
        return allowed, remaining, retry, reset

    @property
    def up(self) -> bool:
        """Whether Redis answers (False: decisions follow on_error)."""
        return self.health.up

    def stats(self) -> StoreStats:
        """fastguard.tables.StoreStats (hits and denials count every decision, by Redis or by the fallback; keys,
        evictions and bytes are the in-process fallback table's), plus Redis calls and decisions, errors, fallbacks,
        state and the call latency histogram."""
        st: Any = {"store": "redis-cluster" if self.store.cluster else "redis", "mode": "strict",
                              "on_error": self.on_error, "algorithm": self.algorithm, "redis_calls": self.calls,
                              "redis_decisions": self.decisions, "hiredis": redis.utils.HIREDIS_AVAILABLE,
                              "bans": self.bans_started,
                              "client": "redis-py" if self.store.wire is None and not self.store._cluster_wire
                              else "fastguard wire",
                              "compiled": fastguard.COMPILED}
        st.update(self.health.stats())
        local = self._local.stats() if self._local is not None else {"keys": 0, "bytes": 0, "evictions": 0}
        answered = self.hit.answered if self._banned is not None else 0  # banned keys the gate answered
        st.update(keys=local["keys"], bytes=local["bytes"], evictions=local["evictions"], capacity=self.max_keys,
                  hits=self.decisions + self.health.fallbacks + answered, denials=self.denials + answered)
        if self._banned is not None:
            st["banned_keys_known"] = self._banned.stats()["keys"]
        st["redis_call_seconds"] = {"buckets": list(zip(LATENCY_BUCKETS + (float("inf"),), self._latency,
                                                        strict=True)), "sum": self._latency_sum}
        return st

    def close(self) -> None:
        """Nothing to stop in strict mode (the store's connections belong to the store)."""
