"""The schema Kong validates and the plugins' start-time checks agree: no configuration that Kong's Admin API
accepts (checked by tests/support/kong_schema.py, written from Kong 3.10's schema code) fails when the plugin
starts. Configurations are generated from the dumped schema itself, biased towards the values the rules turn on."""

from __future__ import annotations

import functools
import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.kong_schema import KONG_DOCS_EXAMPLES, Refused, kong_validate

from fastguard.kong import plugins
from fastguard.kong.fields import ConfigError
from fastguard.kong.server import FastguardPluginServer
from fastguard.testing.tokens import jwk

JWKS = json.dumps({"keys": [jwk("oct", kid="k1")]})
STRINGS = ["", "x", "header", "consumer", "path", "sliding", "fixed", "master", "/orders", "orders",
           "https://127.0.0.1:1/jwks", "http://127.0.0.1:1/jwks", "ftp://x", "127.0.0.1", "127.0.0.1:7000",
           "X-Consumer", "sub", "tier", JWKS, '{"keys": []}', "not json"]
NUMBERS = [-1, 0, 0.01, 0.02, 0.5, 1, 2, 5, 60, 1.5, 429, 503, 3600, 1e9]
INTEGERS = [0, 1, 2, 429, 6379, 70000, 2**41]


@functools.cache
def dump(name: str) -> dict:
    server = FastguardPluginServer(name)
    return server.get_plugin_info(name)["Schema"]


def _fits(spec: dict, v) -> bool:
    try:
        kong_validate({"fields": [{"config": {"type": "record", "fields": [{"f": spec}]}}]}, {"f": v})
    except Refused:
        return False
    return True


#: Far past any sensible bound: a field Kong leaves unbounded must still start with these (it did not: a
#: window of 1e17 requests, a year of 1e16, a window_size of 1e10 s, a sync_rate of 5000 passed Kong and failed).
HUGE = [5000, 1e10, 1e16, 1e17, 2**53, 2**53 + 2, 1e300]


def edges(spec: dict) -> list:
    """Each bound the dumped field states, the numbers on it and just past it on both sides."""
    out = []
    for bound in [*spec.get("between", ()), *([spec["gt"]] if "gt" in spec else [])]:
        out += [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf), bound + 1, bound - 1]
    if spec["type"] == "integer":
        out = [int(v) for v in out if float(v).is_integer()]
    return out


def values(spec: dict, name: str = "") -> st.SearchStrategy:
    """Mostly values the field accepts (so whole configs often pass), sometimes anything of its type; numbers
    include every edge the field's bounds state and numbers far past any bound."""
    kind = spec["type"]
    if kind in ("string", "number", "integer"):
        pool = {"string": list(spec.get("one_of", [])) + ["bogus"] + STRINGS, "number": NUMBERS + HUGE + edges(spec),
                "integer": INTEGERS + [int(v) for v in HUGE[:-1]] + edges(spec)}[kind]
        if name == "jwks":
            pool = [JWKS, '{"keys": []}', "not json"]
        good = [v for v in pool if _fits(spec, v)] or pool
        return st.integers(0, 15).flatmap(lambda i: st.sampled_from(pool if i == 0 else good))
    if kind == "boolean":
        return st.booleans()
    if kind in ("array", "set"):
        element = spec["elements"]
        inner = record(element) if element["type"] == "record" else values(element)
        return st.lists(inner, max_size=10 if kind == "array" else 3)
    if kind == "map":
        return st.dictionaries(st.sampled_from(["sub", "tier", "sub", ""]),
                               st.sampled_from(["X-Sub", "X-Tier", "X-Sub", ""]), max_size=2)
    return record(spec)


def record(spec: dict) -> st.SearchStrategy:
    fields = {name: f for entry in spec["fields"] for name, f in entry.items()}
    # each field set one time in four: the cross-field rules (one of, not both...) then often hold
    drawn = st.fixed_dictionaries({name: st.one_of(st.none(), st.none(), st.none(), values(f, name))
                                   for name, f in fields.items()})
    return drawn.map(lambda d: {k: v for k, v in d.items() if v is not None})


def configs(name: str) -> st.SearchStrategy:
    schema = dump(name)
    (config_spec,) = [spec for entry in schema["fields"] for n, spec in entry.items() if n == "config"]
    return record(config_spec)


