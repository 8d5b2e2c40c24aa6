"""The plugin server's event loop: one thread serves every connection, and what may wait (a Redis round trip in
strict mode, a JWKS fetch for a token not verified yet, a kong-pdk handler) runs on a worker pool. A wait on one
connection must not hold up the others, and a connection's answers keep their order."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import msgpack
import pytest

from fastguard.kong.client import fastguard_server
from fastguard.testing.servers import free_port
from fastguard.testing.tokens import jwk, sign

pytestmark = pytest.mark.integration

JWKS = {"keys": [jwk("RSA", kid="rsa1", alg="RS256")]}


def _token(sub: str) -> str:
    return sign({"iss": "https://idp.example", "sub": sub, "exp": int(time.time()) + 3600}, "RS256",
                {"alg": "RS256", "kid": "rsa1"})


class SilentRedis:
    """A TCP server that takes connections and reads what it is sent but never answers, until released (then it
    closes them): a Redis that hangs."""

    def __init__(self) -> None:
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.received = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                self.received.set()
        except OSError:
            pass

    def release(self) -> None:
        self.listener.close()
        for conn in self.conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)  # a close alone would not reach a thread blocked in recv
            except OSError:
                pass
            conn.close()


class HeldJWKS:
    """An identity provider whose JWKS answer waits until released."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.go = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.asked.set()
                outer.go.wait(30)
                body = json.dumps(JWKS).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.go.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _in_background(fn):
    box: dict = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_redis_round_trip_that_hangs_does_not_hold_up_other_connections(tmp_path):
    silent = SilentRedis()
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path))
    try:
        waiting, other = server.client(1), server.client(1)
        strict = waiting.start("fastguard-rate-limiting", {
            "second": 100, "policy": "redis", "fault_tolerant": False,
            "redis": {"host": "127.0.0.1", "port": silent.port, "timeout": 60_000}})
        local = other.start("fastguard-rate-limiting", {"second": 100})
        thread, box = _in_background(lambda: waiting.event(strict, {"kong.client.get_forwarded_ip": "10.0.0.1"}))
        assert silent.received.wait(20), "the strict decision never reached the (silent) Redis"
        # while that decision waits on Redis, another connection is served from start to end
        for _ in range(5):
            out = other.event(local, {"kong.client.get_forwarded_ip": "10.0.0.2"})
            assert out.status == 200 and out.headers["X-RateLimit-Limit-Second"] == "100"
        assert thread.is_alive(), "the strict decision should still be waiting on Redis"
        silent.release()  # Redis goes away: the waiting event ends with the configured answer
        thread.join(30)
        assert "error" not in box, box
        assert box["result"].status == 500  # fault_tolerant false
        assert other.status()["Events"] == 0
    finally:
        silent.release()
        server.stop()


def test_a_jwks_fetch_that_hangs_does_not_hold_up_other_connections(tmp_path):
    idp = HeldJWKS()
    server = fastguard_server("fastguard-jwt", str(tmp_path))
    try:
        waiting, other = server.client(1), server.client(1)
        remote = waiting.start("fastguard-jwt", {"jwks_uri": idp.url, "uri_param_names": []})
        inline = other.start("fastguard-jwt", {"jwks": json.dumps(JWKS), "uri_param_names": []})
        token = _token("alice")
        pdk = {"kong.request.get_headers": {"authorization": f"Bearer {token}"}}
        thread, box = _in_background(lambda: waiting.event(remote, pdk))
        assert idp.asked.wait(20), "the JWKS was never fetched"
        for _ in range(5):
            assert other.event(inline, pdk).status == 200
        assert thread.is_alive(), "the first verification should still be waiting on the identity provider"
        idp.go.set()
        thread.join(30)
        assert "error" not in box, box
        assert box["result"].status == 200
        # verified once: the same token is now answered from the cache, on the loop, with the provider gone
        idp.stop()
        assert waiting.event(remote, pdk).status == 200
    finally:
        idp.stop()
        server.stop()


def test_answers_keep_their_order_when_a_message_before_them_waits(rl):
    """StartInstance runs on the worker pool; a GetStatus pipelined behind it on the same connection is answered
    after it, in order (msgids 1, 2)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(rl.socket)
    start = {"Name": "fastguard-rate-limiting", "Config": json.dumps({"second": 5})}
    sock.sendall(msgpack.packb([0, 1, "plugin.StartInstance", [start]]) +
                 msgpack.packb([0, 2, "plugin.GetStatus", [None]]))
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    answers = []
    while len(answers) < 2:
        data = sock.recv(65536)
        assert data, "connection closed"
        unpacker.feed(data)
        answers += [m for m in unpacker if m[0] == 1]
    sock.close()
    assert [a[1] for a in answers] == [1, 2]
    assert answers[0][2] is None and answers[0][3]["Name"] == "fastguard-rate-limiting"
    assert answers[1][2] is None and answers[1][3]["Instances"] >= 1


PLUGIN_THAT_WAITS = '''
import time

from fastguard.kong import MAY_WAIT, Field, PluginBase, json_exit


class Plugin(PluginBase):
    fields = (Field("announce", "boolean", False), Field("wait_ms", "integer", 300))

    def __init__(self, config):
        self.config = self.checked(config)

    def steps(self):
        if self.config["announce"]:
            yield MAY_WAIT
        time.sleep(self.config["wait_ms"] / 1000)   # stands for a call to some service
        yield json_exit(200, "done")


Schema = Plugin.schema()
version = "1.0.0"
priority = 1000
'''


@pytest.mark.parametrize("announce", [True, False])
def test_a_plugin_that_waits_without_may_wait_is_named_in_the_log(tmp_path, announce):
    module = tmp_path / "waits.py"
    module.write_text(PLUGIN_THAT_WAITS)
    server = fastguard_server("waits", str(tmp_path), "--module", str(module))
    try:
        client = server.client(1)
        iid = client.start("waits", {"announce": announce})
        assert client.event(iid, {}).exit[1] == {"message": "done"}
    finally:
        log = server.stop()
    assert ("held the event loop" in log) is not announce, log


def test_a_client_that_pipelines_without_reading_gets_every_answer_in_order(rl):
    """Thousands of requests with large answers (the plugin info, several KB each) sent before reading any: the
    server stops answering a connection whose answers the socket has not taken (past 1 MiB) and goes on as they
    are read — nothing lost, nothing reordered."""
    n = 3000
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(rl.socket)
    requests = b"".join(msgpack.packb([0, i, "plugin.GetPluginInfo" if i % 2 else "plugin.GetStatus",
                                       ["fastguard-rate-limiting" if i % 2 else None]]) for i in range(1, n + 1))
    sender = threading.Thread(target=sock.sendall, args=(requests,), daemon=True)
    sender.start()
    time.sleep(0.5)  # the server meets a socket that takes nothing
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    ids, size = [], 0
    while len(ids) < n:
        data = sock.recv(1 << 20)
        assert data, "connection closed"
        size += len(data)
        unpacker.feed(data)
        ids += [m[1] for m in unpacker if m[0] == 1 and m[2] is None]
    sender.join(10)
    sock.close()
    assert ids == list(range(1, n + 1))
    assert size > 4 * (1 << 20)  # the answers were larger than the server's high-water mark, several times over
