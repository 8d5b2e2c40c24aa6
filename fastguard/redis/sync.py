"""Local-first cluster mode: the in-process core decides, a background thread exchanges counts with Redis."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from typing import Any

from redis.crc import key_slot
from redis.exceptions import InvalidResponse

from fastguard import Decision, Limit
from fastguard.arguments import check_on_error, key_bytes
from fastguard.corechoice import core
from fastguard.decision import numpy
from fastguard.redis.health import DENY_RETRY_AFTER, FAULTS, Health, key_fault, on_error_decision, store_errors
from fastguard.redis.store import LIFTED, LIFTED_MS, STATE_VERSION, RedisStore, sha1, tagged
from fastguard.tables import StoreStats

__all__ = ["SyncTable", "SYNC_SCRIPT"]

#: Keys per script call of an exchange with a standalone server. Large: each reply read releases and retakes the
#: GIL, which costs up to a switch interval (5 ms) when the gateway's threads keep the CPU busy.
SYNC_BATCH_KEYS = 4096

log = logging.getLogger("fastguard.redis")

#: Adds each key's delta to its counter (refreshing its TTL) and returns every counter's total. With bans
#: (ARGV[2] = "1"): ARGV holds, after the deltas, each key's ban as this node knows it (ms left, 0 for none); a
#: longer one is written to `<base>~ban`, and the reply also carries each key's ban in Redis (ms left).
SYNC_SCRIPT = """
local n = #KEYS
local bans = ARGV[2] == "1"
local out = {}
for i = 1, n do
  local d = tonumber(ARGV[i + 2])
  if d > 0 then
    out[i] = redis.call("INCRBY", KEYS[i], d)
    redis.call("PEXPIRE", KEYS[i], ARGV[1])
  else
    out[i] = tonumber(redis.call("GET", KEYS[i]) or "0")
  end
  if bans then
    local bk = string.gsub(KEYS[i], ":[0-9]+$", "~ban")
    local mine = tonumber(ARGV[n + i + 2])
    local left = redis.call("PTTL", bk)
    if left > 0 and redis.call("GET", bk) == "lifted" then
      left = 0  -- an operator lifted it: no node's copy brings it back while the mark lives
    elseif mine > 0 and mine > left then
      redis.call("SET", bk, "shared", "PX", mine)
      left = mine
    end
    out[n + i] = left > 0 and left or 0
  end
