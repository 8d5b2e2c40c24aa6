"""The configuration of the three plugins: one declaration per field and per cross-field rule (the checks at
StartInstance and the schema Kong validates both come from it), and what a config turns into: Limits, a Redis URL.

Matched against Kong 3.10's `kong/plugins/rate-limiting/schema.lua`, `kong/plugins/jwt/schema.lua` and
`kong/tools/redis/schema.lua`, and Rate Limiting Advanced's documented fields. Everything the plugins would
refuse at start is expressed here, so Kong's Admin API refuses it first: nothing that Kong accepts makes an
instance fail to start (which Kong answers with a 500 on every request).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import fastguard as fg
from fastguard.kong.fields import ConfigError, Field
from fastguard.limits import MAX_COUNT, MAX_LIMITS, MAX_PERIOD_NS
from fastguard.ratelimit import MAX_SYNC_SECONDS

__all__ = ["WINDOWS", "MAX_LIMITS", "REDIS_FIELDS", "RATE_LIMITING_FIELDS", "JWT_FIELDS", "GUARD_FIELDS",
           "RATE_LIMITING_CHECKS", "JWT_CHECKS", "GUARD_CHECKS", "REDIS_SHORTHANDS", "normalize",
           "TIERS", "limits_from_config", "algorithm_from_config", "redis_url_from_config", "sync_interval"]

WINDOWS = (("second", 1), ("minute", 60), ("hour", 3600), ("day", 86_400), ("month", 30 * 86_400),
           ("year", 365 * 86_400))
# The bounds Kong's Admin API checks, from the core's own (fastguard.limits): a config Kong accepts must start.
# A RateLimiter takes at most MAX_LIMITS limits: the six windows and the `limit`/`window_size` pairs share them.
#: requests per window: above 0 (a fraction is rounded up), at most the core's largest count
COUNT_BOUNDS = (0, MAX_COUNT)
#: window_size, seconds: from one nanosecond to the core's longest period (100 years)
PERIOD_BOUNDS = (1e-9, MAX_PERIOD_NS / 1e9)
#: sync_rate, seconds: -1 (every decision in Redis) up to RateLimiter's longest sync interval
SYNC_RATE_BOUNDS = (-1, MAX_SYNC_SECONDS)

_PORT = (0, 65535)
REDIS_FIELDS = (
    Field("host", "string", help="standalone Redis host (or cluster_nodes, or sentinel_nodes)"),
    Field("port", "integer", 6379, between=_PORT),
    Field("timeout", "integer", 2000, between=(1, 2**31 - 2), help="connect and read timeout, ms"),
    Field("username", "string", referenceable=True),
    Field("password", "string", len_min=0, referenceable=True, encrypted=True),
    Field("database", "integer", 0, between=(0, 2**31 - 1)),
    Field("ssl", "boolean", False),
    Field("ssl_verify", "boolean", False, help="verify the server's certificate (Kong's default: false)"),
    Field("server_name", "string", help="TLS: the name sent as SNI and checked in the certificate"),
    Field("cluster_nodes", "array", element_fields=(Field("ip", "string", required=True),
                                                    Field("port", "integer", 6379, between=_PORT)),
          help="Redis Cluster: some masters, [{ip, port}] (or \"host:port\" strings)"),
    Field("sentinel_master", "string", help="Sentinel: the monitored service's name"),
    Field("sentinel_role", "string", "master", one_of=("master",), help="decisions need the master"),
    Field("sentinel_nodes", "array", element_fields=(Field("host", "string", required=True),
                                                     Field("port", "integer", 26379, between=_PORT)),
          help="Sentinel: the sentinels, [{host, port}]"),
)
#: Kong's deprecated flat forms of the redis record (`redis_host` -> `redis.host`, ...): plain fields in the schema
#: Kong reads (a shorthand needs a Lua function), moved into the record by normalize().
REDIS_SHORTHANDS = {"redis_host": "host", "redis_port": "port", "redis_password": "password",
                    "redis_username": "username", "redis_ssl": "ssl", "redis_ssl_verify": "ssl_verify",
                    "redis_server_name": "server_name", "redis_timeout": "timeout", "redis_database": "database"}
_SHORTHAND_FIELDS = tuple(  # the inner field's rules, without its default (an unset shorthand changes nothing)
    replace({f.name: f for f in REDIS_FIELDS}[inner], name=flat, default=None, help=f"deprecated: redis.{inner}")
    for flat, inner in REDIS_SHORTHANDS.items())

#: Fail closed (docs/kong.md): the plugin marks the requests it lets through, a post-function refuses the others.
APPROVAL_MARK = Field("approval_mark", "string", help="set kong.ctx.shared[<this>] = true on the requests it lets "
                                                      "through (a post-function refuses the others: fail closed)")
_IDENTIFIERS = ("consumer", "credential", "ip", "service", "header", "path")
#: Limits per tier: each tier's windows replace the plugin's own for the callers of that tier (tier_claim in the
#: fastguard plugin, tier_by in fastguard-rate-limiting); everyone else keeps the plugin's.
TIERS = Field("tiers", "array", len_max=64, element_fields=(
    Field("value", "string", required=True, help="the tier_claim / tier_by value of this tier"),
    *(Field(name, "number", gt=0, between=COUNT_BOUNDS) for name, _ in WINDOWS)),
    help="per tier value, the windows that replace the plugin's own (which stay the limits of any other value)")
RATE_LIMITING_FIELDS = (
    *(Field(name, "number", gt=0, between=COUNT_BOUNDS, help=f"requests per {name}") for name, _ in WINDOWS),
    Field("limit_by", "string", "consumer", one_of=_IDENTIFIERS),
    Field("header_name", "string"),
    Field("path", "string", match_any=("^/",)),
    Field("policy", "string", "local", one_of=("local", "redis")),
    Field("fault_tolerant", "boolean", True, required=True),
    Field("hide_client_headers", "boolean", False, required=True),
    Field("error_code", "number", 429, between=(100, 599)),
    Field("error_message", "string", "API rate limit exceeded"),
    Field("sync_rate", "number", -1, required=True, between=SYNC_RATE_BOUNDS,
          help="-1: every decision in Redis; > 0: decide locally, sync every N s (at least 0.02)"),
    Field("redis", "record", fields=REDIS_FIELDS),
    *_SHORTHAND_FIELDS,
    # Rate Limiting Advanced's fields, for configs migrating from it
    Field("limit", "array", elements="number", element_gt=0, element_between=COUNT_BOUNDS, len_max=MAX_LIMITS,
          help="RLA: requests per window_size[i]"),
    Field("window_size", "array", elements="number", element_gt=0, element_between=PERIOD_BOUNDS,
          len_max=MAX_LIMITS,
          help="RLA: window lengths in seconds"),
    Field("window_type", "string", one_of=("sliding", "fixed"),
          help="RLA: sliding (its default when limit is set) or fixed; wins over algorithm"),
    Field("namespace", "string", help="instances with the same namespace share their counts"),
    Field("retry_after_jitter_max", "number", 0, between=(0, 86_400),
          help="seconds of random jitter added to Retry-After"),
    Field("identifier", "string", one_of=_IDENTIFIERS,
          help="RLA's name of limit_by (wins over it; header or path without header_name / path: by IP)"),
    Field("tier_by", "string", one_of=("consumer_id", "consumer_username", "consumer_custom_id"),
          help="the consumer's value that picks a tier's limits"),
    TIERS,
    # fastguard's own
    APPROVAL_MARK,
    Field("algorithm", "string", "fixed_window", one_of=fg.ALGORITHMS),
    Field("max_keys", "integer", 1_000_000, between=(1, 2**40)),
    Field("ban_after", "integer", 0, between=(0, 2**40),
          help="denials within the shortest window that ban the caller (0: no bans)"),
    Field("ban_for", "number", 0, between=(0, 100 * 365 * 86_400), help="seconds a ban lasts"),
    Field("ban_status", "integer", 429, between=(100, 599), help="status of a refusal during a ban"),
)


def _redis_checks() -> tuple[dict[str, Any], ...]:
    return (
        {"conditional_at_least_one_of": {
            "if_field": "config.policy", "if_match": {"eq": "redis"},
            "then_at_least_one_of": ["config.redis.host", "config.redis_host", "config.redis.cluster_nodes",
                                     "config.redis.sentinel_nodes"]}},
        {"mutually_exclusive": ["config.redis.host", "config.redis.cluster_nodes", "config.redis.sentinel_nodes"]},
        # the flat redis_host becomes redis.host at start (normalize): Kong must refuse it beside the others too
        {"mutually_exclusive": ["config.redis_host", "config.redis.cluster_nodes"]},
        {"mutually_exclusive": ["config.redis_host", "config.redis.sentinel_nodes"]},
        {"mutually_required": ["config.redis.sentinel_nodes", "config.redis.sentinel_master"]},
        {"conditional": {"if_field": "config.policy", "if_match": {"ne": "redis"},
                         "then_field": "config.sync_rate", "then_match": {"eq": -1},
                         "then_err": "sync_rate can only be used with the redis policy"}},
        {"conditional": {"if_field": "config.ban_after", "if_match": {"gt": 0},
                         "then_field": "config.ban_for", "then_match": {"gt": 0},
                         "then_err": "ban_after needs ban_for: how many seconds a ban lasts"}},
    )


def _limit_checks() -> tuple[dict[str, Any], ...]:
    # limit[i] pairs with window_size[i]: equal lengths, written as one conditional per length (Kong's entity
    # checks compare a field with a constant, not with another field); the windows or the pairs, not both (a
    # limiter holds at most 8 limits).
    return (
        {"at_least_one_of": [*(f"config.{name}" for name, _ in WINDOWS), "config.limit"]},
        {"mutually_exclusive_sets": {"set1": [f"config.{name}" for name, _ in WINDOWS], "set2": ["config.limit"]}},
        {"mutually_required": ["config.limit", "config.window_size"]},
        *({"conditional": {"if_field": "config.limit", "if_match": {"len_eq": n},
                           "then_field": "config.window_size", "then_match": {"len_eq": n},
                           "then_err": "limit and window_size must have the same number of entries"}}
          for n in range(1, MAX_LIMITS + 1)),
    )


RATE_LIMITING_CHECKS = (
    *_limit_checks(),
    {"conditional": {"if_field": "config.limit_by", "if_match": {"eq": "header"},
                     "then_field": "config.header_name", "then_match": {"required": True}}},
    {"conditional": {"if_field": "config.limit_by", "if_match": {"eq": "path"},
                     "then_field": "config.path", "then_match": {"required": True}}},
    *_redis_checks(),
    {"mutually_required": ["config.tier_by", "config.tiers"]},
)

JWT_FIELDS = (
    Field("uri_param_names", "set", ("jwt",), elements="string"),
    Field("cookie_names", "set", (), elements="string"),
    Field("header_names", "set", ("authorization",), elements="string"),
    Field("claims_to_verify", "set", elements="string", element_one_of=("exp", "nbf")),
    Field("key_claim_name", "string", "iss"),
    Field("secret_is_base64", "boolean", False, required=True,
          help="the k of each oct key in jwks is Kong's base64 secret text"),
    Field("maximum_expiration", "number", 0, between=(0, 31_536_000)),
    Field("anonymous", "string", help="consumer id or username to use when authentication fails"),
    Field("run_on_preflight", "boolean", True, required=True),
    Field("realm", "string", help="realm of the WWW-Authenticate header"),
    Field("jwks_uri", "string", match_any=("^https?://",), help="URL of a JWKS, refreshed in the background"),
    Field("jwks", "string", help="a JWKS as JSON text"),
    Field("issuers", "set", elements="string"),
    Field("audiences", "set", elements="string"),
    Field("leeway", "number", 0, between=(0, 3600)),
    Field("algorithms", "set", elements="string", element_one_of=tuple(sorted(fg.jwks.ALGORITHMS))),
    Field("claims_to_headers", "map", elements="string", help="claim name -> upstream request header"),
    Field("cache_size", "integer", 100_000, between=(0, 10_000_000)),
    APPROVAL_MARK,
    Field("consumer_claim", "string", help="the verified claim naming the Kong consumer the request is made"),
    Field("consumer_by", "string", "username", one_of=("id", "username"),
          help="consumer_claim holds a consumer id, or an id or a username (Kong's load_consumer)"),
    Field("consumer_cache_ttl", "number", 10, between=(0, 3600),
          help="seconds a consumer lookup is reused (0: every request asks Kong)"),
)
JWT_CHECKS = (
    # exactly one (Kong's only_one_of would refuse the one left out as "required field missing")
    {"at_least_one_of": ["config.jwks", "config.jwks_uri"]},
    {"mutually_exclusive": ["config.jwks", "config.jwks_uri"]},
    {"conditional": {"if_field": "config.maximum_expiration", "if_match": {"gt": 0},
                     "then_field": "config.claims_to_verify", "then_match": {"contains": "exp"}}},
)

_NOT_IN_GUARD = ("limit_by", "header_name", "path", "identifier", "tier_by", "approval_mark")  # (its JWT copy)
GUARD_FIELDS = (*JWT_FIELDS, *(f for f in RATE_LIMITING_FIELDS if f.name not in _NOT_IN_GUARD),
                Field("limit_by_claim", "string", "sub", help="the verified claim that names the caller"),
                Field("tier_claim", "string", help="the verified claim whose value picks a tier's limits"))
GUARD_CHECKS = (*JWT_CHECKS, *_limit_checks(), *_redis_checks(),
                {"mutually_required": ["config.tier_claim", "config.tiers"]})


def normalize(config: Any) -> Any:
    """Kong's flat `redis_*` forms moved into the redis record (they win, as Kong's shorthands do), and Redis
    Cluster nodes given as "host:port" strings as the {ip, port} records Kong's schema declares."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    redis = dict(out["redis"]) if isinstance(out.get("redis"), dict) else out.get("redis")
    for flat, inner in REDIS_SHORTHANDS.items():
        value = out.get(flat)
        if value is not None and (redis is None or isinstance(redis, dict)):
            redis = redis if redis is not None else {}
            redis[inner] = value
    if isinstance(redis, dict) and isinstance(redis.get("cluster_nodes"), list):
        nodes = []
        for node in redis["cluster_nodes"]:
            if isinstance(node, str):
                host, sep, port = node.rpartition(":")
                if not sep or not host or not port.isdigit():
                    raise ConfigError("redis.cluster_nodes", f"expected host:port or {{ip, port}}, got {node!r}")
                node = {"ip": host.strip("[]"), "port": int(port)}
            nodes.append(node)
        redis["cluster_nodes"] = nodes
    if redis is not None:
        out["redis"] = redis
    return out


