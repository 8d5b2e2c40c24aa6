"""JWT verification against hostile key sets, tokens and arguments: every failure is the right InvalidToken or a
clear error when the verifier is built, unsafe keys are refused, one bad key does not take a JWKS down."""

from __future__ import annotations

import json
import logging
import math
import time

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.jwks_server import JWKSServer

import fastguard as fg
from fastguard.jwks import MAX_KEYS
from fastguard.testing.tokens import b64, jwk, private_key, sign

NOW = 1_800_000_000.0
CLAIMS = {"sub": "alice", "exp": NOW + 600, "iat": NOW}


def es(kid, claims=CLAIMS):
    header = {"alg": "ES256"} if kid is None else {"alg": "ES256", "kid": kid}
    return sign(claims, "ES256", header=header, key=private_key("P-256"))


# -- 7. a real refresh timer; verdicts reached across a refresh are not cached ---------------------------------------
def test_a_key_removed_from_the_jwks_stops_verifying_within_two_intervals(tmp_path):
    server = JWKSServer()
    try:
        server.keys = [jwk("P-256", kid="a", alg="ES256"), jwk("Ed25519", kid="b")]
        remote = fg.RemoteKeySet(server.url, refresh_interval=1, min_refetch_interval=30, timeout=2)
        v = fg.JWTVerifier(remote)
        token = es("a")
        assert v.verify(token, now=NOW)["sub"] == "alice"
        assert v.verify(token, now=NOW)["sub"] == "alice"          # now from the cache
        server.keys = [jwk("Ed25519", kid="b")]
        deadline = time.monotonic() + 2.0
        while True:
            try:
                v.verify(token, now=NOW)                             # only cache hits: no kid lookups at all
            except fg.UnknownKey:
                break
            assert time.monotonic() < deadline, "the removed key still verifies after 2 refresh intervals"
            time.sleep(0.05)
        assert remote.stats()["refreshes"] >= 2
        remote.close()
    finally:
        server.stop()


def test_the_refresh_timer_stops_when_closed_or_collected():
    import gc
    import threading

    server = JWKSServer()
    try:
        server.keys = [jwk("P-256", kid="a")]
        remote = fg.RemoteKeySet(server.url, refresh_interval=0.05)
        remote.current()
        timer = remote._timer
        assert timer is not None and timer.is_alive()

        def timer_ended(thread: threading.Thread) -> bool:
            # the timer sees the stop at its next wake-up, after a fetch it may be in: however slow the machine
            thread.join(10)
            return not thread.is_alive()

        remote.close()
        assert timer_ended(timer)
        seen = server.requests
        time.sleep(0.2)                                   # four intervals: no fetch after the timer ended
        assert server.requests == seen
        other = fg.RemoteKeySet(server.url, refresh_interval=0.05)
        other.current()
        timer = other._timer
        del other
        gc.collect()
        assert timer_ended(timer)
    finally:
        server.stop()


def test_a_verdict_reached_while_the_key_set_changed_is_not_cached():
    server = JWKSServer()
    try:
        server.keys = [jwk("P-256", kid="a", alg="ES256")]
        remote = fg.RemoteKeySet(server.url, refresh_interval=3600, min_refetch_interval=0)
        v = fg.JWTVerifier(remote)
        token = es("a")
        verify_jws = v.verify_jws

        def refresh_midway(tok):
            out = verify_jws(tok)
            server.keys = [jwk("Ed25519", kid="b")]
            assert remote.refresh()                                 # the key set changes during this verification
            return out

        v.verify_jws = refresh_midway
        assert v.verify(token, now=NOW)["sub"] == "alice"           # decided under the old set...
        v.verify_jws = verify_jws
        with pytest.raises(fg.UnknownKey):                          # ...but not remembered under the new one
            v.verify(token, now=NOW)
        remote.close()
    finally:
        server.stop()


# -- 8. keys that are not safe are refused at load --------------------------------------------------------------------
SMALL_ORDER_ED25519 = ["0100000000000000000000000000000000000000000000000000000000000000",
                       "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
                       "0000000000000000000000000000000000000000000000000000000000000000",
                       "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
                       "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"]


