"""JWTVerifier: every algorithm, every security rule of docs/design.md (one test each), claims, cache, extraction."""

import json

import pytest

import fastguard as fg
from fastguard.testing.tokens import (
    KEY_FOR_ALG,
    SECRET,
    b64,
    jwk,
    private_key,
    public_pem,
    raw_signature,
    segment,
    sign,
)

NOW = 1_800_000_000.0
GOOD = {"sub": "alice", "exp": NOW + 600, "iat": NOW - 10}


@pytest.fixture(params=["compiled", "pure"])
def core(request, monkeypatch):
    """Run the verifier on the compiled helpers and on the pure twins."""
    from fastguard import _pure
    from fastguard import jwt as jwt_module

    if request.param == "compiled":
        from support import PURE_ONLY

        if PURE_ONLY:
            pytest.skip("pure mode asked for")
        from fastguard import _core as module
    else:
        module = _pure
    monkeypatch.setattr(jwt_module, "_impl", module)
    return module


def hs_verifier(**kw):
    return fg.JWTVerifier(fg.KeySet.from_secret(SECRET, alg=None), **kw)


def code_of(verifier, token, now=NOW):
    try:
        verifier.verify(token, now=now)
    except fg.InvalidToken as exc:
        return exc.code
    return "ok"


# -- every algorithm -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512", *KEY_FOR_ALG])
def test_every_algorithm_verifies_and_rejects_tampering(core, alg):
    if alg.startswith("HS"):
        keys = fg.KeySet.from_secret(SECRET, alg=alg)
    else:
        keys = fg.KeySet.from_jwk(jwk(KEY_FOR_ALG[alg], alg=alg, kid="k1"))
    v = fg.JWTVerifier(keys)
    token = sign(GOOD, alg, header={"alg": alg, "kid": "k1"})
    assert dict(v.verify(token, now=NOW)) == GOOD
    head, body, sig = token.split(".")
    other = segment({**GOOD, "sub": "mallory"})
    assert code_of(v, f"{head}.{other}.{sig}") == "signature"


def test_ed448_and_pem_keys(core):
    keys = fg.KeySet.from_jwk(jwk("Ed448"))
    token = sign(GOOD, "EdDSA", key=private_key("Ed448"))
    assert fg.JWTVerifier(keys).verify(token, now=NOW)["sub"] == "alice"
    pem_keys = fg.KeySet.from_pem(public_pem("RSA"), alg="RS256")
    assert fg.JWTVerifier(pem_keys).verify(sign(GOOD, "RS256"), now=NOW)["sub"] == "alice"


# -- security rules (docs/design.md), one test each --------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_is_never_accepted(core, alg):
    token = f"{segment({'alg': alg})}.{segment(GOOD)}."
    assert code_of(hs_verifier(), token) == "algorithm"


def test_public_key_pem_as_hmac_secret_is_refused(core):
    pem = public_pem("RSA")
    with pytest.raises(fg.InvalidKey, match="public key"):
        fg.KeySet.from_secret(pem, alg="HS256")
    # And an RSA key set never verifies an HS token signed with its PEM.
    forged = sign(GOOD, "HS256", key=pem)
    assert code_of(fg.JWTVerifier(fg.KeySet.from_pem(pem)), forged) == "algorithm"


def test_algorithm_comes_from_the_key(core):
    keys = fg.KeySet.from_jwk(jwk("RSA", alg="RS256", kid="k1"))
    token = sign(GOOD, "RS512", header={"alg": "RS512", "kid": "k1"})
    assert code_of(fg.JWTVerifier(keys), token) == "algorithm"
    assert code_of(fg.JWTVerifier(keys, algorithms=["RS256"]), token) == "algorithm"


def test_unknown_crit_is_refused(core):
    token = sign(GOOD, header={"alg": "HS256", "crit": ["exp"], "exp": 1})
    assert code_of(hs_verifier(), token) == "malformed"


