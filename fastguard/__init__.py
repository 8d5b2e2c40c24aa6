"""fastguard: rate limiting and request guarding for API gateways, with a compiled core.

    import fastguard as fg
    lim = fg.RateLimiter("100/minute; 10/second")
    d = lim.hit("consumer-42")
    if not d.allowed: ...  # d.headers() for the response

`FASTGUARD_NO_EXTENSIONS=1` selects the pure-Python core (with a warning); `fastguard.COMPILED` tells which is live.
"""

from __future__ import annotations

# Which core runs is decided in a leaf module (fastguard.corechoice) that every module imports it from: nothing
# reads it back from this half-initialised package. `fastguard._impl` stays as its public-ish alias.
from fastguard.corechoice import COMPILED  # noqa: E402
from fastguard.corechoice import core as _impl  # noqa: E402
from fastguard.decision import BatchDecision  # noqa: E402
from fastguard.errors import (  # noqa: E402
    CODES,
    ConfigError,
    DisallowedAlgorithm,
    ExpiredToken,
    FastguardError,
    InvalidAudience,
    InvalidClaim,
    InvalidIssuer,
    InvalidKey,
    InvalidSignature,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    NotYetValid,
    StoreError,
    TokenTooLarge,
    UnknownKey,
)
from fastguard.jwks import KeySet, RemoteKeySet  # noqa: E402
from fastguard.jwt import JWTVerifier, bearer_token, extract_token  # noqa: E402
from fastguard.limits import Limit, parse_limits  # noqa: E402
from fastguard.ratelimit import ALGORITHMS, RateLimiter  # noqa: E402

Decision = _impl.Decision

__version__ = "0.1.0"
__all__ = [
    "ALGORITHMS", "COMPILED", "BatchDecision", "Decision", "Limit", "RateLimiter", "parse_limits", "__version__",
    "KeySet", "RemoteKeySet", "JWTVerifier", "extract_token", "bearer_token",
    "InvalidToken", "MalformedToken", "TokenTooLarge", "DisallowedAlgorithm", "UnknownKey", "InvalidSignature",
    "ExpiredToken", "NotYetValid", "InvalidIssuer", "InvalidAudience", "MissingClaim", "InvalidClaim", "InvalidKey",
    "FastguardError", "ConfigError", "StoreError", "CODES",
]
