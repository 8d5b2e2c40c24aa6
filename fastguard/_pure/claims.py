"""The JWT claim rules, defined here (fastguard/core/claims.pxi is their compiled twin)."""

from __future__ import annotations

import math
from typing import Any

from fastguard.arguments import MAX_NOW_NS
from fastguard.errors import ExpiredToken, InvalidAudience, InvalidClaim, InvalidIssuer, MissingClaim, NotYetValid


def check_claims(claims: dict[str, Any], now_ns: int, leeway_ns: int, required: tuple[str, ...],
                 issuers: frozenset[str] | None, audiences: frozenset[str] | None,
                 max_lifetime_ns: int | None) -> tuple[int, int]:
    """The JWT claim rules (RFC 7519, RFC 8725): raises an InvalidToken subclass, or returns the window
    [valid_from, valid_until) in ns during which the verdict holds (from nbf and exp, leeway included).

    exp/nbf/iat must be numbers (not bool, finite); iss/sub/jti strings; aud a string or a list of strings.
    Expired when now >= exp + leeway; not yet valid when now < nbf - leeway; iat must not be after now + leeway.
    issuers / audiences: any-of; a token with an aud is refused by a verifier that expects none (RFC 7519 4.1.3).
    Times are compared in nanoseconds: a claim of t seconds is ceil(t * 1e9) ns, clamped to +-2**62.
    """

    times = {}
    for name in ("exp", "nbf", "iat"):
        if name in claims:
            value = claims[name]
            if not (type(value) is int or (type(value) is float and math.isfinite(value))):
                raise InvalidClaim(f"{name} must be a number of seconds")
            if type(value) is float:
                scaled = value * 1e9
                ns = math.ceil(scaled) if math.isfinite(scaled) else (MAX_NOW_NS if scaled > 0 else -MAX_NOW_NS)
            else:
                ns = value * 1_000_000_000
            times[name] = max(-MAX_NOW_NS, min(MAX_NOW_NS, ns))   # clamped to +-2**62 ns, as the core does
    for name in ("iss", "sub", "jti"):
        if name in claims and type(claims[name]) is not str:
            raise InvalidClaim(f"{name} must be a string")
    aud = claims.get("aud")
    if "aud" in claims and type(aud) is not str and not (type(aud) is list and all(type(a) is str for a in aud)):
        raise InvalidClaim("aud must be a string or a list of strings")
    for name in required:
        if name not in claims:
            raise MissingClaim(claim=name)
    valid_from, valid_until = 0, 2**62
    if "exp" in times:
        valid_until = times["exp"] + leeway_ns
        if now_ns >= valid_until:
            raise ExpiredToken("the token has expired")
    if "nbf" in times:
        valid_from = max(0, times["nbf"] - leeway_ns)
        if now_ns < valid_from:
            raise NotYetValid("the token is not valid yet")
    if "iat" in times and times["iat"] > now_ns + leeway_ns:
        raise InvalidClaim("iat is in the future")
    if max_lifetime_ns is not None:
        if "exp" not in times or "iat" not in times:
            raise MissingClaim("max_lifetime needs both iat and exp", claim="iat" if "exp" in times else "exp")
        if times["exp"] - times["iat"] > max_lifetime_ns:
            raise InvalidClaim("the token lives longer than max_lifetime (exp - iat)")
    if issuers is not None:
        if "iss" not in claims:
            raise MissingClaim(claim="iss")
        if claims["iss"] not in issuers:
            raise InvalidIssuer(f"issuer {claims['iss']!r} is not accepted")
    if "aud" in claims or audiences is not None:
        if "aud" not in claims:
            raise MissingClaim(claim="aud")
        if audiences is None or (aud not in audiences if type(aud) is str else audiences.isdisjoint(aud)):
            raise InvalidAudience(f"audience {aud!r} is not accepted")
    return valid_from, min(valid_until, 2**62)
