"""Conformance over public vectors: Wycheproof JWS and JWK tests, and the RFC 7515/7520 examples.

The vectors live in tests/vectors (tests/vectors/README.md says where each comes from); FASTGUARD_VECTORS names
another folder of the same layout. KNOWN_DISAGREEMENTS.json lists labels where a strict verifier
rightly gives the other answer: those vectors must match their `strict_result`.
"""

import json
import os
import pathlib

import pytest

import fastguard as fg

ROOT = pathlib.Path(__file__).resolve().parents[2]


VECTORS = pathlib.Path(os.environ.get("FASTGUARD_VECTORS") or ROOT / "tests" / "vectors")


def _load(name):
    return json.loads((VECTORS / name).read_text())


def _strict_overrides():
    data = _load("wycheproof/json_web_signature_KNOWN_DISAGREEMENTS.json")
    return {tc: entry["strict_result"] for entry in data["entries"] for tc in entry["tcIds"]}


def _cases(name):
    data = _load(name)
    out = []
    for group in data["testGroups"]:
        key = group.get("public") or group.get("private")
        for test in group["tests"]:
            out.append(pytest.param(key, test, id=f"tc{test['tcId']}-{test['comment'][:40]}"))
    return out


def _verdict(key, jws):
    """'valid' when a key set built from `key` verifies `jws` (signature and header rules), else 'invalid'."""
    try:
        keys = fg.KeySet.from_jwks(key) if "keys" in key else fg.KeySet.from_jwk(key)
    except fg.InvalidKey:
        return "invalid"
    verifier = fg.JWTVerifier(keys, cache_size=0)
    try:
        verifier.verify_jws(jws)
    except fg.InvalidToken:
        return "invalid"
    return "valid"


@pytest.mark.parametrize("key, test", _cases("wycheproof/json_web_signature_test.json"))
def test_wycheproof_jws(key, test):
    expected = _strict_overrides().get(test["tcId"], test["result"])
    assert _verdict(key, test["jws"]) == expected, test["comment"]


@pytest.mark.parametrize("key, test", _cases("wycheproof/json_web_key_test.json"))
def test_wycheproof_jwk(key, test):
    assert _verdict(key, test["jws"]) == test["result"], test["comment"]


def _rfc_cases():
    return [pytest.param(case, id=case["name"]) for case in _load("rfc_jws_examples.json")]


@pytest.mark.parametrize("case", _rfc_cases())
def test_rfc_examples(case):
    jwk = dict(case["jwk"])
    if "json_serialization" in case:
        # fastguard verifies the compact serialization only: the JSON form is refused, never half-read.
        assert _verdict(jwk, json.dumps(case["json_serialization"])) == "invalid"
        return
    if "detached_payload_raw" in case:
        # RFC 7797 b64=false is announced with crit=["b64"], which fastguard does not implement: it must refuse.
        assert _verdict(jwk, case["token"]) == "invalid", case.get("notes")
        return
    token = case["token"]
    if "detached_payload_b64" in case:
        head, empty, sig = token.split(".")
        assert empty == "" and _verdict(jwk, token) == "invalid"   # without its content it cannot verify
        token = f"{head}.{case['detached_payload_b64']}.{sig}"
    verdict = _verdict(jwk, token)
    assert verdict == ("valid" if case["expect_valid"] else "invalid"), case.get("notes")


def test_vector_counts():
    """All vectors are there and were run: 401 JWS cases (400 compact + 1 JSON), 26 JWK cases, 16 RFC cases."""
    assert len(_cases("wycheproof/json_web_signature_test.json")) == 401
    assert len(_cases("wycheproof/json_web_key_test.json")) == 26
    assert len(_rfc_cases()) == 16
