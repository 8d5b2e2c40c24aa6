"""Operators manage bans across a gateway fleet: a lifted or shortened ban reaches every node within a second, and
`fastguard bans` lists, sets and lifts them. Several limiters on one store namespace stand for several nodes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest

import fastguard as fg
from fastguard.redis import RedisStore


def nodes(url, sync=None, n=2):
    prefix = f"b{uuid.uuid4().hex[:10]}"
    return [fg.RateLimiter("2/minute", algorithm="fixed_window", store=RedisStore.from_url(url, prefix=prefix),
                           sync=sync, ban_after=2, ban_for=3600) for _ in range(n)], prefix


def wait_until(condition, limit=2.0):
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < limit, "not within the limit"
        time.sleep(0.02)
    return time.monotonic() - start


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_an_unban_reaches_a_node_that_cached_the_ban_within_a_second(where, redis_server, redis_cluster):
    url = redis_server.url if where == "standalone" else redis_cluster.url
    (a, b), _ = nodes(url)
    for _ in range(4):
        a.hit("mallory")                                    # 2 admitted, 2 refused: banned by ban_after
    d = b.hit("mallory")
    assert d.banned                                         # b learned it from Redis and caches it
    assert b._table.hit.answered == 0 and b.hit("mallory").banned and b._table.hit.answered == 1
    a.unban("mallory")
    took = wait_until(lambda: not b.hit("mallory").banned)
    assert took < 1.5   # BANS_POLL is 0.5 s: ~0.5 s typically; margin for a loaded CI machine
    a.reset("mallory")


def test_a_shortened_ban_reaches_the_other_nodes(redis_server):
    (a, b), _ = nodes(redis_server.url)
    a.ban("eve", 3600)
    assert b.hit("eve").banned and b.banned("eve") > 3000
    a.ban("eve", 1)                                         # shortened by an operator
    wait_until(lambda: b.hit("eve").retry_after <= 1.0)
    wait_until(lambda: not b.hit("eve").banned, limit=3.0)


def test_local_first_nodes_drop_a_lifted_ban(redis_server):
    (a, b), _ = nodes(redis_server.url, sync=0.1)
    a.ban("mallory", 3600)
    wait_until(lambda: b.hit("mallory").banned)             # b learns it at the exchange after its first hit
    a.unban("mallory")
    took = wait_until(lambda: b.banned("mallory") == 0 and a.banned("mallory") == 0)
    time.sleep(0.5)                                         # and no node writes it back
    assert b.banned("mallory") == 0 and a.banned("mallory") == 0 and took < 1.5
    for lim in (a, b):
        lim.close()


def fastguard_bans(*args):
    out = subprocess.run([sys.executable, "-m", "fastguard.cli", "bans", *args], capture_output=True, text=True,
                         timeout=60)
    return out


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_the_bans_command_lists_sets_and_lifts_bans(where, redis_server, redis_cluster):
    url = redis_server.url if where == "standalone" else redis_cluster.url
    (a, b), prefix = nodes(url)
    for _ in range(4):
        a.hit("auto-banned")
    a.ban("}odd key", 600)
    out = fastguard_bans("list", "--redis", url, "--prefix", prefix, "--json")
    assert out.returncode == 0, out.stderr
    listed = {x["key"]: x for x in json.loads(out.stdout)}
    assert set(listed) == {"auto-banned", "}odd key"}
    assert listed["auto-banned"]["started_by"] == "ban_after" and listed["}odd key"]["started_by"] == "operator"
    assert 3500 < listed["auto-banned"]["seconds_left"] <= 3600 and listed["}odd key"]["limits"] == "2/minute"
    out = fastguard_bans("unban", "auto-banned", "--redis", url, "--prefix", prefix)
    assert out.returncode == 0 and "lifted" in out.stdout, out.stderr
    wait_until(lambda: not b.hit("auto-banned").banned)
    out = fastguard_bans("ban", "carol", "120", "--redis", url, "--prefix", prefix, "--limits", "2/minute",
                         "--algorithm", "fixed_window")
    assert out.returncode == 0, out.stderr
    assert b.hit("carol").banned and 100 < b.banned("carol") <= 120
    text = fastguard_bans("list", "--redis", url, "--prefix", prefix).stdout
    assert "carol" in text and "operator" in text and "}odd key" in text
    bad = fastguard_bans("ban", "x", "-5", "--redis", url, "--prefix", prefix, "--limits", "2/minute")
    assert bad.returncode == 2 and "ban" in bad.stderr


def test_a_garbled_bans_epoch_does_not_stop_the_exchanges(redis_server):
    (a, b), _ = nodes(redis_server.url, sync=60)
    a._table.store.client.set(a._table.store.bans_epoch_name, b"not a number")
    a.hit("k")
    assert a._table.sync_now() is True                  # before: ValueError out of the exchange, Redis marked down
    assert a.stats()["redis_up"] and a.stats()["syncs"] == 1
    a.close()
    b.close()


@pytest.mark.parametrize("sync", [None, 0.1])
def test_a_watcher_that_starts_late_still_sees_a_lifted_ban(redis_server, monkeypatch, sync):
    """On a loaded machine the watcher thread may first run after a node cached a ban and an operator lifted it:
    its first reading must not become the baseline that hides that change."""
    from fastguard.redis import store as store_module
    real = store_module._watch_bans

    def late(*args):
        time.sleep(0.4)
        real(*args)

    monkeypatch.setattr(store_module, "_watch_bans", late)
    (a, b), _ = nodes(redis_server.url, sync=sync)
    a.ban("eve", 3600)
    b.hit("eve")                                            # strict: b caches the ban Redis answers with
    wait_until(lambda: b.banned("eve") > 0, limit=0.3)      # local-first: b learns it at its next exchange
    a.unban("eve")                                          # before b's watcher has read the epoch once
    wait_until(lambda: b.banned("eve") == 0)
    for lim in (a, b):
        lim.close()


def test_bans_under_a_prefix_with_glob_characters_are_found_and_only_they(redis_server):
    """The prefix went into SCAN's pattern as it was: `[`, `]`, `*`, `?` and `\\` in it matched other prefixes'
    bans (or missed its own)."""
    tag = uuid.uuid4().hex[:6]
    prefix, decoy = f"p[1]*?\\{tag}", f"p1zz{tag}"
    mine = fg.RateLimiter("2/minute", store=RedisStore.from_url(redis_server.url, prefix=prefix), ban_for=600)
    other = fg.RateLimiter("2/minute", store=RedisStore.from_url(redis_server.url, prefix=decoy), ban_for=600)
    mine.ban("alice", 600)
    other.ban("mallory", 600)
    out = fastguard_bans("list", "--redis", redis_server.url, "--prefix", prefix, "--json")
    assert out.returncode == 0, out.stderr
    assert [b["key"] for b in json.loads(out.stdout)] == ["alice"]
    out = fastguard_bans("unban", "mallory", "--redis", redis_server.url, "--prefix", prefix)
    assert "lifted 0" in out.stdout and other.banned("mallory") > 0


def test_a_kong_plugins_tier_bans_are_listed_and_lifted_under_its_prefix(redis_server, tmp_path):
    """A tier's limiter keeps its keys under `fg-kong-<plugin id>#tier=<value>`: `--prefix fg-kong-<plugin id>`, as
    documented, did not see its bans."""
    from fastguard.kong.client import fastguard_server

    server = fastguard_server("fastguard-rate-limiting", str(tmp_path))
    try:
        client = server.client()
        plugin_id = str(uuid.uuid4())
        iid = client.start("fastguard-rate-limiting", {
            "minute": 100, "policy": "redis", "redis": {"host": "127.0.0.1", "port": redis_server.port},
            "limit_by": "ip", "tier_by": "consumer_id", "tiers": [{"value": "free", "minute": 1}],
            "ban_after": 1, "ban_for": 600, "algorithm": "token_bucket"}, plugin_id=plugin_id)
        free = {"kong.client.get_forwarded_ip": "198.51.100.4", "kong.client.get_consumer": {"id": "free"}}
        assert [client.event(iid, free).status for _ in range(3)] == [200, 429, 429]   # banned after one denial
        prefix = f"fg-kong-{plugin_id}"
        out = fastguard_bans("list", "--redis", redis_server.url, "--prefix", prefix, "--json")
        listed = json.loads(out.stdout)
        assert [(b["key"], b["tier"]) for b in listed] == [("ip:198.51.100.4", "free")], out.stdout
        out = fastguard_bans("unban", "ip:198.51.100.4", "--redis", redis_server.url, "--prefix", prefix)
        assert "lifted 1" in out.stdout, out.stdout + out.stderr
        client.close()
    finally:
        server.stop()


def test_an_operator_ban_reaches_kong_plugins_with_default_settings(redis_server, tmp_path):
    """`fastguard bans ban KEY SECONDS --prefix 'fg-kong-*'`: every plugin that limits that key honours it —
    a fixed_window plugin with ban_after 0 (the defaults) and a sliding_window one — without naming their ids,
    algorithms or limits; `bans list` finds them by the same pattern and says whose they are; unban lifts them.
    Through real plugin servers. Before: the command wrote a sliding_window ban nobody read, and ban_after 0
    plugins ignored any ban."""
    from fastguard.kong.client import fastguard_server

    server = fastguard_server("fastguard-rate-limiting", str(tmp_path))
    client = server.client()
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    redis_cfg = {"host": "127.0.0.1", "port": redis_server.port}
    ip = {"kong.client.get_forwarded_ip": "198.51.100.200"}
    try:
        a = client.start("fastguard-rate-limiting", {"minute": 100, "limit_by": "ip", "policy": "redis",
                                                     "redis": redis_cfg})
        b = client.start("fastguard-rate-limiting", {"second": 50, "limit_by": "ip", "policy": "redis",
                                                     "algorithm": "sliding_window", "redis": redis_cfg})
        assert client.event(a, ip).status == 200 and client.event(b, ip).status == 200
        banned = fastguard_bans("ban", "ip:198.51.100.200", "600", "--redis", url, "--prefix", "fg-kong-*", "--json")
        assert banned.returncode == 0, banned.stderr
        assert len(json.loads(banned.stdout)["names"]) >= 2
        assert client.event(a, ip).status == 429 and client.event(b, ip).status == 429
        listed = fastguard_bans("list", "--redis", url, "--prefix", "fg-kong-*", "--json")
        rows = [r for r in json.loads(listed.stdout) if r["key"] == "ip:198.51.100.200"]
        assert {r["algorithm"] for r in rows} >= {"fixed_window", "sliding_window"}
        assert all(r["prefix"].startswith("fg-kong-") and r["started_by"] == "operator" for r in rows)
        lifted = fastguard_bans("unban", "ip:198.51.100.200", "--redis", url, "--prefix", "fg-kong-*", "--json")
        assert json.loads(lifted.stdout)["lifted"] >= 2
        time.sleep(0.1)
        assert client.event(a, ip).status == 200 and client.event(b, ip).status == 200
        other = {"kong.client.get_forwarded_ip": "198.51.100.201"}
        assert client.event(a, other).status == 200
    finally:
        client.close()
        server.stop()


def test_a_ban_nothing_would_honour_is_refused(redis_server):
    r = fastguard_bans("ban", "ip:1.2.3.4", "60", "--redis", f"redis://127.0.0.1:{redis_server.port}/0", "--prefix",
            "no-such-prefix")
    assert r.returncode == 2 and "none would honour the ban" in r.stderr and "Traceback" not in r.stderr
    r = fastguard_bans("ban", "ip:1.2.3.4", "60", "--redis", f"redis://127.0.0.1:{redis_server.port}/0", "--prefix",
            "nothing-*")
    assert r.returncode == 2 and "none would honour the ban" in r.stderr
