"""fastguard: rate limiting and request guarding for API gateways, with a compiled core.

    import fastguard as fg
    lim = fg.RateLimiter("100/minute; 10/second")
    d = lim.hit("consumer-42")
    if not d.allowed: ...  # d.headers() for the response

`FASTGUARD_NO_EXTENSIONS=1` selects the pure-Python core (with a warning); `fastguard.COMPILED` tells which is live.
"""

from __future__ import annotations

import os
import warnings

if os.environ.get("FASTGUARD_NO_EXTENSIONS", "").strip() not in ("", "0"):
    warnings.warn("FASTGUARD_NO_EXTENSIONS is set: fastguard runs its pure-Python core (correct but slow)",
                  RuntimeWarning, stacklevel=2)
    from fastguard import _pure as _impl

    COMPILED = False
else:
    try:
        from fastguard import _core as _impl
    except ImportError as exc:  # a broken build must be loud, never a silent slow path
        _here = os.path.dirname(os.path.abspath(__file__))
        if os.path.isfile(os.path.join(os.path.dirname(_here), "pyproject.toml")):
            # a source checkout's folder found first on sys.path (Python puts the current directory there)
            raise ImportError(
                f"`import fastguard` found the source folder {_here}, which has no compiled core, before any "
                "installed fastguard: run Python from another directory (the installed package is then found), "
                "or build the core in place with `pip install -e .`. Set FASTGUARD_NO_EXTENSIONS=1 to run the "
                f"pure-Python core from the source. Cause: {exc}") from exc
        raise ImportError(
            "fastguard's compiled core (fastguard._core) is not built or failed to load: reinstall with "
            "`pip install .` (needs a C compiler and the Python headers), or set FASTGUARD_NO_EXTENSIONS=1 "
            f"to run the pure-Python core. Cause: {exc}") from exc
    COMPILED = True

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
