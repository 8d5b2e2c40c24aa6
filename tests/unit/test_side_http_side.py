"""The side service's HTTP side: descriptors built as Envoy's route rate_limits actions build them
(source/common/router/router_ratelimit.cc, stated here as facts), the client address past trusted proxies, the JWT
check with Envoy jwt_authn's answers, and the headers an allowed request carries or loses."""

from __future__ import annotations

import json
import textwrap
import time

import pytest

pytest.importorskip("yaml")
pytest.importorskip("envoy.config.route.v3.route_components_pb2")

from fastguard.side.actions import HttpRequest, RateLimitActions, claim_value  # noqa: E402
from fastguard.side.gate import LOOPBACK, Side, client_address  # noqa: E402
from fastguard.side.policy import PolicyError, load_domain  # noqa: E402
from fastguard.testing.tokens import jwk, sign  # noqa: E402


def req(path="/", method="GET", client="203.0.113.9", **headers):
    return HttpRequest(method, path, "api.example", {k.replace("_", "-"): v for k, v in headers.items()}, client)


def actions(*entries):
    return RateLimitActions([{"actions": list(e)} for e in entries])


def test_each_entry_is_one_descriptor_in_order():
    a = actions([{"remote_address": {}}],
                [{"generic_key": {"descriptor_value": "api"}},
                 {"request_headers": {"header_name": "X-Api-Key", "descriptor_key": "api_key"}}],
                [{"generic_key": {"descriptor_value": "v", "descriptor_key": "k"}}])
    assert a.descriptors(req(x_api_key="k1")) == [
        [("remote_address", "203.0.113.9")],
        [("generic_key", "api"), ("api_key", "k1")],     # header names match without case
        [("k", "v")]]


def test_an_absent_header_drops_the_descriptor_or_only_its_entry_with_skip_if_absent():
    a = actions([{"generic_key": {"descriptor_value": "a"}},
                 {"request_headers": {"header_name": "x-user", "descriptor_key": "user"}}],
                [{"generic_key": {"descriptor_value": "b"}},
                 {"request_headers": {"header_name": "x-user", "descriptor_key": "user", "skip_if_absent": True}}])
    assert a.descriptors(req()) == [[("generic_key", "b")]]
    assert a.descriptors(req(x_user="")) == [[("generic_key", "a"), ("user", "")],    # present, though empty
                                              [("generic_key", "b"), ("user", "")]]


def test_header_value_match_with_pseudo_headers_expect_match_and_an_absent_header():
    login = {"header_value_match": {"descriptor_value": "login",
                                    "headers": [{"name": ":path", "string_match": {"prefix": "/login"}},
                                                {"name": ":method", "exact_match": "POST"}]}}
    other = {"header_value_match": {"descriptor_key": "kind", "descriptor_value": "not-admin", "expect_match": False,
                                    "headers": [{"name": "x-admin", "present_match": True}]}}
    a = actions([login], [other])
    assert a.descriptors(req("/login?next=/", "POST")) == [[("header_match", "login")], [("kind", "not-admin")]]
    assert a.descriptors(req("/login", "GET")) == [[("kind", "not-admin")]]
    assert a.descriptors(req("/login", "POST", x_admin="1")) == [[("header_match", "login")]]
    inverted = actions([{"header_value_match": {"descriptor_value": "v", "headers": [
        {"name": "x-tier", "string_match": {"exact": "gold"}, "invert_match": True}]}}])
    assert inverted.descriptors(req(x_tier="silver")) == [[("header_match", "v")]]
    assert inverted.descriptors(req()) == []          # Envoy: an absent header matches nothing, inverted or not
    regex = actions([{"header_value_match": {"descriptor_value": "v", "headers": [
        {"name": "user-agent", "string_match": {"safe_regex": {"regex": ".*bot.*"}, "ignore_case": False}}]}}])
    assert regex.descriptors(req(user_agent="a bot b")) == [[("header_match", "v")]]
    assert regex.descriptors(req(user_agent="human")) == []


def test_query_parameters_and_masked_remote_address():
    a = actions([{"query_parameters": {"query_parameter_name": "key", "descriptor_key": "key"}}],
                [{"masked_remote_address": {"v4_prefix_mask_len": 24}}])
    assert a.descriptors(req("/x?a=1&key=k%202")) == [[("key", "k 2")], [("masked_remote_address", "203.0.113.0/24")]]
    assert a.descriptors(req("/x", client="2001:db8::1")) == [[("masked_remote_address", "2001:db8::1/128")]]


