"""Real servers around the side service, for tests and benchmarks: `fastguard serve` itself, Debian's nginx and
Caddy with the configurations docs/side-service.md shows (read from the docs, ports replaced), and an upstream that
answers each request with the headers it received, as JSON.

    side = SideService(config_path)                      # fastguard serve --http (and --grpc)
    nginx = NginxServer(docs_block("nginx", side=side.http_port, gateway=port, upstream=echo.port))
    ...
    nginx.stop(); side.stop()
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fastguard.extras import install_hint
from fastguard.testing.servers import free_port

__all__ = ["SideService", "NginxServer", "CaddyServer", "EchoUpstream", "SideGateway", "docs_block", "gateway_missing",
           "nginx_auth_location",
           "DOCS"]

#: docs/side-service.md in a checkout (the tests run from one).
DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "side-service.md")
#: The ports the docs' snippets use, and what each stands for.
DOC_PORTS = {"side": 8080, "grpc": 8081, "gateway": 8000, "upstream": 9000}


def docs_block(name: str, **ports: int) -> str:
    """The code block after `<!-- tested: NAME -->` (or `checked:`) in docs/side-service.md, its example ports
    replaced by the given ones (side=, grpc=, gateway=, upstream=)."""
    with open(DOCS, encoding="utf-8") as fh:
        text = fh.read()
    found = re.search(rf"<!-- (?:tested|checked): {re.escape(name)} -->\n```[a-z-]*\n(.*?)```", text, re.S)
    if found is None:
        raise LookupError(f"no block marked {name!r} in {DOCS}")
    block = found.group(1)
    for what, port in ports.items():
        block = re.sub(rf"(?<![0-9]){DOC_PORTS[what]}(?![0-9])", str(port), block)
    return block


def _unix_get(path: str, target: str) -> bytes:
    """One HTTP/1.1 GET over a Unix socket: the raw answer."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: side\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _wait_http(url: str, proc: subprocess.Popen[Any], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if url.startswith("unix:"):                 # unix:PATH:TARGET
            path, _, target = url[5:].rpartition(":")
            try:
                _unix_get(path, target)
                return
            except OSError:
                time.sleep(0.05)
                continue
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return                                # it answers: any status will do
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:g} s")


class _Child:
    """A server run as a child process, stopped by its pid."""

    proc: subprocess.Popen[bytes]
    dir = ""
    stop_signal = signal.SIGTERM

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self, cmd: list[str], url: str, what: str, env: dict[str, str] | None = None) -> None:
        """Start the gateway and wait until `url` answers; its output goes to a file (a pipe nobody reads could
        fill and stall it), shown when it does not start."""
        self._output = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._output, stderr=subprocess.STDOUT)
        try:
            _wait_http(url, self.proc, what)
        except RuntimeError as exc:
            self._output.seek(0)
            said = self._output.read().decode("utf-8", "replace")
            self.stop()
            raise RuntimeError(f"{exc}: {said}") from None


class SideService(_Child):
    """`fastguard serve --config PATH --http 127.0.0.1:<free> [--grpc 127.0.0.1:<free>]` as a child process
    (`unix`: a socket path, served instead of the HTTP port)."""

    def __init__(self, config: str, grpc: bool = False, args: tuple[str, ...] = (), http_port: int | None = None,
                 grpc_port: int | None = None, unix: str | None = None) -> None:
        self.http_port = http_port or free_port()
        self.grpc_port = (grpc_port or free_port()) if grpc else None
        self.unix = unix
        http = f"unix:{unix}" if unix else f"127.0.0.1:{self.http_port}"
        cmd = [sys.executable, "-m", "fastguard.cli", "serve", "--config", config, "--http", http, *args]
        if unix:
            cmd += ["--socket-mode", "666"]        # the gateway's workers run as another user
        if grpc:
            cmd += ["--grpc", f"127.0.0.1:{self.grpc_port}"]
        self._start(cmd, f"unix:{unix}:/healthcheck" if unix else f"http://127.0.0.1:{self.http_port}/healthcheck",
                    "fastguard serve")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        self._output.seek(0)
        return self._output.read().decode("utf-8", "replace")

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP, then wait for the service to say it reloaded (AssertionError with its log otherwise)."""
        before = self.log().count("configuration reloaded")
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while self.log().count("configuration reloaded") == before:
            assert time.monotonic() < deadline, f"fastguard serve did not reload:\n{self.log()}"
            time.sleep(0.05)


class NginxServer(_Child):
    """nginx (foreground, a temporary prefix) serving one `server`/`upstream` snippet inside a minimal http block."""

    stop_signal = signal.SIGQUIT     # graceful

    def __init__(self, snippet: str, port: int, workers: int = 1) -> None:
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="fg-nginx-")
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as fh:
            fh.write(f"worker_processes {workers};\nerror_log {self.dir}/error.log warn;\n"
                     f"pid {self.dir}/nginx.pid;\nevents {{ worker_connections 4096; }}\n"
                     f"http {{\n  access_log off;\n  client_body_temp_path {self.dir}/body;\n"
                     f"  proxy_temp_path {self.dir}/proxy;\n{snippet}\n}}\n")
        self._start(["nginx", "-p", self.dir, "-c", conf, "-g", "daemon off;"],
                    f"http://127.0.0.1:{port}/__nginx_up", "nginx")

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as fh:
                return fh.read()
        except OSError:
            return ""


class CaddyServer(_Child):
    """Caddy (`caddy run`) on one Caddyfile site, with its admin endpoint and automatic HTTPS off."""

    def __init__(self, site: str, port: int) -> None:
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="fg-caddy-")
        path = os.path.join(self.dir, "Caddyfile")
        with open(path, "w") as fh:
            fh.write("{\n  admin off\n  auto_https off\n}\n" + site)
        env = {**os.environ, "HOME": self.dir, "XDG_DATA_HOME": self.dir, "XDG_CONFIG_HOME": self.dir}
        self._start(["caddy", "run", "--config", path, "--adapter", "caddyfile"],
                    f"http://127.0.0.1:{port}/__caddy_up", "caddy", env)


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = json.dumps({"path": self.path, "method": self.command,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass


class EchoUpstream:
    """An upstream answering 200 with the request's path, method and headers as JSON (what the gateway passed on)."""

    def __init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def gateway_missing(kind: str) -> str | None:
    """What this machine lacks to run `kind` ("nginx" or "caddy") in front of the side service, or None."""
    if kind not in ("nginx", "caddy"):
        return f"the side gateway is nginx or caddy, not {kind!r}"
    if shutil.which(kind) is None:
        return f"{kind} is not installed (Debian: apt-get install {kind})"
    try:
        import grpc  # noqa: F401
        import httptools  # noqa: F401
        import yaml  # noqa: F401
    except ImportError as exc:
        return f"fastguard serve needs its extra: {install_hint('serve')} ({exc})"
    return None


