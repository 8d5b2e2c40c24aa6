"""The Kong plugins through real plugin-server processes, driven by a client that plays Kong's side exactly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from support import early_in_a_second

import fastguard as fg
from fastguard.kong import PLUGIN_DIR, PLUGINS
from fastguard.kong.client import PDKFailure, RPCError, fastguard_server
from fastguard.testing.servers import stock_server
from fastguard.testing.tokens import jwk, sign

JWKS = json.dumps({"keys": [jwk("RSA", kid="rsa1", alg="RS256"), jwk("P-256", kid="ec1", alg="ES256")]})
NOW = int(time.time())


def token(claims=None, kid="rsa1", alg="RS256", **extra):
    payload = {"iss": "https://idp.example", "sub": "alice", "exp": NOW + 600, "iat": NOW, **(claims or {})}
    payload.update(extra)
    return sign(payload, alg, {"alg": alg, "typ": "JWT", "kid": kid})


def bearer(tok):
    return {"kong.request.get_headers": {"authorization": f"Bearer {tok}", "host": "api.example"}}



# -- discovery ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PLUGINS))
def test_dump_prints_what_query_cmd_expects(name):
    out = subprocess.run([sys.executable, "-m", "fastguard.cli", "kong-server", name, "--dump"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    info = json.loads(out)
    assert isinstance(info, list) and len(info) == 1  # one plugin per server (Kong >= 3.9 reads the first)
    entry = info[0]
    assert entry["Name"] == name and entry["Phases"] == ["access"] and entry["Version"] == fg.__version__
    assert entry["Priority"] == {"fastguard-rate-limiting": 910, "fastguard-jwt": 1450, "fastguard": 1450}[name]
    fields = entry["Schema"]["fields"][0]["config"]["fields"]
    names = {next(iter(f)) for f in fields}
    if name != "fastguard-jwt":
        assert {"second", "minute", "hour", "day", "month", "year", "policy", "fault_tolerant", "error_code",
                "error_message", "hide_client_headers", "sync_rate", "redis", "algorithm"} <= names
    if name != "fastguard-rate-limiting":
        assert {"uri_param_names", "cookie_names", "header_names", "claims_to_verify", "key_claim_name",
                "maximum_expiration", "run_on_preflight", "jwks_uri", "jwks", "issuers", "audiences", "leeway",
                "algorithms", "claims_to_headers", "cache_size"} <= names
    defaults = {next(iter(f)): next(iter(f.values())).get("default") for f in fields}
    if "error_code" in defaults:
        assert defaults["error_code"] == 429 and defaults["error_message"] == "API rate limit exceeded"
        assert defaults["algorithm"] == "fixed_window" and defaults["fault_tolerant"] is True


def test_unknown_names_and_missing_folders_are_refused(tmp_path):
    bad = subprocess.run([sys.executable, "-m", "fastguard.cli", "kong-server", "nope", "--dump"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown plugin 'nope'" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "fastguard.cli", "kong-server", "fastguard-jwt", "--socket",
                          str(tmp_path / "missing" / "x.socket")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


# -- configuration -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, field", [
    ({"minute": "ten"}, "minute"),
    ({}, "second"),
    ({"minute": 0}, "minute"),
    ({"minute": 10, "sync_rate": 1}, "sync_rate"),     # Kong: sync_rate only with the redis policy
    ({"limit": [5], "window_size": [60, 3600]}, "window_size"),
    ({"minute": 10, "limit": [5], "window_size": [60]}, "limit"),
    ({"minute": 10, "limit_by": "header"}, "header_name"),
    ({"minute": 10, "limit_by": "planet"}, "limit_by"),
    ({"minute": 10, "algorithm": "leaky"}, "algorithm"),
    ({"minute": 10, "policy": "redis"}, "redis.host"),
    ({"minute": 10, "path": "login"}, "path"),
    ({"minute": 10, "redis": {"port": 70000}}, "redis.port"),
    ({"minute": 10, "colour": "red"}, "colour"),
])
def test_invalid_rate_limiting_config_names_the_field(rl, config, field):
    client = rl.client()
    with pytest.raises(RPCError, match=f"invalid config field '{field}'"):
        client.start("fastguard-rate-limiting", config)
    client.close()


@pytest.mark.parametrize("config, field", [
    ({}, "jwks"),
    ({"jwks": JWKS, "jwks_uri": "https://x"}, "jwks_uri"),
    ({"jwks": JWKS, "maximum_expiration": 60, "claims_to_verify": ["nbf"]}, "claims_to_verify"),
    ({"jwks": JWKS, "jwks_uri": "ftp://x"}, "jwks_uri"),
    ({"jwks": JWKS, "claims_to_verify": ["iat"]}, "claims_to_verify[1]"),
    ({"jwks": JWKS, "algorithms": ["HS1"]}, "algorithms[1]"),
    ({"jwks": JWKS, "leeway": -1}, "leeway"),
    ({"jwks": JWKS, "claims_to_headers": {"sub": 5}}, "claims_to_headers.sub"),
])
def test_invalid_jwt_config_names_the_field(jwt_server, config, field):
    client = jwt_server.client()
    with pytest.raises(RPCError, match=re.escape(f"invalid config field '{field}'")):
        client.start("fastguard-jwt", config)
    client.close()


# -- rate limiting ---------------------------------------------------------------------------------------------------
CONSUMER = {"kong.client.get_consumer": {"id": "c-1", "username": "alice"}}


def test_allow_then_deny_with_kongs_headers_and_body(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"second": 2, "hour": 100})
    early_in_a_second()  # the three events in one second's window
    first = client.event(iid, CONSUMER)
    assert [m for m, _ in first.calls] == ["kong.client.get_consumer", "kong.response.set_headers"]  # 2 calls
    assert first.headers["X-RateLimit-Limit-Second"] == "2" and first.headers["X-RateLimit-Remaining-Second"] == "1"
    assert first.headers["X-RateLimit-Limit-Hour"] == "100" and first.headers["X-RateLimit-Remaining-Hour"] == "99"
    assert first.headers["RateLimit-Limit"] == "2" and first.headers["RateLimit-Remaining"] == "1"
    client.event(iid, CONSUMER)
    denied = client.event(iid, CONSUMER)
    # kong.response.error, as Kong's handler: Kong writes the body in the format the client's Accept asks for
    assert [m for m, _ in denied.calls] == ["kong.client.get_consumer", "kong.response.error"]
    status, body, headers = denied.exit
    assert status == 429 and body == "API rate limit exceeded"
    assert headers["X-RateLimit-Remaining-Second"] == "0" and int(headers["Retry-After"]) >= 1
    other = client.event(iid, {"kong.client.get_consumer": {"id": "c-2"}})
    assert other.status == 200
    client.close()


def test_hidden_headers_custom_code_and_message(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1, "hide_client_headers": True, "error_code": 503,
                                                   "error_message": "slow down"})
    ok = client.event(iid, CONSUMER)
    assert [m for m, _ in ok.calls] == ["kong.client.get_consumer"] and ok.status == 200  # 1 call
    no = client.event(iid, CONSUMER)
    status, body, headers = no.exit
    assert (status, body) == (503, "slow down")
    assert headers == {}  # Kong 3.10 sets Retry-After with the other headers only: hidden, there is none
    client.close()


@pytest.mark.parametrize("limit_by, pdk, expected_calls", [
    ("ip", {"kong.client.get_forwarded_ip": "203.0.113.9"}, ["kong.client.get_forwarded_ip"]),
    ("header", {"kong.request.get_header": lambda name: "tenant-7" if name == "x-tenant" else None},
     ["kong.request.get_header"]),
    ("service", {"kong.router.get_service": {"id": "svc-1"}}, ["kong.router.get_service"]),
    ("path", {"kong.request.get_path": "/login"}, ["kong.request.get_path"]),
    ("credential", {"kong.client.get_credential": {"id": "cred-1"}}, ["kong.client.get_credential"]),
    # no consumer (nil: the Step carries no Data), no credential: Kong's fallback to the IP
    ("consumer", {"kong.client.get_forwarded_ip": "198.51.100.1"},
     ["kong.client.get_consumer", "kong.client.get_credential", "kong.client.get_forwarded_ip"]),
])
def test_limit_by(rl, limit_by, pdk, expected_calls):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": limit_by, "header_name": "x-tenant",
                                                   "path": "/login"})
    outcomes = [client.event(iid, pdk) for _ in range(3)]
    assert [m for m, _ in outcomes[0].calls] == [*expected_calls, "kong.response.set_headers"]
    assert [o.status for o in outcomes] == [200, 200, 429]
    client.close()


def test_limit_by_path_limits_other_paths_by_ip_as_kong_does(rl):
    """Kong 3.10's get_identifier: the path when it is the configured one, else (like every limit_by whose value
    is nil) the client's IP."""
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1, "limit_by": "path", "path": "/login"})
    home = {"kong.request.get_path": "/home", "kong.client.get_forwarded_ip": "198.51.100.4"}
    o = client.event(iid, home)
    assert o.status == 200 and [m for m, _ in o.calls][:2] == ["kong.request.get_path", "kong.client.get_forwarded_ip"]
    assert client.event(iid, home).status == 429                               # that IP's one request is spent
    assert client.event(iid, {**home, "kong.client.get_forwarded_ip": "198.51.100.5"}).status == 200
    assert client.event(iid, {**home, "kong.request.get_path": "/login"}).status == 200  # the path's own count
    client.close()


