"""Real servers for the tests and benchmarks: redis-server (standalone, a Redis Cluster) on free loopback ports,
and kong-pdk's stock plugin server.

Each server is a child process, started with no persistence in a temporary folder and stopped by its pid. Nothing
here fakes Redis.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import redis

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_cluster_port() -> int:
    """A free port P below 55536 whose cluster bus port P + 10000 is free too."""
    import random

    rnd = random.Random()
    for _ in range(200):
        port = rnd.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


class RedisProcess:
    """One redis-server on 127.0.0.1:port; `kill()` / `start()` simulate a crash and a restart (same port, dir)."""

    def __init__(self, port: int | None = None, *, cluster: bool = False, workdir: str | None = None,
                 extra: list[str] | None = None, password: str | None = None, tls: Any = None) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
        self.port = port or (free_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.extra = list(extra or [])
        self.password = password
        self.tls = tls                                   # fastguard.testing.tls.TLSFiles: also listen with TLS
        self.tls_port = free_port() if tls is not None else None
        self.dir = workdir or tempfile.mkdtemp(prefix=f"fg-redis-{self.port}-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"]
        args += self.extra
        if self.tls is not None:
            args += ["--tls-port", str(self.tls_port), "--tls-cert-file", self.tls.cert, "--tls-key-file",
                     self.tls.key, "--tls-ca-cert-file", self.tls.ca, "--tls-auth-clients", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if self.cluster:
            # Without full coverage a dead master stops only its own slots (the behaviour the tests check).
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                     "--cluster-node-timeout", "2000", "--cluster-require-full-coverage", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, password=self.password, socket_timeout=0.5).ping():
                    return
            except redis.RedisError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server on port {self.port} exited with {self.proc.returncode}") from None
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on port {self.port} did not answer within 10 s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL, as a crash: connections drop without a goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets but answers nothing (a slow or hung Redis)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


class RedisClusterProcesses:
    """A Redis Cluster of `masters` masters (no replicas) made with `redis-cli --cluster create`."""

    def __init__(self, masters: int = 3) -> None:
        if REDIS_CLI is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        self.dir = tempfile.mkdtemp(prefix="fg-cluster-")
        self.nodes: list[RedisProcess] = []
        try:  # a failure half-way stops the nodes already started
            for _ in range(masters):
                self.nodes.append(RedisProcess(cluster=True, workdir=self.dir))
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run([REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0",
                            "--cluster-yes"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=60)
            self.wait_ok()
        except BaseException:
            self.stop()
            raise

    def wait_ok(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self._state(n) == "ok" for n in self.nodes):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")

    @staticmethod
    def _state(node: RedisProcess) -> str:
        info = redis.Redis(port=node.port, decode_responses=True, socket_timeout=1).execute_command("CLUSTER INFO")
        if isinstance(info, dict):
            return str(info.get("cluster_state"))
        return "ok" if "cluster_state:ok" in info else "fail"

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def node_of_slot(self, slot: int) -> RedisProcess:
        ranges = self.nodes[0].client().execute_command("CLUSTER SLOTS")
        for start, end, master, *_ in ranges:
            if start <= slot <= end:
                port = int(master[1])
                return next(n for n in self.nodes if n.port == port)
        raise LookupError(slot)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def stock_server(plugin_dir: str, folder: str, name: str) -> Any:
    """kong-pdk's own server (kong-python-pluginserver -d DIR), unchanged, as Kong's start_cmd would run it."""
    from fastguard.kong.client import ServerProcess

    code = "import sys; from kong_pdk.cli import start_server; sys.exit(start_server())"
    return ServerProcess([sys.executable, "-c", code, "-d", plugin_dir, "--kong-prefix", folder,
                          "--socket-name", f"{name}.sock"], os.path.join(folder, f"{name}.sock"))


class SentinelGroup:
    """A master, its replicas and real Redis Sentinels monitoring it as `service` (quorum 2, master judged down
    after 500 ms): kill the master and the sentinels promote a replica."""

    def __init__(self, replicas: int = 1, sentinels: int = 3, service: str = "fg-service") -> None:
        if REDIS_SERVER is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it: apt-get install redis-server)")
        self.service = service
        self.dir = tempfile.mkdtemp(prefix="fg-sentinel-")
        fast_sync = ["--repl-diskless-sync-delay", "0"]   # replicas in sync at once, not after 5 s
        self.master = RedisProcess(extra=fast_sync)
        self.replicas: list[RedisProcess] = []
        self.sentinels: list[tuple[int, subprocess.Popen[bytes]]] = []
        try:
            for _ in range(replicas):
                self.replicas.append(RedisProcess(extra=[*fast_sync, "--replicaof", "127.0.0.1",
                                                         str(self.master.port)]))
            self._wait(self._replicas_online, 20)
            for i in range(sentinels):
                port = free_port()
                conf = os.path.join(self.dir, f"sentinel-{i}.conf")
                with open(conf, "w") as fh:
                    fh.write(f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                             f"sentinel monitor {service} 127.0.0.1 {self.master.port} 2\n"
                             f"sentinel down-after-milliseconds {service} 500\n"
                             f"sentinel failover-timeout {service} 3000\n"
                             f"sentinel parallel-syncs {service} 1\n")
                proc = subprocess.Popen([REDIS_SERVER, conf, "--sentinel"], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                self.sentinels.append((port, proc))
            self._wait(lambda: all(self._knows_replicas(port) for port, _ in self.sentinels), 20)
        except BaseException:
            self.stop()
            raise

    def _replicas_online(self) -> bool:
        info = redis.Redis(port=self.master.port, socket_timeout=0.5).info("replication")
        states = [v.get("state") for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return len(states) >= len(self.replicas) and all(s == "online" for s in states)

    def _knows_replicas(self, port: int) -> bool:
        try:
            info = redis.Redis(port=port, socket_timeout=0.5).execute_command("SENTINEL", "REPLICAS", self.service)
            return len(info) >= len(self.replicas)
        except redis.RedisError:
            return False

    @staticmethod
    def _wait(condition: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError("the sentinels did not settle in time")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p, _ in self.sentinels) + f"/{self.service}"

    def master_address(self) -> tuple[str, int]:
        for port, _ in self.sentinels:
            try:
                host, p = redis.Redis(port=port, socket_timeout=0.5).execute_command(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
                return host.decode(), int(p)
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answers")

    def stop(self) -> None:
        for _, proc in self.sentinels:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for node in [self.master, *self.replicas]:
            node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