@pytest.mark.parametrize("name", sorted(plugins.PLUGINS))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_config_kong_accepts_starts(name, data):
    schema = dump(name)
    config = data.draw(configs(name))
    fields = {n for entry in schema["fields"][0]["config"]["fields"] for n in entry}
    for field, small in (("max_keys", 1000), ("cache_size", 1000)):  # keeps each start cheap
        if field in fields:
            config.setdefault(field, small)
    try:
        kong_validate(schema, config)
    except Refused:
        event("refused by Kong")
        return
    event("accepted by Kong")
    plugin = plugins.PLUGINS[name](config)  # must not raise: Kong would answer every request 500
    plugin.close()


REFUSED_AT_START = {
    "fastguard-rate-limiting": [
        {},                                                               # no limit
        {"minute": 0},
        {"minute": 5, "limit_by": "header"},                              # no header_name
        {"minute": 5, "limit_by": "path"},
        {"minute": 5, "policy": "redis"},                                 # no Redis
        {"minute": 5, "sync_rate": 1},                                    # sync_rate without redis
        {"minute": 5, "ban_after": 3},                                    # no ban_for
        {"limit": [10], "window_size": [60, 3600]},
        {"limit": [10]},
        {"minute": 5, "limit": [10], "window_size": [60]},
        {"minute": 5, "policy": "redis", "redis": {"host": "h", "cluster_nodes": [{"ip": "h", "port": 1}]}},
        {"minute": 5, "policy": "redis", "redis": {"sentinel_nodes": [{"host": "h", "port": 1}]}},
        {"minute": 5, "path": "orders"},
    ],
    "fastguard-jwt": [
        {},                                                               # no key source
        {"jwks": JWKS, "jwks_uri": "https://idp.example/jwks"},
        {"jwks_uri": "ftp://idp.example/jwks"},
        {"jwks": JWKS, "maximum_expiration": 60, "claims_to_verify": ["nbf"]},
    ],
}


@pytest.mark.parametrize("name, config", [(n, c) for n, cs in REFUSED_AT_START.items() for c in cs])
def test_what_the_plugin_refuses_kong_refuses_first(name, config):
    with pytest.raises(ConfigError):
        plugins.PLUGINS[name](config)
    with pytest.raises(Refused):
        kong_validate(dump(name), config)


@pytest.mark.parametrize("name, config", [(n, c) for n, cs in KONG_DOCS_EXAMPLES.items() for c in cs])
def test_kong_documentation_configs_load_unchanged(name, config):
    kong_validate(dump(name), config)
    plugins.PLUGINS[name](config).close()


@pytest.mark.parametrize("config", [{"second": 1e17}, {"year": 1e16}, {"limit": [10], "window_size": [1e10]},
                                    {"minute": 5, "policy": "redis", "sync_rate": 5000},
                                    {"tiers": [{"value": "gold", "minute": 1e17}], "tier_by": "consumer_id",
                                     "minute": 5}])
def test_configs_past_the_cores_limits_are_refused_by_kong(config):
    """Each passed Kong's Admin API and failed at StartInstance (a 500 on every request): the schema's bounds now
    come from the core's own limits."""
    with pytest.raises(Refused):
        kong_validate(dump("fastguard-rate-limiting"), config)
    with pytest.raises(ConfigError):
        plugins.RateLimitingPlugin(config)


def test_the_flat_redis_host_beside_cluster_or_sentinel_nodes_is_refused_by_kong():
    """Found by the property test: Kong accepted `redis_host` with `redis.cluster_nodes` (it knows nothing of the
    shorthand), and the plugin, which moves it into redis.host, refused to start."""
    for nodes in ({"cluster_nodes": [{"ip": "127.0.0.1", "port": 7000}]},
                  {"sentinel_nodes": [{"host": "127.0.0.1", "port": 26379}], "sentinel_master": "m"}):
        config = {"minute": 5, "policy": "redis", "redis_host": "127.0.0.1", "redis": nodes}
        with pytest.raises(Refused):
            kong_validate(dump("fastguard-rate-limiting"), config)
        with pytest.raises(ConfigError):
            plugins.RateLimitingPlugin(config)