def limits_from_config(cfg: dict[str, Any]) -> list[fg.Limit]:
    """The windows (second ... year) and the RLA pairs (limit[i] per window_size[i] s). A count that is not whole
    is rounded up, as Kong's comparison `limit - usage > 0` admits; a longer window may allow fewer requests than
    a shorter one (Kong's own plugin refuses that with a check its schema cannot pass on): every limit holds."""
    limits = [fg.Limit(math.ceil(cfg[name]), seconds) for name, seconds in WINDOWS if cfg.get(name) is not None]
    for count, size in zip(cfg.get("limit") or (), cfg.get("window_size") or (), strict=True):
        limits.append(fg.Limit(math.ceil(count), size))
    return limits


def algorithm_from_config(cfg: dict[str, Any]) -> str:
    """RLA's window_type when set (sliding is its default once `limit` is used), else `algorithm`."""
    window_type = cfg.get("window_type") or ("sliding" if cfg.get("limit") else None)
    if window_type is None:
        return cfg["algorithm"]
    return "sliding_window" if window_type == "sliding" else "fixed_window"


def sync_interval(cfg: dict[str, Any]) -> float | None:
    """Kong's sync_rate: -1 (or anything not above 0) decides every request in Redis; above 0 it is the sync
    interval in seconds, at least 0.02 (Kong's floor, which its schema cannot state: a lower value is raised)."""
    rate = cfg["sync_rate"]
    if cfg["policy"] != "redis" or rate is None or not rate > 0:
        return None
    return max(0.02, float(rate))


