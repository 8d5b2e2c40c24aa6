"""A real gateway for tests and benchmarks: nginx + lua-nginx-module playing Kong's side of the plugin-server
protocol (bindings/kong/gateway/fastguard_gateway.lua), in front of an upstream location that answers 200.

    gw = NginxGateway({"rl": GatewayPlugin("fastguard-rate-limiting", socket, {"minute": 5})}, routes={"/": ["rl"]})
    ... HTTP to gw.url ...
    gw.stop()

Needs Debian's nginx, libnginx-mod-http-lua, lua-messagepack and lua-cjson (`missing()` says what is absent).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastguard.testing.servers import free_port

__all__ = ["GatewayPlugin", "NginxGateway", "missing", "LUA_DIR"]

#: The folder of fastguard_gateway.lua (package data).
LUA_DIR = str(resources.files("fastguard._bindings").joinpath("kong", "gateway"))
_MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")
_LUA_PATHS = ("/usr/share/lua/5.1/MessagePack.lua", *(glob.glob("/usr/lib/*/lua/5.1/cjson.so")[:1]
                                                       or ["/usr/lib/<arch>/lua/5.1/cjson.so"]))


def missing() -> str | None:
    """What the gateway needs and this machine lacks, as an install hint; None when all is there."""
    absent = [p for p in (*_MODULES, *_LUA_PATHS) if not os.path.exists(p)]
    if shutil.which("nginx") is None or absent:
        return ("nginx with lua is not installed (apt-get install nginx libnginx-mod-http-lua lua-messagepack "
                "lua-cjson)" + (f"; missing: {', '.join(absent)}" if absent else ""))
    return None


@dataclass
class GatewayPlugin:
    name: str                      # the plugin's name (what StartInstance sends)
    socket: str                    # its plugin server's socket
    config: dict[str, Any]         # the plugin config (Kong's meta fields are added by the gateway)
    seq: int = 1                   # Kong's __seq__: a new value makes every worker start a new instance


@dataclass
class NginxGateway:
    plugins: dict[str, GatewayPlugin]          # entity id -> plugin
    routes: dict[str, list[str]]               # location prefix -> entity ids, in order
    post_functions: dict[str, str] = field(default_factory=dict)  # location prefix -> Lua run after its plugins
    raw_locations: dict[str, str] = field(default_factory=dict)   # location prefix -> its nginx directives
    http_extra: str = ""                       # more directives in the http block (zones, shared dicts)
    trusted_ips: tuple[str, ...] = ()          # Kong's trusted_ips: their X-Forwarded-For is the client address
    workers: int = 2
    reset_per_entity: bool = False             # Kong < 3.9's "no plugin instance" rule
    folder: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="fg-gateway-"))

    def __post_init__(self) -> None:
        hint = missing()
        if hint:
            raise RuntimeError(hint)
        self.port, self.upstream_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._write()
        self.proc = subprocess.Popen(["nginx", "-p", self.folder, "-c", "nginx.conf", "-g", "daemon off;"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.proc.stderr.read().decode(errors='replace')}"
                                   f"{self.error_log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not listen within 15 s")

    def _write(self) -> None:
        os.makedirs(os.path.join(self.folder, "logs"), exist_ok=True)
        entities = {e: {"name": p.name, "socket": p.socket, "seq": p.seq,
                        "config_json": json.dumps({**p.config, "route_id": None, "service_id": None,
                                                   "consumer_id": None, "__plugin_id": e,
                                                   "__key__": f"plugins:{p.name}::::{e}", "__seq__": p.seq})}
                    for e, p in self.plugins.items()}
        locations = "\n".join(
            f"""        location {prefix} {{
            access_by_lua_block {{
                require("fastguard_gateway").access({_lua(ids)}, {_lua_or_nil(self.post_functions.get(prefix))})
            }}
            proxy_pass http://fg_upstream;
        }}""" for prefix, ids in self.routes.items()) + "\n".join(
            f"""
        location {prefix} {{
            {directives}
            proxy_pass http://fg_upstream;
        }}""" for prefix, directives in self.raw_locations.items())
        # the plugins in a file of their own (nginx limits the size of an inline Lua block)
        plugins_file = os.path.join(self.folder, "plugins.json")
        with open(plugins_file + ".new", "w") as fh:   # whole or not at all: the workers re-read it any time
            json.dump(entities, fh)
        os.replace(plugins_file + ".new", plugins_file)
        realip = "".join(f"set_real_ip_from {ip}; " for ip in self.trusted_ips) + \
            ("real_ip_header X-Forwarded-For;" if self.trusted_ips else "")
        conf = f"""{"user root;" if os.geteuid() == 0 else ""}
