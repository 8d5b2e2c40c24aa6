"""The JWT half of the plugins: a shared verifier, reading the token as Kong's jwt plugin does, and its 401s."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Generator
from typing import Any

import fastguard as fg
from fastguard.corechoice import core
from fastguard.jwt import bearer_token
from fastguard.kong import registry
from fastguard.kong.pdk import MAY_WAIT, PDKCall, header, json_exit

__all__ = ["Verifying", "JWT_MESSAGES", "CONSUMER_HEADERS", "EmptyKeyClaim", "cookie_value", "jws_header"]

log = logging.getLogger("fastguard.kong")


class EmptyKeyClaim(fg.MissingClaim):
    """The key claim is there but empty: Kong's "Invalid '<claim>' in claims"."""


def jws_header(token: str) -> dict[str, Any]:
    """The protected header of a token the verifier accepted (so it decodes), as a dict."""
    segment = token.split(".", 1)[0]
    try:
        value = json.loads(core.b64url_decode(segment.encode("ascii")))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

JWT_MESSAGES = {
    "malformed": "Bad token; invalid JSON",
    "too_large": "Bad token; too large",
    "algorithm": "Invalid algorithm",
    "unknown_key": "No credentials found for given 'kid'",
    "signature": "Invalid signature",
    "expired": {"exp": "token expired"},
    "not_yet_valid": {"nbf": "token not valid yet"},
    "issuer": "Invalid issuer",
    "audience": "Invalid audience",
    "claim": "Invalid claims",
}


#: The headers Kong's auth plugins set for the upstream (kong/constants.lua HEADERS).
#: Consumers looked up by consumer_claim, kept per plugin instance (the oldest go first).
CONSUMER_CACHE_SIZE = 10_000
CONSUMER_HEADERS = ("X-Consumer-ID", "X-Consumer-Custom-ID", "X-Consumer-Username", "X-Credential-Identifier",
                    "X-Anonymous-Consumer")


def cookie_value(header_value: str, name: str) -> str | None:
    """nginx's $cookie_<name>: the first `name=value` pair of a Cookie header, read leniently (a malformed
    neighbour does not hide it, unlike http.cookies, which drops the whole header)."""
    for part in header_value.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == name:
            return value
    return None


