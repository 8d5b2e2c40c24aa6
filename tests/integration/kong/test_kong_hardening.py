"""The plugin server under hostile input: bytes Kong really sends, calls Kong never makes, restarts, floods.

Every test here speaks raw MessagePack over the real socket of a real `fastguard kong-server` process. A str with
surrogate escapes ("\\udcff") stands for the raw bytes Kong's lua-MessagePack sends inside a msgpack str.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import textwrap
import time

import msgpack
import pytest

from fastguard.kong.client import RPCError, fastguard_server
from fastguard.testing.tokens import jwk, sign

JWKS = json.dumps({"keys": [jwk("RSA", kid="rsa1", alg="RS256")]})
NOW = int(time.time())
JUNK = "\udcff\udcfe"   # the bytes ff fe: not UTF-8


def token(**claims):
    payload = {"iss": "https://idp.example", "sub": "alice", "exp": NOW + 600, "iat": NOW, **claims}
    return sign(payload, "RS256", {"alg": "RS256", "typ": "JWT", "kid": "rsa1"})



def raw_call(sock: socket.socket, payload: bytes, timeout: float = 5.0):
    """Send raw bytes, read one answer (skipping notifications); None when the server closed the connection."""
    sock.settimeout(timeout)
    sock.sendall(payload)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape")
    while True:
        for message in unpacker:
            if message[0] == 2:
                continue
            return message
        data = sock.recv(65536)
        if not data:
            return None
        unpacker.feed(data)


def connect(server) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(server.socket)
    return s


# -- 1. bytes that are not UTF-8 never switch a plugin off -----------------------------------------------------------
def test_a_junk_header_reaches_the_jwt_plugin_and_a_valid_token_still_passes(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS})
    o = client.event(iid, {"kong.request.get_headers": {"authorization": f"Bearer {token()}", "x-junk": JUNK}})
    assert o.status == 200
    # Without a token, the junk header must still end in Kong's 401 (before: the connection dropped -> fail open).
    o = client.event(iid, {"kong.request.get_headers": {"x-junk": JUNK}})
    assert o.status == 401 and o.exit[1] == {"message": "Unauthorized"}
    client.close()


def test_a_token_made_of_undecodable_bytes_is_malformed(jwt_server, guard):
    for server, name in ((jwt_server, "fastguard-jwt"), (guard, "fastguard")):
        client = server.client()
        iid = client.start(name, {"jwks": JWKS, **({"minute": 100} if name == "fastguard" else {})})
        o = client.event(iid, {"kong.request.get_headers": {"authorization": "Bearer \udcff"}})
        assert o.status == 401 and o.exit[1] == {"message": "Bad token; invalid JSON"}, o
        o = client.event(iid, {"kong.request.get_headers": {"authorization": f"Bearer {token()}\udcff"}})
        assert o.status == 401, o
        client.close()


def test_a_junk_query_string_reaches_the_jwt_plugin(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS})
    o = client.event(iid, {"kong.request.get_headers": {}, "kong.request.get_query": {"x": JUNK}})
    assert o.status == 401 and o.exit[1] == {"message": "Unauthorized"}
    o = client.event(iid, {"kong.request.get_headers": {}, "kong.request.get_query": {"x": JUNK, "jwt": token()}})
    assert o.status == 200
    o = client.event(iid, {"kong.request.get_headers": {}, "kong.request.get_query": {"jwt": JUNK}})
    assert o.status == 401
    client.close()


def test_a_key_made_of_undecodable_bytes_is_still_limited(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 3, "limit_by": "header", "header_name": "x-tenant",
                                                    "fault_tolerant": True})
    statuses = [client.event(iid, {"kong.request.get_header": JUNK}).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    # Other bytes are another caller.
    assert client.event(iid, {"kong.request.get_header": "\udcfe"}).status == 200
    client.close()


def test_the_combined_plugin_with_a_junk_header(guard):
    client = guard.client()
    iid = client.start("fastguard", {"jwks": JWKS, "minute": 2})
    headers = {"authorization": f"Bearer {token(sub='bob')}", "x-junk": JUNK, "cookie": f"a={JUNK}"}
    assert [client.event(iid, {"kong.request.get_headers": headers}).status for _ in range(3)] == [200, 200, 429]
    client.close()


ENCODE_FAILS = textwrap.dedent('''
    Schema = ({"value": {"type": "string"}},)
    version = "1.0.0"
    priority = 0

    class Plugin:
        def __init__(self, config):
            self.config = config

        def access(self, kong):
            kong.service.request.set_header("X-Who", "\\ud800")   # msgpack cannot encode a lone surrogate
''')


def test_a_step_that_cannot_be_encoded_ends_the_event_with_500(tmp_path):
    module = tmp_path / "encode_fails.py"
    module.write_text(ENCODE_FAILS)
    server = fastguard_server("encode_fails", str(tmp_path), "--module", str(module), "--timeout", "2")
    try:
        client = server.client()
        iid = client.start("encode_fails", {})
        for _ in range(3):
            o = client.event(iid, {})
            assert o.status == 500 and o.exit[1] == {"message": "An unexpected error occurred"}
        assert server.alive()
        client.close()
    finally:
        server.stop()


def test_a_claim_with_a_lone_surrogate_is_malformed_not_an_rpc_error(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "claims_to_headers": {"name": "X-Name"}})
    payload = b'{"iss":"i","sub":"a","exp":%d,"name":"\\ud800"}' % (NOW + 600)  # a JSON escape of a lone surrogate
    bad = sign(payload, "RS256", {"alg": "RS256", "kid": "rsa1"})
    o = client.event(iid, {"kong.request.get_headers": {"authorization": f"Bearer {bad}", "x-name": "admin"}})
    assert o.status == 401 and o.exit[1] == {"message": "Bad token; invalid JSON"}, o
    client.close()


# -- 6. instance ids never repeat across server processes ------------------------------------------------------------
def test_an_instance_id_from_before_a_restart_never_names_another_entitys_instance(tmp_path):
    first = fastguard_server("fastguard-rate-limiting", str(tmp_path))
    client = first.client()
    strict = client.start("fastguard-rate-limiting", {"minute": 5, "limit_by": "ip"})
    assert client.event(strict, {"kong.client.get_forwarded_ip": "10.0.0.1"}).headers[
        "X-RateLimit-Limit-Minute"] == "5"
    client.close()
    first.stop()
    second = fastguard_server("fastguard-rate-limiting", str(tmp_path))
    try:
        client2 = second.client()
        client2.instances = dict(client.instances)    # what Kong's worker still caches
        # Another entity starts first on the new process (it may get any id the new process hands out).
        loose = client2.start("fastguard-rate-limiting", {"minute": 10000, "limit_by": "ip"})
        assert loose != strict
        with pytest.raises(RPCError, match="no plugin instance"):
            client2.call("plugin.HandleEvent", {"InstanceId": strict, "EventName": "access"})
        # Through Kong's retry rule, each event runs on its own entity's instance.
        for _ in range(3):
            o = client2.event(strict, {"kong.client.get_forwarded_ip": "10.0.0.2"})
            assert o.headers.get("X-RateLimit-Limit-Minute") == "5" or o.status == 429
            o = client2.event(loose, {"kong.client.get_forwarded_ip": "10.0.0.2"})
            assert o.headers["X-RateLimit-Limit-Minute"] == "10000"
        assert ("serverPid", second.proc.pid) in client2.notifications
        client2.close()
    finally:
        second.stop()


# -- 13. only the protocol's methods, on a socket only this user can open ---------------------------------------------
@pytest.mark.parametrize("method", ["plugin.SetPluginDir", "plugin._load_plugins", "plugin._loadPlugins",
                                    "plugin.cleanup", "plugin.Cleanup", "plugin.__init__", "plugin.dispatch",
                                    "other.GetStatus", "GetStatus"])
def test_methods_outside_the_protocol_are_refused(rl, method, tmp_path):
    client = rl.client(1)
    with pytest.raises(RPCError, match="not supported"):
        client.call(method, str(tmp_path))
    assert client.status()["Pid"] == rl.proc.pid  # still serving, on the same connection
    iid = client.start("fastguard-rate-limiting", {"minute": 5})
    assert client.event(iid, {"kong.client.get_forwarded_ip": "1.2.3.4"}).status == 200
    client.close()


def test_the_socket_is_private_to_the_servers_user(rl):
    assert stat.S_IMODE(os.stat(rl.socket).st_mode) == 0o600


def test_socket_mode_can_be_widened_for_a_kong_group(tmp_path):
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--socket-mode", "660")
    try:
        assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o660
    finally:
        server.stop()


# -- 17. bounded connections and bytes; garbage closes only its own connection ---------------------------------------
def test_connections_past_the_bound_wait_until_one_closes(tmp_path):
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--max-connections", "2")
    try:
        status = msgpack.packb([0, 1, "plugin.GetStatus", [None]])
        a, b = connect(server), connect(server)
        assert raw_call(a, status)[3]["Pid"] == server.proc.pid
        assert raw_call(b, status)[3]["Pid"] == server.proc.pid
        c = connect(server)        # accepted by the kernel's backlog, not served yet
        c.sendall(status)
        c.settimeout(0.5)
        with pytest.raises(socket.timeout):
            c.recv(1)
        a.close()
        assert raw_call(c, b"")[3]["Pid"] == server.proc.pid
        b.close()
        c.close()
    finally:
        server.stop()


def test_a_huge_message_closes_its_connection_only(rl):
    bystander = rl.client(1)
    s = connect(rl)
    huge = msgpack.packb([0, 1, "plugin.GetStatus", ["x" * (8 * 1024 * 1024)]])
    try:
        assert raw_call(s, huge, timeout=10) is None
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert bystander.status()["Pid"] == rl.proc.pid
    bystander.close()


@pytest.mark.parametrize("payload", [b"\xc1\xc1\xc1", b"\x81\x92\x01\x02\x03", msgpack.packb({"not": "a request"}),
                                     msgpack.packb([1, 2, 3]), msgpack.packb([0, "id", "plugin.GetStatus", []])])
def test_garbage_closes_its_connection_and_the_server_serves_on(rl, payload):
    s = connect(rl)
    assert raw_call(s, payload) is None
    s.close()
    client = rl.client(1)
    assert client.status()["Pid"] == rl.proc.pid
    client.close()


@pytest.mark.parametrize("arg", [None, 5, "x", [], {"InstanceId": "1", "EventName": "access"},
                                 {"InstanceId": 1, "EventName": "__init__"}])
def test_malformed_event_arguments_are_rpc_errors_not_crashes(rl, arg):
    client = rl.client(1)
    for method in ("plugin.HandleEvent", "plugin.Step", "plugin.StepError", "plugin.CloseInstance"):
        with pytest.raises(RPCError):
            client.call(method, arg)
    assert client.status()["Pid"] == rl.proc.pid
    client.close()


# -- found on a second attacker's pass ---------------------------------------------------------------------------------
def test_a_key_value_sent_as_msgpack_bin_is_still_limited(rl):
    client = rl.client()
    iid = client.start("fastguard-rate-limiting", {"minute": 3, "limit_by": "header", "header_name": "x-tenant",
                                                    "fault_tolerant": True})
    statuses = [client.event(iid, {"kong.request.get_header": b"\xff\x00bin"}).status for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]      # before: a TypeError, and fault_tolerant let all through
    client.close()


def test_an_error_text_holding_undecodable_bytes_is_answered_not_dropped(rl):
    client = rl.client(1)
    iid = client.start("fastguard-rate-limiting", {"minute": 5})
    with pytest.raises(RPCError, match="has no"):
        client.call("plugin.HandleEvent", {"InstanceId": iid, "EventName": "x\udcff"})
    assert client.status()["Pid"] == rl.proc.pid       # the same connection still serves
    client.close()


# -- third round ------------------------------------------------------------------------------------------------------
ANON = {"id": "0b5a3f2e-anon", "username": "anonymous", "custom_id": None}


def anon_pdk(auth=None, ip="203.0.113.9"):
    return {"kong.request.get_headers": {"authorization": auth} if auth else {},
            "kong.client.get_credential": None, "kong.client.get_forwarded_ip": ip,
            "kong.client.load_consumer": lambda who, by_name: ANON if who == "anonymous" else None}


def test_anonymous_does_not_switch_off_the_combined_plugins_limits(guard):
    """`anonymous` turns a failed *authentication* into the anonymous consumer, nothing else: before, a verified
    caller over its limit (or banned) got 200 as the anonymous consumer, and anonymous traffic was never limited."""
    client = guard.client()
    # a token bucket: no window boundary for a sequence to straddle
    iid = client.start("fastguard", {"jwks": JWKS, "minute": 2, "anonymous": "anonymous", "uri_param_names": [],
                                     "ban_after": 2, "ban_for": 600, "algorithm": "token_bucket"})
    alice = f"Bearer {token()}"
    assert [client.event(iid, anon_pdk(alice)).status for _ in range(3)] == [200, 200, 429]
    over = client.event(iid, anon_pdk(alice))
    assert over.status == 429 and "kong.client.load_consumer" not in [m for m, _ in over.calls]
    # the ban (2 refusals) holds, whatever the token
    assert client.event(iid, anon_pdk(alice)).status == 429
    # anonymous requests (no token, a bad one) are limited too, by the client's address
    statuses = [client.event(iid, anon_pdk(auth)).status for auth in (None, "Bearer x.y.z", None)]
    assert statuses == [200, 200, 429]
    o = client.event(iid, anon_pdk(None, ip="198.51.100.7"))     # another address: its own count
    assert o.status == 200 and o.upstream["X-Anonymous-Consumer"] == "true"
    # a request another plugin authenticated is limited by that plugin's credential
    other = {**anon_pdk(None), "kong.client.get_credential": {"id": "cred-1"}}
    assert [client.event(iid, other).status for _ in range(3)] == [200, 200, 429]
    client.close()


def test_the_jwt_plugin_clears_forged_identity_headers_on_every_path_to_the_upstream(jwt_server):
    client = jwt_server.client()
    iid = client.start("fastguard-jwt", {"jwks": JWKS, "anonymous": "anonymous", "uri_param_names": [],
                                         "claims_to_headers": {"groups": "X-User-Groups"}})
    verified = client.event(iid, anon_pdk(f"Bearer {token()}"))
    assert verified.upstream["X-User-Groups"] == [] and verified.upstream["X-Consumer-ID"] == []
    anonymous = client.event(iid, anon_pdk("Bearer x.y.z"))
    assert anonymous.upstream["X-User-Groups"] == [] and anonymous.upstream["X-Consumer-ID"] == ANON["id"]
    # authenticated by another plugin: that plugin's consumer headers stay, the claims' headers are cleared
    other = client.event(iid, {**anon_pdk(None), "kong.client.get_credential": {"id": "cred-1"}})
    assert other.upstream == {"X-User-Groups": []}
    client.close()


def test_a_step_that_outlives_the_timeout_ends_in_the_plugins_fault_answer(tmp_path, redis_server):
    """A Redis that trickles its reply held the event past any --timeout (Kong's RPC then times out and proxies
    unlimited). The server's deadline answers the event with the plugin's fault answer — 500 with fault_tolerant
    false, the request let through with true — never an RPC error, and the late result is never sent."""
    from support.hostile_proxy import HostileProxy

    proxy = HostileProxy(redis_server.port)
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--timeout", "1")
    try:
        client = server.client(connections=1)
        redis_cfg = {"host": "127.0.0.1", "port": proxy.port, "timeout": 3000}  # Redis's own bound: later
        strict = client.start("fastguard-rate-limiting", {"minute": 5, "policy": "redis", "redis": redis_cfg,
                                                          "fault_tolerant": False, "limit_by": "ip"})
        tolerant = client.start("fastguard-rate-limiting", {"minute": 5, "policy": "redis", "redis": redis_cfg,
                                                            "limit_by": "ip", "namespace": "other"})
        ip = {"kong.client.get_forwarded_ip": "203.0.113.1"}
        assert client.event(strict, ip).status == 200 and client.event(tolerant, ip).status == 200  # warm
        proxy.trickle = 0.5                       # a byte every 0.5 s: ~10 s for the script's reply
        started = time.monotonic()
        o = client.event(strict, ip)
        assert o.status == 500 and o.exit[1] == {"message": "An unexpected error occurred"}, o
        assert time.monotonic() - started < 2.9   # answered at the deadline (1 s), before Redis's own 3 s
        proxy.trickle = None
        time.sleep(max(0.0, started + 3.5 - time.monotonic()))  # the stuck step ends (Redis's 3 s): dropped
        o = client.event(tolerant, ip)            # the same connection: its own answer, not the late one
        # its own decision (3 left; 4 if a minute began meanwhile), answering this message's id
        assert o.status == 200 and o.headers["X-RateLimit-Remaining-Minute"] in ("3", "4"), o
        assert "gave no answer within 1 s" in server.stop()
    finally:
        proxy.stop()
        server.stop()


PIDS_CGROUPS = "/sys/fs/cgroup/pids"


def _pids_cgroup(pid: int) -> str | None:
    """A pids cgroup (v1) holding `pid` alone, or None where none can be made (not root, no such controller)."""
    folder = os.path.join(PIDS_CGROUPS, f"fastguard-test-{pid}")
    try:
        os.mkdir(folder)
        with open(os.path.join(folder, "cgroup.procs"), "w") as fh:
            fh.write(str(pid))
    except OSError:
        return None
    return folder


def test_no_thread_to_be_had_is_the_plugins_fault_answer_and_one_answer_per_message(tmp_path, redis_server):
    """With every worker busy and no thread to be had (the process's pids cgroup is full), a step that must wait
    got an RPC error ("out of threads": Kong proxies the request without the plugin), and the work, already queued
    by the pool, could later answer the same message id again. Now: the plugin's fault answer, once."""
    from support.hostile_proxy import HostileProxy

    proxy = HostileProxy(redis_server.port)
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--timeout", "5")
    folder = None
    try:
        client = server.client(connections=2)
        redis_cfg = {"host": "127.0.0.1", "port": proxy.port, "timeout": 2000}
        iid = client.start("fastguard-rate-limiting", {"minute": 100, "policy": "redis", "redis": redis_cfg,
                                                       "fault_tolerant": False, "limit_by": "ip"})
        ip = {"kong.client.get_forwarded_ip": "203.0.113.1"}
        assert client.event(iid, ip).status == 200          # the pool has its one worker, idle
        folder = _pids_cgroup(server.proc.pid)
        if folder is None:
            pytest.skip("no pids cgroup can be made here (needs root and the cgroup v1 pids controller)")
        with open(os.path.join(folder, "pids.current")) as fh:
            current = fh.read().strip()
        with open(os.path.join(folder, "pids.max"), "w") as fh:
            fh.write(current)                               # no thread more
        proxy.trickle = 0.05                                # the worker's Redis reply takes ~1 s
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        first.connect(server.socket)
        busy = client.call("plugin.HandleEvent", {"InstanceId": iid, "EventName": "access"})
        first.sendall(msgpack.packb([0, 900, "plugin.Step", [{"EventId": busy["EventId"],
                                                              "Data": "203.0.113.2"}]]))
        time.sleep(0.2)                                     # the worker is in the trickled call
        o = client.event(iid, ip)                           # needs a second worker: none can start
        assert o.status == 500 and o.exit[1] == {"message": "An unexpected error occurred"}, o
        answer = raw_call(first, b"", timeout=10)
        assert answer[1] == 900 and answer[2] is None       # the busy one still gets its own answer
        proxy.trickle = None
        time.sleep(2.5)                                     # the queued work, if it ran, would answer now
        for _ in range(3):                                  # one answer per message: the ids still match
            assert client.event(iid, ip).status in (200, 500)
        assert "no worker thread" in server.stop()
    finally:
        proxy.stop()
        server.stop()
        if folder is not None:  # empty once the server has exited
            try:
                os.rmdir(folder)
            except OSError:
                pass


def test_one_key_set_per_jwks_uri_and_the_first_download_is_waited_for(tmp_path):
    """Entities on one jwks_uri share one key set (one download, one refresh timer); twelve requests right after a
    start wait for the first download instead of 11 of them getting 401 for a valid token."""
    import threading

    from support.jwks_server import JWKSServer

    from fastguard.testing.tokens import private_key

    idp = JWKSServer()
    idp.keys = [jwk("P-256", kid="ec1", alg="ES256")]
    idp.delay = 0.5
    server = fastguard_server("fastguard-jwt", str(tmp_path))
    try:
        setup = server.client(connections=1)
        a = setup.start("fastguard-jwt", {"jwks_uri": idp.url, "uri_param_names": []})
        b = setup.start("fastguard-jwt", {"jwks_uri": idp.url, "uri_param_names": [],
                                          "issuers": ["https://idp.example"]})
        good = sign({"iss": "https://idp.example", "sub": "alice", "exp": NOW + 600}, "ES256",
                    {"alg": "ES256", "kid": "ec1"}, key=private_key("P-256"))
        statuses = []

        def request(iid):
            client = server.client(connections=1)
            statuses.append(client.event(iid, {"kong.request.get_headers": {"authorization": f"Bearer {good}"}})
                            .status)
            client.close()

        threads = [threading.Thread(target=request, args=(a if i % 2 else b,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 12 and idp.requests == 1
        setup.close()
    finally:
        server.stop()
        idp.stop()


def test_the_plugin_server_releases_instances_that_see_no_event(tmp_path):
    """Kong never closes the instances of a deleted plugin entity: they kept their resources (a local-first
    limiter's threads and Redis connections) for ever. An instance idle past --idle-timeout, and past its limits'
    longest window and ban, is closed; if Kong still uses it, "no plugin instance" makes Kong start it again."""
    from fastguard.kong.client import KongClient

    server = fastguard_server("fastguard-rate-limiting", str(tmp_path), "--idle-timeout", "0.5")
    try:
        client = KongClient(server.socket, connections=1)
        short = client.start("fastguard-rate-limiting", {"second": 5, "limit_by": "ip"})   # state: 2 s at most
        client.start("fastguard-rate-limiting", {"minute": 5, "limit_by": "ip"})   # its state matters for 120 s
        ip = {"kong.client.get_forwarded_ip": "192.0.2.1"}
        assert client.event(short, ip).status == 200
        deadline = time.monotonic() + 10
        while client.status()["Instances"] != 1:
            assert time.monotonic() < deadline, client.status()
            time.sleep(0.1)
        with pytest.raises(Exception, match="no plugin instance"):
            client.call("plugin.HandleEvent", {"InstanceId": short, "EventName": "access"})
        assert client.event(short, ip).status == 200      # started again, as Kong does, and served
        client.close()
        assert "closed after 0.5 s without an event" in server.stop()
    finally:
        server.stop()
