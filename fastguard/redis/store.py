"""RedisStore: the Redis (standalone or Cluster) that limiters share — clients, names, and script calls."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import weakref
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from fastguard.arguments import key_bytes
from fastguard.limits import Limit
from fastguard.redis.health import FAULTS
from fastguard.redis.url import client_from_url

try:  # the lean client needs hiredis (the "redis" extra installs it); without it redis-py does every call
    import hiredis

    from fastguard.redis.wire import Wire, tls_context, wire_for
except ImportError:  # pragma: no cover - exercised only without hiredis
    hiredis = None

__all__ = ["RedisStore", "SCRIPT", "STATE_VERSION", "BANS_POLL", "LIFTED", "LIFTED_MS", "tagged", "sha1"]

log = logging.getLogger("fastguard.redis")

#: How often (s) a store checks whether an operator lifted or changed a ban somewhere.
BANS_POLL = 0.5
#: A lifted ban leaves this mark for LIFTED_MS: no node's cached copy can write the ban back meanwhile (a
#: local-first node sees the bans epoch at its next exchange, well within it unless its sync is above 10 s).
LIFTED = b"lifted"
LIFTED_MS = 10_000

#: The Lua source of every decision (a transcription of fastguard._pure's rules in exact integer arithmetic).
SCRIPT = resources.files("fastguard._bindings").joinpath("redis/decide.lua").read_text(encoding="utf-8")
ALG_CODES = {"fixed_window": b"f", "sliding_window": b"s", "token_bucket": b"b", "gcra": b"g"}
#: Cluster replies that redis-py's client knows how to follow.
REDIRECTIONS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
#: Part of every key name: a release that changes how states are written changes it, so old states are not misread.
STATE_VERSION = 2


def sha1(text: str) -> str:
    """The SHA1 by which EVALSHA names a script."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def tagged(key: Any) -> bytes:
    """A key's part of its Redis names, `{<key>}`: the key is its own Cluster hash tag, so the state and its `~ban`
    and `~deny` companions share one slot. Redis reads no tag from `{}` nor from a key holding `}` (`{}x` hashes
    the whole name, and then each companion lands elsewhere): such keys get a tag derived from them,
    `{#<digest>}:<key>`. Names stay distinct: a plain name's first `}` ends the key, a derived one's is followed by
    `:` and the key."""
    raw = key_bytes(key)
    if raw and b"}" not in raw:
        return b"{" + raw + b"}"
    return b"{#" + hashlib.blake2b(raw, digest_size=8).hexdigest().encode() + b"}:" + raw


