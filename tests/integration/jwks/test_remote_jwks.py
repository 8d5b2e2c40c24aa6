"""RemoteKeySet against a real HTTP server on loopback: rotation, unknown kid, server down, slow server."""

import logging
import time

import pytest
from support.jwks_server import JWKSServer

import fastguard as fg
from fastguard.testing.tokens import jwk, private_key, sign

NOW = 1_800_000_000.0
CLAIMS = {"sub": "alice", "exp": NOW + 600}


@pytest.fixture
def server():
    s = JWKSServer()
    yield s
    s.stop()


def es(kid, curve="P-256"):
    return sign(CLAIMS, "ES256", header={"alg": "ES256", "kid": kid}, key=private_key(curve))


def test_rotation_and_unknown_kid(server):
    server.keys = [jwk("P-256", kid="old", alg="ES256")]
    remote = fg.RemoteKeySet(server.url, refresh_interval=3600, min_refetch_interval=0.2, timeout=2)
    v = fg.JWTVerifier(remote)
    old_token = es("old")
    assert v.verify(old_token, now=NOW)["sub"] == "alice"
    assert server.requests == 1
    # The issuer rotates: a token with the new kid triggers one refetch, then verifies.
    server.keys = [jwk("secp256k1", kid="new", alg="ES256K")]
    new_token = sign(CLAIMS, "ES256K", header={"alg": "ES256K", "kid": "new"}, key=private_key("secp256k1"))
    time.sleep(0.25)
    assert v.verify(new_token, now=NOW)["sub"] == "alice"
    assert server.requests == 2 and remote.version == 2
    # The old key is gone: its token stops verifying at once, although it was cached.
    with pytest.raises(fg.UnknownKey):
        v.verify(old_token, now=NOW)


def test_unknown_kids_refetch_at_most_once_per_interval(server):
    server.keys = [jwk("P-256", kid="a")]
    remote = fg.RemoteKeySet(server.url, refresh_interval=3600, min_refetch_interval=30)
    v = fg.JWTVerifier(remote)
    for i in range(20):
        with pytest.raises(fg.UnknownKey):
            v.verify(es(f"nope-{i}"), now=NOW)
    assert server.requests == 1


def test_server_down_keeps_the_last_good_set(server, caplog):
    server.keys = [jwk("P-256", kid="a")]
    remote = fg.RemoteKeySet(server.url, refresh_interval=0.05, min_refetch_interval=0, timeout=1)
    v = fg.JWTVerifier(remote, cache_size=0)
    assert v.verify(es("a"), now=NOW)["sub"] == "alice"
    server.status = 500
    caplog.set_level(logging.WARNING, logger="fastguard.jwks")
    for _ in range(5):
        time.sleep(0.06)
        assert v.verify(es("a"), now=NOW)["sub"] == "alice"   # still served from the last good set
    deadline = time.monotonic() + 2
    while remote.last_error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert remote.last_error is not None
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1                                  # one line per change of state, not per refresh
    server.status = 200
    deadline = time.monotonic() + 2
    while remote.last_error is not None and time.monotonic() < deadline:
        v.verify(es("a"), now=NOW)
        time.sleep(0.06)
    assert remote.last_error is None
    assert any("works again" in r.getMessage() for r in caplog.records)


def test_first_fetch_failing_is_unknown_key_not_a_crash(server):
    server.stop()
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=30, timeout=0.5)
    with pytest.raises(fg.UnknownKey, match="no key set could be fetched"):
        fg.JWTVerifier(remote).verify(es("a"), now=NOW)


def test_slow_server_times_out(server):
    server.keys = [jwk("P-256", kid="a")]
    server.delay = 3.0
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=0, timeout=0.3)
    t0 = time.monotonic()
    assert remote.refresh() is False
    assert time.monotonic() - t0 < 2.0
    assert "timed out" in remote.last_error or "Timeout" in remote.last_error


def test_bad_urls_are_refused():
    for url in ("file:///etc/passwd", "ftp://x", "", None):
        with pytest.raises(ValueError):
            fg.RemoteKeySet(url)


def test_redirects_only_to_http_and_https(server):
    server.keys = [jwk("P-256", kid="a")]
    server.redirect = "/moved"
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=0, timeout=2)
    assert remote.refresh() is True and len(remote.current()) == 1
    server.redirect = "ftp://127.0.0.1/keys"
    refused = fg.RemoteKeySet(server.url, min_refetch_interval=0, timeout=2)
    assert refused.refresh() is False and "refusing to follow a redirect" in refused.last_error
