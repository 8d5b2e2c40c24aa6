"""What operators do to bans in a shared store: list the active ones, ban a key, lift a ban (`fastguard bans`).

Bans live in Redis next to the states they guard: `<namespace><tagged key>~ban` (strict mode) and
`<prefix>:v1:sync:<limits>:<tagged key>~ban` (local-first mode), each with a TTL of what is left and a value saying
how it started ("auto": ban_after, "manual": an operator, "shared": ban_after on a local-first node). Every change
bumps the store's bans epoch, so nodes that cached a ban drop it within BANS_POLL seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from fastguard.arguments import ban_seconds, check_algorithm
from fastguard.limits import Limit, limit_from_ns, parse_limits
from fastguard.redis.health import store_errors
from fastguard.redis.store import ALG_CODES, LIFTED, LIFTED_MS, STATE_VERSION, RedisStore, tagged

__all__ = ["Ban", "list_bans", "lift_ban", "set_ban", "limiter_namespaces", "prefixes"]

_ALGORITHM_OF = {code.decode(): name for name, code in ALG_CODES.items()}
_STARTED_BY = {"auto": "ban_after", "manual": "operator", "shared": "ban_after (local-first)"}


@dataclass(frozen=True)
class Ban:
    key: str               # the key as text (bytes that are not UTF-8 shown with escapes)
    seconds_left: float
    started_by: str        # "ban_after", "operator", "ban_after (local-first)" or "unknown"
    algorithm: str         # the limiter's algorithm, or "local-first"
    limits: str            # "2/minute; 10/second"
    name: str              # the Redis key holding the ban
    tier: str | None = None  # the tier's limiter it belongs to (a Kong plugin's `tiers`: `<prefix>#tier=<value>`)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key_of(tagged_part: bytes) -> bytes | None:
    """The key inside `{key}` or `{#digest}:key` (store.tagged's two forms)."""
    if tagged_part.startswith(b"{#") and b"}:" in tagged_part:
        return tagged_part[tagged_part.index(b"}:") + 2:]
    if tagged_part.startswith(b"{") and tagged_part.endswith(b"}"):
        return tagged_part[1:-1]
    return None


#: A tier's limiter of a Kong plugin keeps its keys under `<the plugin's prefix>#tier=<value>`.
TIER_MARK = "#tier="


def _glob(text: str) -> str:
    """`text` matched literally by a SCAN pattern (a prefix may hold `*`, `?`, `[`, `]` or `\\`)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


def _parse(store: RedisStore, name: bytes) -> tuple[str, str, bytes, str | None] | None:
    """(algorithm or "local-first", limits text, key, tier) of a ban's name, or None for a name that is not one."""
    version = f":v{STATE_VERSION}:".encode()
    prefix, tier = store.prefix.encode(), None
    if not name.endswith(b"~ban") or not name.startswith(prefix):
        return None
    after = name[len(prefix):]
    if after.startswith(TIER_MARK.encode()):
        value, found, _ = after[len(TIER_MARK):].partition(version)
        if not found:
            return None
        tier = value.decode("utf-8", "backslashreplace")
        after = after[len(TIER_MARK) + len(value):]
    if not after.startswith(version):
        return None
    kind, sep, rest = after[len(version):-len(b"~ban")].partition(b":")
    spec, sep2, tagged_part = rest.partition(b":")
    if not sep or not sep2:
        return None
    key = _key_of(tagged_part)
    if key is None or (kind != b"sync" and kind.decode() not in _ALGORITHM_OF):
        return None
    try:
        limits = [limit_from_ns(int(c), int(p)) for c, p in (x.split(b"/") for x in spec.split(b","))]
    except ValueError:
        return None
    algorithm = "local-first" if kind == b"sync" else _ALGORITHM_OF[kind.decode()]
    return algorithm, "; ".join(str(lim) for lim in limits), key, tier


def _active(store: RedisStore) -> Iterator[tuple[bytes, tuple[str, str, bytes, str | None], int, bytes | None]]:
    """(name, (algorithm, limits, key, tier), ms left, value) of each active ban under the store's prefix and its
    tiers' prefixes, on every master of a Cluster."""
    client = store.client
    head = _glob(store.prefix)
    names = {name for pattern in (f"{head}:v{STATE_VERSION}:*~ban", f"{head}{_glob(TIER_MARK)}*:v{STATE_VERSION}:*~ban")
             for name in client.scan_iter(match=pattern.encode(), count=1000)}
    for name in sorted(names):
        parsed = _parse(store, name)
        if parsed is None:
            continue
        ms, value = client.pttl(name), client.get(name)
        if ms is None or ms <= 0 or value == LIFTED:
            continue  # ended or lifted (or a name without TTL: not a ban of ours)
        yield name, parsed, ms, value


def list_bans(store: RedisStore) -> list[Ban]:
    """The active bans under the store's prefix, on every master of a Cluster, longest first."""
    with store_errors("list bans"):
        bans = [Ban(key.decode("utf-8", "backslashreplace"), ms / 1000,
                    _STARTED_BY.get((value or b"").decode("utf-8", "replace"), "unknown"), algorithm, limits,
                    name.decode("utf-8", "backslashreplace"), tier)
                for name, (algorithm, limits, key, tier), ms, value in _active(store)]
    return sorted(bans, key=lambda b: -b.seconds_left)


def lift_ban(store: RedisStore, key: str | bytes) -> int:
    """Lift `key`'s bans in every limiter namespace under the store's prefix; how many there were. Every node drops
    its cached copy within BANS_POLL seconds."""
    wanted = key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")
    with store_errors("unban"):
        names = [name for name, (_, _, k, _), _, _ in _active(store) if k == wanted]
        for name in names:
            store.client.set(name, LIFTED, px=LIFTED_MS)   # a mark, not a deletion: no node writes it back
            store.client.delete(name[:-len(b"~ban")] + b"~deny")
        store.bans_changed()
    return len(names)


def limiter_namespaces(client: Any, pattern: str) -> dict[str, set[bytes]]:
    """The limiters that have decided under the prefixes matching `pattern` (a prefix, `*` matching any run of
    characters: `fg-kong-*` is every Kong plugin's): {prefix: {their namespaces, `<prefix>:v2:<kind>:<limits>:`}}.
    Found from the states in Redis (a SCAN of every master: an operator's command, not a request's)."""
    version = f":v{STATE_VERSION}:".encode()
    glob = "*".join(_glob(part) for part in pattern.split("*"))
    out: dict[str, set[bytes]] = {}
    for name in client.scan_iter(match=f"{glob}:v{STATE_VERSION}:*".encode(), count=1000):
        at = name.find(version)
        if at <= 0:
            continue
        kind, sep, rest = name[at + len(version):].partition(b":")
        spec, sep2, _ = rest.partition(b":")
        if not sep or not sep2 or (kind != b"sync" and kind.decode("latin-1") not in _ALGORITHM_OF):
            continue
        prefix = name[:at].decode("utf-8", "backslashreplace")
        out.setdefault(prefix, set()).add(name[:at + len(version)] + kind + b":" + spec + b":")
    return out


def prefixes(found: dict[str, set[bytes]]) -> list[str]:
    """The plugin (or limiter) prefixes of limiter_namespaces' answer, tiers folded into their plugin's prefix
    (`<prefix>#tier=<value>` is listed and lifted with `<prefix>`)."""
    return sorted({p.split(TIER_MARK, 1)[0] for p in found})


def set_ban(store: RedisStore, key: str | bytes, seconds: float, limits: str | Sequence[Limit] | None = None,
            algorithm: str | None = None, local_first: bool = False,
            found: dict[str, set[bytes]] | None = None) -> list[str]:
    """Ban `key` for `seconds`; every node honours it (those that cached a longer one within BANS_POLL s). Without
    `limits`: in every limiter that has decided under the store's prefix (its tiers included), whatever their
    algorithm, windows or ban_after — ValueError when none has (nothing would honour the ban). With `limits`: for
    the limiters of this algorithm and these limits (strict mode, or local-first with local_first=True) only.
    `found`: limiter_namespaces' answer for a pattern covering the prefix, when the caller has it (one SCAN for
    many prefixes). The names written."""
    seconds = ban_seconds(seconds)
    if limits is None:
        if found is None:
            found = limiter_namespaces(store.client, store.prefix) | limiter_namespaces(
                store.client, store.prefix + TIER_MARK + "*")
        spaces = sorted(ns for p, group in found.items() if p.split(TIER_MARK, 1)[0] == store.prefix for ns in group)
        if not spaces:
            raise ValueError(f"no limiter has decided under the prefix {store.prefix!r} yet, so none would honour "
                             "the ban (check --prefix: fastguard bans list --prefix 'fg-kong-*' shows the Kong "
                             "plugins'); give --limits with --algorithm or --local-first to write it anyway")
        names = [ns + tagged(key) + b"~ban" for ns in spaces]
    else:
        parsed = parse_limits(limits if isinstance(limits, str) else list(limits))
        if local_first:
            spec = ",".join(f"{lim.count}/{lim.period_ns}" for lim in parsed)
            names = [f"{store.prefix}:v{STATE_VERSION}:sync:{spec}:".encode() + tagged(key) + b"~ban"]
        else:
            if algorithm is None:
                raise ValueError("with --limits, give --algorithm (the Kong plugins default to fixed_window) or "
                                 "--local-first")
            names = [store.namespace(check_algorithm(algorithm), parsed) + tagged(key) + b"~ban"]
    with store_errors("ban"):
        for name in names:
            store.client.set(name, b"manual", px=max(1, round(seconds * 1000)))
        store.bans_changed()
    return [name.decode("utf-8", "backslashreplace") for name in names]