@pytest.mark.parametrize("limit_by, pdk", [
    ("header", {"kong.request.get_header": None}),
    ("service", {"kong.router.get_service": None}),
    ("credential", {"kong.client.get_credential": None}),
])
def test_a_missing_identifier_falls_back_to_the_ip(rl, limit_by, pdk):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1, "limit_by": limit_by, "header_name": "X-Tenant"})
    first = {**pdk, "kong.client.get_forwarded_ip": "192.0.2.1"}
    assert client.event(iid, first).calls[-2][0] == "kong.client.get_forwarded_ip"
    assert client.event(iid, first).status == 429                          # one count for that IP, not for everyone
    assert client.event(iid, {**pdk, "kong.client.get_forwarded_ip": "192.0.2.2"}).status == 200
    client.close()


def test_configs_kong_accepts_that_fastguard_used_to_refuse(rl):
    """A count that is not whole (Kong admits while limit - usage > 0: 1.5 admits 2) and a longer window with a
    lower limit (Kong's own plugin refuses it with a check an external plugin's schema cannot state): both start,
    and every limit holds."""
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1.5})
    assert [client.event(iid, CONSUMER).status for _ in range(3)] == [200, 200, 429]
    iid = client.start("fastguard-rate-limiting", {"second": 5, "minute": 2})
    assert [client.event(iid, CONSUMER).status for _ in range(3)] == [200, 200, 429]
    client.close()


