"""Every exception fastguard raises on purpose. Token failures share `InvalidToken` and carry a short stable `.code`."""

from __future__ import annotations

__all__ = [
    "InvalidToken", "MalformedToken", "TokenTooLarge", "DisallowedAlgorithm", "UnknownKey", "InvalidSignature",
    "ExpiredToken", "NotYetValid", "InvalidIssuer", "InvalidAudience", "MissingClaim", "InvalidClaim", "InvalidKey",
]


class InvalidToken(Exception):
    """A token was refused. `.code` names the reason in a word that programs can match (it never changes)."""

    code = "invalid"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)


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
    """A required claim is missing."""

    code = "missing_claim"


class InvalidClaim(InvalidToken):
    """A claim has the wrong type or value."""

    code = "claim"


class InvalidKey(ValueError):
    """A key (or key set) cannot be used for verification; the message says why."""
