"""envoyproxy/ratelimit's configuration format, loaded unchanged and decided as its README states (Examples 1-11,
its integration-test configurations), on fastguard's decisions. The facts are the README's; the files are its
examples as printed there."""

from __future__ import annotations

import textwrap

import pytest

from fastguard.side.decide import MAX_REQUEST_DESCRIPTORS, OK, OVER_LIMIT, Decider
from fastguard.side.policy import MAX_UINT32, PolicyError, load_domain, load_policies, wildcard_match

pytest.importorskip("yaml")

T = 20_834 * 86_400.0      # the start of a day (and of its hours and minutes): fixed windows begin here


def decider(yaml_text):
    domain = load_domain(textwrap.dedent(yaml_text))
    return Decider({domain.name: domain}), domain.name


def codes(d, domain, *descriptors, n=1, now=T, hits=1):
    """The overall codes of n identical requests."""
    return [d.decide(domain, [list(x) for x in descriptors], hits=hits, now=now).overall for _ in range(n)]


def test_example_1_two_values_of_one_key():
    d, dom = decider("""
        domain: mongo_cps
        descriptors:
          - key: database
            value: users
            rate_limit: {unit: second, requests_per_unit: 500}
          - key: database
            value: default
            rate_limit: {unit: second, requests_per_unit: 500}
        """)
    assert codes(d, dom, [("database", "users")], n=501)[-2:] == [OK, OVER_LIMIT]
    assert codes(d, dom, [("database", "default")]) == [OK]          # its own count
    v = d.decide(dom, [[("database", "other")]], now=T)               # no rule: OK, no limit
    assert v.overall == OK and v.statuses[0].rule is None


def test_example_2_nested_descriptors_and_an_or_of_all_matches():
    d, dom = decider("""
        domain: messaging
        descriptors:
          - key: message_type
            value: marketing
            descriptors:
              - key: to_number
                rate_limit: {unit: day, requests_per_unit: 5}
          - key: to_number
            rate_limit: {unit: day, requests_per_unit: 100}
        """)
    marketing = [("message_type", "marketing"), ("to_number", "2061111111")]
    number = [("to_number", "2061111111")]
    assert codes(d, dom, marketing, number, n=6) == [OK] * 5 + [OVER_LIMIT]
    assert codes(d, dom, [("message_type", "marketing"), ("to_number", "2062222222")]) == [OK]   # per number
    v = d.decide(dom, [marketing, number], now=T)
    assert [s.code for s in v.statuses] == [OVER_LIMIT, OK] and v.statuses[1].remaining == 95
    # a refused request counted in neither descriptor: 5 counted on the per-number limit, not 7
    assert v.statuses[1].rule.requests_per_unit == 100


def test_example_3_key_and_value_before_key_alone():
    d, dom = decider("""
        domain: edge_proxy_per_ip
        descriptors:
          - key: remote_address
            rate_limit: {unit: second, requests_per_unit: 10}
          - key: remote_address
            value: 50.0.0.5
            rate_limit: {unit: second, requests_per_unit: 0}
        """)
    assert codes(d, dom, [("remote_address", "50.0.0.1")], n=11)[-2:] == [OK, OVER_LIMIT]
    assert codes(d, dom, [("remote_address", "50.0.0.2")]) == [OK]   # each address its own count
    assert codes(d, dom, [("remote_address", "50.0.0.5")], n=2) == [OVER_LIMIT] * 2


def test_example_4_the_request_depth_must_equal_the_configuration_depth():
    flat, dom = decider("""
        domain: example4
        descriptors:
          - key: key
            value: value
            rate_limit: {requests_per_unit: 300, unit: second}
        """)
    two = [("key", "value"), ("subkey", "subvalue")]
    assert flat.decide(dom, [two], now=T).statuses[0].rule is None
    nested, dom = decider("""
        domain: example4
        descriptors:
          - key: key
            value: value
            descriptors:
              - key: subkey
                rate_limit: {requests_per_unit: 300, unit: second}
        """)
    assert nested.decide(dom, [two], now=T).statuses[0].rule.requests_per_unit == 300
    assert nested.decide(dom, [[("key", "value")]], now=T).statuses[0].rule is None   # shallower: no rule either