def test_instances_of_one_plugin_share_counters_and_others_do_not(rl):
    client = rl.client()
    pid = str(uuid.uuid4())
    worker_a = client.start("fastguard-rate-limiting", {"minute": 3}, plugin_id=pid)   # nginx worker 1
    worker_b = client.start("fastguard-rate-limiting", {"minute": 3}, plugin_id=pid)   # nginx worker 2
    other = client.start("fastguard-rate-limiting", {"minute": 3})                     # another route's plugin
    statuses = [client.event(iid, CONSUMER).status for iid in (worker_a, worker_b, worker_a, worker_b)]
    assert statuses == [200, 200, 200, 429]
    assert client.event(other, CONSUMER).status == 200
    client.close()


def test_a_config_change_starts_fresh_state_only_where_the_limits_changed(rl):
    client = rl.client()
    pid = str(uuid.uuid4())
    old = client.start("fastguard-rate-limiting", {"minute": 2}, plugin_id=pid, seq=1)
    client.event(old, CONSUMER)
    client.event(old, CONSUMER)
    # Kong starts the new instance, then closes the old one.
    same_limits = client.start("fastguard-rate-limiting", {"minute": 2, "error_message": "new text"},
                               plugin_id=pid, seq=2)
    client.close_instance(old)
    o = client.event(same_limits, CONSUMER)
    assert o.exit == (429, "new text", o.exit[2])  # the count survived, the message changed
    new_limits = client.start("fastguard-rate-limiting", {"minute": 5}, plugin_id=pid, seq=3)
    client.close_instance(same_limits)
    assert client.event(new_limits, CONSUMER).status == 200       # new limits: fresh counters
    client.close()


