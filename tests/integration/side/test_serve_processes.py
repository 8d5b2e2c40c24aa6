"""`fastguard serve` as an operator runs it: --workers N processes sharing the ports, --metrics-port, and clear
refusals of a bad command line or configuration."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("httptools")

from fastguard.testing.servers import free_port  # noqa: E402
from fastguard.testing.side import SideService  # noqa: E402

DOMAIN = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 1000}
fastguard:
  rate_limits: [{actions: [{remote_address: {}}]}]
"""


def children(pid):
    """The live child processes of pid (a killed child stays a zombie until its parent reaps it)."""
    out = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.split() and "Z" not in line.split()[1]]


def test_workers_share_the_port_and_stop_together(tmp_path):
    (tmp_path / "edge.yaml").write_text(DOMAIN)
    side = SideService(str(tmp_path), args=("--workers", "2"), http_port=free_port())
    try:
        workers = children(side.proc.pid)
        assert len(workers) == 2
        assert "counts are per process" in side.log()
        seen = set()
        for _ in range(40):      # new connections are spread over the processes by the kernel
            conn = http.client.HTTPConnection("127.0.0.1", side.http_port, timeout=5)
            conn.request("GET", "/auth/edge", headers={"X-Forwarded-Uri": "/"})
            r = conn.getresponse()
            r.read()
            assert r.status == 200
            seen.add(r.getheader("RateLimit-Remaining"))
            conn.close()
        assert len(seen) >= 2
        os.kill(workers[0], signal.SIGKILL)           # a worker that dies is started again
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(children(side.proc.pid)) < 2:
            time.sleep(0.1)
        assert len(children(side.proc.pid)) == 2 and workers[0] not in children(side.proc.pid), side.log()
    finally:
        side.stop()
    assert side.proc.returncode == 0
    time.sleep(0.5)
    assert all(not os.path.exists(f"/proc/{w}") or open(f"/proc/{w}/stat").read().split()[2] == "Z"
               for w in workers[1:])


def test_metrics_export_each_rule_by_its_descriptor_path(tmp_path):
    pytest.importorskip("prometheus_client")
    (tmp_path / "edge.yaml").write_text(DOMAIN)
    port = free_port()
    side = SideService(str(tmp_path), args=("--metrics-port", str(port)))
    try:
        for _ in range(3):
            urllib.request.urlopen(urllib.request.Request(f"{side.url}/auth/edge",
                                                          headers={"X-Forwarded-Uri": "/"})).read()
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
        assert 'fastguard_ratelimit_decisions_total{limiter="edge.remote_address",outcome="allowed"} 3.0' in text
    finally:
        side.stop()


@pytest.mark.parametrize("args, says", [
    ([], "give --http HOST:PORT, --grpc HOST:PORT or both"),
    (["--http", "localhost"], "--http is HOST:PORT"),
    (["--http", "127.0.0.1:0", "--workers", "2"], "needs fixed ports"),
])
def test_a_bad_command_line_is_refused(tmp_path, args, says):
    (tmp_path / "edge.yaml").write_text(DOMAIN)
    r = subprocess.run([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and says in r.stderr


def test_a_bad_fastguard_block_stops_the_start_naming_file_and_field(tmp_path):
    (tmp_path / "edge.yaml").write_text(DOMAIN.replace("remote_address: {}", "remote_adress: {}"))
    r = subprocess.run([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(tmp_path), "--http",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "edge.yaml:7: fastguard.rate_limits[0].actions[0]: not an Envoy rate limit action" in r.stderr


def test_a_unix_socket_serves_a_gateway_on_the_same_host(tmp_path):
    """--http unix:PATH: nginx asks over the socket (the client's address still read past loopback), the socket gets
    --socket-mode, a stale socket file left by a killed service is replaced, and the file goes when it stops."""
    import stat

    from fastguard.testing.side import SideGateway, gateway_missing

    if gateway_missing("nginx"):
        pytest.skip(gateway_missing("nginx"))
    import shutil
    import tempfile

    (tmp_path / "edge.yaml").write_text(DOMAIN.replace("1000", "2"))
    sockets = tempfile.mkdtemp(prefix="fg-sock-")      # pytest's folders are 0700: nginx's workers could not enter
    os.chmod(sockets, 0o755)
    path = os.path.join(sockets, "side.sock")
    gw = SideGateway("nginx", str(tmp_path), {"/": "edge"}, unix=path)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666          # as the test asked (the default is 660)
        statuses = []
        for _ in range(3):
            try:
                statuses.append(urllib.request.urlopen(f"http://127.0.0.1:{gw.port}/x", timeout=10).status)
            except urllib.error.HTTPError as exc:
                statuses.append(exc.code)
        assert statuses == [200, 200, 429], gw.side.log()
        other = urllib.request.Request(f"http://127.0.0.1:{gw.port}/x", headers={"X-Forwarded-For": "192.0.2.9"})
        assert urllib.request.urlopen(other, timeout=10).status == 200   # another client: its own count
        second = subprocess.run([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(tmp_path),
                                 "--http", f"unix:{path}"], capture_output=True, text=True, timeout=30)
        assert second.returncode == 2 and "another process listens on" in second.stderr   # a live one is kept
        os.kill(gw.side.proc.pid, signal.SIGKILL)                       # leaves its socket file behind
        gw.side.proc.wait(10)
        assert os.path.exists(path)
        again = SideService(str(tmp_path), unix=path)
        try:
            assert "HTTP on unix:" in again.log()
        finally:
            again.stop()
        assert not os.path.exists(path)
    finally:
        gw.stop()
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.mark.parametrize("args, says", [
    (("--http", "unix:"), "needs the socket's path"),
    (("--http", "unix:/tmp/x.sock", "--workers", "2"), "processes cannot share a Unix socket"),
    (("--http", "unix:/tmp/x.sock", "--socket-mode", "rw"), "--socket-mode is octal"),
    (("--http", "unix:/tmp/x.sock", "--socket-mode", "7777"), "--socket-mode is octal"),
])
def test_bad_unix_socket_options_are_refused(tmp_path, args, says):
    (tmp_path / "edge.yaml").write_text(DOMAIN)
    r = subprocess.run([sys.executable, "-m", "fastguard.cli", "serve", "--config", str(tmp_path), *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
