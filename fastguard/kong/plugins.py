"""The three Kong plugins: fastguard-rate-limiting, fastguard-jwt and fastguard (JWT, then a rate limit by the
verified subject or a chosen claim, in one event).

Each plugin's request logic is a generator of PDK calls: it yields `(method, args)` and receives what Kong
answered. `fastguard kong-server` runs that generator directly, one step per RPC (no thread per event); the
`access(kong)` method drives the same generator through kong-pdk's `kong` object, so the modules also load
unchanged in the stock `kong-python-pluginserver -d DIR` (see fastguard/kong/plugins/).

Round trips (PDK calls per event, allow path / refusal; docs/kong.md has the full table):
  rate limiting: 2 / 2 (the caller's identity, then set_headers or exit); 1 on the allow path with
      hide_client_headers; limit_by consumer without a consumer adds Kong's fallbacks (get_credential,
      get_forwarded_ip).
  jwt: 1 / 2 (get_headers, then nothing or exit); +1 get_query when the token is in the query string, +1
      service.request.set_headers with claims_to_headers, +1 get_method when run_on_preflight is false.
  fastguard (both): 2 / 2 (get_headers, then set_headers or exit); +1 with claims_to_headers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Generator
from http.cookies import SimpleCookie
from typing import Any

import fastguard as fg
from fastguard.kong.fields import ConfigError, Field, check, kong_schema

__all__ = ["RateLimitingPlugin", "JWTPlugin", "GuardPlugin", "PLUGINS", "PDKError", "drive", "TERMINAL"]

log = logging.getLogger("fastguard.kong")

PDKCall = tuple[str, list[Any]]
Steps = Generator[PDKCall, Any, None]
#: PDK calls after which Kong sends nothing more for the event.
TERMINAL = frozenset(("kong.response.exit", "kong.response.error"))


class PDKError(Exception):
    """Kong answered a PDK call with an error (StepError)."""


# -- configuration ------------------------------------------------------------------------------------------------
WINDOWS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86_400), ("month", 30 * 86_400),
           ("year", 365 * 86_400))

REDIS_FIELDS = (
    Field("host", "string", help="standalone Redis host (or use cluster_nodes)"),
    Field("port", "integer", 6379, between=(0, 65535)),
    Field("timeout", "integer", 2000, between=(1, 2**31 - 1), help="connect and read timeout, ms"),
    Field("username", "string"),
    Field("password", "string"),
    Field("database", "integer", 0, between=(0, 2**31 - 1)),
    Field("ssl", "boolean", False),
    Field("ssl_verify", "boolean", False),
    Field("server_name", "string"),
    Field("cluster_nodes", "array", elements="string", help="Redis Cluster: host:port of some masters"),
)

RATE_LIMITING_FIELDS = (
    *(Field(name, "number", help=f"requests per {name}") for name, _ in WINDOWS),
    Field("limit_by", "string", "consumer", one_of=("consumer", "credential", "ip", "service", "header", "path")),
    Field("header_name", "string"),
    Field("path", "string"),
    Field("policy", "string", "local", one_of=("local", "redis")),
    Field("fault_tolerant", "boolean", True),
    Field("hide_client_headers", "boolean", False),
    Field("error_code", "number", 429, between=(100, 599)),
    Field("error_message", "string", "API rate limit exceeded"),
    Field("sync_rate", "number", -1, help="-1: every decision in Redis; > 0: decide locally, sync every N s"),
    Field("redis", "record", fields=REDIS_FIELDS),
    Field("algorithm", "string", "fixed_window", one_of=fg.ALGORITHMS),
    Field("max_keys", "integer", 1_000_000, between=(1, 2**40)),
    Field("ban_after", "integer", 0, between=(0, 2**40),
          help="denials within the shortest window that ban the caller (0: no bans)"),
    Field("ban_for", "number", 0, between=(0, 100 * 365 * 86_400), help="seconds a ban lasts"),
    Field("ban_status", "integer", 429, between=(100, 599), help="status of a refusal during a ban"),
)

JWT_FIELDS = (
    Field("uri_param_names", "set", ("jwt",), elements="string"),
    Field("cookie_names", "set", (), elements="string"),
    Field("header_names", "set", ("authorization",), elements="string"),
    Field("claims_to_verify", "set", elements="string", element_one_of=("exp", "nbf")),
    Field("key_claim_name", "string", "iss"),
    Field("secret_is_base64", "boolean", False),
    Field("maximum_expiration", "number", 0, between=(0, 31_536_000)),
    Field("anonymous", "string"),
    Field("run_on_preflight", "boolean", True),
    Field("jwks_uri", "string", help="HTTPS URL of a JWKS, refreshed in the background"),
    Field("jwks", "string", help="a JWKS as JSON text"),
    Field("issuers", "set", elements="string"),
    Field("audiences", "set", elements="string"),
    Field("leeway", "number", 0, between=(0, 3600)),
    Field("algorithms", "set", elements="string", element_one_of=tuple(sorted(fg.jwks.ALGORITHMS))),
    Field("claims_to_headers", "map", elements="string", help="claim name -> upstream request header"),
    Field("cache_size", "integer", 100_000, between=(0, 10_000_000)),
)

GUARD_FIELDS = (*JWT_FIELDS, *(f for f in RATE_LIMITING_FIELDS if f.name not in ("limit_by", "header_name", "path")),
                Field("limit_by_claim", "string", "sub", help="the verified claim that names the caller"))


def _limits(cfg: dict[str, Any]) -> list[fg.Limit]:
    limits, previous = [], None
    for name, seconds in WINDOWS:
        value = cfg.get(name)
        if value is None:
            continue
        if value <= 0 or value != int(value):
            raise ConfigError(name, f"a limit must be a whole number of requests above 0, got {value!r}")
        if previous is not None and value < previous[1]:
            # Kong's own rule: a longer window may not have a lower limit than a shorter one.
            raise ConfigError(name, f"the limit for {name} ({value:g}) cannot be lower than the limit for "
                                    f"{previous[0]} ({previous[1]:g})")
        previous = (name, value)
        limits.append(fg.Limit(int(value), seconds))
    if not limits:
        raise ConfigError("second", "at least one of these fields must be set: " + ", ".join(n for n, _ in WINDOWS))
    return limits


def _redis_url(r: dict[str, Any]) -> str:
    from urllib.parse import quote

    auth = ""
    if r.get("password") is not None:
        auth = f"{quote(r.get('username') or '', safe='')}:{quote(r['password'], safe='')}@"
    if r.get("cluster_nodes"):
        for node in r["cluster_nodes"]:
            host, sep, port = node.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError("redis.cluster_nodes", f"expected host:port, got {node!r}")
        return f"{'rediss' if r['ssl'] else 'redis'}+cluster://{auth}{','.join(r['cluster_nodes'])}"
    if not r.get("host"):
        raise ConfigError("redis.host", "policy redis needs redis.host or redis.cluster_nodes")
    return f"{'rediss' if r['ssl'] else 'redis'}://{auth}{r['host']}:{r['port']}/{r['database']}"


# -- process-wide state: shared by every instance of one plugin entity (Kong starts one per nginx worker) ----------
class Registry:
    """Limiters and verifiers by (plugin entity, the settings that give them their state). A config change that
    keeps those settings keeps the state; instances are counted, and the last close lets the state go."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[Any, ...], list[Any]] = {}  # key -> [object, users]

    def acquire(self, key: tuple[Any, ...], make: Any) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                item = self._items[key] = [make(), 0]
            item[1] += 1
            return item[0]

    def release(self, key: tuple[Any, ...]) -> None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return
            item[1] -= 1
            if item[1] <= 0:
                del self._items[key]
                close = getattr(item[0], "close", None)
                if close is not None:
                    close()

    def __len__(self) -> int:
        return len(self._items)


