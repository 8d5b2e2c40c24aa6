"""JWT verification: fastguard against PyJWT and joserfc, with the raw `cryptography` verify as the floor.

Per verification, mean of loops of OPS calls; smaller is better. Budgets (docs/design.md) are judged by bench/report.py.
"""

from __future__ import annotations

import time
from functools import partial

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jwk as jose_jwk
from joserfc import jwt as jose_jwt

import fastguard as fg
from fastguard.testing.tokens import KEY_FOR_ALG, SECRET, jwk, private_key, raw_signature, sign

from .conftest import alternate, rounds

OPS = 1000
FAMILIES = ["HS256", "RS256", "PS256", "ES256", "EdDSA"]


def _claims():
    now = time.time()
    return {"sub": "consumer-42", "iss": "https://idp.example", "aud": "api", "iat": int(now),
            "exp": int(now) + 3600, "scope": "read write"}


def _setup(alg):
    token = sign(_claims(), alg)
    if alg == "HS256":
        keys = fg.KeySet.from_secret(SECRET, alg="HS256")
        pyjwt_key = SECRET
        jose_key = jose_jwk.OctKey.import_key(SECRET)
    else:
        priv = private_key(KEY_FOR_ALG[alg])
        keys = fg.KeySet.from_jwk(jwk(KEY_FOR_ALG[alg], alg=alg))
        pem = priv.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        pyjwt_key = priv.public_key()
        jose_key = jose_jwk.import_key(jwk(KEY_FOR_ALG[alg]), None) if alg == "EdDSA" else \
            jose_jwk.import_key(pem.decode(), {"RS": "RSA", "PS": "RSA", "ES": "EC"}[alg[:2]])
    return token, keys, pyjwt_key, jose_key


def _run(benchmark, fn, group, contender, alg, ops=OPS):
    def loop():
        for _ in range(ops):
            fn()

    benchmark.group = group
    benchmark.extra_info.update(ops=ops, contender=contender, algorithm=alg)
    benchmark.pedantic(loop, rounds=rounds(15), iterations=1, warmup_rounds=1)


# -- cache hit -------------------------------------------------------------------------------------------------------

def test_cached_fastguard(benchmark):
    token, keys, _, _ = _setup("RS256")
    v = fg.JWTVerifier(keys, issuer="https://idp.example", audience="api")
    v.verify(token)
    _run(benchmark, partial(v.verify, token), "verify: cache hit", "fastguard (cached)", "RS256", ops=10_000)


def test_cached_vs_pyjwt_rs256(benchmark):
    token, _, key, _ = _setup("RS256")
    _run(benchmark, partial(pyjwt.decode, token, key, algorithms=["RS256"], audience="api",
                            issuer="https://idp.example"),
         "verify: cache hit", "PyJWT", "RS256")


def _loop(fn, ops):
    def run():
        for _ in range(ops):
            fn()
    return run


def test_pair_cached_vs_pyjwt_rs256(benchmark):
    """The cache-hit ratio budget (≥ 250× PyJWT RS256), both measured in alternation."""
    token, keys, key, _ = _setup("RS256")
    v = fg.JWTVerifier(keys, issuer="https://idp.example", audience="api")
    v.verify(token)
    pyjwt_call = partial(pyjwt.decode, token, key, algorithms=["RS256"], audience="api", issuer="https://idp.example")
    ops = {"fastguard": 10_000, "pyjwt": OPS}  # a cache hit is ~1,000x cheaper: more calls per round
    alternate(benchmark, "verify cached RS256", {"fastguard": _loop(partial(v.verify, token), ops["fastguard"]),
                                                 "pyjwt": _loop(pyjwt_call, ops["pyjwt"])}, ops, rounds(15))


def test_pair_uncached_hs256_vs_pyjwt(benchmark):
    """The uncached HS256 ratio budget (≥ 10× PyJWT), both measured in alternation."""
    token, keys, key, _ = _setup("HS256")
    v = fg.JWTVerifier(keys, issuer="https://idp.example", audience="api", cache_size=0)
    v.verify(token)
    pyjwt_call = partial(pyjwt.decode, token, key, algorithms=["HS256"], audience="api", issuer="https://idp.example")
    alternate(benchmark, "verify uncached HS256", {"fastguard": _loop(partial(v.verify, token), OPS),
                                                   "pyjwt": _loop(pyjwt_call, OPS)}, OPS, rounds(15))


# -- uncached ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alg", FAMILIES)
def test_uncached_fastguard(benchmark, alg):
    token, keys, _, _ = _setup(alg)
    v = fg.JWTVerifier(keys, issuer="https://idp.example", audience="api", cache_size=0)
    v.verify(token)
    _run(benchmark, partial(v.verify, token), f"verify: uncached {alg}", "fastguard", alg)


@pytest.mark.parametrize("alg", FAMILIES)
def test_uncached_pyjwt(benchmark, alg):
    token, _, key, _ = _setup(alg)
    _run(benchmark, partial(pyjwt.decode, token, key, algorithms=[alg], audience="api", issuer="https://idp.example"),
         f"verify: uncached {alg}", "PyJWT", alg)


@pytest.mark.parametrize("alg", FAMILIES)
def test_uncached_joserfc(benchmark, alg):
    token, _, _, key = _setup(alg)
    jose_jwt.decode(token, key, algorithms=[alg])
    _run(benchmark, partial(jose_jwt.decode, token, key, algorithms=[alg]), f"verify: uncached {alg}", "joserfc", alg)


@pytest.mark.parametrize("alg", FAMILIES)
def test_raw_crypto_floor(benchmark, alg):
    """The signature check alone, straight through `cryptography` (hmac for HS256) with every object prepared:
    no parsing, no claims, no wrapper of ours (for ES256 it includes the r || s to DER step cryptography needs)."""
    import hmac as hmac_module

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    token, _, _, _ = _setup(alg)
    head, body, _ = token.split(".")
    data = f"{head}.{body}".encode()
    signature = raw_signature(alg, data)
    public = None if alg == "HS256" else private_key(KEY_FOR_ALG[alg]).public_key()
    if alg == "HS256":
        def check():
            hmac_module.compare_digest(hmac_module.digest(SECRET, data, "sha256"), signature)
    elif alg == "ES256":
        scheme = ec.ECDSA(hashes.SHA256())

        def check():   # cryptography takes DER: turning JWS's r || s into DER is part of any ES256 verify
            der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
            public.verify(der, data, scheme)
    else:
        args = {"RS256": (signature, data, padding.PKCS1v15(), hashes.SHA256()),
                "PS256": (signature, data, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()),
                "EdDSA": (signature, data)}[alg]

        def check():
            public.verify(*args)
    check()
    _run(benchmark, check, f"verify: uncached {alg}", "floor: raw verify", alg)
