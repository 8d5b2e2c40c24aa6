"""Fuzzing: random and mutated tokens only ever raise InvalidToken subclasses (never anything else, never crash).

The same property runs for long with atheris: `python fuzz/fuzz_jwt.py -atheris_runs=1000000`.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastguard as fg
from fastguard.testing.tokens import jwk, private_key, sign

NOW = 1_800_000_000.0
CLAIMS = {"sub": "alice", "exp": NOW + 600, "aud": "api", "iss": "https://idp"}


def _verifiers():
    hs = fg.JWTVerifier(fg.KeySet.from_secret(b"s" * 64, alg=None), audience="api", issuer="https://idp")
    pub = fg.JWTVerifier(fg.KeySet.from_jwks({"keys": [jwk("RSA", kid="r"), jwk("P-256", kid="e"),
                                                       jwk("Ed25519", kid="d")]}), audience="api")
    return hs, pub


SEEDS = [sign(CLAIMS, "HS256"), sign(CLAIMS, "HS512"),
         sign(CLAIMS, "RS256", header={"alg": "RS256", "kid": "r"}),
         sign(CLAIMS, "PS256", header={"alg": "PS256", "kid": "r"}),
         sign(CLAIMS, "ES256", header={"alg": "ES256", "kid": "e"}),
         sign(CLAIMS, "EdDSA", header={"alg": "EdDSA", "kid": "d"}, key=private_key("Ed25519"))]


def check(token):
    for v in _VERIFIERS:
        try:
            v.verify(token, now=NOW)
        except fg.InvalidToken:
            pass
        try:
            v.verify_jws(token)
        except fg.InvalidToken:
            pass


_VERIFIERS = _verifiers()


def test_seeds_are_valid():
    for token in SEEDS:
        assert any(_ok(v, token) for v in _VERIFIERS)


def _ok(v, token):
    try:
        v.verify(token, now=NOW)
        return True
    except fg.InvalidToken:
        return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.lists(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.",
                                  max_size=80), min_size=1, max_size=5).map(".".join)))
def test_random_tokens(token):
    check(token)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_mutated_tokens(seed, data):
    raw = bytearray(seed.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "insert", "delete", "swap"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "insert":
            raw.insert(pos, data.draw(st.integers(0, 255)))
        elif kind == "delete" and len(raw) > 1:
            del raw[pos]
        else:
            parts = bytes(raw).split(b".")
            if len(parts) == 3:
                a, b = data.draw(st.permutations([0, 1, 2]))[:2]
                parts[a], parts[b] = parts[b], parts[a]
                raw = bytearray(b".".join(parts))
    check(bytes(raw))
    try:
        text = bytes(raw).decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes everything
        return
    check(text)


@pytest.mark.parametrize("token", [None, 5, 1.5, ["a.b.c"], object()])
def test_non_string_tokens(token):
    for v in _VERIFIERS:
        with pytest.raises(fg.InvalidToken):
            v.verify(token, now=NOW)
