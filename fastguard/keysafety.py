"""Keys that cannot be used safely, recognised when a key set is built (fastguard.jwks refuses them).

RSA moduli that anyone can factor (prime, a small prime factor, the ROCA weakness), EdDSA public keys of small
order or non-canonical encoding (they verify signatures anyone can make), and public keys passed where an HMAC
secret belongs (the algorithm-confusion attack). Pure arithmetic: no network, no `cryptography` calls but loading.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fastguard.corechoice import core as _impl

__all__ = ["MIN_RSA_BITS", "MAX_RSA_BITS", "MAX_RSA_EXPONENT_BITS", "rsa_modulus_problem", "small_order",
           "looks_like_public_key"]

MIN_RSA_BITS = 2048
#: The largest RSA modulus accepted, checked on its encoded length before any arithmetic: the safety checks below
#: take one modular exponentiation, which holds the GIL (0.02 s at 2,048 bits, 0.14 s at 4,096, ~1 s at 8,192 and
#: ~7 s at 16,384 — every other thread of the process waits that long).
MAX_RSA_BITS = 4096
#: The largest public exponent accepted (65537 is 17 bits): each verification costs a modular exponentiation by it.
MAX_RSA_EXPONENT_BITS = 64
# ROCA (CVE-2017-15361): moduli from the flawed Infineon generator are n = k*M + (65537^a mod M). For each of these
# small primes p, such an n mod p lies in the subgroup that 65537 generates; a random modulus fails that for some p.
_ROCA_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101,
                103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167)
_ROCA_SUBGROUPS = []
for _p in _ROCA_PRIMES:
    _g, _members = 65537 % _p, set()
    _x = 1
    while _x not in _members:
        _members.add(_x)
        _x = _x * _g % _p
    _ROCA_SUBGROUPS.append((_p, frozenset(_members)))


def _roca_vulnerable(n: int) -> bool:
    return all(n % p in members for p, members in _ROCA_SUBGROUPS)


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\0\0"
    for i in range(2, int(limit ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(sieve[i * i::i]))
    return [i for i in range(limit) if sieve[i]]


#: The product of the primes below 10,000: a modulus sharing a factor with it has a factor anyone can find.
_SMALL_PRIMES_PRODUCT = math.prod(_small_primes(10_000))


def _strong_probable_prime(n: int, a: int) -> bool:
    """One Miller-Rabin round with base a (n odd, n > a)."""
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    x = pow(a, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(r - 1):
        x = x * x % n
        if x == n - 1:
            return True
    return False


@functools.lru_cache(maxsize=1024)
def rsa_modulus_problem(n: int) -> str | None:
    """Why an RSA modulus is unsafe (anyone could compute its private key), or None. Kept per modulus: a key set
    fetched again (another key added, say) costs nothing for the keys it had."""
    if math.gcd(n, _SMALL_PRIMES_PRODUCT) != 1:
        return "its modulus has a small prime factor"
    if _strong_probable_prime(n, 2):
        # One Miller-Rabin round: a product of two large primes passes it with negligible probability, so a
        # modulus that passes is a prime or a pseudoprime, refused either way (twelve rounds cost twelve times the
        # GIL for nothing more).
        return "its modulus is prime"
    if _roca_vulnerable(n):
        return "it has the ROCA weakness (CVE-2017-15361)"
    return None


# Edwards curves of EdDSA (RFC 8032): field prime, a, d, cofactor. A public key of small order (a multiple of the
# cofactor is the neutral point) verifies signatures anyone can make (PyJWT and joserfc accept such keys).
_EDWARDS = {
    "Ed25519": (2**255 - 19, -1, -121665 * pow(121666, -1, 2**255 - 19) % (2**255 - 19), 8),
    "Ed448": (2**448 - 2**224 - 1, 1, -39081 % (2**448 - 2**224 - 1), 4),
}


def small_order(curve: str, encoded: bytes) -> bool:
    """True when the encoded point (RFC 8032 §5.1.3 / §5.2.3) is not canonical or has small order."""
    p, a, d, cofactor = _EDWARDS[curve]
    value = int.from_bytes(encoded, "little")
    sign = value >> (8 * len(encoded) - 1)
    y = value & ((1 << (8 * len(encoded) - 1)) - 1)
    if y >= p:
        return True                                  # a non-canonical encoding
    u, v = (y * y - 1) % p, (d * y * y - a) % p
    if v == 0:
        return True
    x2 = u * pow(v, -1, p) % p
    x = _sqrt_mod(x2, p)
    if x is None:
        return True                                  # not on the curve (cryptography refuses those anyway)
    if x == 0 and sign:
        return True                                  # -0: non-canonical
    if x % 2 != sign:
        x = p - x
    px, py = x, y
    for _ in range(cofactor.bit_length() - 1):      # multiply by the cofactor: double log2(cofactor) times
        xy = px * py % p
        denominator_x = (1 + d * xy * xy) % p
        denominator_y = (1 - d * xy * xy) % p
        px, py = (2 * xy * pow(denominator_x, -1, p) % p,
                  (py * py - a * px * px) * pow(denominator_y, -1, p) % p)
    return px == 0 and py == 1


def _sqrt_mod(n: int, p: int) -> int | None:
    """A square root of n modulo p (p = 5 mod 8 for Ed25519, 3 mod 4 for Ed448), or None."""
    if p % 4 == 3:
        r = pow(n, (p + 1) // 4, p)
    else:
        r = pow(n, (p + 3) // 8, p)
        if r * r % p != n % p:
            r = r * pow(2, (p - 1) // 4, p) % p
    return r if r * r % p == n % p else None


def looks_like_public_key(secret: bytes) -> bool:
    """A PEM, OpenSSH, DER or JWK public key passed where an HMAC secret belongs (the algorithm-confusion attack:
    a token signed with HS256 using the public key as the secret)."""
    head = secret.lstrip()[:40]
    if head.startswith((b"-----BEGIN", b"ssh-rsa", b"ssh-ed25519", b"ecdsa-sha2-")) or b"PUBLIC KEY" in head:
        return True
    if secret[:1] == b"\x30":                       # DER: SubjectPublicKeyInfo, or a PKCS#1 RSA public key
        for load in (serialization.load_der_public_key, _load_pkcs1_der):
            try:
                load(secret)
                return True
            except (ValueError, TypeError, UnsupportedAlgorithm):
                pass
    if secret.lstrip()[:1] == b"{":                 # a JWK as JSON text
        try:
            return "kty" in _impl.parse_json_object(secret)
        except ValueError:
            return False
    return False


def _load_pkcs1_der(der: bytes) -> Any:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    # PKCS#1 RSAPublicKey inside a SubjectPublicKeyInfo with the rsaEncryption algorithm identifier
    body = b"\x00" + der
    spki = _der(0x30, _der(0x30, bytes.fromhex("06092a864886f70d0101010500")) + _der(0x03, body))
    return load_der_public_key(spki)


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content