def test_a_closed_instance_is_restarted_and_retried_as_kong_does(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 5})
    client.close_instance(iid)
    with pytest.raises(RPCError, match="no plugin instance"):
        client.call("plugin.HandleEvent", {"InstanceId": iid, "EventName": "access"})
    assert client.event(iid, CONSUMER).status == 200  # the client restarts the instance on that text, then retries
    client.close()


def test_a_failed_pdk_call_is_answered_by_fault_tolerance(rl):
    def broken(*_):
        raise PDKFailure("no consumer module")

    client = rl.client()
    tolerant = client.start("fastguard-rate-limiting", {"minute": 1})
    strict = client.start("fastguard-rate-limiting", {"minute": 1, "fault_tolerant": False})
    assert client.event(tolerant, {"kong.client.get_consumer": broken}).status == 200
    o = client.event(strict, {"kong.client.get_consumer": broken})
    assert o.exit[0] == 500
    client.close()


def test_redis_policy_on_a_real_redis_and_its_cluster(rl, redis_server, redis_cluster):
    client = rl.client()
    node = redis_cluster.nodes[0]
    for redis_cfg in ({"host": "127.0.0.1", "port": redis_server.port},
                      {"cluster_nodes": [f"127.0.0.1:{node.port}"]}):
        pid = str(uuid.uuid4())
        a = client.start("fastguard-rate-limiting", {"minute": 2, "policy": "redis", "redis": redis_cfg,
                                                     "algorithm": "sliding_window"}, plugin_id=pid)
        assert [client.event(a, CONSUMER).status for _ in range(3)] == [200, 200, 429]
    # Redis down and fault_tolerant false: 500, as Kong's plugin answers
    down = client.start("fastguard-rate-limiting", {"minute": 2, "policy": "redis", "fault_tolerant": False,
                                                    "redis": {"host": "127.0.0.1", "port": 1, "timeout": 200}})
    assert client.event(down, CONSUMER).exit[0] == 500
    tolerant = client.start("fastguard-rate-limiting", {"minute": 2, "policy": "redis",
                                                        "redis": {"host": "127.0.0.1", "port": 1, "timeout": 200}})
    assert client.event(tolerant, CONSUMER).status == 200
    client.close()


# -- JWT -------------------------------------------------------------------------------------------------------------
def jwt_instance(client, **config):
    return client.start("fastguard-jwt", {"jwks": JWKS, **config})


#: What a verified request without consumer_claim sends upstream: Kong's jwt plugin always sets or clears these.
NO_CONSUMER = {"X-Consumer-ID": [], "X-Consumer-Custom-ID": [], "X-Consumer-Username": [],
               "X-Credential-Identifier": [], "X-Anonymous-Consumer": []}


