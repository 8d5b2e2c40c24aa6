"""The plugin server's socket: Kong's MessagePack-RPC framing, read as hostile input.

What kong-pdk's own listener gets wrong, and this one does instead:

* Kong's lua-MessagePack packs every Lua string as msgpack *str*, whatever its bytes: a header `X-Junk: \\xff`
  arrives as invalid UTF-8. A strict decoder raises, the connection drops, and Kong proxies the request without
  the plugin (fail open). Here strings decode with `surrogateescape`: every byte survives, and the plugins treat
  such values as the opaque bytes they are.
* Only the protocol's methods can be called (`METHODS`); kong-pdk dispatches to any method of its server object
  (`plugin.SetPluginDir` + `plugin._loadPlugins` loads a file of the caller's choice).
* An answer that cannot be encoded (a str with a lone surrogate in a PDK call's arguments) ends its event with
  the plugin's fault answer instead of an RPC error (Kong would proxy the request).
* The socket is created with mode 0600 (only the server's user can speak to it), at most `max_connections`
  connections are served at once (the others wait in the listen backlog until one closes, so nothing is refused
  while Kong waits), and a connection that sends a message larger than `max_message_bytes` is closed.
* One thread serves every connection (an epoll loop): a thread per connection spends most of a request's CPU
  handing the GIL around. A dispatch that may wait (a Redis round trip, a JWKS fetch, a kong-pdk handler on its
  own thread) comes back as a `Deferred` and runs on a small worker pool while the loop serves the others; its
  connection's later messages wait their turn, so answers keep their order.
* A connection costs no buffer while it holds no partial message: what one read brings is parsed by the loop's
  own unpacker, and only the bytes of a message still incomplete (or of messages waiting behind a Deferred) are
  kept, in an unpacker of the connection's own that is dropped once they are read. An unpacker is 40 KiB before
  its buffer: one per connection was most of a connection's memory.
* Each connection's first answer is preceded by Kong's `serverPid` notification: a Kong that sees a new pid on
  a socket forgets every instance id it holds for it.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import msgpack

__all__ = ["METHODS", "RPCServer", "Dispatcher", "Deferred", "MAX_CONNECTIONS", "MAX_MESSAGE_BYTES"]

log = logging.getLogger("fastguard.kong")

#: The protocol's methods, and the server method each one calls. Nothing else is reachable over the socket.
METHODS = {
    "plugin.StartInstance": "start_instance",
    "plugin.CloseInstance": "close_instance",
    "plugin.GetStatus": "get_status",
    "plugin.GetPluginInfo": "get_plugin_info",
    "plugin.HandleEvent": "handle_event",
    "plugin.Step": "step",
    "plugin.StepError": "step_error",
    "plugin.StepMultiMap": "step",
    "plugin.StepCredential": "step",
    "plugin.StepConsumer": "step",
    "plugin.StepRoute": "step",
    "plugin.StepService": "step",
    "plugin.StepPlugin": "step",
    "plugin.StepMemoryStats": "step",
}
#: Connections served at once by default (Kong opens a small pool per nginx worker).
MAX_CONNECTIONS = 256
#: The largest message accepted; a bigger one closes its connection (a Kong message is a few KiB).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_READ, _WRITE = select.POLLIN, select.POLLOUT  # equal to EPOLLIN, EPOLLOUT
#: A dispatch on the loop longer than this (seconds) is logged: every other connection waited for it.
SLOW_ON_LOOP = 0.05
#: Answers buffered for one connection past which its further messages wait until the socket takes them.
OUT_HIGH_WATER = 1 << 20
#: The first size of an unpacker's buffer (a message larger than this grows it, up to max_message_bytes).
#: msgpack's default, 1 MiB, came to be 1 MiB resident per connection: an Unpacker appends at the end of its
#: buffer and moves what is left to the front only when the end is reached, so in time every page is touched.
READ_BUFFER = 16 * 1024
#: An answer larger than this (a config echoed by StartInstance with a large inline JWKS) is packed by a Packer
#: that is then replaced: a Packer keeps the largest buffer it ever needed (8 MiB after a 4 MiB answer).
LARGE_ANSWER = 64 * 1024


class Deferred:
    """A dispatch that may wait (a Redis round trip, a JWKS fetch, a kong-pdk handler on its own thread): the
    server runs `run()` on its worker pool and answers with what it returns (or raises), serving every other
    connection meanwhile.

    `expired`, when given, is what answers instead once the server's deadline has passed and `run()` has not
    answered (still running, still queued for a thread, or no thread to be had): an event's fault answer, never an
    RPC error, which Kong would answer by proxying the request unchecked. What `run()` returns later is dropped."""

    __slots__ = ("run", "expired")

    def __init__(self, run: Callable[[], Any], expired: Callable[[], Any] | None = None) -> None:
        self.run = run
        self.expired = expired


class _Job:
    """A Deferred on its way: answered once, by whichever comes first of its run and its deadline."""

    __slots__ = ("conn", "msgid", "method", "deferred", "due", "answered")

    def __init__(self, conn: _Conn, msgid: int, method: str, deferred: Deferred, due: float) -> None:
        self.conn, self.msgid, self.method, self.deferred, self.due = conn, msgid, method, deferred, due
        self.answered = False


class Dispatcher(Protocol):
    def dispatch(self, method: str, args: list[Any]) -> Any: ...  # the answer, or a Deferred that computes it

    def encode_failed(self, result: Any, exc: Exception) -> Any: ...


def _pack_answer(msgid: int, error: Any, result: Any) -> bytes:
    return msgpack.packb([1, msgid, error, result])


def _pack_error(msgid: int, text: str) -> bytes:
    """An error answer; its text may quote bytes Kong sent (not UTF-8): they are escaped, never a failure."""
    return msgpack.packb([1, msgid, text, None], unicode_errors="backslashreplace")


class _Conn:
    __slots__ = ("sock", "fd", "unpacker", "fed", "parsed", "out", "busy", "events", "noticed")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.unpacker: msgpack.Unpacker | None = None  # its own, only while bytes of its messages wait unread
        self.fed = 0            # where the bytes fed to `unpacker` end, in its stream
        self.parsed = 0         # where its last whole message ends (tell() may count a partial one's start)
        self.out = b""          # answers the socket has not taken yet
        self.busy = False       # a Deferred of this connection runs: its later messages wait, in order
        self.events = 0         # what the selector watches for it (0: not registered)
        self.noticed = False    # the serverPid notice went out


class RPCServer:
    """A Unix-socket MessagePack-RPC server for one dispatcher: one thread and an epoll loop over every connection;
    a dispatch that may wait (`Deferred`) runs on a pool of `workers` threads (default: one per connection, started
    as needed — a connection has at most one Deferred running, so none ever waits for a thread). A Deferred with
    an `expired` answer is answered with it once `deadline` seconds have passed without its own answer."""

    def __init__(self, dispatcher: Dispatcher, path: str, *, mode: int = 0o600,
                 max_connections: int = MAX_CONNECTIONS, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 backlog: int = 4096, workers: int | None = None, deadline: float = 10.0) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        workers = max_connections if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.dispatcher = dispatcher
        self.path = path
        self.mode = mode
        self.max_connections = max_connections
        self.max_message_bytes = max_message_bytes
        self.backlog = backlog
        self.workers = workers
        self.deadline = deadline
        # Deferreds with an expired answer, in the order they started: one deadline for all, so they are due in
        # that order too; the answered ones leave from the front
        self._jobs: deque[_Job] = deque()
        self._answer_lock = threading.Lock()             # a Job is answered once: by its run or by its deadline
        self._notice = msgpack.packb([2, "serverPid", os.getpid()])
        self._packer = msgpack.Packer()  # the loop thread's (a failed pack leaves it empty)
        self._slow_said = 0.0
        self._sock: socket.socket | None = None
        # epoll on Linux (poll elsewhere: the same interface); masks are the same numbers in both
        self._poller: Any = select.epoll() if hasattr(select, "epoll") else select.poll()
        self._poll_unit = 1 if hasattr(select, "epoll") else 1000  # epoll waits in seconds, poll in ms
        self._stopped = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._done: deque[tuple[_Conn, bytes | None]] = deque()   # finished Deferreds, for the loop to send
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: dict[int, _Conn] = {}
        self._unpacker = self._new_unpacker()  # the loop's: empty between reads

    @property
    def connections(self) -> int:
        """Connections being served now."""
        return len(self._conns)

    def bind(self) -> None:
        if os.path.exists(self.path):
            os.remove(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o777 & ~self.mode)  # the socket file is born with `mode`: no window where others connect
        try:
            sock.bind(self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        sock.listen(self.backlog)
        sock.setblocking(False)
        self._sock = sock

    def stop(self) -> None:
        self._stopped.set()
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: the loop has wake-ups pending already
            pass

    # -- the loop -------------------------------------------------------------------------------------------------
    def serve_forever(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        listener, poller, conns = self._sock, self._poller, self._conns
        lfd, wfd = listener.fileno(), self._wake_r.fileno()
        poller.register(lfd, _READ)
        poller.register(wfd, _READ)
        listening = True
        try:
            while not self._stopped.is_set():
                due = self._next_due()
                wait = None if due is None else max(0.0, due - time.monotonic()) * self._poll_unit
                for fd, mask in poller.poll(wait):
                    conn = conns.get(fd)
                    if conn is None:
                        if fd == lfd:
                            self._accept(listener)
                        elif fd == wfd:
                            self._completions()
                    elif mask & _WRITE:
                        self._flush(conn)
                    else:  # readable, or hung up / in error: recv says which
                        self._read(conn)
                if due is not None and due <= time.monotonic():
                    self._expire()
                # Past max_connections new connections wait in the backlog: nothing is refused while Kong waits.
                full = self.connections >= self.max_connections
                if listening and full:
                    poller.unregister(lfd)
                    listening = False
                elif not listening and not full:
                    poller.register(lfd, _READ)
                    listening = True
        finally:
            for conn in list(conns.values()):
                self._close(conn)
            poller.close()
            listener.close()
            self._wake_r.close()
            self._wake_w.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def _accept(self, listener: socket.socket) -> None:
        while self.connections < self.max_connections:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: the backlog keeps it for the next round
                log.error("fastguard kong-server: accept failed (%s)", exc)
                return
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[conn.fd] = conn
            self._watch(conn)

    def _new_unpacker(self) -> msgpack.Unpacker:
        return msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False,
                                max_buffer_size=self.max_message_bytes,
                                read_size=min(READ_BUFFER, self.max_message_bytes))

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.fd, None) is None:
            return
        if conn.events:
            self._poller.unregister(conn.fd)
            conn.events = 0
        conn.sock.close()

    def _watch(self, conn: _Conn) -> None:
        """Read while idle, write while answers wait for the socket, neither while a Deferred runs."""
        want = _WRITE if conn.out else 0 if conn.busy else _READ
        if want == conn.events:
            return
        if not want:
            self._poller.unregister(conn.fd)
        elif conn.events:
            self._poller.modify(conn.fd, want)
        else:
            self._poller.register(conn.fd, want)
        conn.events = want

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        own = conn.unpacker
        unpacker = own or self._unpacker
        try:
            unpacker.feed(data)
        except msgpack.BufferFull:
            log.error("fastguard kong-server: a message over %d bytes; closing its connection", self.max_message_bytes)
            self._close(conn)
            if own is None:
                self._unpacker = self._new_unpacker()
            return
        if own is not None:
            conn.fed += len(data)
            self._serve(conn)
            return
        # the loop's unpacker, for this read only: it must be empty again before the next connection's read
        start = unpacker.tell()  # it held no byte before this read: where they start
        conn.unpacker, conn.parsed, conn.fed = unpacker, start, start + len(data)
        self._serve(conn)
        left = conn.fed - conn.parsed
        conn.unpacker = None
        if left or len(data) > READ_BUFFER or conn.fd not in self._conns:
            # bytes unread (a partial message, or messages behind a Deferred), a grown buffer, or a stream
            # that failed midway: the loop takes a new unpacker, the connection keeps its unread bytes
            self._unpacker = self._new_unpacker()
            if left and conn.fd in self._conns:
                conn.unpacker = self._new_unpacker()
                conn.unpacker.feed(data[len(data) - left:])
                conn.parsed, conn.fed = 0, left

    def _serve(self, conn: _Conn) -> None:
        """Answer the connection's complete messages in order, up to the first Deferred one. Answers the socket
        has not taken stop the reading (and, past OUT_HIGH_WATER, the answering): a client that sends without
        reading cannot make the server buffer without bound."""
        unpacker = conn.unpacker
        if unpacker is None:  # nothing unread
            self._watch(conn)
            return
        while True:
            answers, size, more = [], 0, False
            try:
                for message in unpacker:
                    conn.parsed = unpacker.tell()
                    answer = self._answer(message)
                    message = None  # a large message is freed before its answer goes out, not after
                    if type(answer) is bytes:
                        answers.append(answer)
                        size += len(answer)
                        if size > OUT_HIGH_WATER:
                            more = True
                            break
                        continue
                    if answer is None:
                        self._close(conn)
                        return
                    conn.busy = True
                    self._defer(conn, answer)
                    break
                else:
                    if conn.parsed == conn.fed and unpacker is not self._unpacker:
                        conn.unpacker = None  # all read: its buffer goes back to the allocator
            except (ValueError, TypeError, msgpack.UnpackException) as exc:
                # Bytes that are not msgpack at all (or a map keyed by an array): the stream cannot be
                # resynchronised, and no msgid is known.
                log.error("fastguard kong-server: unreadable message (%s); closing its connection", exc)
                self._close(conn)
                return
            if answers:
                self._send(conn, answers[0] if len(answers) == 1 else b"".join(answers))
            if conn.fd not in self._conns:
                return
            if not (more and not conn.out and not conn.busy):
                break  # else the socket took it all: answer the messages still buffered
        self._watch(conn)

    def _send(self, conn: _Conn, data: bytes) -> None:
        if not conn.noticed:
            data, conn.noticed = self._notice + data, True
        if conn.out:
            conn.out += data
            return
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = data[sent:]

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if not conn.out and not conn.busy:
            self._serve(conn)  # what arrived while the answers waited
        elif conn.fd in self._conns:
            self._watch(conn)

    # -- deferred dispatches ------------------------------------------------------------------------------------
    def _defer(self, conn: _Conn, answer: tuple[int, str, Deferred]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="kong-rpc")
        msgid, method, deferred = answer
        job = _Job(conn, msgid, method, deferred, time.monotonic() + self.deadline)
        if deferred.expired is not None:
            self._jobs.append(job)
        try:
            self._pool.submit(self._run_deferred, job)
        except RuntimeError as exc:  # no thread to be had (the work may still be queued), or shutting down
            log.error("fastguard kong-server: no worker thread for %s (%s)", method, exc)
            if self._claim(job):
                conn.busy = False
                self._send(conn, self._late_answer(job))

    def _claim(self, job: _Job) -> bool:
        """True for the one caller that answers `job`."""
        with self._answer_lock:
            if job.answered:
                return False
            job.answered = True
            return True

    def _late_answer(self, job: _Job) -> bytes:
        """The answer of a Deferred that did not answer in time: its `expired` answer, else an RPC error."""
        if job.deferred.expired is None:
            return _pack_error(job.msgid, f"{job.method}: no answer within {self.deadline:g} s")
        try:
            return self._result(job.msgid, job.method, job.deferred.expired)
        except BaseException as exc:  # noqa: BLE001 - the connection always gets its answer
            return _pack_error(job.msgid, f"{job.method}: {exc}")

    def _next_due(self) -> float | None:
        jobs = self._jobs
        while jobs and jobs[0].answered:
            jobs.popleft()
        return jobs[0].due if jobs else None

    def _expire(self) -> None:
        """Answer the Deferreds whose deadline passed (their runs, when they end, are dropped)."""
        now = time.monotonic()
        while self._jobs and self._jobs[0].due <= now:
            job = self._jobs.popleft()
            if not self._claim(job):
                continue
            log.error("fastguard kong-server: %s gave no answer within %g s; answered for it", job.method,
                      self.deadline)
            self._deliver(job.conn, self._late_answer(job))

    def _run_deferred(self, job: _Job) -> None:
        if job.answered:  # answered at its deadline while it waited for a thread: nothing to run
            return
        try:
            out: bytes = self._result(job.msgid, job.method, job.deferred.run)
        except BaseException as exc:  # noqa: BLE001 - the connection always gets its answer
            out = _pack_error(job.msgid, f"{job.method}: {exc}")
        if self._claim(job):
            self._done.append((job.conn, out))
            self._wake()

    def _completions(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._done:
            self._deliver(*self._done.popleft())

    def _deliver(self, conn: _Conn, out: bytes) -> None:
        """A Deferred's answer (or the one its deadline gave) to its connection, then the messages that waited."""
        if self._conns.get(conn.fd) is not conn:
            return  # closed meanwhile (its fd maybe reused by another connection)
        conn.busy = False
        self._send(conn, out)
        if conn.fd in self._conns:
            if conn.out:
                self._watch(conn)
            else:
                self._serve(conn)

    # -- one request ----------------------------------------------------------------------------------------------
    def _answer(self, message: Any) -> bytes | tuple[int, str, Deferred] | None:
        """The bytes answering one request, a Deferred to run first, or None when the message is not a request
        (closes the connection)."""
        # msgpack arrays decode as lists; the msgid is an int, not a bool
        if not (type(message) is list and len(message) == 4 and message[0] == 0 and type(message[1]) is int):
            log.error("fastguard kong-server: not an RPC request: %.200r; closing its connection", message)
            return None
        _, msgid, method, args = message
        if type(method) is not str or method not in METHODS:
            return _pack_error(msgid, f"RPC method {method!r} is not supported")
        if type(args) is not list:
            return _pack_error(msgid, f"{method}: arguments must be a list")
        started = time.monotonic()
        try:
            result = self.dispatcher.dispatch(method, args)
        except Exception as exc:  # noqa: BLE001 - answered as the RPC's error (kong-pdk's behaviour)
            return _pack_error(msgid, str(exc))
        held = time.monotonic() - started
        if held > SLOW_ON_LOOP and started >= self._slow_said:
            # every connection waited that long: a plugin that waits on the network without yielding MAY_WAIT
            self._slow_said = started + 60
            log.warning("fastguard kong-server: %s held the event loop for %.0f ms; a plugin that waits (network, "
                        "locks) must yield fastguard.kong.MAY_WAIT first (said at most once a minute)", method,
                        held * 1000)
        if type(result) is Deferred:
            return msgid, method, result
        out = self._packed(msgid, method, result, self._packer.pack)
        if len(out) > LARGE_ANSWER:
            self._packer = msgpack.Packer()
        return out

    def _result(self, msgid: int, method: str, run: Callable[[], Any]) -> bytes:
        """A Deferred's answer, on a worker thread (msgpack.packb: the loop's Packer is the loop's alone)."""
        try:
            result = run()
        except Exception as exc:  # noqa: BLE001 - answered as the RPC's error (kong-pdk's behaviour)
            return _pack_error(msgid, str(exc))
        return self._packed(msgid, method, result, msgpack.packb)

    def _packed(self, msgid: int, method: str, result: Any, pack: Callable[[Any], bytes]) -> bytes:
        try:
            return pack([1, msgid, None, result])
        except (TypeError, ValueError, OverflowError) as exc:
            # e.g. UnicodeEncodeError: a str with a lone surrogate in a PDK call's arguments
            try:
                return _pack_answer(msgid, None, self.dispatcher.encode_failed(result, exc))
            except Exception as again:  # noqa: BLE001 - not an event's answer: an RPC error, never a dropped call
                return _pack_error(msgid, f"{method}: the answer could not be encoded ({again})")