def kong_secret_jwks(jwks: str) -> str:
    """secret_is_base64: each oct key's `k` carries Kong's secret text, standard base64; the HMAC key is what it
    decodes to (as Kong decodes a consumer's jwt_secret). Other keys are left as they are."""
    doc = json.loads(jwks)
    for jwk in doc.get("keys", []) if isinstance(doc, dict) else []:
        if isinstance(jwk, dict) and jwk.get("kty") == "oct" and isinstance(jwk.get("k"), str):
            text = core.b64url_decode(jwk["k"].encode("ascii"))
            raw = base64.b64decode(text + b"=" * (-len(text) % 4))
            jwk["k"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return json.dumps(doc)


class Verifying:
    """The JWT half: a shared verifier and Kong's jwt plugin answers."""

    def __init__(self, cfg: dict[str, Any], entity: str, plugin: str = "fastguard-jwt") -> None:
        self.plugin = plugin            # the plugin's name in log lines (fastguard-jwt, or the combined fastguard)
        self.header_names = tuple(cfg["header_names"])
        self.uri_param_names = tuple(cfg["uri_param_names"])
        self.cookie_names = tuple(cfg["cookie_names"])
        self.max_exp = float(cfg["maximum_expiration"] or 0)
        self.preflight = cfg["run_on_preflight"]
        self.claims_to_headers = dict(cfg["claims_to_headers"] or {})
        # The upstream headers that remove the client's copies of what this plugin sets (Kong's set_headers removes
        # a header given an empty list), built once: of the claims' headers, of the consumer headers, of both.
        # Read-only: sent as they are, copied before anything is added.
        self.clear_claims: dict[str, list[str]] = {name: [] for name in self.claims_to_headers.values()}
        self.no_consumer: dict[str, list[str]] = {name: [] for name in CONSUMER_HEADERS}
        self.clear_all = {**self.clear_claims, **self.no_consumer}
        self.key_claim = cfg["key_claim_name"]
        self.anonymous = cfg["anonymous"]
        self.consumer_claim = cfg["consumer_claim"]
        self.consumer_by = cfg["consumer_by"]
        self.consumer_ttl = float(cfg["consumer_cache_ttl"])
        self._consumers: dict[str, tuple[dict[str, Any], float]] = {}  # claim value -> (consumer, until)
        realm = cfg["realm"]
        self.www_authenticate = f'Bearer realm="{realm}"' if realm is not None else "Bearer"
        self.www_authenticate_error = self.www_authenticate + (', error="invalid_token"' if realm is not None
                                                               else ' error="invalid_token"')
        required = tuple(cfg["claims_to_verify"] or ())
        jwks = cfg["jwks"]
        # What the schema Kong validates cannot check (a JWKS is JSON text): a key set that is not usable does not
        # stop the instance from starting (Kong would answer 500 to every request without saying why); every
        # request is answered 500 and the reason is logged, here, once.
        self.broken: str | None = None
        if jwks:
            try:
                if cfg["secret_is_base64"]:
                    jwks = kong_secret_jwks(jwks)
                fg.KeySet.from_jwks(jwks)
            except (ValueError, TypeError) as exc:  # binascii and Unicode errors are ValueErrors
                self.broken = f"jwks: {exc}"
                log.error("%s (plugin %s): the configured jwks cannot be used (%s); every request is "
                          "answered 500 until the configuration is fixed", plugin, entity, exc)
        self._key = ("verifier", entity, jwks, cfg["jwks_uri"], tuple(cfg["issuers"] or ()),
                     tuple(cfg["audiences"] or ()), cfg["leeway"], tuple(cfg["algorithms"] or ()), required,
                     cfg["cache_size"])

        # One key set per jwks_uri in the process, whatever the entities using it: one download, one refresh timer.
        self._jwks_key = ("jwks_uri", cfg["jwks_uri"]) if cfg["jwks_uri"] and not self.broken else None
        remote = registry.REGISTRY.acquire(self._jwks_key, lambda: fg.RemoteKeySet(cfg["jwks_uri"])) \
            if self._jwks_key else None

        def make() -> fg.JWTVerifier | None:
            if self.broken:
                return None
            keys = remote if remote is not None else fg.KeySet.from_jwks(jwks)
            return fg.JWTVerifier(keys, algorithms=cfg["algorithms"] or None, issuer=cfg["issuers"] or None,
                                  audience=cfg["audiences"] or None, leeway=cfg["leeway"],
                                  required_claims=required, cache_size=cfg["cache_size"])

        try:
            # not closed with the last instance: JWTVerifier.close() closes its keys, which their own entry closes
            self.verifier: fg.JWTVerifier | None = registry.REGISTRY.acquire(self._key, make, owns=False)
        except BaseException:
            if self._jwks_key:
                registry.REGISTRY.release(self._jwks_key)
            raise
        #: keys fetched from jwks_uri: verifying a token not in the cache may wait on the identity provider
        self.remote = self.verifier is not None and isinstance(self.verifier.keys, fg.RemoteKeySet)
        if registry.TRACK is not None and self.verifier is not None:
            registry.TRACK(self.verifier, entity)

    def close(self) -> None:
        registry.REGISTRY.release(self._key)
        if self._jwks_key:
            registry.REGISTRY.release(self._jwks_key)

    def token_steps(self) -> Generator[PDKCall, Any, str | None]:
        """Kong's retrieve_tokens: every token in the query parameters (get_query, only when uri_param_names is
        not empty), the cookies and the `Bearer` headers (the first value of each); two different ones are
        MalformedToken("Multiple tokens provided")."""
        found: dict[str, None] = {}
        if self.uri_param_names:
            query = yield ("kong.request.get_query", [])
            for name in self.uri_param_names:
                value = (query or {}).get(name)
                for v in value if isinstance(value, list) else [value]:
                    if isinstance(v, str) and v:
                        found[v] = None
        headers = yield ("kong.request.get_headers", [])
        headers = {str(k).lower(): v for k, v in (headers or {}).items()}
        if self.cookie_names:
            cookies = headers.get("cookie")
            raw = "; ".join(c for c in (cookies if isinstance(cookies, list) else [cookies]) if isinstance(c, str))
            for name in self.cookie_names:
                v = cookie_value(raw, name)
                if v:
                    found[v] = None
        for name in self.header_names:
            v = header(headers, name)
            token = bearer_token(v) if v is not None else None
            if token:
                found[token] = None
        if len(found) > 1:
            raise fg.MalformedToken("Multiple tokens provided")
        return next(iter(found), None)

    def refusal(self, exc: fg.InvalidToken | None, given: bool) -> PDKCall:
        """Kong's jwt plugin answer: 401 with WWW-Authenticate (its realm when set) and its message."""
        auth = self.www_authenticate_error if given else self.www_authenticate
        if exc is None:
            return json_exit(401, "Unauthorized", {"WWW-Authenticate": auth})
        message: Any = str(exc) if str(exc) == "Multiple tokens provided" else JWT_MESSAGES.get(exc.code)
        if isinstance(exc, fg.MissingClaim):
            message = f"No mandatory '{exc.claim}' in claims" if exc.claim else "Invalid claims"
        if isinstance(exc, EmptyKeyClaim):
            message = f"Invalid '{exc.claim}' in claims"
        return json_exit(401, message or "Invalid token", {"WWW-Authenticate": auth})

    def check(self, token: str) -> dict[str, Any]:
        """The verified claims (InvalidToken otherwise), with the key claim Kong's jwt plugin requires: in the
        payload, else in the JWS header (Kong reads both, in that order), and not empty."""
        if self.verifier is None:
            raise RuntimeError(self.broken)
        claims = self.verifier.verify(token)
        if self.key_claim:
            value = claims.get(self.key_claim)
            if value is None:
                value = jws_header(token).get(self.key_claim)
            if value is None:
                raise fg.MissingClaim(claim=self.key_claim)
            if value == "":
                raise EmptyKeyClaim(claim=self.key_claim)
        return dict(claims)

    def as_anonymous(self) -> Generator[PDKCall, Any, tuple[dict[str, Any], PDKCall | None]]:
        """Kong's set_anonymous_consumer: load the consumer by id or username and make the request its (no
        credential). Returns (the consumer headers for the upstream, None), or ({}, Kong's 500 when that consumer
        does not exist)."""
        consumer = yield ("kong.client.load_consumer", [self.anonymous, True])
        if not isinstance(consumer, dict) or not consumer.get("id"):
            message = f"anonymous consumer {self.anonymous} is configured but doesn't exist"
            log.error("%s: %s", self.plugin, message)
            return {}, ("kong.response.error", [500, message])
        upstream = yield from self.authenticate(consumer, anonymous=True)
        return upstream, None

    def authenticate(self, consumer: dict[str, Any], anonymous: bool) -> Generator[PDKCall, Any, dict[str, Any]]:
        """Kong's set_consumer: kong.client.authenticate(consumer, nil), then every consumer header for the
        upstream — the consumer's values, and an empty list (Kong's set_headers clears a header given an empty
        list) for those it lacks: a client's own copies must not reach the upstream. X-Anonymous-Consumer is
        "true" for the anonymous consumer only."""
        yield ("kong.client.authenticate", [consumer, None])
        values = {"X-Consumer-ID": consumer.get("id"), "X-Consumer-Custom-ID": consumer.get("custom_id"),
                  "X-Consumer-Username": consumer.get("username"), "X-Anonymous-Consumer": anonymous and "true"}
        return {name: str(values[name]) if values.get(name) else [] for name in CONSUMER_HEADERS}

    def identify(self, claims: dict[str, Any]) -> Generator[PDKCall, Any, tuple[dict[str, str], PDKCall | None]]:
        """consumer_claim: the Kong consumer the verified claim names (by id, or by id then username), looked up
        with kong.client.load_consumer and kept consumer_cache_ttl seconds; then authenticate(). Returns (the
        upstream headers to set, None), or ({}, the 401 Kong's jwt plugin answers when there is no consumer)."""
        value = claims.get(self.consumer_claim)
        consumer = None
        if isinstance(value, str) and value:
            hit = self._consumers.get(value)
            if hit is not None and hit[1] > time.monotonic():
                consumer = hit[0]
            else:
                consumer = yield ("kong.client.load_consumer", [value, self.consumer_by == "username"])
                if isinstance(consumer, dict) and consumer.get("id") and self.consumer_ttl > 0:
                    if len(self._consumers) >= CONSUMER_CACHE_SIZE:
                        self._consumers.pop(next(iter(self._consumers)))
                    self._consumers[value] = (consumer, time.monotonic() + self.consumer_ttl)
        if not isinstance(consumer, dict) or not consumer.get("id"):
            return {}, json_exit(401, f"Could not find consumer for '{self.consumer_claim}={value}'",
                                 {"WWW-Authenticate": self.www_authenticate_error})
        upstream = yield from self.authenticate(consumer, anonymous=False)
        return upstream, None

    def too_long(self, claims: dict[str, Any]) -> bool:
        """Kong's maximum_expiration: exp further than that from now, or no exp at all."""
        exp = claims.get("exp")
        if not self.max_exp:
            return False
        return not isinstance(exp, (int, float)) or isinstance(exp, bool) or exp - time.time() > self.max_exp

    def verified(self) -> Generator[PDKCall, Any, tuple[dict[str, Any] | None, PDKCall | None]]:
        """Read and verify the request's token: (claims, None), or (None, the 401 that refuses it)."""
        if self.broken:
            return None, json_exit(500, "An unexpected error occurred")
        try:
            token = yield from self.token_steps()
        except fg.InvalidToken as exc:
            return None, self.refusal(exc, True)
        if token is None:
            return None, self.refusal(None, False)
        if self.remote and not self.verifier.cached(token):  # type: ignore[union-attr]
            yield MAY_WAIT  # a token not verified yet may need the JWKS fetched (first use, an unknown kid)
        try:
            claims = self.check(token)
        except fg.InvalidToken as exc:
            return None, self.refusal(exc, True)
        if self.too_long(claims):
            return None, json_exit(401, {"exp": "exceeds maximum allowed expiration"},
                                   {"WWW-Authenticate": self.www_authenticate_error})
        return claims, None

    def upstream_headers(self, claims: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """`base` with claims_to_headers: each claim's value (JSON unless a string), or an empty list (the header
        cleared) when the token lacks the claim: the client's own copy must not pass for a verified one. `base`
        itself when no claim is sent upstream (it is not changed)."""
        if not self.claims_to_headers:
            return base
        out = dict(base)
        for claim, name in self.claims_to_headers.items():
            value = claims.get(claim)
            if value is None:
                out[name] = []
            else:
                out[name] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return out