def test_jwt_claims_as_descriptors():
    a = actions([{"jwt_claim": {"claim_name": "sub", "descriptor_key": "sub"}}],
                [{"jwt_claim": {"claim_name": "org.id", "descriptor_key": "org"}}])
    assert a.descriptors(req(), {"sub": "alice", "org": {"id": 7}}) == [[("sub", "alice")], [("org", "7")]]
    assert a.descriptors(req(), None) == []
    assert claim_value({"a": True, "b": 1.5, "c": [1]}, "a") == "true"
    assert claim_value({"b": 1.5}, "b") == "1.5" and claim_value({"c": [1]}, "c") is None


@pytest.mark.parametrize("bad, says", [
    ({"actions": [{"source_cluster": {}}]}, "needs Envoy's own state"),
    ({"actions": [{"request_headers": {"header_nam": "x"}}]}, "not an Envoy rate limit action"),
    ({"actions": [{"remote_address": {}, "generic_key": {"descriptor_value": "x"}}]}, "one key"),
    ({"actions": []}, "at least one action"),
    ({"actions": [{"header_value_match": {"descriptor_value": "v", "headers": [
        {"name": "x", "string_match": {"safe_regex": {"regex": "("}}}]}}]}, "bad regex"),
    ({"actions": [{"jwt_claim": {"claim": "sub"}}]}, "jwt_claim is"),
])
def test_bad_actions_are_refused_naming_the_place(bad, says):
    with pytest.raises(ValueError, match=says):
        RateLimitActions([bad])


def test_the_client_address_past_trusted_proxies_only():
    assert client_address("198.51.100.7", "1.1.1.1", LOOPBACK) == "198.51.100.7"     # untrusted peer: itself
    assert client_address("127.0.0.1", "1.1.1.1", LOOPBACK) == "1.1.1.1"
    assert client_address("127.0.0.1", "6.6.6.6, 1.1.1.1", LOOPBACK) == "1.1.1.1"     # the client's own claim ignored
    assert client_address("127.0.0.1", "6.6.6.6, 1.1.1.1, 127.0.0.5", LOOPBACK) == "1.1.1.1"
    assert client_address("::ffff:127.0.0.1", "1.1.1.1", LOOPBACK) == "1.1.1.1"
    assert client_address("127.0.0.1", None, LOOPBACK) == "127.0.0.1"


JWKS = json.dumps({"keys": [jwk("P-256", kid="k1", alg="ES256", use="sig")]})


def side_with(block, descriptors="  - key: sub\n    rate_limit: {unit: minute, requests_per_unit: 2}\n"):
    text = "domain: api\ndescriptors:\n" + descriptors + "fastguard:\n" + textwrap.indent(block, "  ")
    domain = load_domain(text, "api.yaml")
    return Side({"api": domain})


JWT_BLOCK = f"""\
jwt:
  issuer: https://issuer.example
  audiences: [api]
  local_jwks: {{inline_string: '{JWKS}'}}
  claim_to_headers: [{{header_name: x-jwt-sub, claim_name: sub}}, {{header_name: x-jwt-org, claim_name: org}}]
  forward_payload_header: x-jwt-payload
rate_limits:
  - actions: [{{jwt_claim: {{claim_name: sub, descriptor_key: sub}}}}]
"""


def token(**claims):
    body = {"iss": "https://issuer.example", "aud": "api", "sub": "alice", "exp": time.time() + 600, **claims}
    return sign(body, "ES256", header={"alg": "ES256", "kid": "k1"})


