"""Strict JSON for JOSE headers, JWT payloads and JWKS, defined here (fastguard/core/json.pxi is its compiled
twin)."""

from __future__ import annotations

import json
from typing import Any

# ---------------------------------------------------------------------------------------------------------------
# Strict JSON for JOSE headers, JWT payloads and JWKS (the core's parse_json_object is its compiled twin).
# ---------------------------------------------------------------------------------------------------------------
JSON_MAX_DEPTH = 256


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member name")
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_unique_object, parse_constant=_no_constants)


def _depth(value: Any) -> int:
    """Nesting depth; ValueError for a str holding a lone surrogate (a \\u escape of half a pair), which is no
    character: no UTF-8, msgpack or HTTP header can carry it."""
    if type(value) is dict:
        for name in value:
            _characters(name)
        return 1 + max(map(_depth, value.values()), default=0)
    if type(value) is list:
        return 1 + max(map(_depth, value), default=0)
    if type(value) is str:
        _characters(value)
    return 0


def _characters(text: str) -> None:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("lone surrogate in \\u escape") from None


def parse_json_object(data: bytes) -> dict[str, Any]:
    """A JSON object (RFC 8259) from UTF-8 bytes, with the values json.loads gives, but strictly: duplicate member
    names (at any depth), NaN/Infinity, invalid UTF-8, anything but an object at the top, or nesting deeper than
    JSON_MAX_DEPTH raise ValueError."""
    text = bytes(data).decode("utf-8")
    try:
        value = _STRICT_JSON.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if type(value) is not dict:
        raise ValueError("not a JSON object")
    if _depth(value) > JSON_MAX_DEPTH:
        raise ValueError("nested too deeply")
    return value
