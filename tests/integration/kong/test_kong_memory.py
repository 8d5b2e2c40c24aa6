"""What a plugin server's connections cost in memory: Kong holds a pool of connections per nginx worker (hundreds
for a large Kong), so a buffer kept per connection is paid hundreds of times over, and a buffer that only grows
turns one large message into memory held for good. Sizes here are resident memory of a real `fastguard
kong-server`, compared with bounds many times below what the faults cost (they hold on any machine speed)."""

from __future__ import annotations

import random
import socket
import threading
import tracemalloc

import msgpack
import pytest

from fastguard.kong.client import fastguard_server
from fastguard.kong.rpc import RPCServer

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def server(tmp_path):
    running = fastguard_server("fastguard-rate-limiting", str(tmp_path))
    yield running
    running.stop()


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(path)
    return sock


def _answers(sock: socket.socket, unpacker: msgpack.Unpacker, n: int) -> list:
    """The next n answers on sock (notifications left out)."""
    got: list = []
    while len(got) < n:
        data = sock.recv(1 << 20)
        assert data, "connection closed"
        unpacker.feed(data)
        got += [m for m in unpacker if m[0] == 1]
    return got


def _status(msgid: int, pad: int = 0) -> bytes:
    """A GetStatus request (its argument is not read: `pad` bytes of it make the message that large)."""
    return msgpack.packb([0, msgid, "plugin.GetStatus", ["x" * pad if pad else None]])


def test_a_connection_holds_no_read_buffer_between_messages(server):
    """64 connections, each carrying 1.5 MiB of requests: the server's memory stays where it was. Each connection
    had a msgpack Unpacker with a 1 MiB buffer that its traffic walked through page by page (64 MiB after this;
    the gateway soak grew 23.5 MB in 10 s on a fast machine)."""
    conns = [(_connect(server.socket), msgpack.Unpacker(raw=False)) for _ in range(64)]
    for sock, unpacker in conns:
        sock.sendall(_status(1))
        _answers(sock, unpacker, 1)
    before = server.rss()
    for sock, unpacker in conns:
        sock.sendall(b"".join(_status(i, 3000) for i in range(2, 502)))  # 500 x 3 KB, pipelined
        assert [a[1] for a in _answers(sock, unpacker, 500)] == list(range(2, 502))
    grown = server.rss() - before
    for sock, _ in conns:
        sock.close()
    assert grown < 8 * MiB, f"{grown / MiB:.1f} MiB more for 64 connections' traffic (96 MB of requests)"


def test_a_large_message_leaves_no_buffer_behind(server):
    """16 connections each send one 3 MiB message and stay open: once the messages are read their buffers go back
    to the system. Each connection kept a 4 MiB buffer (51 MiB resident); dropped but taken from glibc's heap
    (its mmap threshold rises after the first large block is freed), 6 MiB stayed resident."""
    conns = []
    before = server.rss()
    for _ in range(16):
        sock, unpacker = _connect(server.socket), msgpack.Unpacker(raw=False)
        sock.sendall(_status(1, 3 * MiB))
        assert _answers(sock, unpacker, 1)[0][2] is None
        conns.append(sock)
    grown = server.rss() - before
    for sock in conns:
        sock.close()
    assert grown < 2 * MiB, f"{grown / MiB:.1f} MiB held after 16 connections read a 3 MiB message each"


def test_messages_in_fragments_interleaved_across_connections_are_each_read_whole(server):
    """The loop parses every connection's reads with one unpacker and keeps only the unread bytes of a connection
    (a message cut short, messages behind a Deferred) in one of its own: fragments of every size, down to single
    bytes cut inside a message's header, arriving on 12 connections in turn, are each answered in order."""
    rng = random.Random(7)
    conns = [(_connect(server.socket), msgpack.Unpacker(raw=False)) for _ in range(12)]
    pending = {}
    for c, _ in enumerate(conns):
        stream = b"".join(_status(i, rng.choice((0, 10, 300, 20000))) for i in range(1, 41))
        cuts = sorted(rng.sample(range(1, len(stream)), 300))
        pending[c] = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    while any(pending.values()):
        for c, (sock, _) in enumerate(conns):
            if pending[c]:
                sock.sendall(pending[c].pop(0))
    for sock, unpacker in conns:
        answers = _answers(sock, unpacker, 40)
        assert [a[1] for a in answers] == list(range(1, 41)) and all(a[2] is None for a in answers)
        sock.close()


class _Echo:
    """A dispatcher that answers with what it was sent (the loop's answer path, without a plugin)."""

    def dispatch(self, method, args):
        return args[0]

    def encode_failed(self, result, exc):
        return None


def _held_by_the_loop() -> int:
    """Bytes allocated from fastguard/kong/rpc.py and not freed (the client's own buffers are not counted)."""
    import fastguard.kong.rpc

    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, fastguard.kong.rpc.__file__)])
    return sum(stat.size for stat in snapshot.statistics("filename"))


def test_a_large_answer_leaves_no_buffer_behind(tmp_path):
    """The loop packs answers with one Packer, which keeps the largest buffer it ever needed: after a 4 MiB answer
    (a StartInstance echoing a config with a large inline JWKS) it held 8 MiB for good."""
    path = str(tmp_path / "echo.sock")
    rpc = RPCServer(_Echo(), path)
    rpc.bind()
    loop = threading.Thread(target=rpc.serve_forever, daemon=True)
    sock = _connect(path)
    tracemalloc.start()
    try:
        loop.start()
        unpacker = msgpack.Unpacker(raw=False, max_buffer_size=16 * MiB)
        sock.sendall(msgpack.packb([0, 1, "plugin.GetStatus", ["small"]]))
        _answers(sock, unpacker, 1)
        before = _held_by_the_loop()
        sock.sendall(msgpack.packb([0, 2, "plugin.GetStatus", ["y" * (3 * MiB)]]))
        assert len(_answers(sock, unpacker, 1)[0][3]) == 3 * MiB
        sock.sendall(msgpack.packb([0, 3, "plugin.GetStatus", ["small"]]))
        _answers(sock, unpacker, 1)
        held = _held_by_the_loop() - before
    finally:
        tracemalloc.stop()
        sock.close()
        rpc.stop()
        loop.join(10)
    assert held < MiB, f"{held / MiB:.1f} MiB still allocated after a 3 MiB answer"

