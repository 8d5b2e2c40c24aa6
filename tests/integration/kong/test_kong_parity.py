"""Kong 3.10's semantics, field by field, through real plugin servers (Kong's side played by fastguard.kong.client):
the jwt plugin's anonymous consumer, realm, key claim, cookies, secret_is_base64; the rate-limiting plugin's
shorthand fields, Redis settings, Rate Limiting Advanced's fields. docs/kong.md's parity table names each."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support.kong_schema import KONG_DOCS_EXAMPLES

from fastguard.kong.client import ServerProcess, fastguard_server
from fastguard.testing.servers import RedisProcess, SentinelGroup
from fastguard.testing.tls import make_certificates
from fastguard.testing.tokens import b64, jwk, sign

JWKS = json.dumps({"keys": [jwk("RSA", kid="rsa1", alg="RS256")]})
NOW = int(time.time())
ANON = {"id": "0b5a3f2e-anon", "username": "anonymous", "custom_id": None}


def token(header=None, **claims):
    payload = {"iss": "https://idp.example", "sub": "alice", "exp": NOW + 3600, **claims}
    return sign(payload, "RS256", {"alg": "RS256", "typ": "JWT", "kid": "rsa1", **(header or {})})


def headers(**h):
    return {"kong.request.get_headers": {"host": "api.example", **h}}


# -- jwt -----------------------------------------------------------------------------------------------------------
def test_anonymous_consumer_on_a_failed_verification(jwt_server):
    """Kong's logical OR: a request another plugin authenticated is left alone; a failed one becomes the
    anonymous consumer's (load_consumer by id or username, authenticate, X-Consumer-* set or cleared)."""
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "anonymous": "anonymous", "uri_param_names": []})
    pdk = {**headers(authorization="Bearer not.a.token"), "kong.client.get_credential": None,
           "kong.client.load_consumer": lambda who, by_name: ANON if (who, by_name) == ("anonymous", True) else None}
    o = client.event(iid, pdk)
    assert o.status == 200, o
    methods = [m for m, _ in o.calls]
    assert methods[:3] == ["kong.client.get_credential", "kong.request.get_headers", "kong.client.load_consumer"]
    assert ("kong.client.authenticate", [ANON, None]) in o.calls
    assert o.upstream == {"X-Consumer-ID": ANON["id"], "X-Consumer-Username": "anonymous",
                          "X-Anonymous-Consumer": "true",     # and a client's own copies of the others cleared:
                          "X-Consumer-Custom-ID": [], "X-Credential-Identifier": []}
    # a valid token: verified, not anonymous
    ok = client.event(iid, {**pdk, **headers(authorization=f"Bearer {token()}")})
    assert ok.status == 200 and "kong.client.load_consumer" not in [m for m, _ in ok.calls]
    # already authenticated by another plugin: nothing is read
    done = client.event(iid, {**pdk, "kong.client.get_credential": {"id": "cred-1"}})
    assert [m for m, _ in done.calls] == ["kong.client.get_credential"] and done.status == 200
    # the anonymous consumer does not exist: Kong's 500
    gone = client.event(iid, {**pdk, "kong.client.load_consumer": None})
    assert gone.exit[0] == 500 and "anonymous consumer anonymous is configured but doesn't exist" in gone.exit[1]
    client.close()


def test_realm_in_www_authenticate(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "realm": "orders", "uri_param_names": []})
    none = client.event(iid, headers())
    assert none.exit[2]["WWW-Authenticate"] == 'Bearer realm="orders"'
    bad = client.event(iid, headers(authorization="Bearer x.y.z"))
    assert bad.exit[2]["WWW-Authenticate"] == 'Bearer realm="orders", error="invalid_token"'
    client.close()


def test_key_claim_from_the_payload_then_the_jws_header(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "key_claim_name": "kid", "uri_param_names": []})
    assert client.event(iid, headers(authorization=f"Bearer {token()}")).status == 200   # kid is in the header
    empty = client.start("fastguard-jwt", {"jwks": JWKS, "key_claim_name": "tenant", "uri_param_names": []})
    o = client.event(empty, headers(authorization=f"Bearer {token(tenant='')}"))
    assert o.exit[:2] == (401, {"message": "Invalid 'tenant' in claims"})
    o = client.event(empty, headers(authorization=f"Bearer {token()}"))
    assert o.exit[:2] == (401, {"message": "No mandatory 'tenant' in claims"})
    client.close()


