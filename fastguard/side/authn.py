"""A domain's JWT check, configured with the fields of Envoy's jwt_authn provider
(envoy.extensions.filters.http.jwt_authn.v3.JwtProvider), verified by fastguard's JWTVerifier.

    fastguard:
      jwt:
        issuer: https://issuer.example
        audiences: [api]
        remote_jwks: {http_uri: {uri: https://issuer.example/jwks.json, cluster: x, timeout: 2s}, cache_duration: 300s}
        # or local_jwks: {filename: /etc/keys/jwks.json}   (or inline_string: '{"keys": [...]}', or a PEM key)
        from_headers: [{name: Authorization, value_prefix: "Bearer "}]    # Envoy's default, with ?access_token=
        claim_to_headers: [{header_name: x-jwt-sub, claim_name: sub}]
        forward_payload_header: x-jwt-payload
        clock_skew_seconds: 60
        allow_missing: false          # fastguard's (Envoy's requirement allow_missing): no token is no identity

As Envoy answers: no token → 401 "Jwt is missing"; a token that does not verify → 401; a verified token whose
audience is not allowed → 403. `require_expiration` as Envoy's (default false: a token without `exp` is accepted).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastguard.errors import InvalidAudience, InvalidToken, MalformedToken
from fastguard.side.actions import ActionError, HttpRequest, claim_value

__all__ = ["JwtCheck", "JwtOutcome"]

_FASTGUARD_KEYS = ("allow_missing",)


@dataclass(slots=True)   # made per request: a frozen init costs a setattr per field
class JwtOutcome:
    """`status` 0 when the request may go on (claims None when no token was required nor given), else 401/403."""

    status: int
    claims: Mapping[str, Any] | None = None
    token: str | None = None
    message: str = ""


def _seconds(duration: Any) -> float:
    return duration.seconds + duration.nanos / 1e9


class JwtCheck:
    def __init__(self, spec: Any, where: str = "jwt", base_dir: str = ".") -> None:
        from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2
        from google.protobuf import json_format

        from fastguard.jwks import KeySet, RemoteKeySet
        from fastguard.jwt import JWTVerifier

        if not isinstance(spec, Mapping):
            raise ActionError(f"{where}: jwt is a mapping of Envoy jwt_authn provider fields")
        allow_missing = spec.get("allow_missing", False)
        if not isinstance(allow_missing, bool):
            raise ActionError(f"{where}.allow_missing: true or false")
        self.allow_missing = allow_missing
        try:
            p = json_format.ParseDict({k: v for k, v in spec.items() if k not in _FASTGUARD_KEYS},
                                      config_pb2.JwtProvider())
        except json_format.ParseError as exc:
            raise ActionError(f"{where}: not an Envoy jwt_authn provider ({exc})") from None
        try:
            if p.HasField("remote_jwks"):
                uri = p.remote_jwks.http_uri.uri
                timeout = _seconds(p.remote_jwks.http_uri.timeout) or 5.0
                every = _seconds(p.remote_jwks.cache_duration) if p.remote_jwks.HasField("cache_duration") else 300.0
                keys: Any = RemoteKeySet(uri, refresh_interval=every or 300.0, timeout=timeout)
            elif p.HasField("local_jwks"):
                source = p.local_jwks.WhichOneof("specifier")
                if source == "filename":
                    path = p.local_jwks.filename
                    with open(path if os.path.isabs(path) else os.path.join(base_dir, path), "rb") as fh:
                        text = fh.read()
                elif source == "inline_string":
                    text = p.local_jwks.inline_string.encode()
                else:
                    raise ActionError(f"{where}.local_jwks: filename or inline_string")
                keys = KeySet.from_pem(text) if text.lstrip().startswith(b"-----BEGIN") else KeySet.from_jwks(text)
            else:
                raise ActionError(f"{where}: remote_jwks or local_jwks is required")
            self.verifier = JWTVerifier(
                keys, issuer=p.issuer or None, audience=list(p.audiences) or None,
                leeway=p.clock_skew_seconds if "clock_skew_seconds" in spec else 60,
                required_claims=("exp",) if p.require_expiration else (),
                max_lifetime=_seconds(p.max_lifetime) or None)
        except ActionError:
            raise
        except (OSError, ValueError, TypeError) as exc:
            raise ActionError(f"{where}: {exc}") from None
        self.remote = p.HasField("remote_jwks")
        self.forward = p.forward
        headers = [(h.name.lower(), h.value_prefix) for h in p.from_headers]
        params = list(p.from_params)
        if not headers and not params and not p.from_cookies:
            headers, params = [("authorization", "Bearer ")], ["access_token"]
        self._from_headers = headers
        self._from_params = params
        self._from_cookies = list(p.from_cookies)
        self._claim_headers = [(c.header_name.lower(), c.claim_name) for c in p.claim_to_headers]
        self._payload_header = p.forward_payload_header.lower() or None
        self._pad = p.pad_forward_payload_header
        #: every header this check may set upstream: a client's copy of any of them is never passed on
        self.upstream_names = tuple(n for n, _ in self._claim_headers) + \
            ((self._payload_header,) if self._payload_header else ())
        #: where the token came from, for removal upstream when `forward` is false (Envoy's default)
        self.token_headers = tuple(n for n, _ in headers)

    def token(self, req: HttpRequest) -> str | None:
        """The request's token, from the configured places; MalformedToken when two differ."""
        found = []
        for name, prefix in self._from_headers:
            value = req.headers.get(name)
            if value is None:
                continue
            if prefix:
                if value[:len(prefix)].lower() != prefix.lower():
                    continue
                value = value[len(prefix):]
            value = value.strip()
            if value:
                found.append(value)
        for name in self._from_params:
            value = req.query(name)
            if value:
                found.append(value)
        if self._from_cookies and "cookie" in req.headers:
            for part in req.headers["cookie"].split(";"):
                name, _, value = part.strip().partition("=")
                if name in self._from_cookies and value:
                    found.append(value)
        if len(set(found)) > 1:
            raise MalformedToken("Multiple tokens provided")
        return found[0] if found else None

    def check(self, req: HttpRequest) -> JwtOutcome:
        try:
            token = self.token(req)
        except MalformedToken as exc:
            return JwtOutcome(401, message=str(exc))
        if token is None:
            return JwtOutcome(0) if self.allow_missing else JwtOutcome(401, message="Jwt is missing")
        try:
            claims = self.verifier.verify(token)
        except InvalidAudience:
            return JwtOutcome(403, token=token, message="Audiences in Jwt are not allowed")
        except InvalidToken as exc:
            return JwtOutcome(401, token=token, message=f"Jwt verification fails: {exc}")
        return JwtOutcome(0, claims, token)

    def needs_thread(self, req: HttpRequest) -> bool:
        """Whether checking this request may wait on the network (a remote key set and a token not cached)."""
        if not self.remote:
            return False
        try:
            token = self.token(req)
        except MalformedToken:
            return False
        return token is not None and not self.verifier.cached(token)

    def upstream(self, outcome: JwtOutcome) -> list[tuple[str, str]]:
        """The headers a verified request carries upstream (claim_to_headers, forward_payload_header)."""
        if outcome.claims is None:
            return []
        out = []
        for header, claim in self._claim_headers:
            value = claim_value(outcome.claims, claim)
            if value is not None:
                out.append((header, value))
        if self._payload_header and outcome.token:
            payload = outcome.token.split(".")[1]
            if self._pad:
                payload = base64.urlsafe_b64encode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))\
                    .decode()
            out.append((self._payload_header, payload))
        return out