def nginx_auth_location(location: str, upstream: str, domain: str, forwarded_for: str = "$remote_addr") -> str:
    """The internal location an `auth_request` points at: the docs' subrequest to /auth/<domain>?via=nginx on a
    keep-alive upstream, without the body, with the original URI, method and client address."""
    return f"""
    location = {location} {{
        internal;
        proxy_pass http://{upstream}/auth/{domain}?via=nginx;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Original-Method $request_method;
        proxy_set_header X-Forwarded-For {forwarded_for};
    }}"""


def _nginx_routes(routes: dict[str, str], side: str, port: int) -> str:
    """nginx routing each path prefix through `auth_request` to /auth/<domain>?via=nginx (the docs' directives),
    then to a second server block answering 200 (an upstream that costs nothing). The client's X-Forwarded-For is
    passed on with nginx's address appended: the side service trusts loopback and reads past it."""
    up = free_port()
    locations = []
    for prefix, domain in routes.items():
        name = re.sub(r"[^a-z0-9]", "_", domain.lower())
        locations.append(f"""
    location {prefix} {{
        auth_request /_fastguard_{name};
        auth_request_set $fg_status $upstream_http_x_ratelimit_status;
        auth_request_set $fg_retry $upstream_http_retry_after;
        auth_request_set $fg_sub $upstream_http_x_jwt_sub;
        error_page 403 = @fastguard_denied;
        proxy_set_header X-Jwt-Sub $fg_sub;
        proxy_set_header Connection "";     # a location's own proxy_set_header: the server's are not inherited
        proxy_pass http://fastguard_upstream;
    }}
{nginx_auth_location(f"/_fastguard_{name}", "fastguard", domain, "$proxy_add_x_forwarded_for")}""")
    return f"""
upstream fastguard {{
    server {side};
    keepalive 32;
}}
upstream fastguard_upstream {{
    server 127.0.0.1:{up};
    keepalive 32;
}}
server {{
    listen 127.0.0.1:{up};
    location / {{ return 200 "ok\\n"; }}
}}
server {{
    listen 127.0.0.1:{port};
    proxy_http_version 1.1;             # keep-alive to both upstreams
    proxy_set_header Connection "";
    location = /__nginx_up {{ return 204; }}
{"".join(locations)}
    location @fastguard_denied {{
        add_header Retry-After $fg_retry always;
        if ($fg_status = 429) {{
            return 429 "Too Many Requests\\n";
        }}
        return 403 "Forbidden\\n";
    }}
}}
"""


def _caddy_routes(routes: dict[str, str], side: str, port: int) -> str:
    """Caddy's forward_auth per path prefix (the docs' directives), then a 200 answer; Caddy passes the client's
    X-Forwarded-For on (its own address appended) because it trusts loopback clients."""
    handles = []
    for prefix, domain in routes.items():
        handles.append(f"""
    handle {prefix}* {{
        forward_auth {side.replace("unix:", "unix/")} {{
            uri /auth/{domain}
            copy_headers X-Jwt-Sub
            trusted_proxies 127.0.0.1/32
        }}
        respond "ok" 200
    }}""")
    return f""":{port} {{
    bind 127.0.0.1
    handle /__caddy_up {{
        respond 204
    }}
{"".join(handles)}
}}
"""


class SideGateway:
    """`fastguard serve` behind a real nginx (`auth_request`) or Caddy (`forward_auth`): the domain files in
    `config` (a folder), each of `routes` ({path prefix: domain}) guarded by its domain. `port` is the gateway's."""

    def __init__(self, kind: str, config: str, routes: dict[str, str], serve_args: tuple[str, ...] = (),
                 unix: str | None = None) -> None:
        problem = gateway_missing(kind)
        if problem is not None:
            raise RuntimeError(problem)
        self.kind = kind
        self.side = SideService(config, args=serve_args, unix=unix)
        self.port = free_port()
        side = f"unix:{unix}" if unix else f"127.0.0.1:{self.side.http_port}"
        try:
            if kind == "nginx":
                self.gateway: _Child = NginxServer(_nginx_routes(routes, side, self.port), self.port)
            else:
                self.gateway = CaddyServer(_caddy_routes(routes, side, self.port), self.port)
        except BaseException:
            self.side.stop()
            raise

    def stop(self) -> None:
        try:
            self.gateway.stop()
        finally:
            self.side.stop()