def test_cookies_are_read_leniently_as_nginx_does(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "cookie_names": ["jwt"], "uri_param_names": []})
    # http.cookies drops this whole header ("dark mode" is not a valid cookie value); nginx's $cookie_jwt finds it
    o = client.event(iid, headers(cookie=f"theme=dark mode; jwt={token()}; odd"))
    assert o.status == 200, o
    client.close()


def test_query_tokens_are_read_as_kong_reads_them(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS})
    good = token()
    assert client.event(iid, {**headers(), "kong.request.get_query": {"jwt": [good, good]}}).status == 200
    two = {**headers(), "kong.request.get_query": {"jwt": [good, token(sub="bob")]}}
    assert client.event(iid, two).exit[1] == {"message": "Multiple tokens provided"}
    # Kong's header pattern is [Bb]earer: another scheme is no token
    assert client.event(iid, headers(authorization=f"Token {good}")).exit[1] == {"message": "Unauthorized"}
    client.close()


def test_a_jwks_the_schema_cannot_check_starts_and_answers_500(jwt_server):
    """Kong's schema cannot see into JSON text: a JWKS that is not usable must not make the instance fail to start
    (Kong answers 500 without a word); the plugin starts, says why once, and answers 500 (never a pass)."""
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": "{not json", "uri_param_names": []})
    o = client.event(iid, headers(authorization=f"Bearer {token()}"))
    assert o.exit[0] == 500
    client.close()


def test_secret_is_base64(jwt_server):
    """Kong stores a consumer's HS256 secret as text; with secret_is_base64 the text is base64 of the key. Here the
    JWKS `k` carries that text (base64url of it, as any JWK value), and the key is what it decodes to."""
    client = jwt_server.client()
    key = b"\x00\xfe raw key bytes \xff" * 3
    kong_text = base64.b64encode(key)
    jwks = json.dumps({"keys": [{"kty": "oct", "kid": "hs", "alg": "HS256", "k": b64(kong_text)}]})
    iid = client.start("fastguard-jwt", {"jwks": jwks, "secret_is_base64": True, "uri_param_names": []})
    tok = sign({"iss": "x", "exp": NOW + 600}, "HS256", {"alg": "HS256", "kid": "hs"}, key=key)
    assert client.event(iid, headers(authorization=f"Bearer {tok}")).status == 200
    plain = client.start("fastguard-jwt", {"jwks": jwks, "uri_param_names": []})  # the text itself is the key
    assert client.event(plain, headers(authorization=f"Bearer {tok}")).exit[0] == 401
    client.close()


def test_maximum_expiration_refuses_a_token_without_exp(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "maximum_expiration": 3600, "claims_to_verify": ["exp"],
                                         "uri_param_names": []})
    no_exp = sign({"iss": "x"}, "RS256", {"alg": "RS256", "kid": "rsa1"})
    o = client.event(iid, headers(authorization=f"Bearer {no_exp}"))
    assert o.exit[0] == 401  # claims_to_verify exp: Kong refuses it first
    client.close()


# -- rate limiting -------------------------------------------------------------------------------------------------
IP = {"kong.client.get_forwarded_ip": "203.0.113.7"}


def statuses(client, iid, n, pdk=IP):
    return [client.event(iid, pdk).status for _ in range(n)]


def test_rla_limits_windows_and_namespace(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"limit": [2, 3], "window_size": [60, 1800], "limit_by": "ip"})
    first = client.event(iid, IP)
    assert first.headers["X-RateLimit-Limit-30Minutes"] == "3"       # any window: 3 per 1800 s
    assert statuses(client, iid, 2) == [200, 429]
    # two plugin entities with one namespace share their counts
    ns = f"ns-{uuid.uuid4().hex[:6]}"
    a = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip", "namespace": ns})
    b = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip", "namespace": ns})
    c = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip"})
    assert statuses(client, a, 1) == [200] and statuses(client, b, 2) == [200, 429]
    assert statuses(client, c, 2) == [200, 200]
    client.close()


def test_retry_after_jitter(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1, "limit_by": "ip", "retry_after_jitter_max": 30})
    client.event(iid, IP)
    waits = {int(client.event(iid, IP).exit[2]["Retry-After"]) for _ in range(20)}
    assert len(waits) > 1 and min(waits) >= 1 and max(waits) <= 60 + 31
    client.close()


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    files = make_certificates(str(tmp_path_factory.mktemp("tls")), ("redis.internal",))
    server = RedisProcess(tls=files)
    server.files = files
    yield server
    server.stop()