def test_a_valid_token_passes_with_two_pdk_calls(jwt_server):
    client = jwt_server.client()
    iid = jwt_instance(client, uri_param_names=[])
    o = client.event(iid, bearer(token()))
    assert o.status == 200 and [m for m, _ in o.calls] == ["kong.request.get_headers",
                                                           "kong.service.request.set_headers"]
    assert o.upstream == NO_CONSUMER   # a client's own X-Consumer-* never reach the upstream
    # with Kong's default uri_param_names ["jwt"], the query is read too (a second token there is a 401)
    o = client.event(jwt_instance(client), bearer(token()))
    assert o.status == 200 and [m for m, _ in o.calls] == ["kong.request.get_query", "kong.request.get_headers",
                                                           "kong.service.request.set_headers"]
    with_headers = jwt_instance(client, claims_to_headers={"sub": "X-Consumer-Sub", "scope": "X-Scope"},
                                uri_param_names=[])
    o = client.event(with_headers, bearer(token(scope=["read", "write"])))
    assert o.upstream == {**NO_CONSUMER, "X-Consumer-Sub": "alice", "X-Scope": '["read","write"]'}
    # a claim the token lacks: its header is cleared, the client's copy must not pass for a verified one
    o = client.event(with_headers, bearer(token()))
    assert o.upstream == {**NO_CONSUMER, "X-Consumer-Sub": "alice", "X-Scope": []}
    assert [m for m, _ in o.calls] == ["kong.request.get_headers", "kong.service.request.set_headers"]
    client.close()


def unauthorized(o, message, given=True):
    assert o.status == 401, o
    assert o.exit[1] == (message if isinstance(message, dict) else {"message": message})
    assert o.exit[2]["WWW-Authenticate"] == ('Bearer error="invalid_token"' if given else "Bearer")


def test_every_failure_message(jwt_server):
    client = jwt_server.client()
    iid = jwt_instance(client, claims_to_verify=["exp", "nbf"], maximum_expiration=3600,
                       issuers=["https://idp.example"], audiences=["api"])
    aud = {"aud": "api", "nbf": NOW - 10}
    unauthorized(client.event(iid, {"kong.request.get_headers": {}}), "Unauthorized", given=False)
    unauthorized(client.event(iid, bearer("abc.def")), "Bad token; invalid JSON")
    unauthorized(client.event(iid, bearer(token(aud, alg="HS256", kid="rsa1"))), "Invalid algorithm")
    unauthorized(client.event(iid, bearer(token(aud, kid="nobody"))), "No credentials found for given 'kid'")
    good = token(aud)
    forged = good[:-8] + ("AAAAAAAA" if not good.endswith("AAAAAAAA") else "BBBBBBBB")
    unauthorized(client.event(iid, bearer(forged)), "Invalid signature")
    unauthorized(client.event(iid, bearer(token({**aud, "exp": NOW - 100}))), {"exp": "token expired"})
    unauthorized(client.event(iid, bearer(token({**aud, "nbf": NOW + 600}))), {"nbf": "token not valid yet"})
    unauthorized(client.event(iid, bearer(token({**aud, "exp": NOW + 7200}))),
                 {"exp": "exceeds maximum allowed expiration"})
    unauthorized(client.event(iid, bearer(token({"aud": "api"}))), "No mandatory 'nbf' in claims")
    unauthorized(client.event(iid, bearer(token({**aud, "iss": "https://evil.example"}))), "Invalid issuer")
    unauthorized(client.event(iid, bearer(token({**aud, "aud": "other"}))), "Invalid audience")
    no_iss = sign({"sub": "x", "exp": int(time.time()) + 600, "aud": "api", "nbf": NOW}, "RS256",
                  {"alg": "RS256", "kid": "rsa1"})
    unauthorized(client.event(iid, bearer(no_iss)), "No mandatory 'iss' in claims")
    two = {"kong.request.get_headers": {"authorization": f"Bearer {good}"},
           "kong.request.get_query": {"jwt": token({**aud, "sub": "bob"})}}
    multi = jwt_instance(client, claims_to_verify=["exp"], audiences=["api"])
    assert client.event(multi, {"kong.request.get_headers": {}, "kong.request.get_query": {"jwt": good}}).status \
        == 200  # the token in the query string
    # Kong reads every place a token may be: a header token and a different query token are refused
    unauthorized(client.event(multi, two), "Multiple tokens provided")
    same = {"kong.request.get_headers": {"authorization": f"Bearer {good}"}, "kong.request.get_query": {"jwt": good}}
    assert client.event(multi, same).status == 200  # the same token twice is one token
    client.close()