def test_example_5_unlimited():
    d, dom = decider("""
        domain: internal
        descriptors:
          - key: ldap
            rate_limit: {unlimited: true}
          - key: azure
            rate_limit: {unit: minute, requests_per_unit: 100}
        """)
    v = d.decide(dom, [[("ldap", "x")]], now=T)
    assert v.overall == OK and v.statuses[0].remaining == MAX_UINT32 == 2**32 - 1
    with pytest.raises(PolicyError, match="should not specify rate limit unit when unlimited"):
        load_domain("domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unlimited: true, unit: second}\n")


def test_example_6_shadow_mode_never_refuses():
    d, dom = decider("""
        domain: example6
        descriptors:
          - key: service
            descriptors:
              - key: user
                value: user-a
                rate_limit: {requests_per_unit: 10, unit: second}
                shadow_mode: true
              - key: user
                value: user-b
                rate_limit: {requests_per_unit: 20, unit: second}
        """)
    a = [("service", "auth-service"), ("user", "user-a")]
    assert codes(d, dom, a, n=30) == [OK] * 30
    v = d.decide(dom, [a], now=T)
    assert v.statuses[0].shadowed and v.statuses[0].code == OK          # over its limit, reported, not refused
    assert codes(d, dom, [("service", "auth-service"), ("user", "user-b")], n=21)[-2:] == [OK, OVER_LIMIT]


def test_example_7_replaces():
    d, dom = decider("""
        domain: example7
        descriptors:
          - key: key_1
            value: value_1
            descriptors:
              - key: user
                value: bkthomps
                rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
          - key: key_2
            value: value_2
            descriptors:
              - key: user
                value: bkthomps
                rate_limit:
                  replaces:
                    - name: specific_limit
                  requests_per_unit: 10
                  unit: second
        """)
    one = [("key_1", "value_1"), ("user", "bkthomps")]
    two = [("key_2", "value_2"), ("user", "bkthomps")]
    assert codes(d, dom, one, two, n=11)[-2:] == [OK, OVER_LIMIT]       # 10 / s: the 5 / s rule replaced
    assert codes(d, dom, one, n=6) == [OK] * 5 + [OVER_LIMIT]            # ...and not counted meanwhile
    with pytest.raises(PolicyError, match="replaces should not contain name of same descriptor"):
        load_domain("domain: x\ndescriptors:\n  - key: a\n    rate_limit: {name: n, replaces: [{name: n}], "
                    "unit: second, requests_per_unit: 1}\n")


def test_example_8_detailed_metric_loads_and_limits_as_usual():
    d, dom = decider("""
        domain: example8
        descriptors:
          - key: key1
            detailed_metric: true
            rate_limit: {unit: minute, requests_per_unit: 10}
          - key: key1
            value: value1
            rate_limit: {unit: minute, requests_per_unit: 20}
        """)
    assert codes(d, dom, [("key1", "unspecified_value")], n=11)[-1] == OVER_LIMIT
    assert codes(d, dom, [("key1", "unspecified_value2")]) == [OK]
    assert codes(d, dom, [("key1", "value1")], n=21)[-2:] == [OK, OVER_LIMIT]


@pytest.mark.parametrize("pattern, matching, other", [
    ("value*", ["value1", "value2", "valueXYZ", "value"], ["valu", "xvalue"]),
    ("/api/*/action", ["/api/123/action", "/api/user-id/action"], ["/api/123/other"]),
    ("/api/*/resource/*/action", ["/api/v1/resource/123/action", "/api/v2/resource/456/action"],
     ["/api/v1/resource/action", "/api/v1/other/123/action"]),
])
def test_example_9_wildcards_anywhere(pattern, matching, other):
    d, dom = decider(f"""
        domain: example9
        descriptors:
          - key: key1
            value: "{pattern}"
            rate_limit: {{unit: minute, requests_per_unit: 20}}
        """)
    for value in matching:
        assert d.decide(dom, [[("key1", value)]], now=T).statuses[0].rule is not None, value
        assert codes(d, dom, [("key1", value)], n=20)[-1] == OVER_LIMIT   # each value its own count
    for value in other:
        assert d.decide(dom, [[("key1", value)]], now=T).statuses[0].rule is None, value


