"""Kong's side of the plugin-server protocol: MessagePack-RPC over a plugin server's Unix socket.

Used by `fastguard simulate` (to play Kong for real plugin servers), by the tests and by the benchmarks.

It speaks what Kong speaks (docs/kong.md, "The protocol"): `[0, msgid, "plugin.Method", [arg]]` requests on a pool of
connections (a different one for each call, as Kong may), StartInstance with Kong's meta fields in the config
JSON, HandleEvent, then one Step per PDK call — StepMultiMap for header and query maps, StepConsumer /
StepCredential / StepService for entities, StepError for a failed call, and no `Data` key when the PDK call
returned nil — nothing after `kong.response.exit`, CloseInstance, and a new StartInstance plus a retry when the
server answers "no plugin instance".
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgpack

MULTI_MAP = {"kong.request.get_headers", "kong.request.get_query", "kong.response.get_headers",
             "kong.service.response.get_headers"}
ENTITY_STEPS = {"kong.client.get_consumer": "plugin.StepConsumer", "kong.client.get_credential":
                "plugin.StepCredential", "kong.router.get_service": "plugin.StepService",
                "kong.router.get_route": "plugin.StepRoute"}
TERMINAL = {"kong.response.exit", "kong.response.error"}


class RPCError(Exception):
    pass


class PDKFailure(Exception):
    """Raised by a test's PDK handler: Kong answers the call with StepError."""


@dataclass
class Outcome:
    calls: list[tuple[str, list[Any]]] = field(default_factory=list)  # every PDK call the plugin made
    exit: tuple[int, Any, dict[str, Any]] | None = None                # kong.response.exit(status, body, headers)
    headers: dict[str, Any] = field(default_factory=dict)              # kong.response.set_headers
    upstream: dict[str, Any] = field(default_factory=dict)             # kong.service.request.set_headers

    @property
    def status(self) -> int:
        return self.exit[0] if self.exit else 200


