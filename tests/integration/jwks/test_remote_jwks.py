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


# -- one deadline per download, one download at a time (issue: a slow JWKS host made Kong skip authentication) ------
def test_a_host_trickling_its_answer_is_cut_at_the_timeout(server):
    """Each read got a byte in time, so a per-read timeout never fired: the download (and the request waiting on
    it) lasted as long as the host liked. The whole download now has one deadline."""
    server.keys = [jwk("P-256", kid="a")]
    server.trickle = 0.05                 # ~300 bytes: ~15 s trickled
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=0, timeout=0.5)
    started = time.monotonic()
    assert remote.refresh() is False
    assert time.monotonic() - started < 3.0
    assert "longer than 0.5 s" in remote.last_error


def test_redirects_are_followed_three_times_at_most(server):
    server.keys = [jwk("P-256", kid="a")]
    server.redirect = server.url.replace("/jwks.json", "/hop-{n}")  # every path but /moved redirects: an endless chain
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=0, timeout=2)
    assert remote.refresh() is False
    assert server.requests <= 4


def test_concurrent_requests_wait_for_the_first_download(server):
    """Twelve requests right after a start: 11 of them got UnknownKey (a 401 for a valid token) while the first
    download was under way. Now they wait for it (bounded by its deadline), and it is the only one."""
    import threading

    server.keys = [jwk("P-256", kid="a")]
    server.delay = 0.5
    remote = fg.RemoteKeySet(server.url, timeout=3)
    verifier = fg.JWTVerifier(remote)
    token = es("a")
    results = []

    def verify():
        try:
            results.append(verifier.verify(token, now=NOW)["sub"])
        except fg.InvalidToken as exc:
            results.append(exc.code)

    threads = [threading.Thread(target=verify) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["alice"] * 12 and server.requests == 1


def test_a_first_download_that_fails_is_retried_within_seconds(server):
    """With no key set yet, a failed download meant UnknownKey for everyone for min_refetch_interval (30 s). It is
    retried after 1, 2, 4 ... s instead."""
    server.keys = [jwk("P-256", kid="a")]
    server.status = 500
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=30, timeout=2)
    verifier = fg.JWTVerifier(remote)
    with pytest.raises(fg.UnknownKey):
        verifier.verify(es("a"), now=NOW)
    server.status = 200
    with pytest.raises(fg.UnknownKey):
        verifier.verify(es("a"), now=NOW)             # within the first second: not retried yet
    assert server.requests == 1
    time.sleep(1.1)
    assert verifier.verify(es("a"), now=NOW)["sub"] == "alice"
    assert server.requests == 2


def test_an_unchanged_body_is_not_parsed_again(server, caplog):
    """Every refresh parsed the body before comparing it with the last one (and checked every key again)."""
    weak = {"kty": "RSA", "kid": "weak", "n": "AQAB" * 40, "e": "AQAB"}     # refused at each parse, with a log line
    server.keys = [jwk("P-256", kid="a"), weak]
    remote = fg.RemoteKeySet(server.url, min_refetch_interval=0, timeout=2)
    caplog.set_level(logging.WARNING, logger="fastguard.jwks")
    for _ in range(3):
        assert remote.refresh() is True
    assert server.requests == 3 and remote.version == 1
    assert len([r for r in caplog.records if "'weak'" in r.getMessage()]) == 1
