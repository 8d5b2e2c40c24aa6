"""JWTVerifier: compact JWS/JWT verification with RFC 8725 hardening and a cache of verdicts.

Every token is checked over the bytes received (never re-serialized JSON). The algorithm comes from the key, never
from the token. A verified token's claims are cached until its `exp` (at most CACHE_TTL seconds) and re-checked
against `now` on every hit; failures that cannot heal by themselves are cached for NEGATIVE_TTL seconds, so a flood
of one bad token costs a lookup each. Any change of the key set empties both caches.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from fastguard.arguments import epoch_ns
from fastguard.corechoice import core as _impl
from fastguard.errors import (
    DisallowedAlgorithm,
    ExpiredToken,
    InvalidAudience,
    InvalidClaim,
    InvalidIssuer,
    InvalidSignature,
    InvalidToken,
    MalformedToken,
    MissingClaim,
    TokenTooLarge,
)
from fastguard.jwks import ALGORITHMS, Key, KeySet, RemoteKeySet

__all__ = ["JWTVerifier", "extract_token", "bearer_token", "CACHE_TTL", "NEGATIVE_TTL", "MAX_CACHED_TOKEN_BYTES"]

#: A cached verdict lives at most this long (seconds), even when the token's exp is later.
CACHE_TTL = 300.0
#: A cached failure lives this long (seconds).
NEGATIVE_TTL = 10.0
#: Longer tokens are verified every time (a cache of huge tokens would be a memory lever for attackers).
MAX_CACHED_TOKEN_BYTES = 4096
# Failures that stay failures whatever the clock does (a key set change empties the cache). Not cached:
# NotYetValid and InvalidClaim (an iat slightly ahead heals with time), UnknownKey (a refetch may bring the kid).
_CACHEABLE_FAILURES = (MalformedToken, TokenTooLarge, DisallowedAlgorithm, InvalidSignature, InvalidIssuer,
                       InvalidAudience, MissingClaim)
# ...and ExpiredToken, remembered from its exp on (an expired token stays expired as the clock moves on).
_REMEMBERED = (*_CACHEABLE_FAILURES, ExpiredToken)
_CACHE_TTL_NS = int(CACHE_TTL * 1e9)
_NEGATIVE_TTL_NS = int(NEGATIVE_TTL * 1e9)


_HEADER_CACHE_SIZE = 256
#: Bounds of the verifier's arguments (seconds): beyond them the nanosecond arithmetic of the claim checks would
#: overflow, and no real deployment needs more.
MAX_LEEWAY = 365 * 86_400.0
MAX_LIFETIME = 100 * 365 * 86_400.0


class _FrozenDict(dict):  # type: ignore[type-arg]
    """A nested JSON object of cached claims: a dict (json.dumps and == work) that refuses every change, so one
    caller cannot alter what the next verification of the same token returns."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("verified claims are read-only")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse


