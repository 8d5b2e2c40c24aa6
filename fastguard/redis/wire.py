"""A lean RESP2 connection for the hot path: one socket per thread, hiredis parsing, nothing else.

redis-py spends ~40 µs of Python per command on this project's machine (connection pool, retry wrapper, response
callbacks) — more than the Redis round trip itself. A strict decision needs none of that: it sends one prepacked
EVALSHA and reads one reply. `Wire` does exactly that over TCP, TLS (an `ssl` socket built from redis-py's own
`ssl_*` settings: verification on unless `ssl_cert_reqs="none"`) and Unix sockets, with AUTH (user and password)
and SELECT; RESP3, credential providers and OCSP checks stay with redis-py. Errors are redis-py's exception
types, so callers handle both clients alike.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import redis
import redis.sentinel
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    InvalidResponse,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["Wire", "bulk", "wire_for", "tls_context"]

_generation = 0  # bumped in a forked child: a parent's sockets are never used by its children


def _after_fork() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_after_fork)


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _error(reply: hiredis.ReplyError) -> Exception:
    text = str(reply)
    if text.startswith("NOSCRIPT"):
        return NoScriptError(text)
    if text.startswith("LOADING"):
        return BusyLoadingError(text)
    if text.startswith("READONLY"):
        return ReadOnlyError(text)
    if text.startswith(("NOAUTH", "WRONGPASS")):
        return AuthenticationError(text)
    return ResponseError(text)


class Wire:
    """Per-thread sockets to one Redis server. `call(packed)` sends one packed command and returns its reply
    (raising redis-py's exceptions); `pipeline(packed_list)` sends many in one write and returns their replies,
    error replies as exception objects. A socket that failed or timed out is closed and replaced on next use."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 6379, path: str | None = None, db: int = 0,
                 username: str | None = None, password: str | None = None, timeout: float | None = None,
                 connect_timeout: float | None = None, tls: ssl.SSLContext | None = None,
                 server_name: str | None = None, locate: Callable[[], tuple[str, int]] | None = None) -> None:
        self.host, self.port, self.path, self.db = host, port, path, int(db or 0)
        self.server_name = server_name  # TLS: the name sent as SNI and checked in the certificate (default: host)
        self.locate = locate   # Sentinel: where the master is now, asked at every new connection
        self.username, self.password = username, password
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.tls = tls
        self._local = threading.local()

    def __repr__(self) -> str:
        where = self.path or f"{'tls://' if self.tls else ''}{self.host}:{self.port}"
        return f"Wire({where}, db={self.db})"

    # -- connections -------------------------------------------------------------------------------------------
    def _connection(self) -> tuple[socket.socket, Any]:
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn[2] == _generation:
            return conn[0], conn[1]
        try:
            if self.path:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                sock.connect(self.path)
            else:
                if self.locate is not None:
                    self.host, self.port = self.locate()
                sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.tls is not None:  # the handshake verifies the certificate (and host name) as configured
                    sock = self.tls.wrap_socket(sock, server_hostname=self.server_name or self.host)
            sock.settimeout(self.timeout)
        except TimeoutError as exc:
            raise RedisTimeoutError(f"connecting to {self!r}: {exc}") from exc
        except OSError as exc:
            raise RedisConnectionError(f"connecting to {self!r}: {exc}") from exc
        reader = hiredis.Reader()
        self._local.conn = (sock, reader, _generation)
        hello = []
        if self.password is not None:
            hello.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
        if self.db:
            hello.append(("SELECT", self.db))
        for command in hello:
            try:
                reply = self.call(hiredis.pack_command(command))
            except Exception:
                self.close()  # never leave an unauthenticated socket behind for the next call
                raise
            if reply != b"OK":
                self.close()
                raise RedisConnectionError(f"{command[0]} on {self!r} answered {reply!r}")
        return sock, reader

    def close(self) -> None:
        """Close this thread's socket (the next call reconnects)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            try:
                conn[0].close()
            except OSError:
                pass

    def _deadline(self) -> float | None:
        """When a command's whole reply must have arrived: `timeout` bounds the call, not each read (a server
        trickling a byte per read would otherwise hold it without end)."""
        return None if self.timeout is None else time.monotonic() + self.timeout

    def _read(self, sock: socket.socket, reader: Any, deadline: float | None) -> Any:
        reply = reader.gets()
        first, shortened = True, False
        while reply is False:
            if deadline is not None and not first:  # the first read waits `timeout` at most: within the deadline
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no whole reply within {self.timeout:g} s")
                sock.settimeout(left)
                shortened = True
            first = False
            data = sock.recv(65536)
            if not data:
                raise RedisConnectionError(f"{self!r} closed the connection")
            reader.feed(data)
            reply = reader.gets()
        if shortened:
            sock.settimeout(self.timeout)
        return reply

    @contextlib.contextmanager
    def _io(self) -> Iterator[None]:
        """Socket errors as redis-py's exceptions; a socket that failed mid-command is closed (its state is
        unknown), so the next call reconnects."""
        try:
            yield
        except TimeoutError as exc:
            self.close()
            raise RedisTimeoutError(f"{self!r}: {exc or 'timed out'}") from exc
        except OSError as exc:
            self.close()
            raise RedisConnectionError(f"{self!r}: {exc}") from exc
        except RedisConnectionError:
            self.close()
            raise
        except hiredis.ProtocolError as exc:  # not RESP: this reader (and stream) cannot be used again
            self.close()
            raise InvalidResponse(f"{self!r} sent bytes that are not RESP: {exc}") from exc

    # -- commands ----------------------------------------------------------------------------------------------
    def call(self, packed: bytes) -> Any:
        """Send one packed command; its reply, or a redis-py exception (ResponseError, NoScriptError, ...,
        ConnectionError, TimeoutError)."""
        sock, reader = self._connection()
        deadline = self._deadline()
        with self._io():
            sock.sendall(packed)
            reply = self._read(sock, reader, deadline)
        if type(reply) is hiredis.ReplyError:
            raise _error(reply)
        return reply

    def pipeline(self, packed: list[bytes]) -> list[Any]:
        """Send every command in one write, then read every reply; error replies come back as exceptions."""
        sock, reader = self._connection()
        deadline = self._deadline()
        with self._io():
            sock.sendall(b"".join(packed))
            replies = [self._read(sock, reader, deadline) for _ in packed]
        return [_error(r) if type(r) is hiredis.ReplyError else r for r in replies]


    def stream(self, packed: Any, handle: Any, window: int = 2) -> None:
        """Send packed commands one by one, keeping at most `window` unanswered, and give each reply (an error
        reply as an exception object) to `handle(reply)` in order. The server runs command i while this thread
        packs command i + 1 and reads reply i - 1: on two cores the client's work and the server's overlap."""
        sock, reader = self._connection()
        unanswered = 0
        with self._io():
            for command in packed:
                sock.sendall(command)
                unanswered += 1
                if unanswered > window:  # each reply within the timeout (the batch may be of any size)
                    r = self._read(sock, reader, self._deadline())
                    unanswered -= 1
                    handle(_error(r) if type(r) is hiredis.ReplyError else r)
            while unanswered:
                r = self._read(sock, reader, self._deadline())
                unanswered -= 1
                handle(_error(r) if type(r) is hiredis.ReplyError else r)


#: redis-py's TLS settings that tls_context() carries over; any other ssl_* setting keeps redis-py on the job.
_TLS_SETTINGS = {"ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_check_hostname",
                 "ssl_ca_path", "ssl_password", "ssl_min_version", "ssl_ciphers"}
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def tls_context(kw: dict[str, Any]) -> ssl.SSLContext | None:
    """An SSL context with redis-py's TLS settings (`ssl_cert_reqs` "required" by default, `ssl_check_hostname`
    True by default, `ssl_ca_certs` / `ssl_ca_path` / `ssl_ca_data`, client `ssl_certfile` / `ssl_keyfile`), or
    None when a setting asks for what only redis-py does (OCSP, verify flags)."""
    if any(k.startswith("ssl_") and k not in _TLS_SETTINGS and v not in (None, False) for k, v in kw.items()):
        return None
    reqs = kw.get("ssl_cert_reqs", "required")
    if isinstance(reqs, str):
        if reqs.lower() not in _CERT_REQS:
            raise ValueError(f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, got {reqs!r}")
        reqs = _CERT_REQS[reqs.lower()]
    ctx = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"), capath=kw.get("ssl_ca_path"),
                                     cadata=kw.get("ssl_ca_data"))
    ctx.check_hostname = bool(kw.get("ssl_check_hostname", True)) and reqs != ssl.CERT_NONE
    ctx.verify_mode = reqs
    if kw.get("ssl_certfile"):
        ctx.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"), kw.get("ssl_password"))
    if kw.get("ssl_min_version") is not None:
        ctx.minimum_version = kw["ssl_min_version"]
    if kw.get("ssl_ciphers"):
        ctx.set_ciphers(kw["ssl_ciphers"])
    return ctx


def wire_for(client: redis.Redis) -> Wire | None:
    """A Wire with the settings of a redis-py client, or None when the client needs what Wire does not do
    (RESP3, a credential provider, a custom connection class, OCSP)."""
    pool = client.connection_pool
    kw = pool.connection_kwargs
    if kw.get("credential_provider") is not None or kw.get("protocol") not in (None, 2, "2"):
        return None
    cls = pool.connection_class
    common: dict[str, Any] = {"db": kw.get("db", 0), "username": kw.get("username"), "password": kw.get("password"),
                              "timeout": kw.get("socket_timeout"),
                              "connect_timeout": kw.get("socket_connect_timeout", kw.get("socket_timeout"))}
    if cls is redis.connection.UnixDomainSocketConnection:
        return Wire(path=kw["path"], **common)
    tls = None
    if issubclass(cls, redis.connection.SSLConnection):
        tls = tls_context(kw)
        if tls is None:
            return None
    if isinstance(pool, redis.sentinel.SentinelConnectionPool):  # the master is wherever the sentinels say
        return Wire(tls=tls, locate=pool.get_master_address, **common)
    if cls in (redis.connection.Connection, redis.connection.SSLConnection, NamedTLSConnection):
        return Wire(host=kw.get("host", "localhost"), port=int(kw.get("port", 6379)), tls=tls,
                    server_name=kw.get("server_name"), **common)
    return None


class NamedTLSConnection(redis.connection.SSLConnection):
    """redis-py's TLS connection that presents `server_name` (SNI) and checks the certificate against it instead
    of the host it connects to: a Redis behind a TLS router, or reached by address. redis-py has no such option."""

    def __init__(self, *, server_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_name = server_name

    def _wrap_socket_with_ssl(self, sock: socket.socket) -> Any:
        host, self.host = self.host, self.server_name  # redis-py wraps with server_hostname=self.host
        try:
            return super()._wrap_socket_with_ssl(sock)  # type: ignore[misc]
        finally:
            self.host = host