@pytest.mark.parametrize("member", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_keys_and_urls_are_ignored(core, member):
    attacker = private_key("P-256")
    values = {"jwk": jwk("P-256"), "jku": "http://127.0.0.1:9/keys", "x5u": "http://127.0.0.1:9/cert",
              "x5c": ["MIIB"]}
    forged = sign(GOOD, "ES256", header={"alg": "ES256", member: values[member]}, key=attacker)
    assert code_of(hs_verifier(), forged) == "algorithm"          # an HMAC key set never verifies ES256
    keys = fg.KeySet.from_jwk(jwk("P-384"))
    assert code_of(fg.JWTVerifier(keys), forged) == "algorithm"  # nor a key of another curve
    # And a genuine token with such members verifies with the key set's key, the members unused.
    genuine = sign(GOOD, "HS256", header={"alg": "HS256", member: values[member]})
    assert hs_verifier().verify(genuine, now=NOW)["sub"] == "alice"


@pytest.mark.parametrize("mangle", [
    lambda t: t.replace(".", "=.", 1),                  # padding
    lambda t: t[:-1] + "+",                              # non-alphabet (standard base64)
    lambda t: t.replace(".", ".+", 1),
    lambda t: " " + t,
    lambda t: t + "\n",
])
def test_non_canonical_base64url_is_refused(core, mangle):
    assert code_of(hs_verifier(), mangle(sign(GOOD))) == "malformed"


def test_non_zero_unused_bits_are_refused(core):
    token = sign(GOOD, "HS256")
    head, body, sig = token.split(".")
    assert len(sig) % 4 == 3                                   # 32 bytes -> 43 chars, 2 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    bent = sig[:-1] + alphabet[last | 1]                       # same decoded bytes, different encoding
    assert code_of(hs_verifier(), f"{head}.{body}.{bent}") == "malformed"


@pytest.mark.parametrize("dots", [0, 1, 3, 4])
def test_exactly_two_dots(core, dots):
    parts = sign(GOOD).split(".")
    token = ".".join(parts + ["x"] * max(0, dots - 2)) if dots >= 2 else "".join(parts[:dots + 1])
    assert code_of(hs_verifier(), token) == "malformed"


def test_huge_token_is_refused_before_decoding(core, monkeypatch):
    calls = []
    monkeypatch.setattr(core, "b64url_decode", lambda data: calls.append(1) or b"")
    big = "A" * (1 << 20)
    assert code_of(hs_verifier(), f"{big}.{big}.{big}") == "too_large"
    assert code_of(hs_verifier(), (f"{big}.{big}.{big}").encode()) == "too_large"
    assert calls == []


@pytest.mark.parametrize("alg, curve", [("ES256", "P-256"), ("ES384", "P-384"), ("ES512", "P-521")])
def test_ecdsa_zero_signature_and_wrong_length(core, alg, curve):
    keys = fg.KeySet.from_jwk(jwk(curve))
    width = {"P-256": 32, "P-384": 48, "P-521": 66}[curve]
    head_body = f"{segment({'alg': alg})}.{segment(GOOD)}"
    assert code_of(fg.JWTVerifier(keys), f"{head_body}.{b64(bytes(2 * width))}") == "signature"   # r = s = 0
    good = raw_signature(alg, head_body.encode())
    assert code_of(fg.JWTVerifier(keys), f"{head_body}.{b64(good + b'0')}") == "signature"
    assert code_of(fg.JWTVerifier(keys), f"{head_body}.{b64(good[:-1])}") == "signature"
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    der = encode_dss_signature(int.from_bytes(good[:width], "big"), int.from_bytes(good[width:], "big"))
    assert code_of(fg.JWTVerifier(keys), f"{head_body}.{b64(der)}") == "signature"      # DER is not JWS
    assert fg.JWTVerifier(keys).verify(f"{head_body}.{b64(good)}", now=NOW)["sub"] == "alice"


def test_string_exp_is_invalid(core):
    assert code_of(hs_verifier(), sign({**GOOD, "exp": str(NOW + 600)})) == "claim"
    assert code_of(hs_verifier(), sign({**GOOD, "exp": True})) == "claim"
    assert code_of(hs_verifier(), sign({**GOOD, "nbf": "0"})) == "claim"


def test_duplicate_kids_are_refused():
    with pytest.raises(fg.InvalidKey, match="duplicate kid"):
        fg.KeySet.from_jwks({"keys": [jwk("RSA", kid="a"), jwk("P-256", kid="a")]})


@pytest.mark.parametrize("alg, size", [("HS256", 31), ("HS384", 47), ("HS512", 63)])
def test_short_hmac_keys_are_refused(alg, size):
    with pytest.raises(fg.InvalidKey, match="shorter than the hash"):
        fg.KeySet.from_secret(b"x" * size, alg=alg)
    with pytest.raises(fg.InvalidKey):
        fg.KeySet.from_jwk({"kty": "oct", "k": b64(b"x" * size), "alg": alg})


def test_small_rsa_keys_are_refused():
    with pytest.raises(fg.InvalidKey, match="1024 bits"):
        fg.KeySet.from_jwk(jwk("RSA1024"))


def test_mixed_secret_and_public_keys_are_refused():
    with pytest.raises(fg.InvalidKey, match="mixes secret"):
        fg.KeySet.from_jwks({"keys": [jwk("oct", kid="s"), jwk("RSA", kid="r")]})


def test_keys_for_other_uses_are_not_used():
    keys = fg.KeySet.from_jwks({"keys": [jwk("RSA", kid="enc", use="enc"), jwk("P-256", kid="sig", use="sig"),
                                         jwk("Ed25519", kid="wrap", key_ops=["wrapKey"])]})
    assert [k.kid for k in keys.keys] == ["sig"]
    with pytest.raises(fg.InvalidKey, match="use is 'enc'"):
        fg.KeySet.from_jwk(jwk("RSA", use="enc"))


@pytest.mark.parametrize("header, payload", [
    (b"[]", GOOD), (b'"alg"', GOOD), (b"\xff\xfe{}", GOOD), (b'{"alg":"HS256","alg":"none"}', GOOD),
    ({"alg": "HS256"}, b"[1,2]"), ({"alg": "HS256"}, b"\xc3\x28"), ({"alg": "HS256"}, b'{"exp":NaN}'),
    ({"alg": "HS256"}, b'{"sub":"a","sub":"b","exp":1900000000}'), ({"alg": 5}, GOOD),
])
def test_header_and_payload_must_be_json_objects_in_utf8(core, header, payload):
    assert code_of(hs_verifier(), sign(payload, "HS256", header=header)) == "malformed"


def test_signature_is_over_the_received_bytes(core):
    # Whitespace in the header JSON is part of what was signed: verification must not re-serialize.
    token = sign(GOOD, "HS256", header=b'{ "alg" :\r\n "HS256" }')
    assert hs_verifier().verify(token, now=NOW)["sub"] == "alice"


# -- claims -----------------------------------------------------------------------------------------------------------

def test_claim_rules(core):
    v = hs_verifier(issuer=["https://a", "https://b"], audience="api", leeway=5, max_lifetime=3600)
    base = {**GOOD, "iss": "https://b", "aud": ["x", "api"]}
    assert v.verify(sign(base), now=NOW)["iss"] == "https://b"
    assert code_of(v, sign({**base, "exp": NOW - 6})) == "expired"
    assert code_of(v, sign({**base, "exp": NOW - 4})) == "ok"              # within leeway
    assert code_of(v, sign({**base, "nbf": NOW + 6})) == "not_yet_valid"
    assert code_of(v, sign({**base, "iat": NOW + 60})) == "claim"
    assert code_of(v, sign({**base, "iss": "https://c"})) == "issuer"
    assert code_of(v, sign({**base, "aud": "other"})) == "audience"
    assert code_of(v, sign({k: x for k, x in base.items() if k != "aud"})) == "missing_claim"
    assert code_of(v, sign({**base, "exp": NOW + 7200, "iat": NOW - 1})) == "claim"   # lives too long
    assert code_of(v, sign({**base, "sub": 42})) == "claim"
    assert code_of(v, sign({k: x for k, x in base.items() if k != "exp"})) == "missing_claim"
    # aud present but no audience configured: the token is not for us (RFC 7519 4.1.3).
    assert code_of(hs_verifier(), sign({**GOOD, "aud": "api"})) == "audience"


def test_typ_check(core):
    v = hs_verifier(typ="JWT")
    assert code_of(v, sign(GOOD, header={"alg": "HS256", "typ": "application/jwt"})) == "ok"
    assert code_of(v, sign(GOOD, header={"alg": "HS256", "typ": "at+jwt"})) == "claim"


def test_claims_are_read_only(core):
    claims = hs_verifier().verify(sign(GOOD), now=NOW)
    with pytest.raises(TypeError):
        claims["sub"] = "mallory"


def test_bad_configuration():
    keys = fg.KeySet.from_secret(SECRET)
    with pytest.raises(ValueError, match="unsupported algorithms"):
        fg.JWTVerifier(keys, algorithms=["none"])
    with pytest.raises(ValueError, match="leeway"):
        fg.JWTVerifier(keys, leeway=-1)
    with pytest.raises(TypeError):
        fg.JWTVerifier({"keys": []})


# -- the caches --------------------------------------------------------------------------------------------------------

def test_cached_token_stops_verifying_at_exp(core):
    v = hs_verifier()
    token = sign({"sub": "a", "exp": NOW + 10})
    assert v.verify(token, now=NOW)["sub"] == "a"
    assert v._cache.hits == 0 and v.verify(token, now=NOW + 9.999)["sub"] == "a" and v._cache.hits == 1
    assert code_of(v, token, now=NOW + 10) == "expired"
    assert code_of(v, token, now=NOW + 11) == "expired"


def test_cached_says_whether_verify_would_answer_from_the_cache_and_counts_nothing(core):
    v = hs_verifier()
    token = sign({"sub": "a", "exp": NOW + 10, "nbf": NOW})
    assert not v.cached(token, now=NOW)
    v.verify(token, now=NOW)
    hits, misses = v._cache.hits, v._cache.misses
    assert v.cached(token, now=NOW + 5) and v.cached(token.encode(), now=NOW + 5)
    assert not v.cached(token, now=NOW + 10)          # expired: verify would not answer from the cache
    assert not v.cached(token, now=NOW - 1)           # before its nbf
    assert not v.cached(sign({"sub": "b", "exp": NOW + 10}), now=NOW)
    assert not v.cached("tö", now=NOW)
    assert (v._cache.hits, v._cache.misses) == (hits, misses) and len(v._cache) == 1
    assert v.cached(token, now=NOW + 5)               # probing left the entry in place


def test_cache_rechecks_nbf_when_time_goes_back(core):
    v = hs_verifier()
    token = sign({"sub": "a", "exp": NOW + 100, "nbf": NOW})
    assert v.verify(token, now=NOW + 1)["sub"] == "a"
    assert code_of(v, token, now=NOW - 1) == "not_yet_valid"


def test_key_rotation_empties_the_cache(core):
    class Rotating(fg.KeySet):
        pass

    keys = Rotating([fg.KeySet.from_secret(SECRET).keys[0]])
    v = fg.JWTVerifier(keys)
    token = sign(GOOD)
    assert v.verify(token, now=NOW)["sub"] == "alice"
    other = fg.KeySet.from_secret(b"o" * 64)
    keys.keys, keys._by_kid, keys._by_alg, keys._unnamed_by_alg = (other.keys, other._by_kid, other._by_alg,
                                                                other._unnamed_by_alg)
    keys.version = 1
    assert code_of(v, token) == "signature"


def test_oversized_tokens_are_verified_every_time(core):
    v = hs_verifier()
    token = sign({**GOOD, "pad": "x" * 5000})
    for _ in range(3):
        assert v.verify(token, now=NOW)["sub"] == "alice"
    assert len(v._cache) == 0 and v._cache.hits == 0


def test_verifiers_never_share_verdicts(core):
    a, b = hs_verifier(issuer="https://a"), hs_verifier(issuer="https://b")
    token = sign({**GOOD, "iss": "https://a"})
    assert a.verify(token, now=NOW)["iss"] == "https://a"
    assert code_of(b, token) == "issuer"
    assert code_of(b, token) == "issuer"            # from b's negative cache, still b's verdict
    assert a.verify(token, now=NOW)["iss"] == "https://a"


def test_negative_cache_answers_a_flood_of_one_bad_token(core):
    v = hs_verifier()
    bad = sign(GOOD)[:-2] + "AA"
    for _ in range(5):
        assert code_of(v, bad) == "signature"
    assert v._failures.hits == 4


def test_token_cache_capacity_and_eviction(core):
    cache = core.TokenCache(3)
    for i in range(10):
        cache.put(f"t{i}", i, 0, 10**18)
    assert len(cache) == 3 and cache.evictions == 7
    assert cache.get("t9", 1.0) == 9 and cache.get("t0", 1.0) is None
    assert cache.get(b"t9", 1.0) == 9                 # str and bytes of the same token are one key
    assert cache.get("tö", 1.0) is None               # a non-ASCII token is never cached
    cache.clear()
    assert len(cache) == 0 and cache.get("t9", 1.0) is None
    with pytest.raises(ValueError):
        core.TokenCache(-1)


# -- token extraction -----------------------------------------------------------------------------------------------

def test_extract_token():
    t = sign(GOOD)
    assert fg.extract_token({"Authorization": f"Bearer {t}"}) == t
    assert fg.extract_token({"authorization": [f"bearer  {t} "]}) == f"{t} "   # Kong's rule: the rest as it is
    assert fg.extract_token({"Authorization": f"Basic {t}"}) is None
    assert fg.extract_token(query={"jwt": t}) == t
    assert fg.extract_token(cookies={"session": t}, cookie_names=["session"]) == t
    assert fg.extract_token({"X-Token": f"Bearer {t}"}, header_names=["x-token"]) == t
    assert fg.extract_token({"Authorization": f"Bearer {t}"}, query={"jwt": t}) == t   # the same token twice
    with pytest.raises(fg.MalformedToken, match="Multiple tokens provided"):
        fg.extract_token({"Authorization": f"Bearer {t}"}, query={"jwt": sign({**GOOD, "sub": "b"})})
    assert fg.extract_token({}) is None


def test_errors_have_stable_codes():
    codes = {cls.code for cls in (fg.MalformedToken, fg.TokenTooLarge, fg.DisallowedAlgorithm, fg.UnknownKey,
                                  fg.InvalidSignature, fg.ExpiredToken, fg.NotYetValid, fg.InvalidIssuer,
                                  fg.InvalidAudience, fg.MissingClaim, fg.InvalidClaim)}
    assert codes == {"malformed", "too_large", "algorithm", "unknown_key", "signature", "expired", "not_yet_valid",
                     "issuer", "audience", "missing_claim", "claim"}
    assert issubclass(fg.InvalidKey, ValueError)


def test_unknown_kid(core):
    keys = fg.KeySet.from_jwks({"keys": [jwk("P-256", kid="a")]})
    token = sign(GOOD, "ES256", header={"alg": "ES256", "kid": "b"})
    assert code_of(fg.JWTVerifier(keys), token) == "unknown_key"


def test_jwks_json_text_and_bad_jwks():
    text = json.dumps({"keys": [jwk("P-256", kid="a")]})
    assert len(fg.KeySet.from_jwks(text)) == 1
    for bad in ("[]", "{}", '{"keys": 5}', "not json", '{"keys": [{"kty": "RSA", "n": "AQAB"}]}',
                '{"keys": [], "keys": []}'):
        with pytest.raises(fg.InvalidKey):
            fg.KeySet.from_jwks(bad)


def test_verifier_is_thread_safe_with_a_small_cache(core):
    """4 threads, a cache far smaller than the token set (constant eviction), valid and forged tokens mixed:
    every verdict is right."""
    import threading

    v = hs_verifier(cache_size=8)
    good = [sign({**GOOD, "sub": f"u{i}"}) for i in range(40)]
    bad = [t[:-3] + "AAA" for t in good[:10]]
    errors = []

    def worker(seed):
        try:
            for i in range(400):
                t = good[(i * 7 + seed) % len(good)]
                assert v.verify(t, now=NOW)["sub"] == json.loads(
                    __import__("base64").urlsafe_b64decode(t.split(".")[1] + "==").decode())["sub"]
                b = bad[(i + seed) % len(bad)]
                assert code_of(v, b) == "signature"
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:1]
    assert len(v._cache) <= 8


def test_a_token_issued_slightly_ahead_is_accepted_once_its_iat_passes(core):
    """Regression: InvalidClaim (iat in the future) heals with time, so it must not sit in the negative cache."""
    v = hs_verifier()
    token = sign({**GOOD, "iat": NOW + 5})
    assert code_of(v, token, now=NOW) == "claim"
    assert code_of(v, token, now=NOW + 6) == "ok"
