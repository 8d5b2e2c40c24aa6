"""`fastguard kong-server` as a process: it stops with Kong when Kong started it, and only then — under systemd,
tini, a shell that went away or a container of its own it keeps serving — and it says at start what it serves."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

import pytest

from fastguard.kong.client import KongClient


def _serve_under(parent_name: str, folder: str, parent_lifetime: float, *extra: str,
                 plugin: str = "fastguard-rate-limiting") -> tuple[int, str]:
    """Start a plugin server from a shell whose argv[0] is `parent_name` and which exits after `parent_lifetime`
    seconds; the server's pid and socket."""
    sock = os.path.join(folder, "rl.socket")
    pidfile = os.path.join(folder, "pid")
    log = os.path.join(folder, "server.log")
    server = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "fastguard.cli", "kong-server",
                                               plugin, "--socket", sock, *extra])
    subprocess.Popen([parent_name, "-c", f"{server} 2>{shlex.quote(log)} & echo $! > {shlex.quote(pidfile)}; "
                                         f"sleep {parent_lifetime}"], executable="/bin/sh",
                     stdout=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (os.path.exists(sock) and os.path.exists(pidfile) and os.path.getsize(pidfile)):
        assert time.monotonic() < deadline, open(log).read() if os.path.exists(log) else "no log"
        time.sleep(0.05)
    with open(pidfile) as fh:
        return int(fh.read()), sock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0] != "Z"


def _answers(sock: str) -> bool:
    client = KongClient(sock, connections=1)
    try:
        iid = client.start("fastguard-rate-limiting", {"minute": 5, "limit_by": "ip"})
        return client.event(iid, {"kong.client.get_forwarded_ip": "192.0.2.1"}).status == 200
    finally:
        client.close()


@pytest.mark.parametrize("parent", ["systemd", "sh"])
def test_a_server_whose_parent_is_not_kong_keeps_serving_when_the_parent_goes(tmp_path, parent):
    pid, sock = _serve_under(parent, str(tmp_path), 0.5)
    try:
        time.sleep(3.0)                       # the parent is gone: the server was adopted (init, or a subreaper)
        assert _alive(pid) and _answers(sock)
        log = (tmp_path / "server.log").read_text()
        assert "fastguard kong-server" in log and "fastguard-rate-limiting on" in log and f"pid {pid}" in log
        assert "stops when its parent" not in log
    finally:
        os.kill(pid, 15)


def test_a_server_started_by_kong_stops_when_kong_exits(tmp_path):
    """Kong runs start_cmd from its nginx master: a parent whose command line names nginx."""
    pid, sock = _serve_under("nginx: master process", str(tmp_path), 2.0)
    assert _answers(sock)
    assert "stops when its parent" in (tmp_path / "server.log").read_text()
    deadline = time.monotonic() + 15
    while _alive(pid):
        assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
        time.sleep(0.1)
    assert "Kong (pid" in (tmp_path / "server.log").read_text()


def test_exit_with_parent_can_be_forced_either_way(tmp_path):
    pid, sock = _serve_under("nginx: master process", str(tmp_path), 0.5, "--exit-with-parent", "no")
    try:
        time.sleep(3.0)
        assert _alive(pid) and _answers(sock)
    finally:
        os.kill(pid, 15)


def test_each_plugin_logs_under_its_own_name(tmp_path):
    """The combined plugin's JWT half says `fastguard`, not `fastguard-jwt`, in the log Kong shows."""
    pid, sock = _serve_under("sh", str(tmp_path), 0.1, plugin="fastguard")
    try:
        client = KongClient(sock, connections=1)
        try:
            iid = client.start("fastguard", {"jwks": "not a key set", "second": 5})
            assert client.event(iid, {"kong.request.get_headers": {}}).status == 500
        finally:
            client.close()
        log = (tmp_path / "server.log").read_text()
        assert "fastguard (plugin" in log and "the configured jwks cannot be used" in log
        assert "fastguard-jwt (plugin" not in log
    finally:
        os.kill(pid, 15)
