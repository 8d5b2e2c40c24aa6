"""The configuration fields of the three plugins (one declaration each: checks and Kong schema come from it),
and what a rate-limiting config turns into: Limits and a Redis URL."""

from __future__ import annotations

from typing import Any

import fastguard as fg
from fastguard.kong.fields import ConfigError, Field

__all__ = ["WINDOWS", "REDIS_FIELDS", "RATE_LIMITING_FIELDS", "JWT_FIELDS", "GUARD_FIELDS", "limits_from_config",
           "redis_url_from_config"]

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


def limits_from_config(cfg: dict[str, Any]) -> list[fg.Limit]:
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


def redis_url_from_config(r: dict[str, Any]) -> str:
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