def test_wildcard_matching_against_a_plain_oracle():
    import re

    from hypothesis import given
    from hypothesis import strategies as st

    alphabet = st.text("ab*", max_size=6)

    @given(alphabet, st.text("ab", max_size=8))
    def agree(pattern, value):
        regex = "^" + ".*".join(re.escape(p) for p in pattern.split("*")) + "$"   # each * any run, in order
        assert wildcard_match(tuple(pattern.split("*")), value) == bool(re.match(regex, value, re.S))

    agree()


def test_example_10_value_to_metric_loads_and_limits_per_subject():
    d, dom = decider("""
        domain: example10
        descriptors:
          - key: route
            value_to_metric: true
            descriptors:
              - key: http_method
                value_to_metric: true
                descriptors:
                  - key: subject_id
                    rate_limit: {unit: minute, requests_per_unit: 60}
        """)
    req = [("route", "api"), ("http_method", "GET"), ("subject_id", "123")]
    assert codes(d, dom, req, n=61)[-2:] == [OK, OVER_LIMIT]
    assert codes(d, dom, [("route", "web"), ("http_method", "POST"), ("subject_id", "456")]) == [OK]


def test_example_11_share_threshold():
    d, dom = decider("""
        domain: example11
        descriptors:
          - key: files
            value: files/*
            share_threshold: true
            rate_limit: {unit: hour, requests_per_unit: 10}
          - key: files_no_share
            value: files_no_share/*
            share_threshold: false
            rate_limit: {unit: hour, requests_per_unit: 10}
        """)
    assert codes(d, dom, [("files", "files/a.pdf")], n=5) == [OK] * 5
    assert codes(d, dom, [("files", "files/b.csv")], n=5) == [OK] * 5
    assert codes(d, dom, [("files", "files/c.txt")]) == [OVER_LIMIT]       # one shared threshold
    assert codes(d, dom, [("files_no_share", "files_no_share/a.pdf")], n=10) == [OK] * 10
    assert codes(d, dom, [("files_no_share", "files_no_share/b.csv")]) == [OK]   # isolated thresholds
    with pytest.raises(PolicyError, match="share_threshold can only be used with wildcard values"):
        load_domain("domain: x\ndescriptors:\n  - key: a\n    value: b\n    share_threshold: true\n")


def test_their_integration_configurations_load_from_a_folder(tmp_path):
    (tmp_path / "basic.yaml").write_text(textwrap.dedent("""
        domain: basic
        descriptors:
          - key: key1
            rate_limit: {unit: second, requests_per_unit: 50}
          - key: one_per_minute
            rate_limit: {unit: minute, requests_per_unit: 1}
        """))
    (tmp_path / "another.yaml").write_text(textwrap.dedent("""
        domain: another
        descriptors:
          - key: key3
            rate_limit: {unit: hour, requests_per_unit: 10}
          - key: key4
            rate_limit: {unit: day, requests_per_unit: 20}
        """))
    (tmp_path / "notes.txt").write_text("not a domain")
    domains = load_policies(str(tmp_path))
    assert sorted(domains) == ["another", "basic"]
    d = Decider(domains)
    assert codes(d, "basic", [("one_per_minute", "foo")], n=2) == [OK, OVER_LIMIT]
    v = d.decide("basic", [[("one_per_minute", "bar")]], now=T + 30)
    assert v.statuses[0].reset_seconds == 30 and v.statuses[0].remaining == 0   # the window ends at T + 60
    assert codes(d, "another", [("key4", "x")], n=21)[-2:] == [OK, OVER_LIMIT]
    assert d.decide("unknown-domain", [[("key1", "x")]], now=T).overall == OK   # an unknown domain: no limits
    (tmp_path / "dup.yaml").write_text("domain: basic\ndescriptors: []\n")
    with pytest.raises(PolicyError, match="duplicate domain 'basic'"):
        load_policies(str(tmp_path))