class RedisStore:
    """A Redis (standalone or Cluster) that rate limiters share.

    RedisStore(client=redis.Redis(...) | redis.cluster.RedisCluster(...), prefix="fg")
    RedisStore.from_url(url, timeout=0.25, connect_timeout=0.25, prefix="fg")
        url: redis://[user:password@]host:port/db, rediss://... (TLS), unix:///path/to/socket?db=0,
             redis+cluster://host:port[,host:port...] (Redis Cluster; MOVED/ASK redirections are followed).

    A limiter's state lives under `<prefix>:<algorithm>:<limits>:{<key>}`: limiters with the same algorithm and
    limits share counters (that is how several gateway nodes share one count), the key is its own hash tag (one
    Cluster slot per key), and every state expires once it would decide like a new key.
    The hiredis parser is used when the `hiredis` package is installed (redis-py picks it).
    Clients made by from_url never retry inside redis-py: an unreachable Redis costs one timeout, then the
    limiter's own backoff applies (see `on_error` in `table`).
    """

    def __init__(self, client: redis.Redis | RedisCluster | None = None, *, prefix: str = "fg",
                 _connect: Any = None) -> None:
        if client is None and _connect is not None:
            self.cluster = True  # from_url's lazily made RedisCluster (it connects as it is made)
        elif isinstance(client, (redis.Redis, RedisCluster)):
            self.cluster = isinstance(client, RedisCluster)
        else:
            raise TypeError(f"client must be a redis.Redis or redis.cluster.RedisCluster, not {type(client).__name__}")
        if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "{} "):
            raise ValueError(f"prefix must be a non-empty str without braces or spaces, got {prefix!r}")
        self._client = client
        self._connect = _connect
        self._lock = threading.Lock()
        self.prefix = prefix
        self.sha = sha1(SCRIPT)
        # Standalone TCP / Unix servers get the lean per-thread client for the hot path (see wire.py).
        self.wire: Wire | None = wire_for(client) if hiredis is not None and isinstance(client, redis.Redis) else None
        self._cluster_wire: bool | None = None          # whether Cluster nodes get lean clients (decided on first use)
        self._cluster_tls: Any = None                   # their SSL context, for a TLS cluster
        self._ban_watchers: list[weakref.WeakMethod[Any]] = []
        self._ban_thread: threading.Thread | None = None
        self._bans_seen: bytes | None = None  # the bans epoch the watchers last saw (None: not read yet)
        self._stop = threading.Event()
        self._node_wires: dict[str, Wire] = {}          # by "host:port"

    @property
    def client(self) -> redis.Redis | RedisCluster:
        """The redis-py client. A cluster client from from_url is made on first use; while no node answers,
        this raises RedisClusterException (one of FAULTS), which decisions treat as Redis being down."""
        c = self._client
        if c is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                c = self._client
        return c

    @classmethod
    def from_url(cls, url: str, *, timeout: float = 0.25, connect_timeout: float = 0.25, prefix: str = "fg",
                 **client_options: Any) -> RedisStore:
        """A store on `url` (see fastguard.redis.url.client_from_url for the schemes) with read and connect
        timeouts in seconds. Raises ValueError for an unknown scheme or a malformed cluster node list. Does not
        connect: the first decision does, so a gateway starts even while Redis is down."""
        client, connect = client_from_url(url, timeout=timeout, connect_timeout=connect_timeout, **client_options)
        return cls(client, prefix=prefix, _connect=connect)

    def table(self, algorithm: str, limits: Sequence[Limit], max_keys: int, *, sync: float | None = None,
              on_error: str = "allow", ban_after: int = 0, ban_for: float = 0.0) -> Any:
        """The table behind a RateLimiter: StrictTable (sync=None) or SyncTable (sync=seconds)."""
        from fastguard.redis.strict import StrictTable
        from fastguard.redis.sync import SyncTable

        if sync is None:
            return StrictTable(self, algorithm, limits, max_keys, on_error, ban_after, ban_for)
        return SyncTable(self, algorithm, limits, max_keys, sync, on_error, ban_after, ban_for)

    def namespace(self, algorithm: str, limits: Sequence[Limit]) -> bytes:
        spec = ",".join(f"{lim.count}/{lim.period_ns}" for lim in limits)
        return f"{self.prefix}:v{STATE_VERSION}:{ALG_CODES[algorithm].decode()}:{spec}:".encode()

    def wire_for(self, name: bytes) -> Wire | None:
        """The lean client to the server that holds `name`: the standalone server's, or on a Cluster the one of
        the master of its slot (by redis-py's slot map). None where redis-py does every call."""
        if not self.cluster:
            return self.wire
        client = self.client  # may raise RedisClusterException while no node answers (a fault)
        if self._cluster_wire is None:
            kw = client.nodes_manager.connection_kwargs
            self._cluster_tls = tls_context(kw) if kw.get("ssl") else None
            self._cluster_wire = hiredis is not None and kw.get("credential_provider") is None \
                and (not kw.get("ssl") or self._cluster_tls is not None) \
                and kw.get("protocol") in (None, 2, "2") \
                and kw.get("connection_class") in (None, redis.Connection, redis.connection.SSLConnection)
        if not self._cluster_wire:
            return None
        node = client.nodes_manager.get_node_from_slot(key_slot(name))
        wire = self._node_wires.get(node.name)
        if wire is None:
            kw = client.nodes_manager.connection_kwargs
            wire = self._node_wires[node.name] = Wire(
                host=node.host, port=int(node.port), username=kw.get("username"), password=kw.get("password"),
                timeout=kw.get("socket_timeout"), connect_timeout=kw.get("socket_connect_timeout"),
                tls=self._cluster_tls)
        return wire

    def call_script(self, keys: list[bytes], args: list[Any], sha: str | None = None,
                    source: str = SCRIPT) -> Any:
        """EVALSHA, loading the script with EVAL when the server lacks it (a restart, a new Cluster node).
        On a Cluster, a redirection (MOVED, ASK) or a node that went away is handed to redis-py, which follows
        it and refreshes its slot map (so the next call goes straight to the right node)."""
        sha = sha or self.sha
        wire = self.wire_for(keys[0])
        if wire is not None:
            try:
                try:
                    return wire.call(hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args)))
                except NoScriptError:
                    return wire.call(hiredis.pack_command(("EVAL", source, len(keys), *keys, *args)))
            except ResponseError as exc:
                if not (self.cluster and str(exc).startswith(REDIRECTIONS)):
                    raise
            except RedisConnectionError:
                if not self.cluster:
                    raise
        return self.call_script_redis_py(keys, args, sha, source)

    def call_script_redis_py(self, keys: list[bytes], args: list[Any], sha: str | None = None,
                             source: str = SCRIPT) -> Any:
        sha = sha or self.sha
        try:
            return self.client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.client.execute_command("EVAL", source, len(keys), *keys, *args)

    def run_scripts(self, calls: list[tuple[list[bytes], list[Any]]], sha: str | None = None,
                    source: str = SCRIPT, via_redis_py: bool = False) -> list[Any]:
        """Many script calls in one round trip (a Cluster: one per node), replies in order; a call that failed
        gives its exception in its place. A script the server lacks is loaded and that call repeated."""
        sha = sha or self.sha
        try:
            if self.wire is not None and not via_redis_py:
                replies = self.wire.pipeline([hiredis.pack_command(("EVALSHA", sha, len(keys), *keys, *args))
                                              for keys, args in calls])
            else:
                pipe = self.client.pipeline(transaction=False)
                for keys, args in calls:
                    pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                replies = pipe.execute(raise_on_error=False)
        except FAULTS as exc:
            return [exc] * len(calls)
        for i, reply in enumerate(replies):
            if isinstance(reply, NoScriptError):
                try:
                    replies[i] = (self.call_script_redis_py if via_redis_py else self.call_script)(
                        *calls[i], sha=sha, source=source)
                except FAULTS as exc:
                    replies[i] = exc
        return replies

    def discard(self, name: bytes) -> None:
        """Close this thread's lean socket to the server of `name` (a reply on it could not be trusted); the next
        call reconnects. redis-py drops its own connection on a reply it cannot parse."""
        try:
            wire = self.wire_for(name)
        except FAULTS:
            return
        if wire is not None:
            wire.close()

    # -- bans changed by operators ---------------------------------------------------------------------------------
    @property
    def bans_epoch_name(self) -> bytes:
        """The counter that unban() and ban() bump: nodes that cache bans drop them when it changes."""
        return f"{self.prefix}:v{STATE_VERSION}:bans-epoch".encode()

    def bans_changed(self) -> None:
        """Tell every node that a ban was lifted or changed (they drop the bans they cached within BANS_POLL s)."""
        self.client.incr(self.bans_epoch_name)

    def bans_epoch(self) -> bytes:
        """The bans epoch as stored (compared, never parsed: a garbled value is just another change)."""
        return self.client.get(self.bans_epoch_name) or b""

    def watch_bans(self, on_change: Any) -> None:
        """Call the bound method `on_change()` (held weakly) each time the bans epoch changes, from one daemon
        thread per store polling every BANS_POLL seconds: no Redis call on the path of a decision."""
        with self._lock:
            self._ban_watchers.append(weakref.WeakMethod(on_change))
            if self._ban_thread is None:
                self._ban_thread = threading.Thread(target=_watch_bans, args=(weakref.ref(self), self._stop),
                                                    name="fastguard-bans-watch", daemon=True)
                self._ban_thread.start()

    def bans_baseline(self) -> None:
        """Read the bans epoch now if the watcher has not yet: called before a table caches its first ban, so a
        change made after that is a change to the watcher even when its thread is slow to start. Never raises."""
        if self._bans_seen is None:
            with contextlib.suppress(*FAULTS):
                epoch = self.bans_epoch()
                with self._lock:
                    if self._bans_seen is None:
                        self._bans_seen = epoch

    def _poll_bans_epoch(self) -> None:
        epoch = self.bans_epoch()
        with self._lock:
            moved = self._bans_seen is not None and epoch != self._bans_seen
            self._bans_seen = epoch
        if moved:
            self._bans_moved()

    def _bans_moved(self) -> None:
        with self._lock:
            alive = [w for w in self._ban_watchers if w() is not None]
            self._ban_watchers = alive
        for w in alive:
            method = w()
            if method is not None:
                method()

    def close(self) -> None:
        self._stop.set()
        for wire in [self.wire, *self._node_wires.values()]:
            if wire is not None:
                wire.close()
        if self._client is not None:
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisStore({'cluster' if self.cluster else 'standalone'}, prefix={self.prefix!r})"


def _watch_bans(ref: weakref.ReferenceType[RedisStore], stop: threading.Event) -> None:
    wait = 0.0
    while not stop.wait(wait):
        wait = BANS_POLL
        store = ref()
        if store is None:
            return
        try:
            store._poll_bans_epoch()
        except FAULTS:
            pass  # Redis away: the decisions say so; cached bans stay until it answers
        except Exception:  # noqa: BLE001 - the watcher must outlive anything one poll meets
            log.exception("fastguard: the bans watcher of %r failed once; it goes on", store)
        del store