def test_multiple_tokens_and_cookies(jwt_server):
    client = jwt_server.client()
    iid = jwt_instance(client, cookie_names=["session"], uri_param_names=[])
    good = token()
    o = client.event(iid, {"kong.request.get_headers": {"cookie": f"theme=dark; session={good}"}})
    assert o.status == 200
    both = {"kong.request.get_headers": {"authorization": f"Bearer {good}", "cookie": f"session={token(sub='x')}"}}
    unauthorized(client.event(iid, both), "Multiple tokens provided")
    client.close()


def test_preflight_is_skipped_only_when_asked(jwt_server):
    client = jwt_server.client()
    iid = jwt_instance(client, run_on_preflight=False)
    o = client.event(iid, {"kong.request.get_method": "OPTIONS"})
    assert o.status == 200 and [m for m, _ in o.calls] == ["kong.request.get_method",
                                                           "kong.service.request.set_headers"]
    assert o.upstream == NO_CONSUMER   # unverified: nothing that looks verified goes on
    unauthorized(client.event(iid, {"kong.request.get_method": "GET", "kong.request.get_headers": {}}),
                 "Unauthorized", given=False)
    client.close()


def test_an_unreachable_jwks_uri_fails_closed(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks_uri": "http://127.0.0.1:1/jwks.json"})
    o = client.event(iid, bearer(token()))
    assert o.status in (401, 500)  # never proxied
    client.close()


# -- both in one event -------------------------------------------------------------------------------------------------
def test_jwt_then_rate_limit_by_subject(guard):
    client = guard.client()
    iid = client.start("fastguard", {"jwks": JWKS, "minute": 2})
    alice, bob = token(), token(sub="bob")
    first = client.event(iid, bearer(alice))
    assert [m for m, _ in first.calls] == ["kong.request.get_query", "kong.request.get_headers",
                                           "kong.response.set_headers", "kong.service.request.set_headers"]
    assert first.headers["X-RateLimit-Remaining-Minute"] == "1"
    assert client.event(iid, bearer(alice)).status == 200
    assert client.event(iid, bearer(alice)).exit[0] == 429
    assert client.event(iid, bearer(bob)).status == 200           # another subject, its own count
    unauthorized(client.event(iid, bearer("x.y.z")), "Bad token; invalid JSON")
    by_tenant = client.start("fastguard", {"jwks": JWKS, "minute": 1, "limit_by_claim": "tenant"})
    assert client.event(by_tenant, bearer(token(tenant="t1"))).status == 200
    assert client.event(by_tenant, bearer(token(tenant="t1", sub="carol"))).status == 429
    unauthorized(client.event(by_tenant, bearer(token())), "No mandatory 'tenant' in claims")
    client.close()


# -- the server's own behaviour ------------------------------------------------------------------------------------
def test_a_thousand_events_leave_no_thread_behind(guard):
    client = guard.client(connections=4)
    iid = client.start("fastguard", {"jwks": JWKS, "second": 1_000_000})
    client.event(iid, bearer(token()))
    before = client.status()["Threads"]
    for i in range(1000):
        o = client.event(iid, bearer(token(sub=f"user{i % 50}")) if i % 3 else {"kong.request.get_headers": {}})
        assert o.status in (200, 401)
    after = client.status()
    assert after["Threads"] <= before and after["Events"] == 0
    client.close()


RAISING = textwrap.dedent('''
    Schema = ({"message": {"type": "string"}},)
    version = "1.0.0"
    priority = 0

    class Plugin:
        def __init__(self, config):
            self.config = config

        def access(self, kong):
            if self.config.get("message") == "raise":
                raise RuntimeError("boom before any PDK call")
            kong.response.exit(403, {"message": "no"})
            kong.log.err("after exit")  # a handler that goes on after exit must not leave a thread behind
''')


def test_a_handler_that_raises_before_any_pdk_call_is_answered_and_the_server_keeps_serving(tmp_path):
    module = tmp_path / "raising.py"
    module.write_text(RAISING)
    server = fastguard_server("raising", str(tmp_path), "--module", str(module), "--timeout", "2")
    try:
        client = server.client()
        bad = client.start("raising", {"message": "raise"})
        good = client.start("raising", {"message": "exit"})
        for _ in range(20):
            assert client.event(bad, {}).exit[0] == 500       # kong-pdk 0.36 deadlocks here
            assert client.event(good, {}).exit == (403, {"message": "no"}, {})
        time.sleep(0.2)
        assert client.status()["Threads"] < 40 and server.alive()
        client.close()
    finally:
        server.stop()


def test_the_stock_kong_pdk_server_loads_the_plugin_modules_unchanged(tmp_path):
    server = stock_server(PLUGIN_DIR, str(tmp_path), "stock")
    try:
        client = server.client()
        rl_id = client.start("fastguard-rate-limiting", {"minute": 1})
        assert client.event(rl_id, CONSUMER).status == 200
        assert client.event(rl_id, CONSUMER).exit[0] == 429
        jwt_id = client.start("fastguard-jwt", {"jwks": JWKS})
        assert client.event(jwt_id, bearer(token())).status == 200
        unauthorized(client.event(jwt_id, bearer(token(exp=NOW - 5))), {"exp": "token expired"})
        both = client.start("fastguard", {"jwks": JWKS, "minute": 1})  # named like the package: still works
        assert [client.event(both, bearer(token())).status for _ in range(2)] == [200, 429]
        client.close()
    finally:
        server.stop()


def test_plugin_dir_holds_one_module_per_plugin():
    assert sorted(os.path.splitext(f)[0] for f in os.listdir(PLUGIN_DIR) if f.endswith(".py")) == sorted(PLUGINS)


def test_repeat_offenders_are_banned_with_ban_status_and_retry_after(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"second": 1, "hour": 100, "ban_after": 2, "ban_for": 300,
                                                   "ban_status": 403})
    early_in_a_second()  # the first two events in one second's window
    statuses = [client.event(iid, CONSUMER) for _ in range(4)]
    assert [o.status for o in statuses] == [200, 429, 403, 403]  # the 2nd denial starts the ban
    assert 298 <= int(statuses[-1].exit[2]["Retry-After"]) <= 300
    assert client.event(iid, {"kong.client.get_consumer": {"id": "someone-else"}}).status == 200
    with pytest.raises(RPCError, match="invalid config field 'ban_for'"):
        client.start("fastguard-rate-limiting", {"second": 1, "ban_after": 2})
    client.close()


def test_an_untested_kong_pdk_release_is_refused_loudly(tmp_path):
    """The server subclasses kong-pdk's internals: on a release it was not tested with it refuses to start (Kong
    logs the error and does not start the plugin) instead of misbehaving under traffic."""
    from fastguard.kong.server import check_kong_pdk

    assert check_kong_pdk().startswith("0.36")
    with pytest.raises(RuntimeError, match="kong-pdk 0.37.0 is not a release"):
        check_kong_pdk("0.37.0")
    fake = tmp_path / "site"
    meta = fake / "kong_pdk-0.37.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: kong-pdk\nVersion: 0.37.0\n")
    env = {**os.environ, "PYTHONPATH": str(fake)}  # importlib.metadata finds this release first
    run = subprocess.run([sys.executable, "-m", "fastguard.cli", "kong-server", "fastguard-jwt", "--dump"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 2 and "kong-pdk 0.37.0 is not a release" in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "fastguard.cli", "kong-server", "fastguard-jwt", "--dump"],
                         capture_output=True, text=True, timeout=60,
                         env={**env, "FASTGUARD_KONG_PDK_UNTESTED": "1"})
    assert run.returncode == 0 and json.loads(run.stdout)[0]["Name"] == "fastguard-jwt"