load_module {_MODULES[0]};
load_module {_MODULES[1]};
worker_processes {self.workers};
error_log logs/error.log warn;
pid logs/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    {realip}
    # pooled connections to the upstream: a new TCP connection per request would exhaust ephemeral ports under load
    upstream fg_upstream {{ server 127.0.0.1:{self.upstream_port}; keepalive 64; }}
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    {self.http_extra}
    lua_package_path "{LUA_DIR}/?.lua;/usr/share/lua/5.1/?.lua;;";
    lua_package_cpath "{os.path.dirname(_LUA_PATHS[1])}/?.so;;";
    init_worker_by_lua_block {{
        require("fastguard_gateway").watch({_lua(plugins_file)},
                                           {{reset_per_entity = {str(self.reset_per_entity).lower()}}})
    }}
    server {{
        listen 127.0.0.1:{self.port};
{locations}
    }}
    server {{
        listen 127.0.0.1:{self.upstream_port};
        location / {{ return 200 "upstream ok\\n"; }}
        # what the upstream received: its request headers as JSON (tests of what a plugin lets through)
        location /echo {{ content_by_lua_block {{ ngx.say(require("cjson").encode(ngx.req.get_headers())) }} }}
    }}
}}
"""
        with open(os.path.join(self.folder, "nginx.conf"), "w") as fh:
            fh.write(conf)

    def reload(self, timeout: float = 30) -> None:
        """Write the configuration again (e.g. a plugin's new config and seq), have nginx reload it, and return once
        every worker is a new one: `nginx -s reload` only signals the master, and a request answered by a worker of
        the old generation still runs the old configuration, for as long as the machine takes to start the new."""
        old = set(self.worker_pids())
        self._write()
        subprocess.run(["nginx", "-p", self.folder, "-c", "nginx.conf", "-s", "reload"], check=True,
                       capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while True:
            pids = set(self.worker_pids())
            if len(pids) == self.workers and not pids & old:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not replace its workers within {timeout:g} s (old {sorted(old)}, "
                                   f"now {sorted(pids)}){self.error_log()[-2000:]}")
            time.sleep(0.02)

    def update(self, timeout: float = 30) -> None:
        """Apply the plugins' new configs (and seqs) in the running workers, as Kong applies a configuration change
        (no reload): every worker re-reads them within 0.2 s; returns once each has."""
        before = self.error_log().count("plugins reconfigured")
        self._write()
        deadline = time.monotonic() + timeout
        while self.error_log().count("plugins reconfigured") < before + self.workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not apply the new configuration within {timeout:g} s")
            time.sleep(0.02)

    def error_log(self) -> str:
        try:
            with open(os.path.join(self.folder, "logs", "error.log"), errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""

    def worker_pids(self) -> list[int]:
        """The nginx worker processes (the master's children)."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                            pids.append(int(entry))
                except (OSError, ValueError, IndexError):  # the process ended meanwhile
                    pass
        return pids

    def stop(self) -> None:
        """Stop nginx (by its pid) and remove its folder (configuration, logs)."""
        if self.proc.poll() is None:
            self.proc.terminate()  # nginx's master: SIGTERM is a fast shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _lua_or_nil(value: str | None) -> str:
    return "nil" if value is None else _lua(value)


def _lua(value: Any) -> str:
    """A Python str or list of str as a Lua literal."""
    if isinstance(value, str):
        return "[==[" + value + "]==]"
    return "{" + ", ".join(_lua(v) for v in value) + "}"
