"""A small JWS signer for the tests, built on `cryptography` alone, so tests can craft any bytes they need."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

SECRET = b"s" * 64
_HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    raw = value if isinstance(value, bytes) else json.dumps(value, separators=(",", ":")).encode()
    return b64(raw)


@functools.cache
def private_key(kind: str) -> Any:
    if kind == "RSA":
        return rsa.generate_private_key(65537, 2048)
    if kind == "RSA1024":
        return rsa.generate_private_key(65537, 1024)
    if kind in ("P-256", "P-384", "P-521", "secp256k1"):
        curve = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1, "secp256k1": ec.SECP256K1}
        return ec.generate_private_key(curve[kind]())
    if kind == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "Ed448":
        return ed448.Ed448PrivateKey.generate()
    raise ValueError(kind)


KEY_FOR_ALG = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "PS256": "RSA", "PS384": "RSA", "PS512": "RSA",
               "ES256": "P-256", "ES384": "P-384", "ES512": "P-521", "ES256K": "secp256k1", "EdDSA": "Ed25519"}


def raw_signature(alg: str, data: bytes, key: Any = None) -> bytes:
    if alg.startswith("HS"):
        return hmac.digest(key if key is not None else SECRET, data, "sha" + alg[2:])
    key = key if key is not None else private_key(KEY_FOR_ALG[alg])
    if alg.startswith("RS"):
        return key.sign(data, padding.PKCS1v15(), _HASH[alg[2:]]())
    if alg.startswith("PS"):
        h = _HASH[alg[2:]]()
        return key.sign(data, padding.PSS(padding.MGF1(_HASH[alg[2:]]()), h.digest_size), h)
    if alg.startswith("ES"):
        bits = "256" if alg == "ES256K" else alg[2:]
        der = key.sign(data, ec.ECDSA(_HASH[bits]()))
        r, s = decode_dss_signature(der)
        width = (key.curve.key_size + 7) // 8
        return r.to_bytes(width, "big") + s.to_bytes(width, "big")
    return key.sign(data)


def sign(payload: Any, alg: str = "HS256", header: Any = None, key: Any = None) -> str:
    header = {"alg": alg, "typ": "JWT"} if header is None else header
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64(raw_signature(alg, signing_input.encode(), key))}"


def public_pem(kind: str) -> bytes:
    return private_key(kind).public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def jwk(kind: str, **extra: Any) -> dict[str, Any]:
    """The public JWK of one of the test keys."""
    if kind == "oct":
        return {"kty": "oct", "k": b64(SECRET), **extra}
    pub = private_key(kind).public_key()
    if kind.startswith("RSA"):
        n = pub.public_numbers()
        return {"kty": "RSA", "n": b64(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": b64(n.e.to_bytes(3, "big")), **extra}
    if kind in ("Ed25519", "Ed448"):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": kind, "x": b64(raw), **extra}
    n = pub.public_numbers()
    width = (pub.curve.key_size + 7) // 8
    return {"kty": "EC", "crv": kind, "x": b64(n.x.to_bytes(width, "big")), "y": b64(n.y.to_bytes(width, "big")),
            **extra}


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
