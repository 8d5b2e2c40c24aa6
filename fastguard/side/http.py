"""The side service's HTTP listener: forward-auth for nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`,
APISIX forward-auth and Envoy's ext_authz HTTP mode; envoyproxy/ratelimit's `POST /json` and `GET /healthcheck`.

One asyncio loop per process, requests parsed by httptools (llhttp, node's parser: no hand-written HTTP parsing),
keep-alive and pipelining in order. A decision is microseconds, so it runs on the loop; only a JWT check that may
wait on a remote key set's download goes to a thread.

Routes:
  GET  /healthcheck               200 OK
  POST /json                      envoyproxy/ratelimit's JSON form of ShouldRateLimit: 200, or 429 when over limit
  ANY  /auth/<domain>[/<path>]    forward-auth: 200 allows (claim and RateLimit-* headers), 401/403 (JWT), 429

Where the client's request is read from, by who asks:
  /auth/<domain>/<path>           Envoy ext_authz HTTP (path_prefix /auth/<domain>): this request's method and path
  /auth/<domain>?via=nginx        nginx auth_request: X-Original-Method and X-Original-URI; over limit answers 403
                                  with X-RateLimit-Status: 429 (nginx turns any other status into a 500)
  /auth/<domain>                  Traefik, Caddy, APISIX: X-Forwarded-Method, -Uri, -Host, -Proto
The client's address: the peer, or X-Forwarded-For past the domain's trusted_proxies (default loopback).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import socket
import stat
from collections import deque
from typing import Any
from urllib.parse import unquote

import httptools
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format

from fastguard.side.actions import HttpRequest
from fastguard.side.gate import Answer, Side, client_address

__all__ = ["serve_http", "LIMITS", "MAX_CONNECTIONS"]

log = logging.getLogger("fastguard.side")

#: What one request may carry (nginx's large_client_header_buffers are 4 x 8 KiB; a rate limit request is tiny).
LIMITS = {"url": 8192, "headers": 100, "header_bytes": 32768, "body": 65536}
#: Seconds a connection may take to send a whole request once it started one, and may stay idle between requests.
REQUEST_TIMEOUT, IDLE_TIMEOUT = 10.0, 75.0
_MAX_RAW, _MAX_HEADER_BYTES = 2 * LIMITS["headers"], LIMITS["header_bytes"]
#: Open connections one process serves (each costs a few KiB; a gateway keeps a pool of tens).
MAX_CONNECTIONS = 10_000

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large", 414: "URI Too Long",
            429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
            503: "Service Unavailable"}


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def _response(status: int, headers: Any = (), body: bytes = b"", close: bool = False,
              content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    head = "".join([f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n",
                    *[f"{name}: {value}\r\n" for name, value in headers]]).encode("latin-1", "replace")
    if body:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + b"Content-Length: %d\r\n%s\r\n" % (len(body), b"Connection: close\r\n" if close else b"") + body


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")   # undecodable bytes kept, distinct, never an error


class _Connection(asyncio.Protocol):
    def __init__(self, app: _App) -> None:
        self.app = app
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer = ""
        self._queue: deque[Any] = deque()      # responses in request order: bytes or a pending future
        self._closing = False
        self._timer: Any = None
        self._deadline = 0.0
        self._counted = False
        self._reset()

    # -- connection ----------------------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        if self.app.open >= self.app.max_connections:   # memory stays bounded: refused, never queued
            self._closing = True
            transport.write(_response(503, body=b"too many connections", close=True))
            transport.close()
            return
        self.app.open += 1
        self._counted = True
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else "127.0.0.1"   # a Unix socket is local
        self._arm(IDLE_TIMEOUT)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._counted:
            self._counted = False
            self.app.open -= 1
        if self._timer is not None:
            self._timer.cancel()
        for item in self._queue:
            if isinstance(item, asyncio.Future):
                item.cancel()
        self._queue.clear()

    def pause_writing(self) -> None:
        self.transport.pause_reading()    # a client that does not read its answers is not read either

    def resume_writing(self) -> None:
        if not self._closing:
            self.transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        """Move the connection's deadline: one timer per connection, re-armed only when it fires early (no timer
        object made and cancelled per request)."""
        self._deadline = self._loop.time() + seconds
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        if self._closing:
            return
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._expired)
        elif self._in_request:
            self._fail(408)
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self._fail(cause.status if isinstance(cause, _Refused) else 400)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(400)

    def _fail(self, status: int) -> None:
        self._queue.append(_response(status, body=_REASONS[status].encode(), close=True))
        self._closing = True
        self._flush()

    # -- parser callbacks ----------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._url = b""
        self._raw: list[bytes] = []            # name, value, name, value... (decoded once, when complete)
        self._bytes = 0
        self._body = bytearray()
        self._in_request = False

    def on_message_begin(self) -> None:
        self._reset()
        self._in_request = True
        self._arm(REQUEST_TIMEOUT)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > LIMITS["url"]:
            raise _Refused(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        raw = self._raw
        raw.append(name)
        raw.append(value)
        self._bytes += len(name) + len(value)
        if len(raw) > _MAX_RAW or self._bytes > _MAX_HEADER_BYTES:
            raise _Refused(431)

    def _headers(self) -> dict[str, str]:
        """Names lower-case, the first value of each (as Envoy's actions read one); undecodable bytes kept."""
        raw = self._raw
        # built from the last header to the first: the first value of a repeated name is the one left
        return {raw[i].decode("utf-8", "surrogateescape").lower(): raw[i + 1].decode("utf-8", "surrogateescape")
                for i in range(len(raw) - 2, -1, -2)}

    def on_body(self, body: bytes) -> None:
        self._body += body
        if len(self._body) > LIMITS["body"]:
            raise _Refused(413)

    def on_message_complete(self) -> None:
        keep = self.parser.should_keep_alive()
        method = self.parser.get_method().decode("latin-1")
        self._in_request = False
        self._arm(IDLE_TIMEOUT)
        try:
            out = self.app.handle(method, self._url, self._headers(), bytes(self._body), self.peer, keep)
        except Exception:                           # never a crash, never an allow: a 500 is a refusal
            log.exception("fastguard serve: request failed")
            out = _response(500, body=b"Internal Server Error", close=True)
            keep = False
        self._queue.append(out)
        if not keep:
            self._closing = True
            self.transport.pause_reading()
        if isinstance(out, asyncio.Future):
            out.add_done_callback(lambda _: self._flush())
        self._flush()

    def _flush(self) -> None:
        while self._queue:
            head = self._queue[0]
            if isinstance(head, asyncio.Future):
                if not head.done():
                    return
                head = head.result() if not head.cancelled() and head.exception() is None else \
                    _response(500, body=b"Internal Server Error", close=True)
            self._queue.popleft()
            if self.transport.is_closing():
                return
            self.transport.write(head)
        if self._closing and not self.transport.is_closing():
            self.transport.close()


class _App:
    """Routes a parsed request to its answer (bytes, or a future of bytes when it must wait on a thread)."""

    def __init__(self, side: Side, rls: Any, max_connections: int = MAX_CONNECTIONS) -> None:
        self.side = side
        self.rls = rls
        self.max_connections = max_connections
        self.open = 0               # connections being served (touched on the loop's thread only)
        self.waits = side.waits     # decisions wait for Redis: checks go to threads (fixed for the process)

    def handle(self, method: str, url: bytes, headers: dict[str, str], body: bytes, peer: str,
               keep: bool) -> Any:
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            return _response(400, body=b"Bad Request", close=not keep)
        path = _text(parsed.path or b"/")
        query = _text(parsed.query or b"")
        close = not keep
        if path == "/healthcheck":
            return _response(200, body=b"OK", close=close)
        if path == "/json":
            return self._json(method, body, close)
        if path == "/auth" or path.startswith("/auth/"):
            return self._auth(method, path, query, headers, peer, close)
        return _response(404, body=b"Not Found", close=close)

    def _json(self, method: str, body: bytes, close: bool) -> Any:
        if method != "POST":
            return _response(405, [("Allow", "POST")], b"Method Not Allowed", close)
        if self.waits:          # every decision is a Redis round trip: on a thread, the loop answers meanwhile
            return asyncio.get_running_loop().run_in_executor(None, self._json_answer, body, close)
        return self._json_answer(body, close)

    def _json_answer(self, body: bytes, close: bool) -> bytes:
        try:
            request = json_format.Parse(body.decode("utf-8"), rls_pb2.RateLimitRequest())
            response = self.rls.respond(request)
        except (ValueError, json_format.ParseError, UnicodeDecodeError):
            return _response(400, body=b"Bad Request", close=close)
        out = json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()
        status = 429 if response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT else 200
        return _response(status, body=out, close=close, content_type=b"application/json")

    def _auth(self, method: str, path: str, query: str, headers: dict[str, str], peer: str, close: bool) -> Any:
        rest = path[len("/auth/"):] if path.startswith("/auth/") else ""
        domain, slash, tail = rest.partition("/")
        if "%" in domain:
            domain = unquote(domain, errors="surrogateescape")
        via_nginx = query == "via=nginx" or (bool(query) and "via=nginx" in query.split("&"))
        policy = self.side.policy(domain)
        if policy is None:
            return _response(404, body=f"no forward-auth policy for domain {domain!r}".encode(
                "utf-8", "replace"), close=close)
        if slash:                                       # Envoy ext_authz HTTP: the prefix, then the client's path
            o_method, o_uri = method, "/" + tail + (f"?{query}" if query else "")
            host, scheme = headers.get("host", ""), "http"
        elif via_nginx:
            o_method, o_uri = headers.get("x-original-method", "GET"), headers.get("x-original-uri")
            host, scheme = headers.get("host", ""), headers.get("x-forwarded-proto", "http")
        else:
            o_method, o_uri = headers.get("x-forwarded-method", method), headers.get("x-forwarded-uri")
            host = headers.get("x-forwarded-host", headers.get("host", ""))
            scheme = headers.get("x-forwarded-proto", "http")
        if o_uri is None:
            what = "X-Original-URI" if via_nginx else "X-Forwarded-Uri"
            return _response(400, body=f"forward-auth needs {what}: the gateway's configuration sends it".encode(),
                             close=close)
        client = client_address(peer, headers.get("x-forwarded-for"), policy.trusted)
        req = HttpRequest(o_method, o_uri, host, headers, client, scheme)
        if self.waits or (policy.jwt is not None and policy.jwt.needs_thread(req)):
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            work = loop.run_in_executor(None, self.side.check, domain, req)
            work.add_done_callback(lambda f: _settle(done, f, via_nginx, close))
            return done
        return _auth_response(self.side.check(domain, req), via_nginx, close)


def _settle(done: asyncio.Future[bytes], work: asyncio.Future[Answer], via_nginx: bool, close: bool) -> None:
    """Hand a threaded check's answer to its connection's queue: an error becomes the queue's 500, and a connection
    already gone (its future cancelled) is left alone."""
    if done.cancelled():
        return
    try:
        done.set_result(_auth_response(work.result(), via_nginx, close))
    except Exception as exc:          # the check failed: answered 500 by _flush, never an allow
        log.exception("fastguard serve: request failed")
        done.set_exception(exc)


def _auth_response(answer: Answer, via_nginx: bool, close: bool) -> bytes:
    if answer.status == 200:
        # A guarded header fastguard does not set goes out empty: the gateway copying it then overwrites a client's
        # copy with nothing (Caddy 2.6 would otherwise set its unreplaced placeholder text, Traefik keep the client's).
        blank = tuple((name, "") for name in answer.remove if name in answer.guarded)
        return _response(200, answer.upstream + blank + answer.downstream, close=close)
    headers = list(answer.downstream)
    status = answer.status
    if status == 429 and via_nginx:
        status = 403
        headers.append(("X-RateLimit-Status", "429"))
    return _response(status, headers, (answer.message or _REASONS.get(status, "")).encode("utf-8", "replace"),
                     close)


async def serve_http(side: Side, rls: Any, host: str = "127.0.0.1", port: int = 0, reuse_port: bool = False,
                     max_connections: int = MAX_CONNECTIONS, unix_path: str | None = None) -> asyncio.AbstractServer:
    """Start the HTTP listener on the running loop, on host:port or on a Unix socket at `unix_path` (a stale socket
    file there is replaced; a live one, or anything else there, is an OSError). Past `max_connections` open
    connections a new one is answered 503 and closed. A Unix socket's peer is local: the loopback address for
    trusted_proxies."""
    app = _App(side, rls, max_connections)
    loop = asyncio.get_running_loop()
    if unix_path is not None:
        if os.path.exists(unix_path) and stat.S_ISSOCK(os.stat(unix_path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(unix_path)
            except OSError:
                os.unlink(unix_path)        # left by a process that is gone
            else:
                raise OSError(errno.EADDRINUSE, f"another process listens on {unix_path}")
            finally:
                probe.close()
        return await loop.create_unix_server(lambda: _Connection(app), unix_path, backlog=1024)
    return await loop.create_server(lambda: _Connection(app), host, port, reuse_port=reuse_port or None,
                                    backlog=1024)
