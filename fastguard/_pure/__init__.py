"""Pure-Python twin of the compiled core `fastguard._core`: same names, same results, one module per file of
the core (fastguard/core/<name>.pxi <-> fastguard/_pure/<name>.py).

This module is the executable definition of fastguard's rate-limit math and the oracle of the property tests.
Read it to learn what the C does; the core implements exactly these rules with int64/int128 arithmetic.

Conventions shared with the core
--------------------------------
* Time is int64 nanoseconds since the epoch. A `now=` given in float seconds becomes `floor(now * 1e9)`.
* For each key the table keeps `touched`, the latest time it saw. A call whose time is earlier is decided as if
  no time had passed (time going backwards never refills a limit).
* C = the limit's count, P = its period in ns, k = the cost of the hit (an int >= 0).
* A hit is admitted only if every limit of the limiter admits it; then it is counted in all of them, and a denied
  hit is counted in none. The Decision describes the limit with the lowest remaining (a tie: the longer period).
* `remaining` is after the hit when it is admitted, and as it stands when denied (or for `peek`).
* `reset_after` is the time until the limit is wholly replenished if no more hits come (0 when it already is).
* `retry_after` is 0 when allowed, else the earliest time at which the same hit would be admitted by every limit
  (infinite when k > C: it can never be admitted).
* `peek(key)` answers for a hit of cost 1 without recording anything.

Table: at most `max_keys` entries, in 1 shard (below 4096 keys) or 64. A key's id is SipHash-1-3 of its bytes
(numpy ids are used as they are); its shard and home slot come from mix64(id ^ secret). A shard is an array of
entries stored in place, linear probing, at most 3/4 full (it grows by 1.1875x). A new key in a full table evicts:
among the next 8 occupied slots after a rotating hand, the first whose state is fresh at now (it would decide
exactly like a new key, so nothing is lost), else the least recently touched one (the first of equals).
This module mirrors the core's table step by step, with the same secrets (fastguard._secret), so the two place,
find and evict the same keys and report the same stats.
"""

from __future__ import annotations

from fastguard._pure.algorithms import GCRA, FixedWindow, SlidingWindow, TokenBucket
from fastguard._pure.arguments import ALGORITHMS, EVICTION_SAMPLE, EVICTION_SCAN, key_id, mix64, siphash
from fastguard._pure.bans import BanGate
from fastguard._pure.caches import CachedVerify, TokenCache
from fastguard._pure.claims import check_claims
from fastguard._pure.json import JSON_MAX_DEPTH, parse_json_object
from fastguard._pure.jws import b64url_decode, parse_compact
from fastguard._pure.table import Decision, Table

__all__ = ["Decision", "Table", "BanGate", "ALGORITHMS", "EVICTION_SAMPLE", "EVICTION_SCAN", "key_id", "siphash",
           "mix64", "b64url_decode", "parse_compact", "TokenCache", "CachedVerify", "check_claims",
           "parse_json_object", "JSON_MAX_DEPTH", "FixedWindow", "SlidingWindow", "TokenBucket", "GCRA"]
