"""atheris target: any input, as a token, only ever raises fastguard.InvalidToken subclasses.

    pip install atheris && python fuzz/fuzz_jwt.py -atheris_runs=1000000

Seeds are valid tokens of each algorithm family, so the mutations explore near-valid tokens too.
"""

import sys

import atheris

with atheris.instrument_imports():
    import fastguard as fg

from fastguard.testing.tokens import jwk, private_key, sign  # noqa: E402

NOW = 1_800_000_000.0
CLAIMS = {"sub": "alice", "exp": NOW + 600, "aud": "api"}
HS = fg.JWTVerifier(fg.KeySet.from_secret(b"s" * 64, alg=None), audience="api", cache_size=1000)
PUB = fg.JWTVerifier(fg.KeySet.from_jwks({"keys": [jwk("RSA", kid="r"), jwk("P-256", kid="e"),
                                                   jwk("Ed25519", kid="d")]}), audience="api", cache_size=1000)
SEEDS = [sign(CLAIMS, "HS256").encode(), sign(CLAIMS, "ES256", header={"alg": "ES256", "kid": "e"}).encode(),
         sign(CLAIMS, "RS256", header={"alg": "RS256", "kid": "r"}).encode(),
         sign(CLAIMS, "EdDSA", header={"alg": "EdDSA", "kid": "d"}, key=private_key("Ed25519")).encode()]


def one(data: bytes) -> None:
    if data and data[0] < 16:        # a quarter of the runs: splice the input into a valid token
        seed = SEEDS[data[0] % len(SEEDS)]
        at = int.from_bytes(data[1:3] or b"\0", "little") % len(seed)
        data = seed[:at] + data[3:] + seed[at + len(data[3:]):]
    for token in (data, data.decode("latin-1")):
        for v in (HS, PUB):
            try:
                v.verify(token, now=NOW)
            except fg.InvalidToken:
                pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