def test_redis_ssl_verify_and_server_name_as_kong_means_them(rl, tls_redis, tmp_path):
    """Kong's ssl_verify defaults to false: no certificate check (redis-py's default is the opposite). With true,
    the certificate is checked against the CAs the process trusts (Kong: lua_ssl_trusted_certificate; here the
    plugin server's SSL_CERT_FILE) and against server_name when set."""
    client = rl.client()
    redis_cfg = {"host": "127.0.0.1", "port": tls_redis.tls_port, "ssl": True, "timeout": 1000}
    base = {"minute": 2, "limit_by": "ip", "policy": "redis", "fault_tolerant": False}
    loose = client.start("fastguard-rate-limiting", {**base, "redis": redis_cfg})
    assert statuses(client, loose, 3) == [200, 200, 429]              # no verification: a self-made CA is fine
    strict = client.start("fastguard-rate-limiting", {**base, "redis": {**redis_cfg, "ssl_verify": True}})
    assert client.event(strict, IP).exit[0] == 500                    # a CA this process does not trust
    client.close()
    path = str(tmp_path / "rl.socket")
    trusting = ServerProcess([sys.executable, "-m", "fastguard.cli", "kong-server", "fastguard-rate-limiting",
                              "--socket", path], path, env={"SSL_CERT_FILE": tls_redis.files.ca})
    try:
        client = trusting.client()
        named = client.start("fastguard-rate-limiting", {**base, "redis": {**redis_cfg, "ssl_verify": True,
                                                                           "server_name": "redis.internal"}})
        assert statuses(client, named, 3) == [200, 200, 429]          # trusted CA, the certificate's name
        unnamed = client.start("fastguard-rate-limiting", {**base, "redis": {**redis_cfg, "ssl_verify": True}})
        assert client.event(unnamed, IP).exit[0] == 500               # 127.0.0.1 is not the certificate's name
        client.close()
    finally:
        trusting.stop()


def test_shorthand_redis_fields(rl, redis_server):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip", "policy": "redis",
                                                   "redis_host": "127.0.0.1", "redis_port": redis_server.port,
                                                   "redis_timeout": 1000, "fault_tolerant": False})
    assert statuses(client, iid, 3) == [200, 200, 429]
    client.close()


def test_cluster_nodes_in_both_shapes(rl, redis_cluster):
    client = rl.client()
    ports = [int(hp.rsplit(":", 1)[1]) for hp in redis_cluster.url.split("://", 1)[1].split(",")]
    for nodes in ([{"ip": "127.0.0.1", "port": p} for p in ports], [f"127.0.0.1:{p}" for p in ports]):
        iid = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip", "policy": "redis",
                                                       "fault_tolerant": False,
                                                       "redis": {"cluster_nodes": nodes, "timeout": 1000},
                                                       "namespace": uuid.uuid4().hex})
        assert statuses(client, iid, 3) == [200, 200, 429]
    client.close()


# -- consumers and tiers ---------------------------------------------------------------------------------------------
ALICE = {"id": "5f0c-alice", "username": "alice", "custom_id": "crm-17"}


def test_consumer_claim_makes_the_request_the_consumers(jwt_server):
    """consumer_claim: the verified claim names a Kong consumer (load_consumer, then authenticate), so Kong's
    consumer-scoped plugins match and the upstream gets X-Consumer-*; the lookup is reused consumer_cache_ttl s."""
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "consumer_claim": "sub", "uri_param_names": [],
                                         "claims_to_headers": {"sub": "X-Subject"}})
    lookups = []

    def load(value, by_username):
        lookups.append((value, by_username))
        return ALICE if value == "alice" else None

    pdk = {**headers(authorization=f"Bearer {token()}"), "kong.client.load_consumer": load}
    o = client.event(iid, pdk)
    assert o.status == 200 and lookups == [("alice", True)]
    assert ("kong.client.authenticate", [ALICE, None]) in o.calls
    assert o.upstream == {"X-Consumer-ID": ALICE["id"], "X-Consumer-Username": "alice",
                          "X-Consumer-Custom-ID": "crm-17", "X-Subject": "alice",   # one set_headers for all,
                          "X-Credential-Identifier": [], "X-Anonymous-Consumer": []}  # clearing the others
    again = client.event(iid, pdk)
    assert again.status == 200 and len(lookups) == 1                     # cached: one round trip less
    assert [m for m, _ in again.calls].count("kong.client.load_consumer") == 0
    nobody = client.event(iid, {**pdk, **headers(authorization=f"Bearer {token(sub='mallory')}")})
    assert nobody.exit[:2] == (401, {"message": "Could not find consumer for 'sub=mallory'"})
    client.close()


