"""Compact JWS parsing: strict base64url and the two dots (twin of fastguard/core/jws.pxi)."""

from __future__ import annotations

import base64
import re

# ---------------------------------------------------------------------------------------------------------------
# JWS helpers and the verified-token cache (twins of the compiled ones).
# ---------------------------------------------------------------------------------------------------------------
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_B64_VALUES = {c: i for i, c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}


def b64url_decode(data: bytes) -> bytes:
    """Strict base64url (RFC 7515 §2): the alphabet only, no padding, no length of 4k+1, unused bits zero.
    Raises ValueError otherwise, so every byte string has exactly one accepted encoding."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("b64url_decode takes bytes")
    n = len(data)
    if _B64URL.fullmatch(data) is None:
        raise ValueError("character outside the base64url alphabet")
    if n % 4 == 1:
        raise ValueError("impossible base64url length")
    if n % 4 == 2 and _B64_VALUES[data[-1]] & 0x0F or n % 4 == 3 and _B64_VALUES[data[-1]] & 0x03:
        raise ValueError("non-zero unused bits (non-canonical base64url)")
    return base64.urlsafe_b64decode(bytes(data) + b"=" * (-n % 4))


def _find_dots(token: bytes) -> tuple[int, int]:
    """Positions of the two dots of a compact JWS; ValueError unless there are exactly two."""
    first = token.find(b".")
    second = token.find(b".", first + 1) if first >= 0 else -1
    if first < 0 or second < 0 or token.find(b".", second + 1) >= 0:
        raise ValueError("a compact JWS has exactly two dots")
    return first, second


def parse_compact(token: bytes | str) -> tuple[bytes, bytes, bytes, bytes]:
    """(header segment, signing input, payload bytes, signature bytes) of a compact JWS (bytes or an ASCII str);
    ValueError unless it has exactly two dots and canonical base64url payload and signature (the header is the
    caller's)."""
    if isinstance(token, str):
        if not token.isascii():
            raise ValueError("characters outside base64url")
        token = token.encode("ascii")
    first, second = _find_dots(token)
    return (bytes(token[:first]), bytes(token[:second]), b64url_decode(token[first + 1:second]),
            b64url_decode(token[second + 1:]))