def test_jwt_answers_as_envoy_jwt_authn_and_sets_or_removes_every_identity_header():
    side = side_with(JWT_BLOCK)
    missing = side.check("api", req())
    assert missing.status == 401 and missing.message == "Jwt is missing"
    assert dict(missing.downstream)["WWW-Authenticate"] == 'Bearer realm="fastguard"'     # RFC 6750 §3.1
    bad = side.check("api", req(authorization="Bearer not.a.token"))
    # the reason also in error_description (nginx shows its own page, not the body): one quoted ASCII string
    challenge = dict(bad.downstream)["WWW-Authenticate"]
    assert bad.status == 401 and challenge.startswith('Bearer realm="fastguard", error="invalid_token", '
                                                      'error_description="Jwt verification fails')
    assert challenge.count('"') == 6 and challenge.isascii() and "\r" not in challenge and "\n" not in challenge
    assert side.check("api", req(authorization=f"Bearer {token(aud='other')}")).status == 403
    assert side.check("api", req(authorization=f"Bearer {token(iss='https://evil')}")).status == 401
    good = token(sub="bob")
    ok = side.check("api", req(authorization=f"Bearer {good}", x_jwt_sub="forged", x_jwt_org="forged"))
    assert ok.status == 200
    assert dict(ok.upstream) == {"x-jwt-sub": "bob", "x-jwt-payload": good.split(".")[1]}
    assert "x-jwt-org" in ok.remove and "authorization" in ok.remove    # no org claim; forward: false
    assert dict(ok.downstream)["RateLimit-Limit"] == "2"
    side.check("api", req(access_token=None, authorization=f"Bearer {good}"))
    over = side.check("api", req("/?access_token=" + good))           # Envoy's default places: ?access_token=
    assert over.status == 429 and "Retry-After" in dict(over.downstream)


def test_allow_missing_lets_a_request_without_a_token_through_with_no_identity():
    side = side_with(JWT_BLOCK.replace("  forward_payload_header", "  allow_missing: true\n  forward_payload_header"))
    ok = side.check("api", req(x_jwt_sub="forged"))
    assert ok.status == 200 and ok.upstream == () and {"x-jwt-sub", "x-jwt-org", "x-jwt-payload"} <= set(ok.remove)
    assert side.check("api", req(authorization="Bearer bad.to.ken")).status == 401  # a bad token is still refused


def test_two_different_tokens_are_refused():
    side = side_with(JWT_BLOCK)
    assert side.check("api", req(f"/?access_token={token(sub='x')}", authorization=f"Bearer {token()}")).status == 401


@pytest.mark.parametrize("block, says", [
    ("jwt: {issuer: x}\n", "remote_jwks or local_jwks"),
    ("jwt: {local_jwks: {filename: /nonexistent/jwks.json}}\n", "No such file"),
    ("jwt: {issuer: x, audience: [a], local_jwks: {inline_string: '{}'}}\n", "not an Envoy jwt_authn provider"),
    ("rate_limits: [{actions: [{jwt_claim: {claim_name: sub}}]}]\n", "needs a jwt block"),
    ("trusted_proxies: [not-an-address]\n", "trusted_proxies"),
    ("rate_limit: []\n", "unknown key 'rate_limit'"),
    ("trusted_proxies: [10.0.0.0/8]\n", "needs jwt or rate_limits"),
])
def test_a_bad_fastguard_block_is_refused_at_load(block, says):
    with pytest.raises(PolicyError, match=says):
        side_with(block)


def test_a_domain_without_http_side_is_refused_not_allowed():
    domain = load_domain("domain: rls\ndescriptors:\n  - key: a\n"
                         "    rate_limit: {unit: second, requests_per_unit: 1}\n")
    assert Side({"rls": domain}).check("rls", req()).status == 404


def test_a_failure_inside_a_grpc_service_is_a_refusal_never_an_rpc_error(monkeypatch):
    """Envoy lets a request through when the rate limit call fails (failure_mode_deny: false, its default) and when
    ext_authz fails under failure_mode_allow: an unexpected error inside fastguard must answer a refusal instead."""
    import asyncio

    from envoy.service.auth.v3 import external_auth_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    from fastguard.side.authz import AuthorizationService
    from fastguard.side.rls import RateLimitService

    side = side_with("rate_limits: [{actions: [{remote_address: {}}]}]\n",
                     "  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 5}\n")

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(side.decider, "decide", broken)
    rls = RateLimitService(side.decider)
    request = rls_pb2.RateLimitRequest(domain="api", descriptors=[
        {"entries": [{"key": "remote_address", "value": "1.2.3.4"}]}, {"entries": [{"key": "k", "value": "v"}]}])
    answer = asyncio.run(rls.ShouldRateLimit(request, None))
    assert answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT and len(answer.statuses) == 2
    check = external_auth_pb2.CheckRequest()
    check.attributes.request.http.path = "/"
    check.attributes.source.address.socket_address.address = "1.2.3.4"
    denied = asyncio.run(AuthorizationService(side).Check(check, None))
    assert denied.status.code != 0 and denied.denied_response.status.code == 500
