"""`fastguard kong-server NAME`: one plugin per process, on kong-pdk's plugin server, with its defects fixed.

This is kong-pdk's `PluginServer` (same MessagePack-RPC protocol, same plugin API) on a socket listener of our own
(fastguard.kong.rpc), subclassed where kong-pdk 0.36 goes wrong:

* kong-pdk holds a global event lock from HandleEvent until the handler's first PDK call, and a handler that raises
  before that call never releases it: the whole server deadlocks. Here no lock is held while a handler works,
  and every way a handler can end (a PDK call, a return, an exception) answers the RPC.
* kong-pdk starts a thread (or greenlet) per event, and in gevent mode leaks one per `kong.response.exit`. Here
  fastguard's plugins run as generators of PDK calls, one step per RPC, on the socket's event loop (a step after
  `MAY_WAIT` on a worker thread: fastguard.kong.rpc.Deferred): no thread per event.
  Other kong-pdk plugins run on a bounded thread pool; a handler that outlives its event (after an exit, or when
  Kong stops stepping it) is woken by a timeout and returns its thread.
* every wait has a timeout (`--timeout`, 10 s): a plugin that does not answer is answered 500 for it.
* events that Kong abandoned are forgotten after that timeout too.
* any error while an event is pending ends that event with the plugin's fault answer (`fault_answer()`: 500, or
  the limiter's `fault_tolerant` pass), never with an RPC error that Kong would answer by proxying unchecked.
* instance and event ids start at the process's start time in microseconds, so an id Kong cached before a
  restart never names a live instance of the new process: it gets "no plugin instance" and Kong starts it again.
* the socket is fastguard.kong.rpc's: hostile bytes, an allow-list of methods, mode 0600, bounded connections.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kong_pdk.exception import PluginServerException
from kong_pdk.logger import Logger
from kong_pdk.module import Module
from kong_pdk.pdk import Kong
from kong_pdk.server import PluginServer

import fastguard
from fastguard.extras import install_hint
from fastguard.kong.pdk import MAY_WAIT
from fastguard.kong.plugins import PLUGINS, PRIORITIES, TERMINAL, PDKError
from fastguard.kong.rpc import MAX_CONNECTIONS, METHODS, Deferred, RPCServer

__all__ = ["FastguardPluginServer", "main", "plugin_module", "check_kong_pdk", "KONG_PDK_TESTED"]

log = logging.getLogger("fastguard.kong")

MSG_RET = "ret"
#: Seconds without an event after which an instance is closed (and longer, while its limiter's state matters).
IDLE_TIMEOUT = 3600.0
#: methods that always run on the RPC server's worker pool
_OFF_LOOP = frozenset(("plugin.StartInstance", "plugin.CloseInstance"))
_FAIL_CLOSED = {"Method": "kong.response.exit",
                "Args": [500, {"message": "An unexpected error occurred"}, {}]}


#: kong-pdk releases whose internals this server subclasses and was tested with (PluginServer's instance and event
#: tables, Module, the PDK bridge). Another release is refused at start: it would not fail loudly, it would misbehave.
KONG_PDK_TESTED = ("0.36",)
#: Set to 1 to run on an untested kong-pdk release anyway (at your own risk: run the Kong tests first).
UNTESTED_OVERRIDE = "FASTGUARD_KONG_PDK_UNTESTED"


def check_kong_pdk(version: str | None = None) -> str:
    """The installed kong-pdk version, or RuntimeError when it is not one this server was tested with."""
    import os
    from importlib import metadata

    version = version or metadata.version("kong-pdk")
    if ".".join(version.split(".")[:2]) not in KONG_PDK_TESTED and os.environ.get(UNTESTED_OVERRIDE) != "1":
        raise RuntimeError(f"kong-pdk {version} is not a release fastguard kong-server was tested with "
                           f"({', '.join(KONG_PDK_TESTED)}.x): install 'kong-pdk>=0.36,<0.37', or set "
                           f"{UNTESTED_OVERRIDE}=1 to run anyway")
    return version


def _first_id() -> int:
    """Ids of this process start at its start time in microseconds (below 2**53: exact in Kong's Lua numbers), so
    they never repeat across restarts unless a process started more instances than microseconds passed."""
    return time.time_ns() // 1000


def _fault(plugin: Any) -> Any:
    """The Data that ends an event whose handling failed: the plugin's fault answer, else a 500 exit."""
    answer = getattr(plugin, "fault_answer", None)
    call = answer() if answer is not None else ("kong.response.exit", _FAIL_CLOSED["Args"])
    return MSG_RET if call is None else {"Method": call[0], "Args": list(call[1])}


class _Event:
    __slots__ = ("steps", "channel", "deadline", "started", "plugin", "expired")

    def __init__(self, steps: Any = None, channel: Any = None, deadline: float = 0.0, plugin: Any = None) -> None:
        self.steps = steps        # a fastguard plugin's generator of PDK calls
        self.channel = channel    # or the queues of a kong-pdk handler running on the pool
        self.deadline = deadline
        self.started = time.perf_counter()
        self.plugin = plugin      # the plugin object: its fault_answer() ends a failed event
        self.expired = False      # answered at the socket's deadline: what its step does later is dropped


class _EventMetrics:
    """Per-plugin event counts by final status and the time the server spent on each event (HandleEvent to the
    last answer, Kong's PDK round trips included)."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Histogram

        self.events = Counter("fastguard_kong_events", "Events by final status (200: passed on)",
                              ["plugin", "status"], registry=registry)
        self.seconds = Histogram("fastguard_kong_event_seconds", "Duration of an event in the plugin server",
                                 ["plugin"], registry=registry,
                                 buckets=(1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0))


class _Channel:
    """What kong-pdk's `Kong` object talks to, for a handler on the pool: `put` a PDK call or "ret", `get` the
    answer (data, err). The handler's `get` times out, so a handler whose event was abandoned ends."""

    def __init__(self, timeout: float) -> None:
        self.to_server: queue.Queue[Any] = queue.Queue()
        self.to_plugin: queue.Queue[Any] = queue.Queue()
        self.timeout = timeout

    def put(self, message: Any) -> None:
        self.to_server.put(message)

    def get(self) -> Any:
        try:
            return self.to_plugin.get(timeout=self.timeout)
        except queue.Empty:
            raise PDKError(f"no answer from Kong within {self.timeout:g} s") from None


def plugin_module(name: str) -> type:
    """A kong-pdk plugin module (Plugin, Schema, version, priority) for one of fastguard's plugins."""
    if name not in PLUGINS:
        raise KeyError(f"unknown plugin {name!r}: use one of {', '.join(PLUGINS)}")
    cls = PLUGINS[name]

    class mod:  # noqa: N801 - the shape kong_pdk.module.Module reads
        Plugin = cls
        Schema = cls.schema()
        version = fastguard.__version__
        priority = PRIORITIES[name]

    return mod


class FastguardPluginServer(PluginServer):
    """kong-pdk's PluginServer with the fixes listed in this module's docstring."""

    def __init__(self, name: str, module_path: str | None = None, *, timeout: float = 10.0, workers: int = 32,
                 loglevel: int = Logger.WARNING, idle_timeout: float = IDLE_TIMEOUT) -> None:
        check_kong_pdk()
        super().__init__(loglevel=loglevel, name=name, lua_style=True)
        self.name = name
        self.timeout = timeout
        self.plugins[name] = Module(name, path=module_path) if module_path else \
            Module(name, module=plugin_module(name))
        self._lock = threading.Lock()   # guards the instance and event tables only, never a handler's work
        self.metrics: _EventMetrics | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kong-handler")
        self._sweep_at = time.monotonic() + timeout
        self.instance_id = self.event_id = _first_id()
        self._handlers: dict[str, Any] = {}
        self._phases: dict[tuple[type, Any], bool] = {}   # (plugin class, EventName) -> has that handler
        self.idle_timeout = idle_timeout
        if idle_timeout > 0:
            threading.Thread(target=self._release_idle_loop, name="idle-instances", daemon=True).start()

    def get_plugin_info(self, name: str) -> dict[str, Any]:
        """kong-pdk's plugin info, with the plugin's entity checks in its schema (Kong's cross-field rules: Kong's
        Admin API refuses what the plugin would refuse)."""
        info = super().get_plugin_info(name)
        checks = getattr(self.plugins[name].cls, "entity_checks", ())
        if checks:
            info["Schema"]["entity_checks"] = [dict(c) for c in checks]
        return info

    # -- the socket's entry points (fastguard.kong.rpc) -------------------------------------------------------------
    def dispatch(self, method: str, args: list[Any]) -> Any:
        """Run one of the protocol's methods (rpc.METHODS is the allow-list), or say how to (a Deferred: starting
        or closing an instance, which may connect to Redis or stop threads, runs off the event loop)."""
        handler = self._handlers.get(method)
        if handler is None:  # one bound method per protocol method, built once (this runs for every message)
            handler = self._handlers[method] = getattr(self, METHODS[method])
        if method in _OFF_LOOP:
            return Deferred(lambda: handler(*args))
        return handler(*args)

    def encode_failed(self, result: Any, exc: Exception) -> Any:
        """An event's answer that msgpack cannot encode ends that event with the plugin's fault answer."""
        if not (isinstance(result, dict) and "EventId" in result):
            raise exc
        eid = result["EventId"]
        with self._lock:
            ev = self.events.pop(eid, None)
        log.error("fastguard kong-server: a PDK call could not be encoded (%s); ending the event", exc)
        plugin = None
        if ev is not None:
            plugin = ev.plugin
            if ev.steps is not None:
                ev.steps.close()
            else:
                ev.channel.to_plugin.put((None, "the PDK call could not be encoded"))
            self._finished(ev, 500)
        data = _fault(plugin) if plugin is not None else _FAIL_CLOSED
        if isinstance(data, dict) and data.get("Method") == "kong.response.exit" and data["Args"][0] < 500:
            data = _FAIL_CLOSED  # a refusal we cannot send intact is a server error
        return {"Data": data, "EventId": eid}

    # -- instances ------------------------------------------------------------------------------------------------
    def start_instance(self, cfg: dict[str, Any]) -> dict[str, Any]:
        name = cfg["Name"]
        if name not in self.plugins:
            raise PluginServerException(f"{name} not initizlied")  # kong-pdk's words, which Kong matches
        try:
            config = json.loads(cfg["Config"])
        except (TypeError, ValueError) as exc:
            raise PluginServerException(f"invalid config JSON: {exc}") from None
        try:
            instance = self.plugins[name].new(config)  # the plugin checks its config here
        except ValueError as exc:
            raise PluginServerException(f"{name}: {exc}") from None
        with self._lock:
            iid = self.instance_id
            self.instances[iid] = instance
            self.instance_id = iid + 1
        return {"Name": name, "Id": iid, "Config": config, "StartTime": time.time()}

    def close_instance(self, iid: int) -> dict[str, Any]:
        with self._lock:
            instance = self.instances.pop(iid, None)
        if instance is None:
            raise PluginServerException(f"no plugin instance #{iid}")
        close = getattr(instance.cls, "close", None)
        if close is not None:
            close()
        instance.close_cb()
        return {"Name": instance.name, "Id": iid, "Config": instance.config}

    def release_idle(self, now: float | None = None) -> int:
        """Close the instances that saw no event for idle_timeout seconds, and for as long as their state matters
        (a limiter's longest window or ban): Kong never closes the instances of a deleted plugin entity, which kept
        their threads and Redis connections for ever. An instance Kong still uses is answered "no plugin
        instance" at its next event, and Kong starts it again. How many were closed."""
        now = time.time() if now is None else now
        with self._lock:
            items = list(self.instances.items())
        idle = []
        for iid, instance in items:
            lasts = getattr(instance.cls, "state_lasts", None)
            limit = max(self.idle_timeout, lasts() if lasts is not None else 0.0)
            if now - max(instance.last_used_time, instance.start_time) > limit:
                idle.append(iid)
        for iid in idle:
            try:
                self.close_instance(iid)
            except PluginServerException:  # Kong closed it meanwhile
                continue
            log.warning("fastguard kong-server: instance #%d closed after %g s without an event", iid,
                        self.idle_timeout)
        return len(idle)

    def _release_idle_loop(self) -> None:
        while True:
            time.sleep(min(60.0, max(self.idle_timeout / 4, 0.05)))
            try:
                self.release_idle()
            except Exception:  # noqa: BLE001 - the sweep must go on
                log.exception("fastguard kong-server: releasing idle instances failed")

    def get_status(self, *_: Any) -> dict[str, Any]:
        with self._lock:
            return {"Pid": os.getpid(), "Instances": len(self.instances), "Events": len(self.events),
                    "Threads": threading.active_count()}

    # -- events ---------------------------------------------------------------------------------------------------
    def handle_event(self, event: dict[str, Any]) -> dict[str, Any] | Deferred:
        if type(event) is not dict:
            raise PluginServerException("HandleEvent expects a map")
        iid = event.get("InstanceId")
        instance = self.instances.get(iid) if type(iid) is int else None
        if instance is None:
            raise PluginServerException(f"no plugin instance #{iid}")  # Kong restarts the instance on this text
        instance.last_used_time = time.time()  # kong-pdk's reset_expire_ts
        plugin = instance.cls
        phase = event.get("EventName")
        known = self._phases.get((type(plugin), phase)) if type(phase) is str else False
        if known is None:
            known = self._phases[type(plugin), phase] = not phase.startswith("_") and hasattr(plugin, phase)
        if not known:
            raise PluginServerException(f"{instance.name} has no {phase} handler")
        with self._lock:
            eid = self.event_id
            self.event_id = eid + 1
        self._sweep()
        if phase == "access" and hasattr(plugin, "steps"):
            return self._advance(eid, _Event(plugin.steps(), plugin=plugin), "start", None)
        channel = _Channel(self.timeout)
        self._pool.submit(self._run_handler, getattr(plugin, phase), channel)
        ev = _Event(channel=channel, plugin=plugin)
        return self._deferred(eid, ev, lambda: self._relay(eid, ev))  # waits on the handler

    def step(self, data: dict[str, Any]) -> dict[str, Any] | Deferred:
        return self._step(data, False)

    def step_error(self, data: dict[str, Any]) -> dict[str, Any] | Deferred:
        return self._step(data, True)

    step_multi_map = step_credential = step_consumer = step_route = step_service = step_plugin = step
    step_memory_stats = step

    def _step(self, data: dict[str, Any], is_error: bool) -> dict[str, Any] | Deferred:
        eid = data.get("EventId") if isinstance(data, dict) else None
        with self._lock:
            ev = self.events.pop(eid, None) if isinstance(eid, int) else None
        if ev is None:
            raise PluginServerException(f"event id {eid!r} not found")
        value = data.get("Data")  # no Data key: the PDK call returned nil
        if ev.steps is not None:
            try:
                return self._advance(eid, ev, "throw" if is_error else "send", value)
            except Exception as exc:  # noqa: BLE001 - the pending event always gets an answer
                return self._failed(eid, ev, exc)
        ev.channel.to_plugin.put((None, value) if is_error else (value, None))
        return self._deferred(eid, ev, lambda: self._relay(eid, ev))

    def _deferred(self, eid: int, ev: _Event, run: Any) -> Deferred:
        """A step of `ev` that may wait, for the socket's worker pool; answered with the plugin's fault answer if
        it has not answered by the socket's deadline (`--timeout`)."""
        return Deferred(lambda: self._guarded(eid, ev, run), lambda: self._expired(eid, ev))

    def _expired(self, eid: int, ev: _Event) -> dict[str, Any]:
        ev.expired = True
        with self._lock:
            self.events.pop(eid, None)
        log.error("fastguard kong-server: an event gave no answer within %g s; answering with the plugin's fault "
                  "answer", self.timeout)
        self._finished(ev, 500)
        return {"Data": _fault(ev.plugin), "EventId": eid}

    def _guarded(self, eid: int, ev: _Event, run: Any) -> Any:
        """run(), or on any error the event's end with the plugin's fault answer: the pending event always gets an
        answer (an RPC error would make Kong proxy the request unchecked)."""
        try:
            return run()
        except Exception as exc:  # noqa: BLE001
            return self._failed(eid, ev, exc)

    def _failed(self, eid: int, ev: _Event, exc: Exception) -> dict[str, Any]:
        log.error("fastguard kong-server: step failed, ending the event: %r", exc, exc_info=exc)
        if ev.steps is not None:
            ev.steps.close()
        self._finished(ev, 500)
        return {"Data": _fault(ev.plugin), "EventId": eid}

    def _advance(self, eid: int, ev: _Event, how: str, value: Any, waiting: bool = False) -> dict[str, Any] | Deferred:
        """One step of a fastguard plugin's generator, on the event loop; from a MAY_WAIT on, on a worker thread
        (`waiting`)."""
        try:
            if how == "start":
                call = next(ev.steps)
            elif how == "send":
                call = ev.steps.send(value)
            else:
                call = ev.steps.throw(PDKError(str(value)))
            while call is MAY_WAIT:
                if not waiting:
                    return self._deferred(eid, ev, lambda: self._advance(eid, ev, "send", None, True))
                call = ev.steps.send(None)
        except StopIteration:
            self._finished(ev, 200)
            return {"Data": MSG_RET, "EventId": eid}
        except Exception as exc:  # noqa: BLE001 - the plugins answer their own errors; this is the last net
            log.error("fastguard kong-server: plugin raised, ending the event: %r", exc, exc_info=exc)
            self._finished(ev, 500)
            return {"Data": _fault(ev.plugin), "EventId": eid}
        method, args = call
        if method in TERMINAL:
            ev.steps.close()  # Kong sends nothing more for this event
            self._finished(ev, args[0] if args and isinstance(args[0], int) else 500)
        elif not ev.expired:
            ev.deadline = time.monotonic() + self.timeout
            with self._lock:
                self.events[eid] = ev
        return {"Data": {"Method": method, "Args": list(args)}, "EventId": eid}

    def _relay(self, eid: int, ev: _Event) -> dict[str, Any]:
        """The next message of a kong-pdk handler running on the pool (with a timeout)."""
        try:
            message = ev.channel.to_server.get(timeout=self.timeout)
        except queue.Empty:
            log.error("fastguard kong-server: handler silent for %g s, answering 500", self.timeout)
            self._finished(ev, 500)
            return {"Data": _FAIL_CLOSED, "EventId": eid}
        if isinstance(message, BaseException):
            log.error("fastguard kong-server: handler raised, answering 500: %r", message)
            self._finished(ev, 500)
            return {"Data": _FAIL_CLOSED, "EventId": eid}
        if message == MSG_RET:
            self._finished(ev, 200)
        elif isinstance(message, dict) and message.get("Method") in TERMINAL:
            args = message.get("Args") or [500]
            self._finished(ev, args[0] if isinstance(args[0], int) else 500)
        elif not ev.expired:
            ev.deadline = time.monotonic() + self.timeout
            with self._lock:
                self.events[eid] = ev
        return {"Data": message, "EventId": eid}

    def _finished(self, ev: _Event, status: int) -> None:
        if self.metrics is not None:
            self.metrics.events.labels(self.name, str(status)).inc()
            self.metrics.seconds.labels(self.name).observe(time.perf_counter() - ev.started)

    def _run_handler(self, handler: Any, channel: _Channel) -> None:
        try:
            handler(Kong(channel, self.lua_style).kong)
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting RPC, never lost
            channel.put(exc)
            return
        channel.put(MSG_RET)

    def _sweep(self) -> None:
        """Forget events Kong abandoned (no Step within the timeout)."""
        now = time.monotonic()
        if now < self._sweep_at:
            return
        self._sweep_at = now + self.timeout
        with self._lock:
            stale = [eid for eid, ev in self.events.items() if ev.deadline < now]
            dropped = [self.events.pop(eid) for eid in stale]
        for ev in dropped:
            if ev.steps is not None:
                ev.steps.close()
            else:
                ev.channel.to_plugin.put((None, "event abandoned"))

    def cleanup(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fastguard kong-server",
                                     description="Serve one fastguard plugin to Kong (a kong-pdk plugin server).")
    parser.add_argument("name", help=f"the plugin this process serves: {', '.join(PLUGINS)} (or any name with "
                                     "--module)")
    parser.add_argument("--module", help="serve this kong-pdk plugin module (a .py file with Plugin, Schema, "
                                         "version, priority) instead of a fastguard plugin, with the same fixes")
    parser.add_argument("--socket", help="Unix socket path (Kong's pluginserver_<name>_socket); default "
                                         "/usr/local/kong/<name>.socket")
    parser.add_argument("--dump", action="store_true", help="print the plugin info Kong's query_cmd expects")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds any wait may take (default 10)")
    parser.add_argument("--idle-timeout", type=float, default=IDLE_TIMEOUT,
                        help="close an instance after this many seconds without an event, and after twice its "
                             f"limits' longest window and its ban (default {IDLE_TIMEOUT:g}; 0: never)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (needs "
                                                         "prometheus_client: the metrics extra)")
    parser.add_argument("--metrics-addr", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help=f"connections served at once (default {MAX_CONNECTIONS}); more wait until one closes")
    parser.add_argument("--socket-mode", default="600",
                        help="permissions of the socket file, octal (default 600: only this user can connect)")
    parser.add_argument("--exit-with-parent", choices=["auto", "yes", "no"], default="auto",
                        help="stop when the process that started this one exits: auto (default) when that is Kong "
                             "(its nginx master runs start_cmd), never under systemd, tini, a shell or a container")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    args = parser.parse_args(argv)
    if not args.timeout > 0:
        parser.error("--timeout must be positive")
    if not args.idle_timeout >= 0:
        parser.error("--idle-timeout must be 0 (never) or a positive number of seconds")
    if args.max_connections < 1:
        parser.error("--max-connections must be at least 1")
    try:
        mode = int(args.socket_mode, 8)
        if not 0 <= mode <= 0o777:
            raise ValueError
    except ValueError:
        parser.error(f"--socket-mode must be octal permissions such as 600 or 660, got {args.socket_mode!r}")
    if args.module is None and args.name not in PLUGINS:
        parser.error(f"unknown plugin {args.name!r}: use one of {', '.join(PLUGINS)}, or give --module")
    if args.module is not None and not os.path.isfile(args.module):
        parser.error(f"--module {args.module} is not a file")
    logging.basicConfig(level=logging.WARNING - 10 * args.verbose, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        check_kong_pdk()
    except RuntimeError as exc:
        print(f"fastguard kong-server: {exc}", file=sys.stderr)
        return 2
    bound_allocator()  # before any thread starts
    server = FastguardPluginServer(args.name, args.module, timeout=args.timeout,
                                   loglevel=Logger.WARNING - args.verbose,
                                   idle_timeout=0 if args.dump else args.idle_timeout)
    if args.dump:
        sys.stdout.write(json.dumps([server.get_plugin_info(args.name)]))
        sys.stdout.write("\n")
        return 0
    if args.metrics_port is not None:
        try:
            import fastguard.metrics as fm
            from fastguard.kong import registry
        except ImportError as exc:
            parser.error(f"--metrics-port needs prometheus_client: {install_hint('metrics')} ({exc})")
        from prometheus_client import REGISTRY

        server.metrics = _EventMetrics(REGISTRY)
        registry.TRACK = lambda obj, entity: fm.track(obj, f"{args.name}:{entity}")
        try:
            fm.serve(args.metrics_port, addr=args.metrics_addr)
        except OSError as exc:
            parser.error(f"--metrics-port {args.metrics_port}: {exc}")
    path = args.socket or f"/usr/local/kong/{args.name}.socket"
    folder, sock_name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"the socket's folder {folder} does not exist")
    listener = RPCServer(server, os.path.join(folder, sock_name), mode=mode, max_connections=args.max_connections,
                         deadline=args.timeout)
    parent = os.getppid()
    watch = args.exit_with_parent == "yes" or (args.exit_with_parent == "auto" and _started_by_kong(parent))
    if watch and parent > 1:
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()
    from fastguard import __version__

    print(f"fastguard kong-server {__version__}: {args.name} on {os.path.join(folder, sock_name)} (pid {os.getpid()}"
          f"{f'; stops when its parent, pid {parent}, exits' if watch and parent > 1 else ''})", file=sys.stderr,
          flush=True)
    try:
        listener.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.cleanup()
    return 0


#: glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8


def bound_allocator() -> bool:
    """Keep a long-running server's memory to what it uses (glibc; elsewhere nothing to do, False):

    * blocks of 128 KiB and more (a large message's buffer) are mapped and unmapped, at once: glibc's default
      raises that threshold after the first such block is freed, and from then on they come from the heap, whose
      freed pages stay resident (16 connections with a 3 MiB message each: 6 MiB that never went back);
    * at most 2 malloc arenas: each worker thread that allocates would otherwise get one of its own (up to 8 per
      core), each keeping its freed pages. The loop and the workers take turns on the GIL anyway.

    Called before any thread starts (the arena limit is read when the first extra arena is made)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 128 * 1024)) and bool(mallopt(_M_ARENA_MAX, 2))


def _started_by_kong(ppid: int) -> bool:
    """Whether the parent is Kong: Kong runs a plugin server's start_cmd from its nginx master process, whose name
    (argv[0], "nginx: master process ...") says nginx. Only the name: a shell's arguments may mention anything."""
    if ppid <= 1:
        return False
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as fh:
            name = fh.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return b"nginx" in os.path.basename(name.split(b" ", 1)[0]) or name.startswith(b"nginx:")


def _exit_with_parent(parent: int) -> None:
    """Kong started the server; when Kong exits (the server is adopted by init or a subreaper), it exits too."""
    while True:
        if os.getppid() != parent:
            log.warning("fastguard kong-server: Kong (pid %d) exited; stopping", parent)
            os._exit(0)
        time.sleep(1)
