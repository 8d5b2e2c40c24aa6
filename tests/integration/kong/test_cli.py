"""The `fastguard` command through its real entry point (subprocesses): simulate, bench, verify."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
import redis

from fastguard.testing.tokens import SECRET, jwk, public_pem, sign

ROOT = pathlib.Path(__file__).resolve().parents[3]
EXE = shutil.which("fastguard") or str(pathlib.Path(sys.executable).with_name("fastguard"))


def fastguard(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def by_kind(summary):
    out: dict[str, dict[int, int]] = {}
    for row in summary["by_traffic"]:
        out.setdefault(row["traffic"], {})[row["status"]] = row["count"]
    return out


# -- simulate ------------------------------------------------------------------------------------------------------
def test_simulate_in_process_prints_a_json_summary_and_progress_apart():
    # ~2 requests per valid consumer (well under 10/second); ~30 per abusive one within about a second: over it.
    run = fastguard("simulate", "--requests", "800", "--consumers", "300", "--limits", "10/second; 600/minute",
                    "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)  # stdout holds the JSON and nothing else
    assert summary["requests"] == 800 and summary["events_per_second"] > 0
    kinds = by_kind(summary)
    assert set(kinds["expired"]) == {401} and set(kinds["forged"]) == {401} and set(kinds["malformed"]) == {401}
    assert 429 in kinds["abusive"] and 200 in kinds["abusive"]      # the abusive consumers hit their limits
    assert set(kinds["valid"]) == {200}
    assert sum(kinds["login"].values()) == sum(kinds["login"].get(s, 0) for s in (200, 429))
    # /api: get_query (Kong reads every token place: two tokens are a 401), get_headers, then the rate-limit
    # headers and the upstream's consumer headers cleared (4), or an error (3); /login: get_forwarded_ip, then
    # set_headers or an error
    assert 3.3 < summary["pdk_calls_per_request"] < 3.8
    assert summary["latency_ms"]["p99"] >= summary["latency_ms"]["p50"] > 0
    m = summary["server_metrics"]  # the servers' /metrics agree with what the Kong side saw
    api: dict[int, int] = {}
    for o in summary["outcomes"]:
        if o["route"] == "api":
            api[o["status"]] = api.get(o["status"], 0) + o["count"]
    assert {int(k): v for k, v in m["events"]["fastguard"].items()} == api
    assert m["decisions"]["fastguard"]["denied"] == api.get(429, 0) + api.get(403, 0)  # 403: banned
    reasons = {(o["status"], o["reason"]) for o in summary["outcomes"]}
    assert (401, '{"exp": "token expired"}') in reasons and (401, "Invalid signature") in reasons
    assert (429, "API rate limit exceeded") in reasons


def test_simulate_prints_a_readable_summary_with_progress_on_stderr():
    run = fastguard("simulate", "--requests", "300", "--consumers", "20", "--concurrency", "2")
    assert run.returncode == 0, run.stderr
    assert "300/300 requests" in run.stderr and "started fastguard kong-server" in run.stderr
    assert "events/s" in run.stdout and "by kind of traffic" in run.stdout and "PDK calls per request" in run.stdout


def test_simulate_with_redis_keeps_the_counts_in_redis(redis_server):
    run = fastguard("simulate", "--requests", "600", "--consumers", "30", "--redis", redis_server.url, "--json")
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["config"]["redis"] == redis_server.url
    ips_admitted = by_kind(summary)["login"].get(200, 0)
    assert ips_admitted <= 39 * 5  # 5/minute for each of the 39 simulated IPs, shared by the 4 Kong threads
    keys = redis.Redis(port=redis_server.port).keys("fg-kong-simulated-*")
    assert keys, "the limiter's states are in Redis"


@pytest.mark.parametrize("args, message", [
    (["--requests", "0"], "argument --requests: at least 1"),
    (["--mix", "valid=1,sneaky=2"], "--mix takes name=weight"),
    (["--limits", "5/fortnight"], "unknown unit"),
    (["--redis", "http://x"], "--redis takes"),
])
def test_simulate_refuses_bad_arguments(args, message):
    run = fastguard("simulate", *args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


# -- bench ---------------------------------------------------------------------------------------------------------
def test_bench_quick_writes_its_report_and_chart(tmp_path):
    out = tmp_path / "results"
    run = fastguard("bench", "--quick", "--out", str(out), "-k", "test_hot_fastguard or test_hot_limits",
                    timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    report = (out / "report.md").read_text()
    assert "Smaller is better" in report and "| limits | fixed_window |" in report and "Machine:" in report
    png = (out / "chart.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert json.loads((out / "bench.json").read_text())["benchmarks"]


# -- verify --------------------------------------------------------------------------------------------------------
NOW = int(time.time())


def hs_token(**claims):
    return sign({"sub": "alice", "exp": NOW + 600, **claims}, "HS256")


def test_verify_prints_the_claims_of_a_valid_token():
    run = fastguard("verify", hs_token(iss="https://idp"), "--secret", SECRET.decode(), "--issuer", "https://idp")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["sub"] == "alice"


def test_verify_with_a_jwks_file_a_pem_and_a_secret_file(tmp_path):
    rs = sign({"sub": "bob", "exp": NOW + 600, "aud": "api"}, "RS256", {"alg": "RS256", "kid": "k1"})
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk("RSA", kid="k1", alg="RS256")]}))
    (tmp_path / "key.pem").write_bytes(public_pem("RSA"))
    (tmp_path / "secret.bin").write_bytes(SECRET)
    assert fastguard("verify", rs, "--jwks", str(tmp_path / "jwks.json"), "--audience", "api").returncode == 0
    assert fastguard("verify", rs, "--pem", str(tmp_path / "key.pem"), "--alg", "RS256",
                     "--audience", "api").returncode == 0
    assert fastguard("verify", hs_token(), "--secret-file", str(tmp_path / "secret.bin")).returncode == 0


@pytest.mark.parametrize("token, code", [
    (lambda: hs_token(exp=NOW - 100), "expired"),
    (lambda: hs_token()[:-4] + "AAAA", "signature"),
    (lambda: "not-a-token", "malformed"),
    (lambda: hs_token(iss="https://evil"), "issuer"),
])
def test_verify_reports_an_invalid_token_with_status_1(token, code):
    run = fastguard("verify", token(), "--secret", SECRET.decode(), "--issuer", "https://idp")
    assert run.returncode == 1, run.stderr
    answer = json.loads(run.stdout)
    assert answer["valid"] is False and answer["code"] == code and answer["message"]


@pytest.mark.parametrize("args, message", [
    ([], "give exactly one of"),
    (["--secret", "x" * 40, "--pem", "k.pem"], "give exactly one of"),
    (["--pem", "/nonexistent.pem"], "no such file"),
    (["--secret", "short"], "unusable key"),
    (["--jwks", "/nonexistent.json"], "cannot read the key"),
])
def test_verify_bad_arguments_exit_2_with_a_clear_message(args, message):
    run = fastguard("verify", hs_token(), *args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_simulate_works_from_a_folder_holding_another_fastguard_package(tmp_path):
    """Regression: the plugin servers ran `python -m fastguard.cli` in the caller's folder, where a source checkout
    (without its compiled core) shadowed the installed package and the servers died at import."""
    shadow = tmp_path / "fastguard"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('the shadow package was imported')\n")
    run = subprocess.run([EXE, "simulate", "--requests", "50", "--json"], capture_output=True, text=True,
                         timeout=180, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-1500:]
    assert json.loads(run.stdout)["requests"] == 50


def test_verify_reads_the_token_from_stdin_with_a_dash():
    token = sign({"sub": "alice", "exp": int(time.time()) + 60})
    run = subprocess.run([EXE, "verify", "-", "--secret", SECRET.decode()], input=token + "\n",
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["sub"] == "alice"


def test_a_dump_into_a_closed_pipe_ends_quietly():
    """`fastguard kong-server NAME --dump | head`: the reader is gone; no traceback, no "Exception ignored"."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, as when `head` has exited
    try:
        run = subprocess.run([EXE, "kong-server", "fastguard-jwt", "--dump"], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert run.returncode == 141 and run.stderr == "", run.stderr


def test_simulate_says_at_once_that_redis_cannot_be_reached():
    run = fastguard("simulate", "--requests", "200", "--json", "--redis", "redis://127.0.0.1:1/0")
    assert "Redis at redis://127.0.0.1:1/0 cannot be reached" in run.stderr, run.stderr
    assert "answered 500" in run.stderr
    summary = json.loads(run.stdout)
    assert summary["requests"] == 200


def test_the_top_level_help_names_jwt_and_kong():
    run = fastguard("--help")
    assert run.returncode == 0 and "JWT" in run.stdout and "Kong" in run.stdout


def test_simulate_tries_another_metrics_port_when_its_free_one_is_taken_meanwhile(tmp_path):
    """Regression (a CI run failed so): a port found free was taken before the plugin server bound it, the server
    exited with "Address already in use" and the whole simulate failed. The first port offered is taken here by
    the test itself, between the choice and the server's start."""
    import socket

    from fastguard.kong.client import fastguard_server
    from fastguard.simulate import _metered_server

    squatters: list[socket.socket] = []

    def start(name, folder, *args):
        if not squatters:  # the first attempt: someone else binds the chosen port first
            squatter = socket.socket()
            squatter.bind(("127.0.0.1", int(args[args.index("--metrics-port") + 1])))
            squatter.listen()
            squatters.append(squatter)
        return fastguard_server(name, folder, *args)

    try:
        server, port = _metered_server(start, "fastguard-jwt", str(tmp_path))
        try:
            assert port != squatters[0].getsockname()[1] and server.alive()
        finally:
            server.stop()
    finally:
        for s in squatters:
            s.close()