end
return out
"""


def bases_of(names: list[bytes]) -> list[bytes]:
    """The counter base of each epoch counter name (`<base><epoch>`)."""
    return [name[:name.rindex(b":") + 1] for name in names]


class _Seen:
    """What this node knows of one key in the current epoch."""

    __slots__ = ("key", "epoch", "mine", "others", "active", "used")

    def __init__(self, key: Any, used: int) -> None:
        self.key = key        # the str/bytes the local table knows it by
        self.epoch = -1       # the epoch of the counter that mine / others describe
        self.mine = 0         # cost this node pushed into the epoch's counter
        self.others = 0       # cost of the other nodes in the epoch, already charged to the local table
        self.active = True    # hit here since the previous exchange
        self.used = used      # the epoch of its latest hit here


class SyncTable:
    """Local-first mode (`sync=seconds`): every decision is the in-process core's (`hit` *is* its compiled method,
    plus a journal entry for admitted hits), and every `sync` seconds a background thread pushes each active key's
    admitted cost to Redis and pulls what the other nodes admitted, in one pipelined round trip per slot group
    (standalone: one script call per 256 keys). What the others admitted is charged to the local table with
    `Table.charge` (every limit counts it, up to exhausted). `hit()` never waits for Redis.

    Counters live per epoch (the longest period, aligned to the epoch on each node's clock): a node that meets a
    key for the first time in an epoch is charged everything the others admitted in it. Each exchange carries
    every key hit here (admitted or refused: a refused key may carry a ban to share) in the current or the
    previous epoch — a key idle here may be busy elsewhere, and its next hit here should see that — but at most
    max_keys of them, the most recently hit: the bookkeeping of what was shared holds at most max_keys keys (the
    least recently hit goes first), and pending deltas past max_keys keys (a spray during an outage) keep the
    largest (`unshared` counts the admitted cost left out). So memory and the size of an exchange stay bounded by
    max_keys however many callers appear.

    Error bound: a hit admitted on one node reaches Redis at that node's next exchange (within `sync`), and the
    other nodes learn of it at their next exchange (within `sync` more; a node meeting the key for the first time
    learns everything of the epoch at its first exchange, within `sync` of its first hit). So no node decides
    more than 2 x sync + one round trip behind the others, and within any window the nodes together admit at most

        count + (nodes - 1) * rate * (2 * sync + round trip)

    more or less nodes x rate x sync (rate: hits per second one node admits). The error the other way is small:
    a node is charged only what the others really admitted, though up to 2 x sync after the fact (for the token
    bucket and GCRA that delays the refill of those tokens by as much).
    tests/integration/redis/test_redis_sync.py measures the bound with 3 processes.

    While Redis is unreachable the counts stay local and are pushed when it answers again (nothing is lost);
    on_error "allow" and "local" both keep deciding in process, "deny" refuses every hit until Redis answers.
    `hit_many` takes str/bytes keys only here (counts are shared by key name). `reset` forgets the key locally
    and deletes its counter. `close()` stops the thread after a last push.
    """

    def __init__(self, store: RedisStore, algorithm: str, limits: Sequence[Limit], max_keys: int, sync: float,
                 on_error: str, ban_after: int = 0, ban_for: float = 0.0) -> None:
        check_on_error(on_error)
        self.bans = bool(ban_after or ban_for)
        self.store = store
        self.algorithm = algorithm
        self.limits = tuple(limits)
        self.interval = float(sync)
        self.on_error = on_error
        self.health = Health(f"sync of {algorithm} {'; '.join(str(lim) for lim in self.limits)}")
        self._local = core.Table(algorithm, self.limits, max_keys, ban_after, ban_for)
        self.max_keys = max_keys
        self._local.record_hits(True)
        self.peek = self._local.peek
        # Bans are the local table's (without ban settings it refuses them); each exchange shares them, and an
        # operator's unban or ban reaches the other nodes through the store's bans epoch.
        self.banned = self._local.banned
        self._bans_seen: bytes | None = None
        self._learned: dict[bytes, float] = {}   # bans learned from Redis: their end (monotonic), by counter base
        if self.bans:
            store.watch_bans(self._drop_cached_bans)
        if on_error != "deny":
            self.hit = self._local.hit  # the compiled method itself: no Python frame of ours per decision
        spec = ",".join(f"{lim.count}/{lim.period_ns}" for lim in self.limits)
        self._prefix = f"{store.prefix}:v{STATE_VERSION}:sync:{spec}:".encode()
        self._epoch_ns = max(lim.period_ns for lim in self.limits)
        self._ttl_ms = str(2 * self._epoch_ns // 1_000_000 + 1000).encode()
        self._sha = sha1(SYNC_SCRIPT)
        # What was shared, per counter base name, least recently hit first; at most max_keys (the oldest goes: a
        # key forgotten here is charged the whole epoch's count again when it returns, as the local table, which
        # forgets the same keys, has lost its own hits too).
        self._seen: OrderedDict[bytes, _Seen] = OrderedDict()
        self._pending: dict[bytes, int] = defaultdict(int)   # admitted cost not yet pushed, by counter base name
        self.unshared = 0                                    # admitted cost dropped past max_keys pending keys
        self._lock = threading.Lock()                        # guards _pending and _seen against hit_many/reset
        self.syncs = 0
        self.pushed = 0
        self.charged = 0
        self.lag = 0.0  # seconds the last successful sync took
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fastguard-redis-sync", daemon=True)
        self._thread.start()

    # -- decisions ----------------------------------------------------------------------------------------------
    def hit(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Decision:
        """on_error="deny" only (otherwise `hit` is the local table's own method): refuse while Redis is down."""
        if not self.health.up:
            key_bytes(key)
            self.health.fallbacks += 1
            return on_error_decision(self.limits, False)
        return self._local.hit(key, cost, now)

    def hit_many(self, keys: Any, costs: Any, now: float | None) -> tuple[Any, Any, Any, Any]:
        np = numpy()
        if isinstance(keys, np.ndarray):
            raise TypeError("in sync mode hit_many takes str/bytes keys (counts are shared by key name), "
                            "not an array of integer ids")
        result = self._local.hit_many(keys, costs, now)
        allowed = result[0]
        if self.on_error == "deny" and not self.health.up:
            self.health.fallbacks += len(keys)
            allowed[:] = False
            result[1][:] = 0
            result[2][:] = DENY_RETRY_AFTER
            return result
        epoch = self._epoch()
        with self._lock:
            for i in range(len(keys)):
                self._note(keys[i], (1 if costs is None else int(costs[i])) if allowed[i] else 0, epoch)
        return result

    def ban(self, key: str | bytes, seconds: float, now: float | None = None) -> None:
        """Ban `key` here and in Redis at once (every node: within BANS_POLL s, even one holding a longer ban)."""
        self._local.ban(key, seconds, now)
        with store_errors("ban"):
            self.store.client.set(self._base(key)[:-1] + b"~ban", b"manual", px=max(1, round(seconds * 1000)))
            self.store.bans_changed()

    def unban(self, key: str | bytes) -> None:
        """Lift `key`'s ban here and in Redis; every node drops it within BANS_POLL s (the store's bans epoch)."""
        self._local.unban(key)
        with store_errors("unban"):
            self.store.client.set(self._base(key)[:-1] + b"~ban", LIFTED, px=LIFTED_MS)
            self.store.bans_changed()

    def _drop_cached_bans(self) -> None:
        """An operator lifted or changed a ban somewhere: lift the bans here; the next exchange brings back those
        Redis still holds."""
        self._local.unban_all()
        self._learned.clear()

    def _check_bans_epoch(self) -> None:
        """Before an exchange pushes this node's bans: drop them if an operator changed bans since the last one
        (so a lifted ban is not written back from here)."""
        try:
            epoch = self.store.bans_epoch()
        except FAULTS:
            return
        if self._bans_seen is not None and epoch != self._bans_seen:
            self._drop_cached_bans()
        self._bans_seen = epoch

    def reset(self, key: str | bytes) -> None:
        """Forget the key here and delete its counter (other nodes keep what they already charged)."""
        base = self._base(key)
        self._local.reset(key)
        with self._lock:
            self._pending.pop(base, None)
            self._seen.pop(base, None)
        with store_errors("reset"):
            self.store.client.delete(base + str(self._epoch()).encode())

    # -- the exchange ---------------------------------------------------------------------------------------------
    def _base(self, key: Any) -> bytes:
        return self._prefix + tagged(key) + b":"

    def _epoch(self) -> int:
        return time.time_ns() // self._epoch_ns

    def _note(self, key: Any, cost: int, epoch: int) -> None:
        """A key hit here (cost: its admitted cost, 0 when refused): exchange it next time."""
        base = self._base(key)
        if cost:
            self._pending[base] += cost
        seen = self._seen.get(base)
        if seen is None:
            self._seen[base] = _Seen(key, epoch)
            if len(self._seen) > self.max_keys:
                self._seen.popitem(last=False)   # the least recently hit
        else:
            seen.active = True
            seen.used = epoch
            self._seen.move_to_end(base)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync_now()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one exchange
                self.health.failed(exc)
                log.exception("fastguard: a sync exchange failed unexpectedly; the next one runs as planned")

    def sync_now(self) -> bool:
        """One exchange with Redis (the thread calls this every `sync` seconds). True when every part of it
        succeeded; a part that failed keeps its keys' deltas for the next exchange (the others are applied)."""
        if self.bans:
            self._check_bans_epoch()
        epoch = self._epoch()
        with self._lock:
            for key, cost in self._local.drain_hits():
                self._note(key, cost, epoch)
            if len(self._pending) > self.max_keys:  # a spray while Redis was down: keep the largest deltas
                keep = sorted(self._pending.items(), key=lambda item: item[1], reverse=True)[:self.max_keys]
                self.unshared += sum(self._pending.values()) - sum(d for _, d in keep)
                self._pending = defaultdict(int, keep)
            bases = []
            for base, seen in list(self._seen.items()):
                if seen.active or base in self._pending or seen.used >= epoch - 1:
                    bases.append(base)
                else:
                    del self._seen[base]  # idle here for a whole epoch: forget it
            bases += [base for base in self._pending if base not in self._seen]
            del bases[:-self.max_keys]    # the most recently hit (the list is least recent first)
            deltas = []
            for base in bases:
                seen = self._seen.get(base)
                if seen is None:
                    seen = self._seen[base] = _Seen(None, epoch)
                if seen.epoch != epoch:  # a new epoch: new counters everywhere
                    seen.epoch, seen.mine, seen.others = epoch, 0, 0
                deltas.append(self._pending.pop(base, 0))
                seen.active = False
        if not bases:
            return True
        if not self.health.may_try():
            self._restore(bases, deltas)
            return False
        names = [base + str(epoch).encode() for base in bases]
        t0 = time.monotonic()
        totals, faults = self._exchange(names, deltas)
        failed = [i for i, total in enumerate(totals) if total is None]
        if failed:
            self._restore([bases[i] for i in failed], [deltas[i] for i in failed])
        for exc in faults:
            if key_fault(exc):
                self.health.key_failed(exc)
            else:
                self.health.failed(exc)
        if len(failed) < len(bases):
            if not any(not key_fault(exc) for exc in faults):
                self.health.succeeded()
            self.lag = time.monotonic() - t0
            self.syncs += 1
        with self._lock:
            for base, delta, total in zip(bases, deltas, totals, strict=True):
                if total is None:
                    continue
                self.pushed += delta
                seen = self._seen.get(base)
                if seen is None or seen.epoch != epoch or seen.key is None:
                    continue
                seen.mine += delta
                others = total - seen.mine
                fresh = others - seen.others
                if fresh > 0:
                    seen.others = others
                    self._local.charge(seen.key, fresh)
                    self.charged += fresh
        return not failed

    def _restore(self, bases: list[bytes], deltas: list[int]) -> None:
        """A failed push: keep its deltas for the next one."""
        with self._lock:
            for base, delta in zip(bases, deltas, strict=True):
                if delta:
                    self._pending[base] += delta
                seen = self._seen.get(base)
                if seen is not None:
                    seen.active = True

    def _exchange(self, names: list[bytes], deltas: list[int]) -> tuple[list[int | None], list[BaseException]]:
        """Push the deltas and pull the totals, one script call per batch: (each name's total, None where its
        batch failed; the faults)."""
        if self.store.cluster:
            groups: dict[int, list[int]] = defaultdict(list)
            for i, name in enumerate(names):
                groups[key_slot(name)].append(i)
            batches = list(groups.values())
        else:
            batches = [list(range(i, min(i + SYNC_BATCH_KEYS, len(names))))
                       for i in range(0, len(names), SYNC_BATCH_KEYS)]
        mine = [0] * len(names)
        if self.bans:
            for i, base in enumerate(bases_of(names)):
                seen = self._seen.get(base)
                if seen is not None and seen.key is not None:
                    mine[i] = round(self._local.banned(seen.key) * 1000)
                    learned = self._learned.get(base)
                    if learned is not None and abs(time.monotonic() + mine[i] / 1000 - learned) < 0.05:
                        mine[i] = 0  # a ban learned from Redis is not this node's to push back (it may be lifted)
        replies = self.store.run_scripts([([names[i] for i in batch],
                                           [self._ttl_ms, b"1" if self.bans else b"0", *[deltas[i] for i in batch],
                                            *([mine[i] for i in batch] if self.bans else [])])
                                          for batch in batches], sha=self._sha, source=SYNC_SCRIPT)
        totals: list[int | None] = [None] * len(names)
        faults: list[BaseException] = []
        width = 2 if self.bans else 1
        for batch, reply in zip(batches, replies, strict=True):
            if not isinstance(reply, BaseException):
                try:
                    if type(reply) is not list or len(reply) != width * len(batch):
                        raise ValueError("wrong length")
                    values = [int(x) for x in reply]
                    if min(values) < 0:
                        raise ValueError("negative")
                except (TypeError, ValueError, OverflowError):
                    reply = InvalidResponse(f"not a reply of the sync script: {reply!r:.120}")
                    self.store.discard(names[batch[0]])
            if isinstance(reply, BaseException):
                faults.append(reply)
                continue
            for j, i in enumerate(batch):
                totals[i] = values[j]
                if self.bans and values[len(batch) + j] > mine[i] + 1:  # a ban another node started
                    seen = self._seen.get(bases_of([names[i]])[0])
                    if seen is not None and seen.key is not None:
                        self._local.ban(seen.key, values[len(batch) + j] / 1e3)
                        self._learned[bases_of([names[i]])[0]] = time.monotonic() + values[len(batch) + j] / 1e3
        return totals, faults

    # -- the rest of the table API --------------------------------------------------------------------------------
    @property
    def up(self) -> bool:
        """Whether the last exchange reached Redis."""
        return self.health.up

    def stats(self) -> StoreStats:
        """The local table's stats, plus syncs, pushed and charged costs, the last sync's duration (`sync_lag`),
        keys waiting to be pushed, and the Redis error / fallback counters."""
        st = dict(self._local.stats())
        st.update({"store": "redis-cluster" if self.store.cluster else "redis", "mode": "sync",
                   "sync_interval": self.interval, "on_error": self.on_error, "syncs": self.syncs,
                   "pushed": self.pushed, "charged": self.charged, "sync_lag": self.lag,
                   "pending_keys": len(self._pending), "shared_keys": len(self._seen),
                   "unshared": self.unshared + self._local.journal_dropped})
        st.update(self.health.stats())
        return st

    def close(self) -> None:
        """Stop the sync thread after a last exchange (counts admitted so far reach Redis if it answers)."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(max(5.0, 2 * self.interval))
            self.sync_now()