class _FrozenList(list):  # type: ignore[type-arg]
    """A JSON array of cached claims: a list (json.dumps and == work) that refuses every change."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("verified claims are read-only")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = append = extend = insert = pop = remove = clear = _refuse
    sort = reverse = _refuse


def _frozen(value: Any) -> Any:
    """The value with every nested object and array read-only (str, numbers, bools and None already are)."""
    if type(value) is dict:
        return _FrozenDict((k, _frozen(v)) for k, v in value.items())
    if type(value) is list:
        return _FrozenList(_frozen(v) for v in value)
    return value


def _read_only(obj: dict[str, Any]) -> Mapping[str, Any]:
    """A read-only view of a freshly parsed claims object (nobody else holds `obj`): rebuilt only when a claim is
    an object or an array, the common flat claims are wrapped as they are."""
    for value in obj.values():
        if type(value) is dict or type(value) is list:
            return MappingProxyType({k: _frozen(v) for k, v in obj.items()})
    return MappingProxyType(obj)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return _impl.parse_json_object(raw)
    except UnicodeDecodeError:
        raise MalformedToken(f"the {what} is not UTF-8") from None
    except ValueError as exc:
        raise MalformedToken(f"the {what} is not a JSON object ({exc})") from None


def _as_list(value: str | Iterable[str] | None, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{what} must be a non-empty string or a non-empty list of them, got {value!r}")
    return frozenset(items)


class JWTVerifier:
    """Verify compact JWTs against a key set.

    keys: KeySet or RemoteKeySet. algorithms: the JWS algorithms allowed (default: whatever the keys allow).
    issuer / audience: one string or several (any-of). leeway: seconds of clock skew allowed on exp/nbf/iat.
    required_claims: claims that must be present. max_token_bytes: larger tokens are refused before any decoding.
    cache_size: verified tokens remembered (0 disables the cache). typ: required `typ` header ("JWT" matches
    "jwt" and "application/jwt"). max_lifetime: seconds allowed between iat and exp.
    verify(token, now=None) -> read-only claims mapping, or raises an InvalidToken subclass.
    """

    def __init__(self, keys: KeySet | RemoteKeySet, algorithms: Sequence[str] | None = None,
                 issuer: str | Iterable[str] | None = None, audience: str | Iterable[str] | None = None,
                 leeway: float = 0.0, required_claims: Iterable[str] = ("exp",), max_token_bytes: int = 8192,
                 cache_size: int = 100_000, typ: str | None = None, max_lifetime: float | None = None) -> None:
        if not isinstance(keys, (KeySet, RemoteKeySet)):
            raise TypeError(f"keys must be a KeySet or RemoteKeySet, not {type(keys).__name__}")
        if algorithms is not None:
            algorithms = frozenset(algorithms)
            unknown = sorted(a for a in algorithms if a not in ALGORITHMS)
            if unknown or not algorithms:
                raise ValueError(f"unsupported algorithms {unknown}: choose from {sorted(ALGORITHMS)}")
        if isinstance(leeway, bool) or not isinstance(leeway, (int, float)) or not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be seconds between 0 and {MAX_LEEWAY:g}, got {leeway!r}")
        if isinstance(max_token_bytes, bool) or not isinstance(max_token_bytes, int) or max_token_bytes < 16:
            raise ValueError(f"max_token_bytes must be an int >= 16, got {max_token_bytes!r}")
        if max_lifetime is not None and (isinstance(max_lifetime, bool) or not isinstance(max_lifetime, (int, float))
                                         or not 0 < max_lifetime <= MAX_LIFETIME):
            raise ValueError(f"max_lifetime must be seconds above 0 and at most {MAX_LIFETIME:g}, got "
                             f"{max_lifetime!r}")
        if isinstance(required_claims, (str, bytes)) or not all(isinstance(c, str) for c in required_claims):
            raise TypeError(f"required_claims must be a list of claim names, got {required_claims!r}")
        if typ is not None and not isinstance(typ, str):
            raise TypeError(f"typ must be a str, got {typ!r}")
        self.keys = keys
        self.algorithms = algorithms
        self.issuers = _as_list(issuer, "issuer")
        self.audiences = _as_list(audience, "audience")
        self.leeway = float(leeway)
        self.required_claims = tuple(required_claims)
        self.max_token_bytes = max_token_bytes
        self.typ = typ.lower().removeprefix("application/") if typ else None
        self.max_lifetime = max_lifetime
        self._leeway_ns = round(self.leeway * 1e9)
        self._max_lifetime_ns = None if max_lifetime is None else round(max_lifetime * 1e9)
        cached_bytes = min(max_token_bytes, MAX_CACHED_TOKEN_BYTES)   # a longer token is never even hashed
        self._cache = _impl.TokenCache(cache_size, cached_bytes)
        self._failures = _impl.TokenCache(min(cache_size, max(1024, cache_size // 10)), cached_bytes)
        self._keys_version = keys.version
        self._headers: dict[bytes, tuple[Mapping[str, Any], str, tuple[Key, ...] | None]] = {}
        self._outcomes: dict[str, int] = {}
        self._fast = _impl.CachedVerify(self._cache, keys, self._keys_version, self._verify_uncached)
        # `v.verify(token)` calls the compiled callable directly: a cache hit costs one C call, no Python frame.
        self.verify = self._fast

    # -- verify, its caches and their statistics ----------------------------------------------------------------
    def verify(self, token: str | bytes, now: float | None = None) -> Mapping[str, Any]:
        """The token's claims (read-only), or raises an InvalidToken subclass. now: epoch seconds (default: clock)."""
        return self._fast(token, now)

    def stats(self) -> dict[str, Any]:
        """Counts since the verifier was made: `verified` (valid tokens, cached or not), `outcomes` (uncached
        verifications by result: "valid" or an error code), `cache_hits` / `cache_misses` / `cache_evictions` /
        `cache_entries` of the verified-token cache, `negative_hits` / `negative_entries` of the failure cache, and
        `keys`: the key set's stats (keys in use, kids, keys skipped from a JWKS and why)."""
        return {"verified": self._cache.hits + self._outcomes.get("valid", 0), "outcomes": dict(self._outcomes),
                "keys": self.keys.stats(),
                "cache_hits": self._cache.hits, "cache_misses": self._cache.misses,
                "cache_evictions": self._cache.evictions, "cache_entries": len(self._cache),
                "negative_hits": self._failures.hits, "negative_entries": len(self._failures)}

    def _verify_uncached(self, token: str | bytes, now: float | None = None) -> Mapping[str, Any]:
        """A verification the cache could not answer: the signature, the claims, then the verdict remembered.
        Outcomes are counted here, off the hot path (a cache hit is counted by the cache itself: stats())."""
        t = time.time_ns() if now is None else epoch_ns(now)   # the rules of the cached path (TypeError/ValueError)
        version = self.keys.version
        if version != self._keys_version:
            self._reset()
        outcomes = self._outcomes
        failure = self._failures.get(token, now)
        if failure is not None:
            outcomes[failure.code] = outcomes.get(failure.code, 0) + 1
            raise failure.again()
        try:
            payload = self.verify_jws(token)[1]
            try:
                claims = _impl.parse_json_object(payload)
            except ValueError as exc:
                raise MalformedToken(f"the payload is not a UTF-8 JSON object ({exc})") from None
            valid_from, valid_until = _impl.check_claims(claims, t, self._leeway_ns, self.required_claims,
                                                         self.issuers, self.audiences, self._max_lifetime_ns)
            claims = _read_only(claims)
        except InvalidToken as exc:
            outcomes[exc.code] = outcomes.get(exc.code, 0) + 1
            # Expired stays expired as time moves on (a clock set back gets a fresh verification). A verdict
            # reached while the key set changed is not remembered: it may come from keys no longer in use.
            if isinstance(exc, _REMEMBERED) and self._cacheable(token) and self.keys.version == version:
                self._failures.put(token, exc.with_traceback(None), t if isinstance(exc, ExpiredToken) else 0,
                                   t + _NEGATIVE_TTL_NS)
            raise
        outcomes["valid"] = outcomes.get("valid", 0) + 1
        cache = self._cache
        if cache.capacity and self.keys.version == version and self._cacheable(token):
            cache.put(token, claims, valid_from, min(valid_until, t + _CACHE_TTL_NS))
        return claims

    def _cacheable(self, token: Any) -> bool:
        return isinstance(token, (str, bytes)) and len(token) <= self._cache.max_token_bytes

    def close(self) -> None:
        """Stop what the key set runs in the background (a RemoteKeySet's refresh timer)."""
        close = getattr(self.keys, "close", None)
        if close is not None:
            close()

    def cached(self, token: str | bytes, now: float | None = None) -> bool:
        """Whether verify(token, now) would be answered from the verified-token cache: no key lookup, so no fetch
        of a RemoteKeySet either (counts nothing)."""
        return self.keys.version == self._keys_version and self._cache.contains(token, now)

    def clear_cache(self) -> None:
        self._cache.clear()
        self._failures.clear()

    # -- the signature and header rules (verify_jws is public: no claims, no cache) ------------------------------
    def _reset(self) -> None:
        self._keys_version = self._fast.version = self.keys.version
        self._headers.clear()
        self.clear_cache()

    def verify_jws(self, token: str | bytes) -> tuple[Mapping[str, Any], bytes]:
        """Signature and header checks only: (header, payload bytes). Raises an InvalidToken subclass."""
        if type(token) is str:
            if len(token) > self.max_token_bytes:
                raise TokenTooLarge(f"token of {len(token)} characters; at most {self.max_token_bytes} bytes")
            raw = token     # parse_compact reads an ASCII str in place and refuses any other
        elif isinstance(token, str):
            raw = str(token)
        elif isinstance(token, (bytes, bytearray, memoryview)):
            raw = bytes(token)
        else:
            raise MalformedToken(f"a token is str or bytes, not {type(token).__name__}")
        if len(raw) > self.max_token_bytes:
            raise TokenTooLarge(f"token of {len(raw)} bytes; at most {self.max_token_bytes}")
        try:
            header_b64, signing_input, payload, signature = _impl.parse_compact(raw)
        except ValueError as exc:
            raise MalformedToken(f"not a compact JWS: {exc}") from None
        known = self._headers.get(header_b64)
        if known is None:
            known = self._check_header(header_b64)
        header, alg, keys = known
        # jku, x5u, jwk and x5c are never read: keys come from the key set only.
        for key in keys if keys is not None else self.keys.candidates(alg, header.get("kid")):
            if key._verifier(alg, signing_input, signature):
                return header, payload
        raise InvalidSignature("the signature does not verify")

    def _check_header(self, header_b64: bytes) -> tuple[Mapping[str, Any], str, tuple[Key, ...] | None]:
        """The header's rules. A header that passes is remembered by its exact encoding (most tokens share a few
        headers) with its alg and, for a static key set, its candidate keys. The signature still covers the bytes
        received; a RemoteKeySet is asked for keys on every token, so its refresh schedule keeps running."""
        try:
            header = _json_object(_impl.b64url_decode(header_b64), "header")
        except ValueError as exc:
            raise MalformedToken(f"not a compact JWS: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise MalformedToken("the header has no alg string")
        if alg not in ALGORITHMS:
            raise DisallowedAlgorithm(f"algorithm {alg!r} is not accepted")
        if self.algorithms is not None and alg not in self.algorithms:
            raise DisallowedAlgorithm(f"algorithm {alg} is not allowed by this verifier")
        if "crit" in header:
            raise MalformedToken(f"critical header parameters {header['crit']!r} are not understood")
        kid = header.get("kid")
        if "kid" in header and not isinstance(kid, str):
            raise MalformedToken("kid must be a string")
        if self.typ is not None:
            typ = header.get("typ")
            if not isinstance(typ, str) or typ.lower().removeprefix("application/") != self.typ:
                raise InvalidClaim(f"typ {typ!r} is not {self.typ!r}")
        keys = self.keys.candidates(alg, kid) if isinstance(self.keys, KeySet) else None
        if len(self._headers) >= _HEADER_CACHE_SIZE:
            self._headers.clear()
        known = (_read_only(header), alg, keys)
        self._headers[header_b64] = known
        return known


#: Kong's jwt plugin reads a bearer header with ngx.re.gmatch(value, [[\s*[Bb]earer\s+(.+)]]) and takes the first
#: match: "Bearer" or "bearer" (not "BEARER"), anywhere in the value, then any whitespace, then the rest as it is.
_BEARER = re.compile(r"\s*[Bb]earer\s+(.+)", re.DOTALL)


def bearer_token(value: str) -> str | None:
    """The token of an `Authorization`-style header value by Kong's jwt plugin's rule (see _BEARER), or None: the
    one bearer reader of fastguard's Python API and its Kong plugins."""
    m = _BEARER.search(value)
    return m.group(1) if m and m.group(1) else None


def extract_token(headers: Mapping[str, Any] | None = None, query: Mapping[str, Any] | None = None,
                  cookies: Mapping[str, Any] | None = None, header_names: Sequence[str] = ("authorization",),
                  uri_param_names: Sequence[str] = ("jwt",), cookie_names: Sequence[str] = ()) -> str | None:
    """The bearer token of a request, or None when there is none.

    Looks in the headers (`Authorization: Bearer <token>`, names matched without case, the value read by Kong's jwt
    plugin's rule: bearer_token; values may be lists, as Kong passes them), the query parameters and the cookies,
    by the names given. Two different tokens are refused with MalformedToken("Multiple tokens provided"), as Kong's
    jwt plugin does.
    """
    found: list[str] = []

    def add(value: Any, bearer: bool) -> None:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, str):
                continue
            token = bearer_token(v) if bearer else v
            if token:
                found.append(token)

    if headers:
        lower = {str(k).lower(): v for k, v in headers.items()}
        for name in header_names:
            if name.lower() in lower:
                add(lower[name.lower()], True)
    if query:
        for name in uri_param_names:
            if name in query:
                add(query[name], False)
    if cookies:
        for name in cookie_names:
            if name in cookies:
                add(cookies[name], False)
    unique = set(found)
    if len(unique) > 1:
        raise MalformedToken("Multiple tokens provided")
    return found[0] if found else None