def test_an_unknown_consumer_becomes_the_anonymous_one(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "consumer_claim": "sub", "anonymous": "anonymous",
                                         "uri_param_names": [], "consumer_cache_ttl": 0})
    pdk = {**headers(authorization=f"Bearer {token(sub='mallory')}"), "kong.client.get_credential": None,
           "kong.client.load_consumer": lambda value, by_name: ANON if value == "anonymous" else None}
    o = client.event(iid, pdk)
    assert o.status == 200 and o.upstream["X-Anonymous-Consumer"] == "true"
    client.close()


def test_tiers_pick_the_limits_by_a_claim(guard):
    client = guard.client()
    iid = client.start("fastguard", {"jwks": JWKS, "minute": 1, "uri_param_names": [], "tier_claim": "plan",
                                     "tiers": [{"value": "gold", "minute": 3}, {"value": "free", "second": 1,
                                                                                  "minute": 2}]})

    def run(n, **claims):
        return [client.event(iid, headers(authorization=f"Bearer {token(**claims)}")).status for _ in range(n)]

    assert run(4, sub="g", plan="gold") == [200, 200, 200, 429]
    o = client.event(iid, headers(authorization=f"Bearer {token(sub='f', plan='free')}"))
    assert o.headers["X-RateLimit-Limit-Minute"] == "2" and o.headers["X-RateLimit-Limit-Second"] == "1"
    assert run(2, sub="n") == [200, 429]                                  # no plan claim: the plugin's own limits
    assert run(2, sub="p", plan="platinum") == [200, 429]                 # a plan without a tier: the same
    client.close()


# -- your own plugins ----------------------------------------------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "kong" / "api_key_guard.py"


def test_the_documented_example_plugin_through_the_real_server(tmp_path):
    """docs/kong.md's worked example, served by `fastguard kong-server --module`: a generator of PDK calls, run
    one step per RPC (no thread per event), its schema in --dump, its instances sharing one limiter."""
    dumped = subprocess.run([sys.executable, "-m", "fastguard.cli", "kong-server", "api-key-guard", "--module",
                             str(EXAMPLE), "--dump"], capture_output=True, text=True, timeout=60)
    info = json.loads(dumped.stdout)[0]
    assert info["Name"] == "api-key-guard" and info["Priority"] == 1000
    fields = [next(iter(f)) for f in info["Schema"]["fields"][0]["config"]["fields"]]
    assert fields == ["key_header", "per_minute", "jwks", "issuer"]
    server = fastguard_server("api-key-guard", str(tmp_path), "--module", str(EXAMPLE))
    try:
        client = server.client()
        cfg = {"jwks": JWKS, "issuer": "https://idp.example", "per_minute": 2}
        pid = str(uuid.uuid4())
        worker_a, worker_b = client.start("api-key-guard", cfg, plugin_id=pid), client.start("api-key-guard", cfg,
                                                                                              plugin_id=pid)
        ok = headers(**{"x-api-key": "k-1", "authorization": f"Bearer {token()}"})
        first = client.event(worker_a, ok)
        assert first.status == 200 and [m for m, _ in first.calls] == ["kong.request.get_headers",
                                                                       "kong.response.set_headers"]
        assert first.headers["X-RateLimit-Remaining-Minute"] == "1"
        assert client.event(worker_b, ok).status == 200                  # the other worker's instance: one count
        assert client.event(worker_a, ok).exit[:2] == (429, "API rate limit exceeded")
        other_key = headers(**{"x-api-key": "k-2", "authorization": "Bearer x.y.z"})
        assert client.event(worker_a, other_key).exit[:2] == (401, {"message": "Invalid token: malformed"})
        assert client.event(worker_a, headers()).exit[:2] == (401, {"message": "An API key is required"})
        threads = client.status()["Threads"]
        for i in range(200):
            client.event(worker_a, headers(**{"x-api-key": f"k-{i + 3}", "authorization": f"Bearer {token()}"}))
        assert client.status()["Threads"] <= threads                     # no thread per event
        client.close()
    finally:
        server.stop()