# -- fastguard's additions ----------------------------------------------------------------------------------------
def test_fastguard_additions_algorithm_any_period_several_windows_and_bans():
    d, dom = decider("""
        domain: api
        descriptors:
          - key: api_key
            rate_limit:
              unit: second
              unit_multiplier: 30
              requests_per_unit: 3
              algorithm: sliding_window
              windows: [{unit: minute, requests_per_unit: 4}]
              ban_after: 2
              ban_for: 600
        fastguard:
          trusted_proxies: [127.0.0.1]
        """)
    assert codes(d, dom, [("api_key", "k")], n=4) == [OK] * 3 + [OVER_LIMIT]   # 3 per 30 s
    v = d.decide(dom, [[("api_key", "k")]], now=T)                            # a second refusal: banned
    assert v.statuses[0].banned and v.retry_after > 590
    assert codes(d, dom, [("api_key", "k")], now=T + 31) == [OVER_LIMIT]       # the ban outlives the window
    assert codes(d, dom, [("api_key", "other")], hits=4) == [OVER_LIMIT]       # hits_addend past every window
    assert d.domains[dom].extra == {"trusted_proxies": ["127.0.0.1"]}


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ("domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: fortnight, requests_per_unit: 1}\n",
     "invalid rate limit unit"),
    ("domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: -1}\n",
     "requests_per_unit must be between"),
    ("domain: x\ndescriptors:\n  - key: a\n    rate_limt: {unit: second}\n", "unknown key 'rate_limt'"),
    ("domain: x\nextra: 1\n", "unknown key 'extra'"),
    ("descriptors: []\n", "cannot have empty domain"),
    ("domain: x\ndescriptors:\n  - value: a\n", "descriptor has empty key"),
    ("domain: x\ndescriptors:\n  - key: a\n  - key: a\n", "duplicate descriptor composite key 'x.a'"),
    ("domain: x\ndescriptors: [\n", "not YAML"),
    ("domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, "
     "algorithm: leaky}\n", "algorithm must be one of"),
    ("domain: x\ndescriptors:\n  - key: a\n    rate_limit: {unit: second, requests_per_unit: 1, ban_after: 3}\n",
     "ban_for must be"),
])
def test_a_file_that_cannot_be_used_is_refused_saying_where(text, message):
    with pytest.raises(PolicyError, match=message) as info:
        load_domain(text, "policies/x.yaml")
    assert str(info.value).startswith("policies/x.yaml")


def test_a_domain_with_too_many_descriptors_is_refused():
    text = "domain: big\ndescriptors:\n" + "".join(f"  - key: k{i}\n" for i in range(101))
    with pytest.raises(PolicyError, match="more than 100 descriptors"):
        load_domain(text, max_descriptors=100)


def test_oversized_requests_are_refused_whole_and_odd_bytes_are_keys():
    d, dom = decider("""
        domain: x
        descriptors:
          - key: ip
            rate_limit: {unit: minute, requests_per_unit: 1}
        """)
    many = [[("ip", str(i))] for i in range(MAX_REQUEST_DESCRIPTORS + 1)]
    v = d.decide(dom, many, now=T)
    assert v.overall == OVER_LIMIT and len(v.statuses) == len(many)
    odd = "\udcff\x00\u2028"
    assert codes(d, dom, [("ip", odd)], n=2) == [OK, OVER_LIMIT]
    assert codes(d, dom, [("ip", odd + "x")]) == [OK]


def test_a_swap_keeps_the_counts_of_rules_that_did_not_change():
    base = "domain: api\ndescriptors:\n  - key: user\n    rate_limit: {unit: hour, requests_per_unit: %d}\n"
    d = Decider({"api": load_domain(base % 3)})
    assert codes(d, "api", [("user", "a")], n=2) == [OK, OK]
    assert d.swap({"api": load_domain(base % 3)}) == 1                   # same rule: its counts stay
    assert codes(d, "api", [("user", "a")], n=2) == [OK, OVER_LIMIT]
    d.swap({"api": load_domain(base % 5)})                               # new limits: a new count
    assert codes(d, "api", [("user", "a")], n=5) == [OK] * 5
    d.swap({})                                                            # the domain gone: no limits
    assert codes(d, "api", [("user", "a")]) == [OK]


