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
* Each connection's first answer is preceded by Kong's `serverPid` notification: a Kong that sees a new pid on
  a socket forgets every instance id it holds for it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any, Protocol

import msgpack

__all__ = ["METHODS", "RPCServer", "Dispatcher", "MAX_CONNECTIONS", "MAX_MESSAGE_BYTES"]

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


class Dispatcher(Protocol):
    def dispatch(self, method: str, args: list[Any]) -> Any: ...

    def encode_failed(self, result: Any, exc: Exception) -> Any: ...


def _pack_answer(msgid: int, error: Any, result: Any) -> bytes:
    return msgpack.packb([1, msgid, error, result])


def _pack_error(msgid: int, text: str) -> bytes:
    """An error answer; its text may quote bytes Kong sent (not UTF-8): they are escaped, never a failure."""
    return msgpack.packb([1, msgid, text, None], unicode_errors="backslashreplace")


class RPCServer:
    """A Unix-socket MessagePack-RPC server for one dispatcher (a thread per connection, bounded)."""

    def __init__(self, dispatcher: Dispatcher, path: str, *, mode: int = 0o600,
                 max_connections: int = MAX_CONNECTIONS, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 backlog: int = 4096) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.dispatcher = dispatcher
        self.path = path
        self.mode = mode
        self.max_message_bytes = max_message_bytes
        self.backlog = backlog
        self._slots = threading.BoundedSemaphore(max_connections)
        self._notice = msgpack.packb([2, "serverPid", os.getpid()])
        self._sock: socket.socket | None = None
        self._stopped = threading.Event()
        self.connections = 0

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
        self._sock = sock

    def serve_forever(self) -> None:
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        while not self._stopped.is_set():
            self._slots.acquire()  # past max_connections, new connections wait in the backlog
            try:
                conn, _ = self._sock.accept()
            except OSError:
                self._slots.release()
                if self._stopped.is_set():
                    return
                continue
            try:
                threading.Thread(target=self._serve, args=(conn,), daemon=True, name="kong-rpc").start()
            except RuntimeError:  # no thread to be had: refuse this connection, keep the slot
                log.error("fastguard kong-server: cannot start a thread for a new connection; closing it")
                conn.close()
                self._slots.release()

    def stop(self) -> None:
        self._stopped.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def _serve(self, conn: socket.socket) -> None:
        self.connections += 1
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False,
                                    max_buffer_size=self.max_message_bytes)
        notice: bytes | None = self._notice
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                try:
                    unpacker.feed(data)
                except msgpack.BufferFull:
                    log.error("fastguard kong-server: a message over %d bytes; closing its connection",
                              self.max_message_bytes)
                    return
                for message in unpacker:
                    out = self._answer(message)
                    if out is None:
                        return
                    if notice is not None:
                        out, notice = notice + out, None
                    conn.sendall(out)
        except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
            # Bytes that are not msgpack at all (or a map keyed by an array): the stream cannot be resynchronised,
            # and no msgid is known.
            log.error("fastguard kong-server: unreadable message (%s); closing its connection", exc)
        finally:
            self.connections -= 1
            conn.close()
            self._slots.release()

    def _answer(self, message: Any) -> bytes | None:
        """The bytes answering one request, or None when the message is not a request (closes the connection)."""
        if not (isinstance(message, (list, tuple)) and len(message) == 4 and message[0] == 0
                and isinstance(message[1], int) and not isinstance(message[1], bool)):
            log.error("fastguard kong-server: not an RPC request: %.200r; closing its connection", message)
            return None
        _, msgid, method, args = message
        if not isinstance(method, str) or method not in METHODS:
            return _pack_error(msgid, f"RPC method {method!r} is not supported")
        if not isinstance(args, (list, tuple)):
            return _pack_error(msgid, f"{method}: arguments must be a list")
        try:
            result = self.dispatcher.dispatch(method, list(args))
        except Exception as exc:  # noqa: BLE001 - answered as the RPC's error (kong-pdk's behaviour)
            return _pack_error(msgid, str(exc))
        try:
            return _pack_answer(msgid, None, result)
        except (TypeError, ValueError, OverflowError) as exc:
            # e.g. UnicodeEncodeError: a str with a lone surrogate in a PDK call's arguments
            try:
                return _pack_answer(msgid, None, self.dispatcher.encode_failed(result, exc))
            except Exception as again:  # noqa: BLE001 - not an event's answer: an RPC error, never a dropped call
                return _pack_error(msgid, f"{method}: the answer could not be encoded ({again})")