class KongClient:
    def __init__(self, path: str, connections: int = 3, timeout: float = 20.0) -> None:
        self.path = path
        self.conns = []
        for _ in range(connections):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(path)
            self.conns.append((s, msgpack.Unpacker(raw=False, strict_map_key=False,
                                                   unicode_errors="surrogateescape")))
        self._next = itertools.cycle(range(connections))
        self._ids = itertools.count(1)
        self.instances: dict[int, tuple[str, dict[str, Any]]] = {}
        self.notifications: list[tuple[str, Any]] = []

    def close(self) -> None:
        for s, _ in self.conns:
            s.close()

    def call(self, method: str, arg: Any) -> Any:
        sock, unpacker = self.conns[next(self._next)]
        msgid = next(self._ids)
        # Kong's lua-MessagePack sends any Lua string as msgpack str, whatever its bytes: here a str with
        # surrogate escapes ("\udcff") stands for such raw bytes and is sent as they are.
        sock.sendall(msgpack.packb([0, msgid, method, [arg]], unicode_errors="surrogateescape"))
        while True:
            for message in unpacker:
                if message[0] == 2:  # a notification ([2, label, args]), e.g. serverPid: Kong reads on
                    self.notifications.append((message[1], message[2]))
                    continue
                kind, rid, error, result = message
                assert kind == 1 and rid == msgid, message
                if error is not None:
                    raise RPCError(error)
                return result
            data = sock.recv(65536)
            if not data:
                raise RPCError("the plugin server closed the connection")
            unpacker.feed(data)

    # -- instances ----------------------------------------------------------------------------------------------
    def start(self, name: str, config: dict[str, Any], plugin_id: str | None = None, seq: int = 1) -> int:
        """StartInstance with the meta fields Kong adds to every config."""
        plugin_id = plugin_id or str(uuid.uuid4())
        full = {**config, "route_id": None, "service_id": None, "consumer_id": None, "__plugin_id": plugin_id,
                "__ws_id": "0dc6f45b-8f8d-40d2-a504-473544ee190b", "__key__": f"plugins:{name}::::{plugin_id}",
                "__seq__": seq}
        result = self.call("plugin.StartInstance", {"Name": name, "Config": json.dumps(full)})
        assert result["Name"] == name and isinstance(result["Id"], int)
        self.instances[result["Id"]] = (name, full)
        return result["Id"]

    def close_instance(self, iid: int) -> Any:
        return self.call("plugin.CloseInstance", iid)

    # -- events -------------------------------------------------------------------------------------------------
    def event(self, iid: int, pdk: dict[str, Any], phase: str = "access") -> Outcome:
        """Run one event. `pdk` maps a PDK method to its result, or to a function of the call's args; a function
        may raise PDKFailure. Unlisted getters return nil; setters and exit are recorded."""
        try:
            answer = self.call("plugin.HandleEvent", {"InstanceId": iid, "EventName": phase})
        except RPCError as exc:
            if "no plugin instance" not in str(exc):
                raise
            name, config = self.instances[iid]  # as Kong does: start it again, then retry
            iid = self.start(name, {k: v for k, v in config.items() if not k.startswith("__")
                                    and k not in ("route_id", "service_id", "consumer_id")},
                             plugin_id=config["__plugin_id"], seq=config["__seq__"])
            answer = self.call("plugin.HandleEvent", {"InstanceId": iid, "EventName": phase})
        out = Outcome()
        while True:
            data = answer["Data"]
            eid = answer["EventId"]
            if data == "ret":
                return out
            method, args = data["Method"], data["Args"]
            out.calls.append((method, args))
            if method in TERMINAL:
                out.exit = (args[0], args[1] if len(args) > 1 else None, args[2] if len(args) > 2 else {})
                return out  # Kong sends nothing more for this event
            step, result = "plugin.Step", None
            try:
                if method == "kong.response.set_headers":
                    out.headers.update(args[0])
                elif method == "kong.service.request.set_headers":
                    out.upstream.update(args[0])
                handler = pdk.get(method)
                result = handler(*args) if callable(handler) else handler
            except PDKFailure as exc:
                answer = self.call("plugin.StepError", {"EventId": eid, "Data": str(exc)})
                continue
            if method in MULTI_MAP and result is not None:
                step = "plugin.StepMultiMap"
                result = {k: v if isinstance(v, list) else [v] for k, v in result.items()}
            elif method in ENTITY_STEPS:
                step = ENTITY_STEPS[method]
            msg = {"EventId": eid} if result is None else {"EventId": eid, "Data": result}
            answer = self.call(step, msg)

    def status(self) -> Any:
        return self.call("plugin.GetStatus", None)


class ServerProcess:
    """A plugin server started the way Kong's start_cmd starts it, stopped by pid."""

    def __init__(self, args: list[str], socket_path: str, env: dict[str, str] | None = None) -> None:
        self.socket = socket_path
        # Started in the socket's folder: `python -m` puts the working directory first on sys.path, and a source
        # checkout there would shadow the installed (compiled) package.
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, **(env or {})}, cwd=os.path.dirname(socket_path) or None)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if os.path.exists(socket_path):
                try:
                    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    probe.connect(socket_path)
                    probe.close()
                    return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"plugin server exited: {self.proc.stderr.read()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("plugin server did not listen within 20 s")

    def client(self, connections: int = 3) -> KongClient:
        return KongClient(self.socket, connections)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        """The server's resident memory (VmRSS), in bytes."""
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.stderr.read() if self.proc.stderr else ""


def fastguard_server(name: str, folder: str, *extra: str) -> ServerProcess:
    """`fastguard kong-server NAME --socket FOLDER/NAME.socket`, as Kong's start_cmd would run it."""
    path = os.path.join(folder, f"{name}.socket")
    return ServerProcess([sys.executable, "-m", "fastguard.cli", "kong-server", name, "--socket", path, *extra], path)
