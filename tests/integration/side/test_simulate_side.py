"""`fastguard simulate --side nginx|caddy`: the main job's traffic through a real gateway asking `fastguard serve`,
decided as the Kong plugins decide it (the same plan, seed and limits)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("httptools")


def simulate(*args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", "fastguard.cli", "simulate", "--requests", "800", "--consumers",
                          "300", "--limits", "10/second; 600/minute", "--json", *args],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def by_kind(summary: dict) -> dict[str, dict[int, int]]:
    kinds: dict[str, dict[int, int]] = {}
    for row in summary["by_traffic"]:
        kinds.setdefault(row["traffic"], {})[row["status"]] = row["count"]
    return kinds


@pytest.mark.parametrize("gateway", ["nginx", "caddy"])
def test_simulate_through_a_gateway_and_the_side_service(gateway):
    side = simulate("--side", gateway)
    assert side["requests"] == 800 and side["side"] == gateway and side["pdk_calls_per_request"] is None
    kinds = by_kind(side)
    assert set(kinds["expired"]) == {401} and set(kinds["forged"]) == {401} and set(kinds["valid"]) == {200}
    assert set(kinds["malformed"]) == {401}
    assert 429 in kinds["abusive"] and 200 in kinds["abusive"]
    # ~2 logins per address at 5/minute: all pass — one shared address (X-Forwarded-For not believed) would be 429s
    assert set(kinds["login"]) == {200}
    reasons = {o["reason"] for o in side["outcomes"] if o["status"] == 401}
    assert "Jwt verification fails: the token has expired" in reasons       # through nginx: error_description
    metrics = side["server_metrics"]["decisions"]
    assert metrics["api.sub"]["allowed"] == kinds["abusive"][200] + kinds["valid"][200]


def test_the_side_service_decides_the_plan_as_the_kong_plugins_do():
    """Same seed, same plan: the same requests authenticate, and the abusive callers are held to the same limit
    (a sliding window's exact count depends on timing: within a few requests)."""
    kong = by_kind(simulate())
    side = by_kind(simulate("--side", "nginx"))
    for kind in ("valid", "expired", "forged", "malformed", "login"):
        assert sum(kong[kind].values()) == sum(side[kind].values())
    assert side["valid"] == kong["valid"] and side["login"] == kong["login"]
    assert abs(side["abusive"].get(200, 0) - kong["abusive"].get(200, 0)) <= 20, (side, kong)


def test_simulate_side_refuses_what_it_cannot_run(monkeypatch):
    import fastguard.testing.side as side_module
    from fastguard.simulate import GatewayMissing, Options, run

    with pytest.raises(ValueError, match="give one"):
        run(Options(requests=10, gateway="nginx", side="nginx"), as_json=True)
    monkeypatch.setattr(side_module.shutil, "which", lambda name: None)
    with pytest.raises(GatewayMissing, match="apt-get install caddy"):
        run(Options(requests=10, side="caddy"), as_json=True)
