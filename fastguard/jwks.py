"""Verification keys: KeySet (JWK, JWKS, PEM, secrets) and RemoteKeySet (a JWKS over HTTP(S), with rotation).

The algorithm of every verification is fixed by the key, never by the token (RFC 8725 §3.1): a key with `alg` is
used with that algorithm only; a key without `alg` with the algorithms that fit its type. Keys that cannot be used
safely are refused when the set is built, with `InvalidKey` naming the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from fastguard.corechoice import core as _impl
from fastguard.errors import DisallowedAlgorithm, InvalidKey, UnknownKey
from fastguard.keysafety import (
    MAX_RSA_BITS,
    MAX_RSA_EXPONENT_BITS,
    MIN_RSA_BITS,
    looks_like_public_key,
    rsa_modulus_problem,
    small_order,
)

__all__ = ["Key", "KeySet", "RemoteKeySet", "ALGORITHMS"]

log = logging.getLogger("fastguard.jwks")

_SHA = {256: hashes.SHA256, 384: hashes.SHA384, 512: hashes.SHA512}
_HMAC = {"HS256": ("sha256", 32), "HS384": ("sha384", 48), "HS512": ("sha512", 64)}
_RSA = {f"{p}{b}": (p, b) for p in ("RS", "PS") for b in (256, 384, 512)}
# ES algorithm -> (curve name, cryptography curve, hash bits, coordinate bytes)
_EC = {"ES256": ("P-256", ec.SECP256R1, 256, 32), "ES384": ("P-384", ec.SECP384R1, 384, 48),
       "ES512": ("P-521", ec.SECP521R1, 512, 66), "ES256K": ("secp256k1", ec.SECP256K1, 256, 32)}
_EC_BY_CURVE = {v[0]: k for k, v in _EC.items()}
_OKP = {"Ed25519": (ed25519.Ed25519PublicKey, 32, 64), "Ed448": (ed448.Ed448PublicKey, 57, 114)}

#: Every JWS algorithm fastguard verifies. `none` is never among them.
ALGORITHMS = frozenset([*_HMAC, *_RSA, *_EC, "EdDSA", "Ed25519", "Ed448"])

def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidKey(f"{what} must be a base64url string")
    try:
        return _impl.b64url_decode(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise InvalidKey(f"{what} is not canonical base64url") from None


class Key:
    """One verification key: its kid, its type and the algorithms it may verify."""

    __slots__ = ("kid", "kty", "algorithms", "_verifier")

    def __init__(self, kid: str | None, kty: str, algorithms: Iterable[str], verifier: Any) -> None:
        self.kid = kid
        self.kty = kty
        self.algorithms = frozenset(algorithms)
        self._verifier = verifier

    def __repr__(self) -> str:
        return f"<Key kid={self.kid!r} kty={self.kty} algorithms={sorted(self.algorithms)}>"

    # -- builders ------------------------------------------------------------------------------------------------
    @classmethod
    def from_secret(cls, secret: bytes, alg: str | None = None, kid: str | None = None) -> Key:
        if isinstance(secret, str):
            secret = secret.encode("utf-8")
        if not isinstance(secret, (bytes, bytearray)):
            raise InvalidKey("an HMAC secret must be bytes")
        secret = bytes(secret)
        if looks_like_public_key(secret):
            raise InvalidKey("this HMAC secret is a public key: a public key is never an HMAC secret")
        if alg is not None:
            if alg not in _HMAC:
                raise InvalidKey(f"alg {alg!r} is not an HMAC algorithm (HS256, HS384, HS512)")
            algs = [alg]
        else:
            algs = [a for a, (_, size) in _HMAC.items() if len(secret) >= size]
        if not secret:
            raise InvalidKey("the HMAC secret is empty")
        short = [a for a in algs if len(secret) < _HMAC[a][1]]
        if short or not algs:
            need = _HMAC[short[0] if short else "HS256"][1]
            raise InvalidKey(f"HMAC secret of {len(secret)} bytes is shorter than the hash ({need} bytes) of "
                             f"{short[0] if short else 'HS256'}")

        # HMAC (RFC 2104) with the padded key blocks hashed once: a verification is then two copies of a hash
        # state, not a new HMAC context (half the time).
        pads = {}
        for a in algs:
            new = getattr(hashlib, _HMAC[a][0])
            block = new().block_size
            k = new(secret).digest() if len(secret) > block else secret
            k = k.ljust(block, b"\0")
            pads[a] = (new(bytes(b ^ 0x36 for b in k)), new(bytes(b ^ 0x5C for b in k)))

        def verify(a: str, data: bytes, sig: bytes) -> bool:
            inner, outer = pads[a]
            i = inner.copy()
            i.update(data)
            o = outer.copy()
            o.update(i.digest())
            return hmac.compare_digest(o.digest(), sig)

        return cls(kid, "oct", algs, verify)

    @classmethod
    def from_public_key(cls, public_key: Any, alg: str | None = None, kid: str | None = None) -> Key:
        """A key from a `cryptography` public key object."""
        if isinstance(public_key, rsa.RSAPublicKey):
            nums = public_key.public_numbers()
            if public_key.key_size < MIN_RSA_BITS:
                raise InvalidKey(f"RSA key of {public_key.key_size} bits: at least {MIN_RSA_BITS} are required")
            if public_key.key_size > MAX_RSA_BITS:
                raise InvalidKey(f"RSA key of {public_key.key_size} bits: at most {MAX_RSA_BITS} are accepted")
            if nums.e < 3 or nums.e % 2 == 0 or nums.e.bit_length() > MAX_RSA_EXPONENT_BITS:
                raise InvalidKey(f"RSA public exponent {nums.e} is not allowed")
            problem = rsa_modulus_problem(nums.n)
            if problem is not None:
                raise InvalidKey(f"RSA key is unsafe: {problem}")
            algs = _check_alg(alg, _RSA, "RSA")
            size = (public_key.key_size + 7) // 8
            # Padding and hash objects built once per algorithm: building them per call costs more than parsing.
            schemes = {}
            for a in algs:
                kind, bits = _RSA[a]
                h = _SHA[bits]()
                schemes[a] = (padding.PKCS1v15() if kind == "RS" else
                              padding.PSS(padding.MGF1(_SHA[bits]()), h.digest_size), h)
            rsa_verify = public_key.verify

            def verify(a: str, data: bytes, sig: bytes) -> bool:
                if len(sig) != size:
                    return False
                pad, h = schemes[a]
                try:
                    rsa_verify(sig, data, pad, h)
                    return True
                except _CryptoInvalidSignature:
                    return False

            return cls(kid, "RSA", algs, verify)
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            es = {v[1].name: k for k, v in _EC.items()}.get(public_key.curve.name)
            if es is None:
                raise InvalidKey(f"EC curve {public_key.curve.name} is not used by any JWS algorithm")
            algs = _check_alg(alg, {es: None}, f"an EC key on {_EC[es][0]}")
            _, _, bits, width = _EC[es]
            scheme = ec.ECDSA(_SHA[bits]())
            ec_verify = public_key.verify

            def verify(a: str, data: bytes, sig: bytes) -> bool:
                if len(sig) != 2 * width:      # JWS uses fixed-width r || s, never DER
                    return False
                r, s = int.from_bytes(sig[:width], "big"), int.from_bytes(sig[width:], "big")
                if r == 0 or s == 0:
                    return False
                try:
                    ec_verify(encode_dss_signature(r, s), data, scheme)
                    return True
                except _CryptoInvalidSignature:
                    return False

            return cls(kid, "EC", algs, verify)
        for curve, (klass, _, sig_len) in _OKP.items():
            if isinstance(public_key, klass):
                raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                if small_order(curve, raw):
                    raise InvalidKey(f"{curve} public key of small order (it would verify forged signatures)")
                algs = _check_alg(alg, {"EdDSA": None, curve: None}, f"an {curve} key")

                def verify(a: str, data: bytes, sig: bytes, _k: Any = public_key, _n: int = sig_len) -> bool:
                    if len(sig) != _n:
                        return False
                    try:
                        _k.verify(sig, data)
                        return True
                    except _CryptoInvalidSignature:
                        return False

                return cls(kid, "OKP", algs, verify)
        raise InvalidKey(f"unsupported key type {type(public_key).__name__}")

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> Key:
        """A key from one JWK (a dict). Raises InvalidKey naming what is wrong."""
        if not isinstance(jwk, Mapping):
            raise InvalidKey("a JWK must be a JSON object")
        kid = jwk.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidKey("kid must be a string")
        label = f"key {kid!r}" if kid is not None else "key"
        use = jwk.get("use")
        if use is not None and use != "sig":
            raise InvalidKey(f"{label}: use is {use!r}, not 'sig'")
        ops = jwk.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise InvalidKey(f"{label}: key_ops {ops!r} does not include 'verify'")
        alg = jwk.get("alg")
        if alg is not None and (not isinstance(alg, str) or alg not in ALGORITHMS):
            raise InvalidKey(f"{label}: alg {alg!r} is not a JWS signature algorithm")
        kty = jwk.get("kty")
        try:
            if kty == "oct":
                return cls.from_secret(_b64(jwk.get("k"), f"{label}: k"), alg=alg, kid=kid)
            if kty == "RSA":
                n_bytes, e_bytes = _b64(jwk.get("n"), f"{label}: n"), _b64(jwk.get("e"), f"{label}: e")
                # sizes first, from the encoding: no arithmetic on a modulus larger than any we would use
                if len(n_bytes.lstrip(b"\0")) > MAX_RSA_BITS // 8:
                    raise InvalidKey(f"RSA key larger than {MAX_RSA_BITS} bits: at most {MAX_RSA_BITS} are "
                                     "accepted")
                if len(e_bytes.lstrip(b"\0")) > MAX_RSA_EXPONENT_BITS // 8:
                    raise InvalidKey(f"RSA public exponent larger than {MAX_RSA_EXPONENT_BITS} bits")
                n, e = int.from_bytes(n_bytes, "big"), int.from_bytes(e_bytes, "big")
                try:
                    public = rsa.RSAPublicNumbers(e, n).public_key()
                except ValueError as exc:
                    raise InvalidKey(f"{label}: not a valid RSA public key ({exc})") from None
                return cls.from_public_key(public, alg=alg, kid=kid)
            if kty == "EC":
                crv = jwk.get("crv")
                es = _EC_BY_CURVE.get(crv) if isinstance(crv, str) else None
                if es is None:
                    raise InvalidKey(f"{label}: unsupported EC curve {crv!r}")
                width = _EC[es][3]
                x, y = _b64(jwk.get("x"), f"{label}: x"), _b64(jwk.get("y"), f"{label}: y")
                if len(x) != width or len(y) != width:
                    raise InvalidKey(f"{label}: x and y must be {width} bytes on {crv}")
                try:
                    public = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                           _EC[es][1]()).public_key()
                except ValueError:
                    raise InvalidKey(f"{label}: the point is not on {crv}") from None
                return cls.from_public_key(public, alg=alg, kid=kid)
            if kty == "OKP":
                crv = jwk.get("crv")
                if crv not in _OKP:
                    raise InvalidKey(f"{label}: unsupported OKP curve {crv!r} (Ed25519 or Ed448)")
                klass, size, _ = _OKP[crv]
                x = _b64(jwk.get("x"), f"{label}: x")
                if len(x) != size:
                    raise InvalidKey(f"{label}: x must be {size} bytes for {crv}")
                try:
                    public = klass.from_public_bytes(x)
                except ValueError:
                    raise InvalidKey(f"{label}: not a valid {crv} public key") from None
                return cls.from_public_key(public, alg=alg, kid=kid)
        except InvalidKey as exc:
            text = str(exc)
            raise InvalidKey(text if text.startswith(label) else f"{label}: {text}") from None
        raise InvalidKey(f"{label}: unsupported kty {kty!r} (oct, RSA, EC or OKP)")


def _check_alg(alg: str | None, allowed: Mapping[str, Any], what: str) -> list[str]:
    if alg is None:
        return list(allowed)
    if alg not in allowed:
        raise InvalidKey(f"alg {alg!r} cannot be used with {what}")
    return [alg]


#: The most keys a key set holds. A token without `kid` is tried against every key of its algorithm, so this bounds
#: the work an unnamed token can cause (identity providers publish a handful of keys; 64 leaves room to rotate).
MAX_KEYS = 64


class KeySet:
    """An immutable set of verification keys (at most MAX_KEYS). Build it with from_jwks, from_jwk, from_secret or
    from_pem. `skipped` lists the keys of a JWKS that were left out, as (kid, reason)."""

    #: Changes whenever the keys change (always 0 here; RemoteKeySet counts refreshes that changed its keys).
    version = 0

    def __init__(self, keys: Iterable[Key], skipped: Iterable[tuple[str | None, str]] = ()) -> None:
        keys = list(keys)
        self.skipped: tuple[tuple[str | None, str], ...] = tuple(skipped)
        if not keys:
            why = "; ".join(f"{kid or 'a key without kid'}: {reason}" for kid, reason in self.skipped)
            raise InvalidKey("the key set has no key usable for signatures" + (f" ({why})" if why else ""))
        if len(keys) > MAX_KEYS:
            raise InvalidKey(f"the key set has {len(keys)} keys; at most {MAX_KEYS} are accepted")
        kinds = {k.kty == "oct" for k in keys}
        if len(kinds) > 1:
            raise InvalidKey("the key set mixes secret (oct) keys with public keys")
        by_kid: dict[str, Key] = {}
        for k in keys:
            if k.kid is not None:
                if k.kid in by_kid:
                    raise InvalidKey(f"duplicate kid {k.kid!r} in the key set")
                by_kid[k.kid] = k
        self.keys: tuple[Key, ...] = tuple(keys)
        self._by_kid = by_kid
        self._by_alg: dict[str, tuple[Key, ...]] = {}
        self._unnamed_by_alg: dict[str, tuple[Key, ...]] = {}
        for alg in ALGORITHMS:  # every candidate is tried (the set is bounded by MAX_KEYS)
            self._by_alg[alg] = tuple(k for k in keys if alg in k.algorithms)
            self._unnamed_by_alg[alg] = tuple(k for k in keys if alg in k.algorithms and k.kid is None)

    @classmethod
    def from_jwks(cls, jwks: Mapping[str, Any] | str | bytes) -> KeySet:
        """From a JWKS (dict or JSON text). An identity provider's JWKS routinely holds keys that are not for
        verifying fastguard's tokens (encryption keys, unknown types, keys too weak or unsafe to use): each is
        skipped with one log line and listed in `skipped`, and a token naming it fails with UnknownKey. The set is
        refused (InvalidKey) only when no usable key is left, or when it is ambiguous (a kid twice, secret and
        public keys mixed) or larger than MAX_KEYS."""
        if isinstance(jwks, (str, bytes, bytearray)):
            try:
                jwks = _loads_strict(jwks)
            except ValueError as exc:
                raise InvalidKey(f"the JWKS is not valid JSON: {exc}") from None
        if isinstance(jwks, Mapping) and "keys" not in jwks and "kty" in jwks:
            return cls([Key.from_jwk(jwks)])
        if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
            raise InvalidKey("a JWKS is a JSON object with a 'keys' list")
        signing = [jwk for jwk in jwks["keys"] if not _not_for_signatures(jwk)]
        if len(signing) > MAX_KEYS:  # counted before any key is parsed: parsing is the expensive part
            raise InvalidKey(f"the key set has {len(signing)} signature keys; at most {MAX_KEYS} are accepted")
        keys, skipped = [], []
        kids = [jwk.get("kid") for jwk in jwks["keys"] if isinstance(jwk, Mapping) and isinstance(jwk.get("kid"), str)]
        twice = sorted(kid for kid, n in Counter(kids).items() if n > 1)
        if twice:  # usable or not, two keys under one kid make every token naming it ambiguous
            raise InvalidKey(f"duplicate kid {twice[0]!r} in the key set")
        for jwk in jwks["keys"]:
            kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
            kid = kid if isinstance(kid, str) else None
            if _not_for_signatures(jwk):
                skipped.append((kid, "not a signature key (use / key_ops)"))
                continue
            try:
                keys.append(Key.from_jwk(jwk))
            except InvalidKey as exc:
                skipped.append((kid, str(exc)))
                log.warning("fastguard: JWKS key %s skipped: %s", repr(kid) if kid else "without kid", exc)
        return cls(keys, skipped)

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any] | str | bytes) -> KeySet:
        if isinstance(jwk, (str, bytes, bytearray)):
            try:
                jwk = _loads_strict(jwk)
            except ValueError as exc:
                raise InvalidKey(f"the JWK is not valid JSON: {exc}") from None
        return cls([Key.from_jwk(jwk)])

    @classmethod
    def from_secret(cls, secret: bytes | str, alg: str | None = "HS256", kid: str | None = None) -> KeySet:
        """An HMAC key (a str is taken as its UTF-8 bytes); at least as long as the hash."""
        return cls([Key.from_secret(secret, alg=alg, kid=kid)])

    @classmethod
    def from_pem(cls, pem: bytes | str, alg: str | None = None, kid: str | None = None) -> KeySet:
        """A PEM public key, private key (its public half is used) or X.509 certificate."""
        if isinstance(pem, str):
            pem = pem.encode("ascii")
        try:
            if b"CERTIFICATE" in pem:
                from cryptography import x509

                public = x509.load_pem_x509_certificate(pem).public_key()
            elif b"PRIVATE KEY" in pem:
                public = serialization.load_pem_private_key(pem, password=None).public_key()
            else:
                public = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise InvalidKey(f"not a usable PEM key: {exc}") from None
        return cls([Key.from_public_key(public, alg=alg, kid=kid)])

    # -- lookup --------------------------------------------------------------------------------------------------
    def candidates(self, alg: str, kid: str | None) -> tuple[Key, ...]:
        """Keys that may verify a token with this alg and kid. Raises UnknownKey / DisallowedAlgorithm."""
        if kid is not None:
            key = self._by_kid.get(kid)
            if key is not None:
                if alg not in key.algorithms:
                    raise DisallowedAlgorithm(f"key {kid!r} does not verify {alg}")
                return (key,)
            # A key given without a kid (from_secret, from_pem) answers for any kid; named keys only for theirs.
            unnamed = self._unnamed_by_alg.get(alg, ())
            if not unnamed:
                raise UnknownKey(f"no key with kid {kid!r}")
            return unnamed
        found = self._by_alg.get(alg, ())
        if not found:
            raise DisallowedAlgorithm(f"no key of this key set verifies {alg}")
        return found

    def stats(self) -> dict[str, Any]:
        """keys (how many are in use), kids, skipped (kid and reason of each key left out of a JWKS)."""
        return {"keys": len(self.keys), "kids": [k.kid for k in self.keys],
                "skipped": [{"kid": kid, "reason": reason} for kid, reason in self.skipped]}

    def __len__(self) -> int:
        return len(self.keys)

    def __repr__(self) -> str:
        return f"<KeySet {len(self.keys)} keys: {[k.kid for k in self.keys]}>"


def _not_for_signatures(jwk: Any) -> bool:
    """A JWK marked for something else than verifying signatures (use / key_ops)."""
    return isinstance(jwk, Mapping) and (jwk.get("use", "sig") != "sig" or
                                         ("key_ops" in jwk and "verify" not in (jwk.get("key_ops") or ())))


def _loads_strict(text: str | bytes | bytearray) -> Any:
    return _impl.parse_json_object(text.encode("utf-8") if isinstance(text, str) else bytes(text))


class _SafeRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to http(s), never from https down to http (keys must not travel in clear), and at
    most MAX_REDIRECTS of them."""

    max_redirections = 3

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.startswith(("http://", "https://")) or \
                (req.full_url.startswith("https://") and not newurl.startswith("https://")):
            raise urllib.error.URLError(f"refusing to follow a redirect from {req.full_url} to {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Fetch:
    """One download of a JWKS, as a whole under one deadline: the sockets it opens (redirects included) are kept,
    so that whoever waits for it can shut them at the deadline, whatever the peer trickles."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.done = threading.Event()
        self.ok = False
        self.aborted = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            aborted = self.aborted
        if aborted:
            _shut(sock)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            socks, self._socks = self._socks, []
        for sock in socks:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # a blocked read or handshake on it returns at once
    except OSError:
        pass


_CURRENT = threading.local()   # the _Fetch this thread runs (its connections register their sockets)


def _tracked_connection(*args: Any, **kwargs: Any) -> socket.socket:
    sock = socket.create_connection(*args, **kwargs)
    fetch = getattr(_CURRENT, "fetch", None)
    if fetch is not None:
        fetch.track(sock)
    return sock


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _tracked_connection


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _tracked_connection  # tracked before the TLS handshake


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: Any) -> Any:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: Any) -> Any:
        return self.do_open(_HTTPSConnection, req, context=self._context)


_OPENER = urllib.request.build_opener(_SafeRedirects, _HTTPHandler, _HTTPSHandler)


class RemoteKeySet:
    """A JWKS fetched over HTTP(S): first when a verification needs it, then every `refresh_interval` seconds by a
    background timer thread (a verification never waits for a scheduled refresh, and a key removed from the JWKS
    stops verifying within one interval even for tokens in a verifier's cache: a changed set bumps `version`,
    which empties the caches), and at once, at most every `min_refetch_interval` seconds, when a token names an
    unknown kid. A failed refresh keeps the last good set and says so in one log line per change of state.

    One download at a time, on a thread of its own; whoever needs it (the first verification, a token naming an
    unknown kid, the timer) waits for that one, never past its deadline: `timeout` seconds bound the whole download
    (connecting, up to 3 redirects, the headers and a body of at most MAX_BYTES), whatever the peer trickles. A
    download past its deadline is abandoned (its sockets shut) and the next need starts another. Until a first set
    is fetched, a failed download is retried after 1, 2, 4 ... seconds, up to `min_refetch_interval`. A body equal to
    the last one is not parsed again. `close()` stops the timer (so does garbage collection)."""

    MAX_BYTES = 1 << 20

    def __init__(self, url: str, refresh_interval: float = 300.0, min_refetch_interval: float = 30.0,
                 timeout: float = 5.0) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"RemoteKeySet needs an http:// or https:// URL, got {url!r}")
        if refresh_interval <= 0 or min_refetch_interval < 0 or timeout <= 0:
            raise ValueError("refresh_interval and timeout must be positive, min_refetch_interval not negative")
        self.url = url
        self.refresh_interval = float(refresh_interval)
        self.min_refetch_interval = float(min_refetch_interval)
        self.timeout = float(timeout)
        self.version = 0
        self._set: KeySet | None = None
        self._body = b""
        self._fetched_at = float("-inf")     # monotonic time of the last download started
        self._lock = threading.Lock()
        self._fetch: _Fetch | None = None    # the download under way, if any
        self._failures = 0                   # downloads failed in a row
        self._failing = False
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self.refreshes = 0
        self.last_error: str | None = None

    def _download(self, fetch: _Fetch) -> bytes:
        req = urllib.request.Request(self.url, headers={"Accept": "application/json"})
        _CURRENT.fetch = fetch
        try:
            with _OPENER.open(req, timeout=self.timeout) as resp:
                chunks, size = [], 0
                while True:
                    if time.monotonic() > fetch.deadline:
                        raise TimeoutError(f"the JWKS at {self.url} took longer than {self.timeout:g} s")
                    chunk = resp.read1(65536)   # what one read brings: a trickling body meets the deadline
                    if not chunk:
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > self.MAX_BYTES:
                        raise InvalidKey(f"the JWKS at {self.url} is larger than {self.MAX_BYTES} bytes")
        finally:
            _CURRENT.fetch = None
        return b"".join(chunks)

    def _run(self, fetch: _Fetch) -> None:
        """One download, on its own thread: the new set installed (parsed only when the body changed)."""
        try:
            body = self._download(fetch)
            if fetch.aborted:
                raise TimeoutError(f"the JWKS at {self.url} took longer than {self.timeout:g} s")
            fresh = None if body == self._body else KeySet.from_jwks(body)
        except (OSError, urllib.error.URLError, http.client.HTTPException, InvalidKey, ValueError) as exc:
            late = TimeoutError(f"the JWKS at {self.url} took longer than {self.timeout:g} s")
            self._failed(late if fetch.aborted else exc)
        except BaseException as exc:  # noqa: BLE001 - reported like any failure; the waiters must be woken
            self._failed(exc)
        else:
            with self._lock:
                self.refreshes += 1
                self._failures = 0
                if fresh is not None:
                    # New keys: verifiers holding cached verdicts see the new version and drop them.
                    self._set, self._body = fresh, body
                    self.version += 1
            fetch.ok = True
            if self._failing:
                self._failing = False
                log.warning("fastguard: JWKS refresh from %s works again", self.url)
            self.last_error = None
        finally:
            fetch.done.set()

    def _failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._failures += 1
        if not self._failing:
            self._failing = True
            kept = "keeping the last good key set" if self._set is not None else "no key set yet"
            log.warning("fastguard: JWKS refresh from %s failed (%s); %s", self.url, self.last_error, kept)

    def _started(self) -> _Fetch:
        """The download under way, or a new one (a download past its deadline is abandoned, not waited on)."""
        with self._lock:
            fetch = self._fetch
            if fetch is not None and not fetch.done.is_set() and time.monotonic() < fetch.deadline:
                return fetch
            if fetch is not None and not fetch.done.is_set():
                fetch.abort()
            fetch = self._fetch = _Fetch(self.timeout)
            self._fetched_at = time.monotonic()
        threading.Thread(target=self._run, args=(fetch,), name="fastguard-jwks-fetch", daemon=True).start()
        return fetch

    def _wait(self, fetch: _Fetch) -> bool:
        if not fetch.done.wait(max(0.0, fetch.deadline - time.monotonic())):
            fetch.abort()      # the download's sockets shut: its thread ends now
            fetch.done.wait(1.0)
        return fetch.ok

    def refresh(self) -> bool:
        """Fetch now (or wait for the download under way). True when it succeeded; False (and a log line on a
        change of state) on failure."""
        return self._wait(self._started())

    def _start_timer(self) -> None:
        with self._lock:
            if self._timer is not None or self._stop.is_set():
                return
            # The thread holds only a weak reference: a key set nobody uses any more is collected, and its timer ends.
            self._timer = threading.Thread(target=_refresh_loop, args=(weakref.ref(self), self._stop,
                                                                        self.refresh_interval),
                                           name="fastguard-jwks-refresh", daemon=True)
            self._timer.start()

    def close(self) -> None:
        """Stop the refresh timer (the last fetched set stays usable)."""
        self._stop.set()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)   # absent when __init__ refused its arguments
        if stop is not None:
            stop.set()

    def _retry_wait(self) -> float:
        """How long after a download the next may start on demand: min_refetch_interval, or while no set was ever
        fetched, 1, 2, 4 ... s after each failure in a row (up to min_refetch_interval)."""
        if self._set is not None or not self._failures:
            return self.min_refetch_interval
        return min(self.min_refetch_interval, float(2 ** min(self._failures - 1, 16)))

    def current(self) -> KeySet | None:
        """The key set in use (fetching it first if there is none yet; a download under way is waited for)."""
        if self._timer is None:
            self._start_timer()
        if self._set is None:
            self._renewed(self._retry_wait())
        return self._set

    def _renewed(self, interval: float) -> bool:
        """Wait for the download under way, or start one if `interval` s passed since the last began: whether
        a download succeeded."""
        fetch = self._fetch
        if fetch is not None and not fetch.done.is_set():
            return self._wait(fetch)
        if time.monotonic() - self._fetched_at < interval:
            return False
        return self.refresh()

    def stats(self) -> dict[str, Any]:
        """version, refreshes (fetches that succeeded), last_error, and the current set's keys / kids / skipped."""
        st: dict[str, Any] = {"version": self.version, "refreshes": self.refreshes, "last_error": self.last_error}
        st.update(self._set.stats() if self._set is not None else {"keys": 0, "kids": [], "skipped": []})
        return st

    def candidates(self, alg: str, kid: str | None) -> tuple[Key, ...]:
        current = self.current()
        if current is None:
            raise UnknownKey(f"no key set could be fetched from {self.url} ({self.last_error})")
        try:
            return current.candidates(alg, kid)
        except UnknownKey:
            # A new kid may mean a rotation: refetch now (or wait for the download under way), but not start one
            # more often than min_refetch_interval.
            if not self._renewed(self.min_refetch_interval):
                raise
            return self._set.candidates(alg, kid)  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<RemoteKeySet {self.url} version={self.version}>"


def _refresh_loop(ref: weakref.ReferenceType[RemoteKeySet], stop: threading.Event, interval: float) -> None:
    while not stop.wait(interval):
        keys = ref()
        if keys is None:
            return
        try:
            keys.refresh()
        except Exception:  # noqa: BLE001 - refresh() reports its own failures; the timer must go on
            log.exception("fastguard: JWKS refresh of %s failed unexpectedly", keys.url)
        del keys
