"""The JWT half of the plugins: a shared verifier, reading the token as Kong's jwt plugin does, and its 401s."""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from http.cookies import SimpleCookie
from typing import Any

import fastguard as fg
from fastguard.kong import registry
from fastguard.kong.fields import ConfigError
from fastguard.kong.pdk import PDKCall, header, json_exit

__all__ = ["Verifying", "JWT_MESSAGES"]

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


class Verifying:
    """The JWT half: a shared verifier and Kong's jwt plugin answers."""

    def __init__(self, cfg: dict[str, Any], entity: str) -> None:
        if cfg["anonymous"]:
            raise ConfigError("anonymous", "not supported by fastguard-jwt: a failed verification is answered 401")
        if cfg["secret_is_base64"]:
            raise ConfigError("secret_is_base64", "keys come from jwks / jwks_uri (put an HMAC key in a JWKS 'k')")
        if not cfg["jwks"] and not cfg["jwks_uri"]:
            raise ConfigError("jwks", "set jwks (JSON text) or jwks_uri")
        if cfg["jwks"] and cfg["jwks_uri"]:
            raise ConfigError("jwks_uri", "set jwks or jwks_uri, not both")
        if cfg["jwks"]:
            try:
                fg.KeySet.from_jwks(cfg["jwks"])
            except (ValueError, TypeError) as exc:
                raise ConfigError("jwks", str(exc)) from exc
        if cfg["jwks_uri"] and not cfg["jwks_uri"].startswith(("https://", "http://")):
            raise ConfigError("jwks_uri", f"expected an http(s) URL, got {cfg['jwks_uri']!r}")
        self.header_names = tuple(cfg["header_names"])
        self.uri_param_names = tuple(cfg["uri_param_names"])
        self.cookie_names = tuple(cfg["cookie_names"])
        self.max_exp = float(cfg["maximum_expiration"] or 0)
        self.preflight = cfg["run_on_preflight"]
        self.claims_to_headers = dict(cfg["claims_to_headers"] or {})
        self.key_claim = cfg["key_claim_name"]
        required = tuple(cfg["claims_to_verify"] or ())
        self._key = ("verifier", entity, cfg["jwks"], cfg["jwks_uri"], tuple(cfg["issuers"] or ()),
                     tuple(cfg["audiences"] or ()), cfg["leeway"], tuple(cfg["algorithms"] or ()), required,
                     cfg["cache_size"])

        def make() -> fg.JWTVerifier:
            keys = fg.RemoteKeySet(cfg["jwks_uri"]) if cfg["jwks_uri"] else fg.KeySet.from_jwks(cfg["jwks"])
            return fg.JWTVerifier(keys, algorithms=cfg["algorithms"] or None, issuer=cfg["issuers"] or None,
                                  audience=cfg["audiences"] or None, leeway=cfg["leeway"],
                                  required_claims=required, cache_size=cfg["cache_size"])

        self.verifier: fg.JWTVerifier = registry.REGISTRY.acquire(self._key, make)
        if registry.TRACK is not None:
            registry.TRACK(self.verifier, entity)

    def close(self) -> None:
        registry.REGISTRY.release(self._key)

    def token_steps(self) -> Generator[PDKCall, Any, tuple[str | None, dict[str, Any]]]:
        """Read the token: (token or None, headers). One get_headers, plus get_query only when needed."""
        headers = yield ("kong.request.get_headers", [])
        headers = {str(k).lower(): v for k, v in (headers or {}).items()}
        cookies = None
        if self.cookie_names:
            raw = header(headers, "cookie")
            if raw:
                jar = SimpleCookie()
                jar.load(raw)
                cookies = {k: m.value for k, m in jar.items()}
        token = fg.extract_token(headers, None, cookies, header_names=self.header_names, uri_param_names=(),
                                 cookie_names=self.cookie_names)
        if token is None and self.uri_param_names:  # the query string only when the headers hold no token
            query = yield ("kong.request.get_query", [])
            if query:
                token = fg.extract_token(None, query, None, uri_param_names=self.uri_param_names)
        return token, headers

    def refusal(self, exc: fg.InvalidToken | None, given: bool) -> PDKCall:
        """Kong's jwt plugin answer: 401 with WWW-Authenticate and its message."""
        auth = 'Bearer error="invalid_token"' if given else "Bearer"
        if exc is None:
            return json_exit(401, "Unauthorized", {"WWW-Authenticate": auth})
        message: Any = str(exc) if str(exc) == "Multiple tokens provided" else JWT_MESSAGES.get(exc.code)
        if isinstance(exc, fg.MissingClaim):
            message = f"No mandatory '{exc.claim}' in claims" if exc.claim else "Invalid claims"
        return json_exit(401, message or "Invalid token", {"WWW-Authenticate": auth})

    def check(self, token: str) -> dict[str, Any]:
        """The verified claims (InvalidToken otherwise), with the key claim Kong's jwt plugin requires."""
        claims = self.verifier.verify(token)
        if self.key_claim and self.key_claim not in claims:
            raise fg.MissingClaim(claim=self.key_claim)
        return dict(claims)

    def too_long(self, claims: dict[str, Any]) -> bool:
        """Kong's maximum_expiration: exp further than that from now."""
        exp = claims.get("exp")
        return bool(self.max_exp) and isinstance(exp, (int, float)) and exp - time.time() > self.max_exp

    def verified(self) -> Generator[PDKCall, Any, tuple[dict[str, Any] | None, PDKCall | None]]:
        """Read and verify the request's token: (claims, None), or (None, the 401 that refuses it)."""
        try:
            token, _ = yield from self.token_steps()
        except fg.InvalidToken as exc:
            return None, self.refusal(exc, True)
        if token is None:
            return None, self.refusal(None, False)
        try:
            claims = self.check(token)
        except fg.InvalidToken as exc:
            return None, self.refusal(exc, True)
        if self.too_long(claims):
            return None, json_exit(401, {"exp": "exceeds maximum allowed expiration"},
                                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return claims, None

    def upstream_headers(self, claims: dict[str, Any]) -> dict[str, str]:
        out = {}
        for claim, name in self.claims_to_headers.items():
            value = claims.get(claim)
            if value is not None:
                out[name] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return out
