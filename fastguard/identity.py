"""How a caller becomes a limiter key and a shared scope becomes a Redis prefix: written once, for the Kong plugins
and the side service alike, so that the two count one caller under the same Redis name (same namespace, algorithm
and limits: one count)."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["rate_limit_key", "shared_prefix", "IDENTIFIER_KINDS"]

#: The kinds of caller identity a Kong plugin counts by (limit_by, plus the JWT plugin's claim).
IDENTIFIER_KINDS = ("ip", "consumer", "credential", "service", "header", "path", "claim")


def rate_limit_key(kind: str, value: Any) -> bytes:
    """A rate-limit key `<kind>:<value>` from a value a gateway sent, whatever its type. Kong's strings are bytes
    (the plugin server decodes them with surrogateescape, a msgpack bin arrives as bytes), so a key is made of those
    bytes: undecodable bytes still name a caller. Never raises: an error here would be answered by fault_tolerant,
    i.e. let through."""
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
    elif value is None:
        raw = b""
    else:  # a number, or a JSON-like structure (a claim): its compact JSON, anything else its repr
        raw = json.dumps(value, separators=(",", ":"), default=repr).encode("utf-8", "surrogateescape")
    return kind.encode() + b":" + raw


def shared_prefix(scope: str) -> str:
    """The Redis prefix of a shared scope: `ns:<namespace>` (a Kong plugin's namespace, or a side-service domain's)
    or a plugin's id. Braces and spaces, which a prefix may not hold, are replaced."""
    return f"fg-kong-{scope}".replace(" ", "_").replace("{", "(").replace("}", ")")