REGISTRY = Registry()
#: Set by `fastguard kong-server --metrics-port`: fastguard.metrics.track, called for each shared limiter/verifier.
TRACK: Any = None


def _entity(config: dict[str, Any]) -> str:
    """The plugin entity an instance belongs to: Kong's `__plugin_id`, else `__key__`, else the scope ids."""
    for name in ("__plugin_id", "__key__"):
        if config.get(name):
            return str(config[name])
    return "|".join(str(config.get(n) or "") for n in ("route_id", "service_id", "consumer_id")) or "global"


# -- the parts every plugin shares ---------------------------------------------------------------------------------
def _header(headers: dict[str, Any], name: str) -> str | None:
    """A header from kong.request.get_headers() (names in lower case; values strings or lists)."""
    value = headers.get(name.lower())
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def _key(kind: str, value: Any) -> bytes:
    """A rate-limit key from a value Kong sent. Kong's strings are bytes (the plugin server decodes them with
    surrogateescape), so a key is made of those bytes, whatever they are: undecodable bytes still name a caller."""
    text = value if isinstance(value, str) else "" if value is None else json.dumps(value, separators=(",", ":"))
    return kind.encode() + b":" + text.encode("utf-8", "surrogateescape")


def _json_exit(status: int, message: Any, headers: dict[str, str] | None = None) -> PDKCall:
    body = message if isinstance(message, dict) else {"message": message}
    return ("kong.response.exit", [int(status), body, headers or {}])


