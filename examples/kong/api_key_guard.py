"""An example of your own Kong plugin on fastguard: a caller must send an API key (limited per key) and a valid JWT.

    fastguard kong-server api-key-guard --module examples/kong/api_key_guard.py --socket /usr/local/kong/akg.socket

It is a generator of PDK calls (`steps`), so `fastguard kong-server` runs it one step per RPC with no thread per
event, like the bundled plugins. Per request: one `get_headers`, then `set_headers` (allowed) or `error`/`exit`.
"""

from __future__ import annotations

from typing import Any

import fastguard as fg
from fastguard.kong import Field, PluginBase, Steps, header, json_exit, rate_limit_key


class Plugin(PluginBase):
    fields = (
        Field("key_header", "string", "x-api-key", help="the header holding the API key"),
        Field("per_minute", "integer", 600, between=(1, 10**9), help="requests per minute per API key"),
        Field("jwks", "string", required=True, help="a JWKS as JSON text"),
        Field("issuer", "string", required=True),
    )

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = cfg = self.checked(config)
        # shared by the instances Kong starts per nginx worker: one count per key, one token cache
        self.limiter = self.share(("limiter", cfg["per_minute"]), lambda: fg.RateLimiter(f"{cfg['per_minute']}/minute"))
        self.verifier = self.share(("verifier", cfg["jwks"], cfg["issuer"]),
                                   lambda: fg.JWTVerifier(fg.KeySet.from_jwks(cfg["jwks"]), issuer=cfg["issuer"]))

    def steps(self) -> Steps:
        headers = yield ("kong.request.get_headers", [])
        headers = {str(k).lower(): v for k, v in (headers or {}).items()}
        key = header(headers, self.config["key_header"])
        if not key:
            yield json_exit(401, "An API key is required")
            return
        decision = self.limiter.hit(rate_limit_key("api-key", key))
        if not decision.allowed:
            yield ("kong.response.error", [429, "API rate limit exceeded", decision.headers("kong")])
            return
        auth = header(headers, "authorization") or ""
        try:
            self.verifier.verify(auth[7:] if auth[:7].lower() == "bearer " else "")
        except fg.InvalidToken as exc:
            yield json_exit(401, f"Invalid token: {exc.code}", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            return
        yield ("kong.response.set_headers", [decision.headers("kong")])


Schema = Plugin.schema()
version = "1.0.0"
priority = 1000