# -- fastguard.counts: where a domain's counts live (the Redis side is tested against a real Redis) --------------
def counts_of(block):
    from fastguard.side.shared import Counts

    text = "domain: api\ndescriptors:\n  - key: remote_address\n    rate_limit: {unit: minute, requests_per_unit: 5}\n"
    return Counts.of(load_domain(text + "fastguard:\n  counts: " + block + "\n", "api.yaml"))


def test_counts_block_names_kong_scope_and_keys():
    from fastguard.identity import shared_prefix
    from fastguard.side.policy import Match, Rule

    plain = counts_of("{}")
    assert plain.scope == "domain:api" and plain.on_error == "allow"
    shared = counts_of("{namespace: team a, on_error: local, kong_keys: {remote_address: ip, key: header}}")
    # the prefix a Kong plugin with `namespace: team a` uses (spaces and braces replaced)
    assert shared.prefix == shared_prefix("ns:team a") == "fg-kong-ns:team_a"
    rule = Rule("api.remote_address", "minute", 5, ())
    assert shared.key(Match(rule, (("remote_address", "203.0.113.7"),))) == b"ip:203.0.113.7"
    assert shared.key(Match(rule, (("generic_key", "x"), ("key", "k\udcff")))) == b"header:k\xff"
    # entries not named in kong_keys: length-prefixed entries, never one of Kong's keys (a digit first)
    assert plain.key(Match(rule, (("remote_address", "203.0.113.7"),))) == b"14:remote_address11:203.0.113.7"
    # unambiguous: entries that would run together as plain text stay apart
    assert plain.key(Match(rule, (("a", "b1:c"),))) != plain.key(Match(rule, (("a", "b"), ("c", ""))))


@pytest.mark.parametrize("block, says", [
    ("[1]", "a mapping"),
    ("{namespace: ''}", "non-empty string"),
    ("{on_error: open}", "one of allow, deny, local"),
    ("{kong_keys: {remote_address: address}}", "kong_keys.remote_address: one of ip"),
    ("{redis: x}", "unknown key 'redis'"),
])
def test_counts_block_refused_with_its_place(block, says):
    with pytest.raises(PolicyError, match="api.yaml: fastguard.counts") as exc:
        counts_of(block)
    assert says in str(exc.value)


def test_counts_only_block_has_no_http_side():
    """A domain whose fastguard block only says where it counts is answered over RLS; forward-auth refuses it."""
    from fastguard.side.gate import compile_http

    text = "domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, requests_per_unit: 5}\n" \
           "fastguard:\n  counts: {on_error: deny}\n"
    assert compile_http({"api": load_domain(text)}) == {}


@pytest.mark.parametrize("text, says", [
    ("domain: api\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        rate_limit:\n"
     "          unit: fortnight\n", "f.yaml:7: descriptors[0].descriptors[0].rate_limit.unit: invalid rate limit unit"),
    ("domain: api\ndescriptors:\n  - key: a\n  - kee: b\n", "f.yaml:4: descriptors[1]: unknown key 'kee'"),
    ("domain: api\nlimits: []\n", "f.yaml:2: limits: config error, unknown key 'limits'"),
    ("domain: api\ndescriptors:\n  - {key: a, rate_limit: {unit: minute\n",
     "f.yaml:4: not YAML: while parsing a flow mapping (line 3): expected ',' or '}'"),
])
def test_a_policy_error_names_file_line_and_field_on_one_line(text, says):
    with pytest.raises(PolicyError) as exc:
        load_domain(text, "f.yaml")
    assert says in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_errors_of_the_fastguard_block_name_their_line(tmp_path):
    from fastguard.side.gate import Side

    (tmp_path / "api.yaml").write_text("domain: api\ndescriptors:\n  - key: k\n    rate_limit: {unit: minute, "
                                       "requests_per_unit: 5}\nfastguard:\n  rate_limits:\n    - actions:\n"
                                       "        - {remote_adress: {}}\n")
    with pytest.raises(PolicyError) as exc:
        Side.load(str(tmp_path))
    assert str(exc.value).startswith(f"{tmp_path}/api.yaml:8: fastguard.rate_limits[0].actions[0]: not an Envoy "
                                     "rate limit action"), str(exc.value)
