"""Argument conversion and key identity (twin of fastguard/core/arguments.pxi): time, cost, SipHash ids."""

from __future__ import annotations

import math
import time
from typing import Any

from fastguard._secret import SIP_K0, SIP_K1
from fastguard.arguments import ALGORITHMS as _ALGORITHMS
from fastguard.arguments import checked_cost, epoch_ns, key_bytes

ALGORITHMS = _ALGORITHMS  # fastguard.arguments, re-exported as both cores do
#: Occupied slots examined per eviction.
EVICTION_SAMPLE = 8
#: While only banned entries are seen, an eviction looks at up to this many.
EVICTION_SCAN = 72
#: Tables for fewer keys than this have one shard, larger ones SHARDS (the core locks each shard separately).
SMALL_TABLE = 4096
SHARDS = 64
#: Slots of a shard's first array; the bytes of a shard's header in the core (for `stats()["bytes"]`).
MIN_SLOTS = 8
SHARD_HEADER_BYTES = 128
#: Costs above this are clamped (they exceed every count, so the answer does not change).
MAX_COST = 2**62
INF = math.inf
NEVER = -1  # retry time in ns meaning "never admissible"


def now_ns_from(now: Any) -> int:
    """`now` (float epoch seconds, or None for the wall clock) as int64 nanoseconds. Raises ValueError/TypeError."""
    return time.time_ns() if now is None else epoch_ns(now)


def cost_from(cost: Any) -> int:
    return min(checked_cost(cost), MAX_COST)


def key_id(key: Any) -> int:
    """The identity of a key: SipHash-1-3 of its bytes (a str's UTF-8). Raises TypeError for anything else."""
    return siphash(key_bytes(key), SIP_K0, SIP_K1)


_M64 = 2**64 - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash(data: bytes, k0: int, k1: int, c_rounds: int = 1, d_rounds: int = 3) -> int:
    """SipHash-c-d of `data` under the 128-bit key (k0, k1); 1-3 by default, as the core uses."""
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _M64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _M64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _M64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _M64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    whole = len(data) & ~7
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        rounds(c_rounds)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= b
    rounds(c_rounds)
    v0 ^= b
    v2 ^= 0xFF
    rounds(d_rounds)
    return v0 ^ v1 ^ v2 ^ v3


def mix64(x: int) -> int:
    """The murmur3 64-bit finalizer: a bijection that spreads ids over the table."""
    x ^= x >> 33
    x = (x * 0xFF51AFD7ED558CCD) & _M64
    x ^= x >> 33
    x = (x * 0xC4CEB9FE1A85EC53) & _M64
    return x ^ (x >> 33)


def seconds(ns: int) -> float:
    return INF if ns == NEVER else float(ns) / 1e9
