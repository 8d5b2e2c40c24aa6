"""Type stub of the compiled core `fastguard._core` (its pure twin is `fastguard._pure`)."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fastguard.limits import Limit

ALGORITHMS: tuple[str, ...]
EVICTION_SAMPLE: int

class Decision:
    """One rate-limit decision. Times in float seconds; retry_after is 0.0 when allowed, inf when never."""

    @property
    def allowed(self) -> bool: ...
    @property
    def limit(self) -> int: ...
    @property
    def remaining(self) -> int: ...
    @property
    def reset_after(self) -> float: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def period(self) -> float: ...
    @property
    def limits(self) -> tuple[Limit, ...]: ...
    @property
    def remainings(self) -> tuple[int, ...]: ...
    def headers(self, style: str = "ietf") -> dict[str, str]: ...
    @staticmethod
    def of(allowed: bool, limit: int, remaining: int, reset_after: float, retry_after: float, period: float,
           limits: tuple[Limit, ...], remainings: Sequence[int]) -> Decision: ...
    def __bool__(self) -> bool: ...

class Table:
    """Sharded key table of rate-limit state; thread-safe."""

    algorithm: str
    limits: tuple[Limit, ...]
    max_keys: int
    def __init__(self, algorithm: str, limits: Sequence[Limit], max_keys: int) -> None: ...
    def hit(self, key: str | bytes, cost: int = 1, now: float | None = None) -> Decision: ...
    def peek(self, key: str | bytes, now: float | None = None) -> Decision: ...
    def reset(self, key: str | bytes) -> None: ...
    def hit_many(
        self, keys: npt.NDArray[np.uint64] | Sequence[str | bytes], costs: npt.NDArray[np.int64] | None,
        now: float | None,
    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
    def stats(self) -> dict[str, Any]: ...

def b64url_decode(data: bytes | bytearray) -> bytes:
    """Strict base64url: alphabet only, no padding, no length 4k+1, zero unused bits; else ValueError."""

def split_token(token: bytes) -> tuple[int, int]:
    """Positions of the two dots of a compact JWS; ValueError unless there are exactly two."""

def parse_compact(token: bytes | str) -> tuple[bytes, bytes, bytes, bytes]:
    """(header segment, signing input, payload, signature) of a compact JWS; ValueError when malformed."""

def check_claims(claims: dict[str, Any], now_ns: int, leeway_ns: int, required: tuple[str, ...],
                 issuers: frozenset[str] | None, audiences: frozenset[str] | None,
                 max_lifetime_ns: int | None) -> tuple[int, int]:
    """JWT claim rules; raises an fastguard.InvalidToken subclass or returns (valid_from_ns, valid_until_ns)."""

class TokenCache:
    """Verdicts by exact token bytes, each valid for now in [valid_from, valid_until) ns; CLOCK eviction."""

    capacity: int
    hits: int
    misses: int
    evictions: int
    def __init__(self, capacity: int) -> None: ...
    def get(self, token: str | bytes, now: float | None = None) -> Any: ...
    def put(self, token: str | bytes, value: Any, valid_from_ns: int, valid_until_ns: int) -> None: ...
    def clear(self) -> None: ...
    def __len__(self) -> int: ...
