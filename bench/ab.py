"""Before/after in one run: the hot paths of two fastguard builds, measured alternately on this machine.

    python -m bench.ab OLD_PYTHON NEW_PYTHON [--runs 3] [--redis redis://127.0.0.1:6379/0]

Each PYTHON is the interpreter of a virtualenv with one build installed (e.g. a clone of an older commit with
`pip install -e .`). The probe (this file run with `--probe`) measures, best of several rounds: a hot `hit`
(one key, fixed window), a cached `verify` (RS256), a strict Redis `hit` (1,000 keys in turn), and one event of
`fastguard-rate-limiting` and of `fastguard-jwt` through a real `fastguard kong-server` (Kong's side played by
fastguard.kong.client). The builds run alternately `--runs` times; the table gives each one's best and the ratio
new / old (below 1: the new build is faster). Shared machines are noisy: compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def _best(fn, n: int, rounds: int = 7) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) / n)
    return min(out)


def _rs256_token_and_jwks() -> tuple[str, str]:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key = rsa.generate_private_key(65537, 2048)
    n = key.public_key().public_numbers()
    jwks = json.dumps({"keys": [{"kty": "RSA", "kid": "r", "alg": "RS256", "e": b64(n.e.to_bytes(3, "big")),
                                 "n": b64(n.n.to_bytes(256, "big"))}]})
    head = b64(json.dumps({"alg": "RS256", "kid": "r"}).encode())
    body = b64(json.dumps({"sub": "a", "iss": "i", "exp": int(time.time()) + 3600}).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(sig)}", jwks


def probe(redis_url: str) -> dict[str, float]:
    import fastguard as fg
    from fastguard.kong.client import fastguard_server
    from fastguard.redis import RedisStore

    res: dict[str, float] = {}
    hit = fg.RateLimiter("100000000/minute", algorithm="fixed_window").hit

    def hot() -> None:
        for _ in range(200_000):
            hit("consumer-42")

    res["hot hit (ns)"] = _best(hot, 200_000) * 1e9

    token, jwks = _rs256_token_and_jwks()
    verify = fg.JWTVerifier(fg.KeySet.from_jwks(jwks)).verify
    verify(token)

    def cached() -> None:
        for _ in range(200_000):
            verify(token)

    res["cached verify RS256 (ns)"] = _best(cached, 200_000) * 1e9

    store = RedisStore.from_url(redis_url, prefix=f"ab{time.time_ns()}")
    strict = fg.RateLimiter("100000/minute", algorithm="sliding_window", store=store).hit
    keys = [f"c-{i}" for i in range(1000)]

    def redis_hits() -> None:
        for k in keys:
            strict(k)

    res["strict Redis hit (µs)"] = _best(redis_hits, 1000) * 1e6

    for name, config, pdk in (
            ("fastguard-rate-limiting", {"minute": 10**9, "limit_by": "ip"},
             {"kong.client.get_forwarded_ip": "10.0.0.1"}),
            ("fastguard-jwt", {"jwks": jwks, "key_claim_name": "sub", "uri_param_names": []},
             {"kong.request.get_headers": {"authorization": f"Bearer {token}"}})):
        server = fastguard_server(name, tempfile.mkdtemp(prefix="fg-ab-"))
        try:
            client = server.client(1)
            iid = client.start(name, config)

            def events(client=client, iid=iid, pdk=pdk) -> None:
                for _ in range(1000):
                    client.event(iid, pdk)

            res[f"Kong {name} event (µs)"] = _best(events, 1000, 5) * 1e6
            client.close()
        finally:
            server.stop()
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("old", nargs="?", help="the interpreter of the build before")
    parser.add_argument("new", nargs="?", help="the interpreter of the build after")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.redis)))
        return 0
    if not args.old or not args.new:
        parser.error("give the two interpreters: OLD_PYTHON NEW_PYTHON")
    best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
    for run in range(args.runs):
        for label, python in (("old", args.old), ("new", args.new)):
            out = subprocess.run([python, __file__, "--probe", "--redis", args.redis], capture_output=True,
                                 text=True, timeout=600, cwd=tempfile.gettempdir())
            if out.returncode != 0:
                sys.stderr.write(out.stderr)
                return 1
            for name, value in json.loads(out.stdout.strip().splitlines()[-1]).items():
                best[label][name] = min(value, best[label].get(name, value))
            print(f"run {run + 1}/{args.runs} {label} done", file=sys.stderr)
    print("| figure (best of each build) | before | after | after / before |\n|---|---:|---:|---:|")
    for name, old in best["old"].items():
        new = best["new"][name]
        print(f"| {name} | {old:,.1f} | {new:,.1f} | {new / old:.2f}× |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