def test_the_docs_show_the_example_as_it_is():
    docs = (EXAMPLE.parents[2] / "docs" / "kong.md").read_text()
    shown = docs.split("## Your own plugins", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    code = EXAMPLE.read_text()
    body = [line for line in shown.splitlines() if line.strip()]
    assert all(line in code.splitlines() for line in body), [line for line in body if line not in code.splitlines()]


def test_sentinel_fields(rl):
    """RLA's Sentinel fields: the master of sentinel_master, found through sentinel_nodes (real sentinels)."""
    group = SentinelGroup(replicas=0, sentinels=1)
    try:
        client = rl.client()
        nodes = [{"host": "127.0.0.1", "port": port} for port, _ in group.sentinels]
        iid = client.start("fastguard-rate-limiting", {"minute": 2, "limit_by": "ip", "policy": "redis",
                                                       "fault_tolerant": False, "namespace": uuid.uuid4().hex,
                                                       "redis": {"sentinel_master": group.service,
                                                                 "sentinel_nodes": nodes, "timeout": 1000}})
        assert statuses(client, iid, 3) == [200, 200, 429]
        client.close()
    finally:
        group.stop()


def test_tiers_pick_the_limits_by_a_consumer_value(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1, "tier_by": "consumer_custom_id",
                                                   "tiers": [{"value": "gold", "minute": 3}]})
    gold = {"kong.client.get_consumer": {"id": "c-gold", "custom_id": "gold"}}
    plain = {"kong.client.get_consumer": {"id": "c-plain", "custom_id": "bronze"}}
    assert statuses(client, iid, 4, gold) == [200, 200, 200, 429]
    assert [m for m, _ in client.event(iid, plain).calls] == ["kong.client.get_consumer",
                                                              "kong.response.set_headers"]  # no extra call
    assert statuses(client, iid, 1, plain) == [429]                      # not a tier: the plugin's 1/minute
    by_ip = client.start("fastguard-rate-limiting", {"minute": 1, "limit_by": "ip", "tier_by": "consumer_username",
                                                     "tiers": [{"value": "alice", "minute": 2}]})
    alice = {**IP, "kong.client.get_consumer": {"id": "a", "username": "alice"}}
    o = client.event(by_ip, alice)
    assert [m for m, _ in o.calls] == ["kong.client.get_forwarded_ip", "kong.client.get_consumer",
                                       "kong.response.set_headers"]           # +1 call when not by consumer
    assert statuses(client, by_ip, 2, alice) == [200, 429]
    client.close()


@pytest.mark.parametrize("name, config", [(n, c) for n, cs in KONG_DOCS_EXAMPLES.items() for c in cs])
def test_kong_documentation_configs_start_in_the_real_server(name, config, rl, jwt_server):
    server = {"fastguard-rate-limiting": rl, "fastguard-jwt": jwt_server}[name]
    client = server.client()
    iid = client.start(name, config)
    o = client.event(iid, {**IP, **headers(authorization=f"Bearer {token()}")})
    assert o.status in (200, 401, 500), o        # 500: the Redis example's host is not running here (fault)
    client.close()


def test_approval_mark_only_on_requests_let_through(rl, jwt_server):
    """approval_mark: +1 PDK call (kong.ctx.shared.set) on the requests a plugin lets through, none on a refusal:
    a post-function refuses unmarked requests, so a plugin server that is down cannot let one through."""
    mark = ("kong.ctx.shared.set", ["fastguard_approved", True])
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 1, "limit_by": "ip",
                                                   "approval_mark": "fastguard_approved"})
    ok = client.event(iid, IP)
    assert ok.status == 200 and ok.calls == [("kong.client.get_forwarded_ip", []), mark,
                                             ("kong.response.set_headers", [ok.headers])]
    denied = client.event(iid, IP)
    assert denied.status == 429 and mark not in denied.calls
    client.close()
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "uri_param_names": [], "approval_mark": "fastguard_approved"})
    assert client.event(iid, headers(authorization=f"Bearer {token()}")).calls[-2] == mark
    assert mark not in client.event(iid, headers()).calls
    client.close()