class _Limiting:
    """The rate-limiting half: a shared RateLimiter and the Kong-style answer to a Decision."""

    def __init__(self, cfg: dict[str, Any], entity: str) -> None:
        limits = _limits(cfg)
        self.error_code = int(cfg["error_code"])
        self.error_message = cfg["error_message"]
        self.hide = cfg["hide_client_headers"]
        self.fault_tolerant = cfg["fault_tolerant"]
        url = None
        sync = None
        if cfg["policy"] == "redis":
            url = _redis_url(cfg["redis"])
            sync = cfg["sync_rate"] if cfg["sync_rate"] and cfg["sync_rate"] > 0 else None
        if cfg["ban_after"] and not cfg["ban_for"]:
            raise ConfigError("ban_for", "ban_after needs ban_for: how many seconds a ban lasts")
        self.ban_status = int(cfg["ban_status"])
        self._key = ("limiter", entity, cfg["algorithm"], tuple((x.count, x.period_ns) for x in limits), url, sync,
                     cfg["max_keys"], self.fault_tolerant, cfg["ban_after"], cfg["ban_for"])
        timeout = cfg["redis"]["timeout"] / 1000

        def make() -> fg.RateLimiter:
            store = None
            if url is not None:
                from fastguard.redis import RedisStore

                store = RedisStore.from_url(url, timeout=timeout, connect_timeout=timeout,
                                            prefix=f"fg-kong-{entity}".replace(" ", "_").replace("{", "(")
                                            .replace("}", ")"))
            return fg.RateLimiter(limits, algorithm=cfg["algorithm"], max_keys=cfg["max_keys"], store=store,
                                  sync=sync, on_error="allow" if self.fault_tolerant else "deny",
                                  ban_after=cfg["ban_after"], ban_for=cfg["ban_for"])

        self.limiter: fg.RateLimiter = REGISTRY.acquire(self._key, make)
        if TRACK is not None:
            TRACK(self.limiter, entity)

    def close(self) -> None:
        REGISTRY.release(self._key)

    def fault_answer(self) -> PDKCall | None:
        """The answer when the event cannot be decided: pass (fault_tolerant) or 500."""
        return None if self.fault_tolerant else _json_exit(500, "An unexpected error occurred")

    def answer(self, key: bytes) -> PDKCall | None:
        """The PDK call that ends the rate-limit part: exit when refused, set_headers when allowed (None when the
        headers are hidden)."""
        d = self.limiter.hit(key)
        if not d.allowed:
            if not self.fault_tolerant and not self.limiter.store_up:
                return _json_exit(500, "An unexpected error occurred")
            headers = {} if self.hide else d.headers("kong")
            if "Retry-After" not in headers and d.retry_after != float("inf"):
                headers["Retry-After"] = str(max(1, int(-(-d.retry_after // 1))))
            if d.banned:  # Retry-After: what is left of the ban
                return _json_exit(self.ban_status, self.error_message, headers)
            return _json_exit(self.error_code, self.error_message, headers)
        if self.hide:
            return None
        return ("kong.response.set_headers", [d.headers("kong")])


_JWT_MESSAGES = {
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


class _Verifying:
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

        self.verifier: fg.JWTVerifier = REGISTRY.acquire(self._key, make)
        if TRACK is not None:
            TRACK(self.verifier, entity)

    def close(self) -> None:
        REGISTRY.release(self._key)

    def token_steps(self) -> Generator[PDKCall, Any, tuple[str | None, dict[str, Any]]]:
        """Read the token: (token or None, headers). One get_headers, plus get_query only when needed."""
        headers = yield ("kong.request.get_headers", [])
        headers = {str(k).lower(): v for k, v in (headers or {}).items()}
        cookies = None
        if self.cookie_names:
            raw = _header(headers, "cookie")
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
            return _json_exit(401, "Unauthorized", {"WWW-Authenticate": auth})
        message: Any = str(exc) if str(exc) == "Multiple tokens provided" else _JWT_MESSAGES.get(exc.code)
        if exc.code == "missing_claim":
            message = _missing_claim_message(exc)
        return _json_exit(401, message or "Invalid token", {"WWW-Authenticate": auth})

    def check(self, token: str) -> dict[str, Any]:
        claims = self.verifier.verify(token)
        if self.key_claim and self.key_claim not in claims:
            raise fg.MissingClaim(f"missing claim '{self.key_claim}'")
        if self.max_exp and isinstance(claims.get("exp"), (int, float)) and claims["exp"] - time.time() > self.max_exp:
            raise _TooLong()
        return dict(claims)

    def verified(self) -> Generator[PDKCall, Any, tuple[dict[str, Any] | None, PDKCall | None]]:
        """Read and verify the request's token: (claims, None), or (None, the 401 that refuses it)."""
        try:
            token, _ = yield from self.token_steps()
        except fg.InvalidToken as exc:
            return None, self.refusal(exc, True)
        if token is None:
            return None, self.refusal(None, False)
        try:
            return self.check(token), None
        except _TooLong:
            return None, _json_exit(401, {"exp": "exceeds maximum allowed expiration"},
                                    {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        except fg.InvalidToken as exc:
            return None, self.refusal(exc, True)

    def upstream_headers(self, claims: dict[str, Any]) -> dict[str, str]:
        out = {}
        for claim, header in self.claims_to_headers.items():
            value = claims.get(claim)
            if value is not None:
                out[header] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return out


class _TooLong(fg.InvalidClaim):
    code = "claim"

    def __init__(self) -> None:
        super().__init__("exceeds maximum allowed expiration")


def _missing_claim_message(exc: fg.InvalidToken) -> str:
    """Kong's wording, from ours ("the exp claim is required", "missing claim 'sub'")."""
    text = str(exc)
    if text.count("'") >= 2:
        name = text.split("'")[1]
    elif text.startswith("the ") and " claim" in text:
        name = text[4:text.index(" claim")]
    else:
        return "Invalid claims"
    return f"No mandatory '{name}' in claims"


def _failed(exc: BaseException, status: int) -> PDKCall:
    """Any unexpected error: an explicit answer, never a silent pass (Kong fails open when a plugin errors)."""
    log.error("fastguard plugin error, answering %d: %r", status, exc, exc_info=exc)
    return _json_exit(status, "An unexpected error occurred")


class _Base:
    """kong-pdk's plugin contract: Plugin(config), one method per phase taking the `kong` PDK object."""

    fields: tuple[Field, ...] = ()

    def steps(self) -> Steps:  # pragma: no cover - every plugin defines it
        raise NotImplementedError

    def fault_answer(self) -> PDKCall | None:
        """What ends an event the server could not finish (a step it cannot encode, an error outside the plugin's
        own handling): an explicit 500, never a silent pass. None means pass the request on."""
        return _json_exit(500, "An unexpected error occurred")

    def access(self, kong: Any) -> None:
        """The access phase under any kong-pdk server: drive `steps()` through the `kong` object."""
        drive(self.steps(), kong)

    @classmethod
    def schema(cls) -> list[dict[str, Any]]:
        return kong_schema(cls.fields)


class RateLimitingPlugin(_Base):
    """fastguard-rate-limiting: Kong's rate-limiting config and answers, plus algorithm, Redis Cluster, sync_rate."""

    fields = RATE_LIMITING_FIELDS

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = check(self.fields, config)
        if cfg["limit_by"] == "header" and not cfg["header_name"]:
            raise ConfigError("header_name", "limit_by header needs header_name")
        if cfg["limit_by"] == "path" and not cfg["path"]:
            raise ConfigError("path", "limit_by path needs path")
        self.config = cfg
        self.limit_by = cfg["limit_by"]
        self.part = _Limiting(cfg, _entity(cfg))

    def close(self) -> None:
        self.part.close()

    def fault_answer(self) -> PDKCall | None:
        return self.part.fault_answer()

    def steps(self) -> Steps:
        try:
            key = yield from self._identifier()
            if key is None:
                return  # limit_by path on another path: not limited
            answer = self.part.answer(key)
        except PDKError as exc:
            answer = None if self.part.fault_tolerant else _failed(exc, 500)
            log.warning("fastguard-rate-limiting: PDK error %s", exc)
        except Exception as exc:  # noqa: BLE001 - every error gets an explicit answer
            answer = None if self.part.fault_tolerant else _failed(exc, 500)
            if self.part.fault_tolerant:
                log.error("fastguard-rate-limiting: %r (fault_tolerant: request allowed)", exc, exc_info=exc)
        if answer is not None:
            yield answer

    def _identifier(self) -> Generator[PDKCall, Any, bytes | None]:
        by = self.limit_by
        if by in ("consumer", "credential"):
            if by == "consumer":
                consumer = yield ("kong.client.get_consumer", [])
                if isinstance(consumer, dict) and consumer.get("id"):
                    return _key("consumer", consumer["id"])
            credential = yield ("kong.client.get_credential", [])
            if isinstance(credential, dict) and credential.get("id"):
                return _key("credential", credential["id"])
            by = "ip"  # Kong's fallback
        if by == "ip":
            ip = yield ("kong.client.get_forwarded_ip", [])
            return _key("ip", ip)
        if by == "service":
            service = yield ("kong.router.get_service", [])
            return _key("service", service.get("id") if isinstance(service, dict) else "")
        if by == "header":
            value = yield ("kong.request.get_header", [self.config["header_name"]])
            return _key("header", value or "")
        path = yield ("kong.request.get_path", [])
        return _key("path", path) if path == self.config["path"] else None


class JWTPlugin(_Base):
    """fastguard-jwt: Kong's jwt config and 401 answers, plus JWKS, issuers, audiences, leeway, claims_to_headers."""

    fields = JWT_FIELDS

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = check(self.fields, config)
        self.part = _Verifying(self.config, _entity(self.config))

    def close(self) -> None:
        self.part.close()

    def steps(self) -> Steps:
        try:
            if not self.part.preflight:
                method = yield ("kong.request.get_method", [])
                if method == "OPTIONS":
                    return
            answer = yield from self._verify()
        except PDKError as exc:
            answer = _failed(exc, 500)
        except Exception as exc:  # noqa: BLE001 - fail closed
            answer = _failed(exc, 500)
        if answer is not None:
            yield answer

    def _verify(self) -> Generator[PDKCall, Any, PDKCall | None]:
        claims, refusal = yield from self.part.verified()
        if claims is None:
            return refusal
        upstream = self.part.upstream_headers(claims)
        return ("kong.service.request.set_headers", [upstream]) if upstream else None


class GuardPlugin(JWTPlugin):
    """fastguard: verify the JWT, then rate-limit by a verified claim (`limit_by_claim`, default sub)."""

    fields = GUARD_FIELDS

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = check(self.fields, config)
        self.config = cfg
        entity = _entity(cfg)
        self.part = _Verifying(cfg, entity)
        try:
            self.limiting = _Limiting(cfg, entity)
        except BaseException:
            self.part.close()
            raise

    def close(self) -> None:
        self.part.close()
        self.limiting.close()

    def _verify(self) -> Generator[PDKCall, Any, PDKCall | None]:
        claims, refusal = yield from self.part.verified()
        if claims is None:
            return refusal
        who = claims.get(self.config["limit_by_claim"])
        if who is None:
            return self.part.refusal(fg.MissingClaim(f"missing claim '{self.config['limit_by_claim']}'"), True)
        answer = self.limiting.answer(_key("claim", who))
        upstream = self.part.upstream_headers(claims)
        if answer is not None and answer[0] in TERMINAL:
            return answer
        if upstream:
            if answer is not None:
                yield answer
            return ("kong.service.request.set_headers", [upstream])
        return answer


PLUGINS: dict[str, type[_Base]] = {
    "fastguard-rate-limiting": RateLimitingPlugin,
    "fastguard-jwt": JWTPlugin,
    "fastguard": GuardPlugin,
}
#: Kong's priorities of the bundled plugins ours extend (jwt before rate-limiting).
PRIORITIES = {"fastguard-rate-limiting": 910, "fastguard-jwt": 1450, "fastguard": 1450}


def drive(steps: Steps, kong: Any) -> None:
    """Run a plugin's steps through kong-pdk's `kong` object (any kong-pdk server). Handles both return styles
    of kong-pdk: Lua-style `(data, err)` tuples and plain values with PDKException."""
    try:
        call = next(steps)
        while True:
            method, args = call
            target = kong
            for part in method.split(".")[1:]:
                target = getattr(target, part)
            try:
                out = target(*args)
            except Exception as exc:  # noqa: BLE001 - kong-pdk's PDKException in Python-style mode
                call = steps.throw(PDKError(str(exc)))
                continue
            if method in TERMINAL:
                steps.close()
                return
            if isinstance(out, tuple) and len(out) == 2:  # Lua style
                data, err = out
                if err:
                    call = steps.throw(PDKError(str(err)))
                    continue
                out = data
            call = steps.send(out)
    except StopIteration:
        return