@pytest.mark.parametrize("hexkey", SMALL_ORDER_ED25519)
def test_small_order_ed25519_keys_are_refused(hexkey):
    key = {"kty": "OKP", "crv": "Ed25519", "x": b64(bytes.fromhex(hexkey))}
    with pytest.raises(fg.InvalidKey, match="small order"):
        fg.KeySet.from_jwk(key)


def test_small_order_ed448_keys_are_refused():
    # The neutral point: with it as public key, the signature (R = neutral, S = 0) verifies every message.
    key = {"kty": "OKP", "crv": "Ed448", "x": b64((1).to_bytes(57, "little"))}
    with pytest.raises(fg.InvalidKey, match="small order"):
        fg.KeySet.from_jwk(key)


def test_random_eddsa_keys_are_accepted():
    for crv in ("Ed25519", "Ed448"):
        fg.KeySet.from_jwk(jwk(crv, kid=crv))


def _rsa_jwk(n: int, e: int = 65537) -> dict:
    return {"kty": "RSA", "n": b64(n.to_bytes((n.bit_length() + 7) // 8, "big")), "e": b64(e.to_bytes(3, "big"))}


def test_rsa_moduli_that_are_prime_or_have_small_factors_are_refused():
    good = private_key("RSA").public_key().public_numbers().n
    prime = rsa.generate_private_key(65537, 4096).private_numbers().p     # a 2048-bit prime
    with_small_factor = 7919 * (good // 7919 | 1)
    for n, why in ((with_small_factor, "small prime factor"), (prime, "prime")):
        with pytest.raises(fg.InvalidKey, match=why):
            fg.KeySet.from_jwk(_rsa_jwk(n))
    fg.KeySet.from_jwk(_rsa_jwk(good))


@pytest.mark.parametrize("form", ["der-spki", "der-pkcs1", "jwk-json", "pem"])
def test_public_keys_passed_as_hmac_secrets_are_refused(form):
    public = private_key("RSA").public_key()
    secret = {
        "der-spki": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der-pkcs1": public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1),
        "jwk-json": json.dumps(jwk("RSA")).encode(),
        "pem": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    }[form]
    with pytest.raises(fg.InvalidKey, match="public key"):
        fg.KeySet.from_secret(secret)


# -- 9. one bad key does not take a JWKS down -------------------------------------------------------------------------
def test_keys_fastguard_will_not_use_are_skipped_not_fatal(caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.jwks")
    x25519 = {"kty": "OKP", "crv": "X25519", "kid": "enc", "x": b64(b"\x09" + b"\x00" * 31)}
    weak = {**jwk("RSA1024"), "kid": "weak"}
    pq = {"kty": "AKP", "alg": "ML-DSA-44", "kid": "pq", "pub": "AAAA"}
    oaep = {**jwk("RSA"), "kid": "oaep", "alg": "RSA-OAEP"}
    good = jwk("P-256", kid="good", alg="ES256")
    keys = fg.KeySet.from_jwks({"keys": [x25519, weak, pq, oaep, good]})
    assert len(keys) == 1
    skipped = {s["kid"] for s in keys.stats()["skipped"]}
    assert skipped == {"enc", "weak", "pq", "oaep"}
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 4
    v = fg.JWTVerifier(keys)
    assert v.verify(es("good"), now=NOW)["sub"] == "alice"
    with pytest.raises(fg.UnknownKey):
        v.verify(sign(CLAIMS, "RS256", header={"alg": "RS256", "kid": "weak"}, key=private_key("RSA1024")), now=NOW)
    assert v.stats()["keys"]["skipped"][0]["reason"]
    # A single such key is still refused.
    for bad in (x25519, weak, pq, oaep):
        with pytest.raises(fg.InvalidKey):
            fg.KeySet.from_jwk(bad)
    # And a JWKS with nothing usable says why.
    with pytest.raises(fg.InvalidKey, match="weak"):
        fg.KeySet.from_jwks({"keys": [weak]})


def test_a_remote_jwks_with_an_unusable_key_still_gets_its_first_set():
    server = JWKSServer()
    try:
        server.keys = [{"kty": "OKP", "crv": "X25519", "kid": "enc", "x": b64(b"\x09" + b"\x00" * 31)},
                       jwk("P-256", kid="good", alg="ES256")]
        remote = fg.RemoteKeySet(server.url, min_refetch_interval=0)
        assert fg.JWTVerifier(remote).verify(es("good"), now=NOW)["sub"] == "alice"
        assert remote.stats()["skipped"][0]["kid"] == "enc"
        remote.close()
    finally:
        server.stop()


# -- 10. a token without kid is tried against every key of its algorithm ----------------------------------------------
def test_a_token_without_kid_signed_by_the_fifth_key_verifies():
    from cryptography.hazmat.primitives.asymmetric import ec

    signers = [ec.generate_private_key(ec.SECP256R1()) for _ in range(6)]
    keys = []
    for i, k in enumerate(signers):
        n = k.public_key().public_numbers()
        keys.append({"kty": "EC", "crv": "P-256", "kid": f"k{i}", "x": b64(n.x.to_bytes(32, "big")),
                     "y": b64(n.y.to_bytes(32, "big"))})
    v = fg.JWTVerifier(fg.KeySet.from_jwks({"keys": keys}))
    for k in signers:
        token = sign(CLAIMS, "ES256", header={"alg": "ES256"}, key=k)
        assert v.verify(token, now=NOW)["sub"] == "alice"


def test_a_key_set_holds_at_most_max_keys():
    many = [jwk("oct", kid=f"k{i}", alg="HS256") for i in range(MAX_KEYS + 1)]
    with pytest.raises(fg.InvalidKey, match=f"at most {MAX_KEYS}"):
        fg.KeySet.from_jwks({"keys": many})
    assert len(fg.KeySet.from_jwks({"keys": many[:MAX_KEYS]})) == MAX_KEYS


# -- 12. bad arguments are refused when the verifier is built; verify raises only InvalidToken -------------------------
@pytest.mark.parametrize("kwargs, name", [
    ({"leeway": 1e10}, "leeway"), ({"leeway": math.inf}, "leeway"), ({"leeway": True}, "leeway"),
    ({"max_lifetime": math.inf}, "max_lifetime"), ({"max_lifetime": 1e300}, "max_lifetime"),
    ({"max_lifetime": math.nan}, "max_lifetime"), ({"required_claims": "exp"}, "required_claims"),
    ({"audience": ""}, "audience"), ({"audience": ["api", ""]}, "audience"), ({"issuer": ""}, "issuer"),
])
def test_bad_verifier_arguments_are_refused_by_name(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256")), **kwargs)


@pytest.mark.parametrize("now, error", [(1e20, ValueError), (math.inf, ValueError), (-1.0, ValueError),
                                        ("123", TypeError), (True, TypeError), (math.nan, ValueError)])
def test_now_is_checked_the_same_on_the_cached_and_uncached_paths(now, error):
    v = fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256", kid="a")))
    token = es("a")
    with pytest.raises(error):
        v.verify(token, now=now)                  # uncached (and an empty cache)
    v.verify(token, now=NOW)
    with pytest.raises(error):
        v.verify(token, now=now)                  # cached
    with pytest.raises(error):
        v.verify(es("a", {**CLAIMS, "jti": "x"}), now=now)   # a miss in a non-empty cache


@pytest.mark.parametrize("claims", [{"sub": "a", "exp": 1e300}, {"sub": "a", "exp": -1e300}, {"sub": "a", "nbf": 1e19},
                                    {"sub": "a", "exp": NOW + 60, "iat": 1e300}, {"sub": "a", "exp": 2**80}])
def test_huge_claims_are_invalid_tokens_with_any_verifier(claims):
    for kwargs in ({}, {"leeway": 365 * 86_400}, {"max_lifetime": 100 * 365 * 86_400.0}):
        v = fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256", kid="a")), required_claims=(), **kwargs)
        try:
            v.verify(es("a", claims), now=NOW)
        except fg.InvalidToken:
            pass


def test_kid_null_is_malformed():
    v = fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256")))
    token = sign(CLAIMS, "ES256", header={"alg": "ES256", "kid": None}, key=private_key("P-256"))
    with pytest.raises(fg.MalformedToken, match="kid"):
        v.verify(token, now=NOW)


# -- 14. cached claims are immutable all the way down; 15. big tokens are not hashed ----------------------------------
def test_claims_from_the_cache_cannot_be_changed_by_one_caller_for_the_next():
    v = fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256", kid="a")))
    token = es("a", {**CLAIMS, "roles": ["reader"], "ctx": {"tenant": "t1", "tags": ["x"]}})
    first = v.verify(token, now=NOW)
    for mutate in (lambda c: c["roles"].append("admin"), lambda c: c["ctx"].__setitem__("tenant", "t2"),
                   lambda c: c["ctx"]["tags"].extend(["y"]), lambda c: c["roles"].__setitem__(0, "admin"),
                   lambda c: c["ctx"].update(tenant="t2"), lambda c: c["roles"].clear()):
        with pytest.raises(TypeError, match="read-only"):
            mutate(first)
    again = v.verify(token, now=NOW)
    assert again["roles"] == ["reader"] and again["ctx"] == {"tenant": "t1", "tags": ["x"]}
    assert json.loads(json.dumps(dict(again))) == {**CLAIMS, "roles": ["reader"], "ctx": {"tenant": "t1",
                                                                                         "tags": ["x"]}}
    header, _ = v.verify_jws(token)
    with pytest.raises(TypeError):
        header["alg"] = "none"


def test_tokens_over_max_token_bytes_are_refused_before_any_cache_hashes_them():
    v = fg.JWTVerifier(fg.KeySet.from_jwk(jwk("P-256", kid="a")), max_token_bytes=100)
    big = es("a")
    assert len(big) > 100
    for _ in range(3):
        with pytest.raises(fg.TokenTooLarge):
            v.verify(big, now=NOW)
    assert v._cache.max_token_bytes == 100 and v._failures.max_token_bytes == 100
    assert len(v._failures) == 0 and v.stats()["negative_hits"] == 0


# -- key material bounded before any arithmetic -----------------------------------------------------------------------
def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_an_rsa_modulus_past_the_cap_is_refused_before_any_arithmetic():
    """A 16,384-bit modulus (a 2.8 KB JWKS) held the GIL ~7 s in its safety checks, stalling every thread of the
    plugin server: refused now from its encoded length, as is a public exponent of more than 64 bits."""
    import time as clock

    from fastguard.keysafety import MAX_RSA_BITS

    huge = (1 << 16383) | 1
    huge -= 2 * ((huge % 3) == 0)                  # no factor 3: nothing quick refuses it
    started = clock.perf_counter()
    keys = fg.KeySet.from_jwks({"keys": [{"kty": "RSA", "kid": "big", "n": _b64(huge.to_bytes(2048, "big")),
                                          "e": "AQAB"}, jwk("P-256", kid="ok")]})
    took = clock.perf_counter() - started
    assert [kid for kid, _ in keys.skipped] == ["big"] and f"at most {MAX_RSA_BITS}" in keys.skipped[0][1]
    assert took < 1.0, took
    n = jwk("RSA")["n"]
    keys = fg.KeySet.from_jwks({"keys": [{"kty": "RSA", "kid": "e", "n": n, "e": _b64(b"\x01" * 9)},
                                         jwk("P-256", kid="ok")]})
    assert "exponent larger than 64 bits" in keys.skipped[0][1]


def test_the_key_count_is_checked_before_any_key_is_parsed(caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.jwks")
    weak = [{"kty": "RSA", "kid": f"k{i}", "n": "AQAB" * 40, "e": "AQAB"} for i in range(65)]
    with pytest.raises(fg.InvalidKey, match="65 signature keys; at most 64"):
        fg.KeySet.from_jwks({"keys": weak})
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]   # none was parsed
