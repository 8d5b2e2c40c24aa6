"""TLS and ACL users on the lean client, against a real redis-server listening with TLS (certificates made here)."""

from __future__ import annotations

import logging
import time
import uuid

import pytest

import fastguard as fg
from fastguard.redis import RedisStore
from fastguard.testing.servers import RedisProcess
from fastguard.testing.tls import make_certificates


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("tls"))
    files = make_certificates(folder, ("localhost", "127.0.0.1"))
    other = make_certificates(folder, ("localhost",), tag="-other")   # another CA: its certificate proves nothing
    server = RedisProcess(tls=files, extra=["--user", "alice", "on", ">s3cret", "~*", "&*", "+@all"])
    server.files, server.other = files, other
    yield server
    server.stop()


def limiter(url, on_error="deny", **options):
    store = RedisStore.from_url(url, prefix=f"t{uuid.uuid4().hex[:10]}", timeout=1, connect_timeout=1, **options)
    return fg.RateLimiter("3/minute", algorithm="fixed_window", store=store, on_error=on_error)


def test_tls_decides_strictly_on_the_lean_client(tls_server):
    lim = limiter(f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_ca_certs={tls_server.files.ca}")
    assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    st = lim.stats()
    assert st["client"] == "fastguard wire" and st["redis_up"] and st["redis_errors"] == 0
    assert "tls://" in repr(lim._table.store.wire)


def test_tls_options_as_arguments_and_valkeys_alias(tls_server):
    lim = limiter(f"valkeys://127.0.0.1:{tls_server.tls_port}/0", ssl_ca_certs=tls_server.files.ca)
    assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    assert lim.stats()["client"] == "fastguard wire"


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_a_certificate_from_another_ca_is_refused(tls_server, on_error, caplog):
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    lim = limiter(f"rediss://127.0.0.1:{tls_server.tls_port}/0?ssl_ca_certs={tls_server.other.ca}", on_error)
    assert [lim.hit("k").allowed for _ in range(3)] == [on_error == "allow"] * 3
    st = lim.stats()
    assert st["redis_up"] is False and "certificate verify failed" in st["last_error"], st
    assert len([r for r in caplog.records if r.name == "fastguard.redis"]) == 1


def test_a_host_name_mismatch_is_refused_unless_verification_is_turned_off(tmp_path):
    named = make_certificates(str(tmp_path), ("redis.example",))
    server = RedisProcess(tls=named)
    try:
        url = f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs={named.ca}"
        lim = limiter(url)
        assert lim.hit("k").allowed is False
        assert "match" in lim.stats()["last_error"] or "mismatch" in lim.stats()["last_error"], lim.stats()
        # An operator who knows what they do can switch the host-name check off (the CA is still checked).
        loose = limiter(url + "&ssl_check_hostname=false")
        assert [loose.hit("k").allowed for _ in range(4)] == [True, True, True, False]
        assert loose.stats()["client"] == "fastguard wire"
    finally:
        server.stop()


def test_acl_user_on_the_lean_client_and_a_wrong_password(tls_server, caplog):
    lim = limiter(f"redis://alice:s3cret@127.0.0.1:{tls_server.port}/0")
    assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    assert lim.stats()["client"] == "fastguard wire"
    same = limiter(f"redis://127.0.0.1:{tls_server.port}/0", username="alice", password="s3cret")
    assert same.hit("k").allowed
    caplog.set_level(logging.WARNING, logger="fastguard.redis")
    wrong = limiter(f"redis://alice:nope@127.0.0.1:{tls_server.port}/0", on_error="deny")
    assert [wrong.hit("k").allowed for _ in range(3)] == [False] * 3
    st = wrong.stats()
    assert st["redis_up"] is False and ("WRONGPASS" in st["last_error"] or "Authentication" in st["last_error"]), st
    lines = [r.getMessage() for r in caplog.records if r.name == "fastguard.redis"]
    assert len(lines) == 1 and "WRONGPASS" in lines[0]


def test_acl_and_tls_together(tls_server):
    lim = limiter(f"rediss://alice:s3cret@127.0.0.1:{tls_server.tls_port}/0?ssl_ca_certs={tls_server.files.ca}")
    assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]
    assert lim.stats()["client"] == "fastguard wire"


def test_valkey_aliases_of_plain_urls(redis_server):
    lim = limiter(redis_server.url.replace("redis://", "valkey://"))
    assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]


def test_server_name_is_sent_and_checked_instead_of_the_host(tmp_path, caplog):
    """A certificate for redis.example on a server reached by address: server_name (URL query or argument) makes
    both the lean client and redis-py's connections present that name and check the certificate against it."""
    named = make_certificates(str(tmp_path), ("redis.example",))
    server = RedisProcess(tls=named)
    try:
        url = f"rediss://127.0.0.1:{server.tls_port}/0?ssl_ca_certs={named.ca}"
        for lim in (limiter(url + "&server_name=redis.example"), limiter(url, server_name="redis.example")):
            assert [lim.hit("k").allowed for _ in range(4)] == [True, True, True, False]
            assert lim.stats()["client"] == "fastguard wire" and lim.stats()["redis_errors"] == 0
            lim.reset("k")                                  # through redis-py: its connections check the name too
            assert lim.hit("k").allowed
        wrong = limiter(url + "&server_name=other.example")
        assert wrong.hit("k").allowed is False and "other.example" in wrong.stats()["last_error"]
        with pytest.raises(fg.StoreError):
            wrong.reset("k")
    finally:
        server.stop()


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0?server_name=a.example",
                                 "redis+cluster://127.0.0.1:7000?server_name=a.example",
                                 "rediss+sentinel://127.0.0.1:26379/svc?server_name=a.example"])
def test_server_name_outside_one_tls_server_is_refused(url):
    with pytest.raises(ValueError, match="server_name"):
        RedisStore.from_url(url)


def test_sentinels_are_asked_over_tls_with_the_same_settings(tls_server, tmp_path):
    """rediss+sentinel:// asked the sentinels in clear (anyone on the path could name the master, which then
    received the password): here the only sentinel listens with TLS alone, so a plaintext question gets nothing."""
    import subprocess

    from fastguard.testing.servers import REDIS_SERVER, free_port

    files = tls_server.files
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port 0\nbind 127.0.0.1\ndir {tmp_path}\ntls-port {port}\ntls-cert-file {files.cert}\n"
                    f"tls-key-file {files.key}\ntls-ca-cert-file {files.ca}\ntls-auth-clients no\n"
                    "tls-replication yes\n"
                    f"sentinel monitor svc 127.0.0.1 {tls_server.tls_port} 1\n"
                    "sentinel auth-user svc alice\nsentinel auth-pass svc s3cret\n")
    sentinel = subprocess.Popen([REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        url = f"rediss+sentinel://alice:s3cret@127.0.0.1:{port}/svc?ssl_ca_certs={files.ca}"
        deadline = time.monotonic() + 10
        while True:                                   # the sentinel's first look at the master
            lim = limiter(url)
            d = lim.hit("k")
            if lim.stats()["redis_up"] or time.monotonic() > deadline:
                break
            lim.close()
            time.sleep(0.2)
        assert lim.stats()["redis_up"] and d.allowed and d.remaining == 2, lim.stats()
        lim.close()
    finally:
        sentinel.terminate()
        sentinel.wait(10)