def redis_url_from_config(r: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The Redis URL of a redis record and the client options it needs: Kong's ssl_verify (false: no
    certificate check, Kong's default) and server_name (SNI, standalone only)."""
    auth = ""
    if r.get("password") is not None:
        auth = f"{quote(r.get('username') or '', safe='')}:{quote(r['password'], safe='')}@"
    scheme = "rediss" if r["ssl"] else "redis"
    options: dict[str, Any] = {}
    if r["ssl"] and not r["ssl_verify"]:
        options["ssl_cert_reqs"] = "none"
    if r.get("cluster_nodes"):
        nodes = ",".join(f"[{n['ip']}]:{n['port']}" if ":" in n["ip"] else f"{n['ip']}:{n['port']}"
                         for n in r["cluster_nodes"])
        return f"{scheme}+cluster://{auth}{nodes}", options
    if r.get("sentinel_nodes"):
        nodes = ",".join(f"{n['host']}:{n['port']}" for n in r["sentinel_nodes"])
        return f"{scheme}+sentinel://{auth}{nodes}/{quote(r['sentinel_master'], safe='')}/{r['database']}", options
    if r.get("server_name") and r["ssl"]:
        options["server_name"] = r["server_name"]
    host = f"[{r['host']}]" if ":" in r["host"] else r["host"]
    return f"{scheme}://{auth}{host}:{r['port']}/{r['database']}", options
