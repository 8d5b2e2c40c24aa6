"""A TCP relay in front of a real redis-server that can replace the server's next replies with bytes of the test's
choosing: what a broken proxy, a wrong server or a garbled network would deliver. Redis still runs every command
it is sent; only what comes back is altered."""

from __future__ import annotations

import collections
import select
import socket
import threading
import time


class HostileProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._replies: collections.deque[bytes] = collections.deque()
        self._lock = threading.Lock()
        self._stopped = False
        self._sockets: list[socket.socket] = []
        self.trickle: float | None = None   # seconds between the bytes of a reply: a slow or malicious peer
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def replace_next(self, *replies: bytes) -> None:
        """The server's next replies (one per chunk it sends) are dropped and these bytes sent instead."""
        with self._lock:
            self._replies.extend(replies)

    def pending(self) -> int:
        with self._lock:
            return len(self._replies)

    def stop(self) -> None:
        self._stopped = True
        for s in [self.listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while not self._stopped:
                ready, _, _ = select.select([client, server], [], [], 0.5)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        server.sendall(data)
                        continue
                    with self._lock:
                        if self._replies:
                            data = self._replies.popleft()
                    trickle = self.trickle       # read once: a test may turn it off while a reply trickles
                    if trickle is None:
                        client.sendall(data)
                        continue
                    for i in range(len(data)):   # every read of the client gets a byte in time: no read times out
                        client.sendall(data[i:i + 1])
                        time.sleep(trickle)
        except OSError:
            return
        finally:
            client.close()
            server.close()
