"""Every exception fastguard raises on purpose, under one root: `FastguardError`.

    FastguardError
    ├── InvalidToken (.code: a stable word per reason; CODES maps each code to its class)
    │   ├── MalformedToken, TokenTooLarge, DisallowedAlgorithm, UnknownKey, InvalidSignature,
    │   └── ExpiredToken, NotYetValid, InvalidIssuer, InvalidAudience, MissingClaim (.claim), InvalidClaim
    ├── InvalidKey (also a ValueError): a key or key set that cannot be used
    ├── ConfigError (also a ValueError): an invalid Kong plugin configuration (.field)
    └── StoreError: a shared store (Redis) could not carry out reset / ban / unban (the backend's error is its
        __cause__). Decisions never raise for store faults: they follow on_error.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FastguardError", "InvalidToken", "MalformedToken", "TokenTooLarge", "DisallowedAlgorithm", "UnknownKey",
    "InvalidSignature", "ExpiredToken", "NotYetValid", "InvalidIssuer", "InvalidAudience", "MissingClaim",
    "InvalidClaim", "InvalidKey", "ConfigError", "StoreError", "CODES",
]


class FastguardError(Exception):
    """The root of every exception fastguard raises on purpose."""


class InvalidToken(FastguardError):
    """A token was refused. `.code` names the reason in a word that programs can match (it never changes)."""

    code = "invalid"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)

    def again(self) -> InvalidToken:
        """A fresh exception equal to this one (a cached failure is raised anew, without the old traceback)."""
        fresh = type(self).__new__(type(self))
        Exception.__init__(fresh, *self.args)
        fresh.__dict__.update(self.__dict__)
        return fresh


class MalformedToken(InvalidToken):
    """The token is not a well-formed compact JWS/JWT."""

    code = "malformed"


class TokenTooLarge(InvalidToken):
    """The token is larger than the verifier accepts."""

    code = "too_large"


class DisallowedAlgorithm(InvalidToken):
    """The token's algorithm is not allowed here, or not for its key."""

    code = "algorithm"


class UnknownKey(InvalidToken):
    """No key of the key set can verify this token."""

    code = "unknown_key"


class InvalidSignature(InvalidToken):
    """The signature does not verify."""

    code = "signature"


class ExpiredToken(InvalidToken):
    """The token has expired."""

    code = "expired"


class NotYetValid(InvalidToken):
    """The token is not valid yet (nbf)."""

    code = "not_yet_valid"


class InvalidIssuer(InvalidToken):
    """The token's issuer is not accepted."""

    code = "issuer"


class InvalidAudience(InvalidToken):
    """The token is not meant for this audience."""

    code = "audience"


class MissingClaim(InvalidToken):
    """A required claim is missing. `.claim` names it."""

    code = "missing_claim"

    def __init__(self, message: str = "", claim: str | None = None) -> None:
        super().__init__(message or (f"the {claim} claim is required" if claim else ""))
        self.claim = claim


class InvalidClaim(InvalidToken):
    """A claim has the wrong type or value."""

    code = "claim"


class InvalidKey(FastguardError, ValueError):
    """A key (or key set) cannot be used for verification; the message says why."""


class ConfigError(FastguardError, ValueError):
    """An invalid plugin configuration; `.field` is the dotted name of the offending field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"invalid config field '{field_name}': {message}")
        self.field = field_name


class StoreError(FastguardError):
    """A shared store could not carry out reset / ban / unban; the backend's exception is `__cause__`."""


def _codes() -> dict[str, type[InvalidToken]]:
    found: dict[str, type[InvalidToken]] = {}
    stack: list[Any] = [InvalidToken]
    while stack:
        cls = stack.pop()
        if cls.code in found and found[cls.code] is not cls:
            raise RuntimeError(f"error code {cls.code!r} used twice")  # a mistake in this file, caught at import
        found[cls.code] = cls
        stack.extend(cls.__subclasses__())
    return found


#: Every token failure code and its class (each code belongs to exactly one class).
CODES: dict[str, type[InvalidToken]] = _codes()
