"""fault_tolerant through a real plugin server, per kind of Redis fault: false answers every request Redis could not
decide with Kong's 500 (never a 429 — a rate limit that is not one); true lets it through."""

from __future__ import annotations

import uuid

import pytest
import redis

from fastguard.testing.servers import RedisProcess, free_port

IP = {"kong.client.get_forwarded_ip": "203.0.113.50"}


@pytest.fixture(scope="module")
def locked_redis():
    server = RedisProcess(password="s3cret")
    yield server
    server.stop()


def _faults(redis_server, locked_redis):
    """name -> (redis settings, what to do first): each makes Redis unable to decide for this caller."""
    def wrong_type(ns):
        from fastguard.identity import rate_limit_key, shared_prefix
        from fastguard.limits import Limit
        from fastguard.redis import RedisStore
        from fastguard.redis.store import tagged

        store = RedisStore(redis.Redis(port=redis_server.port), prefix=shared_prefix(f"ns:{ns}"))
        name = store.namespace("fixed_window", (Limit(5, 60),)) + tagged(rate_limit_key("ip", "203.0.113.50"))
        redis.Redis(port=redis_server.port).set(name, "garbage")   # the script cannot read it: a script error

    base = {"host": "127.0.0.1", "port": redis_server.port, "timeout": 500}
    return {
        "a database Redis does not have": ({**base, "database": 99}, None),
        "a wrong password": ({**base, "port": locked_redis.port, "password": "wrong"}, None),
        "no password where one is required": ({**base, "port": locked_redis.port}, None),
        "TLS to a plain port": ({**base, "ssl": True}, None),
        "nothing listening": ({**base, "port": free_port()}, None),
        "a script error (the key holds garbage)": (base, wrong_type),
    }


@pytest.mark.parametrize("fault", ["a database Redis does not have", "a wrong password",
                                   "no password where one is required", "TLS to a plain port", "nothing listening",
                                   "a script error (the key holds garbage)"])
@pytest.mark.parametrize("fault_tolerant", [False, True])
def test_every_redis_fault_is_a_500_unless_fault_tolerant(rl, redis_server, locked_redis, fault, fault_tolerant):
    settings, prepare = _faults(redis_server, locked_redis)[fault]
    ns = f"faults-{uuid.uuid4().hex[:8]}"
    if prepare is not None:
        prepare(ns)
    client = rl.client()
    try:
        iid = client.start("fastguard-rate-limiting", {"minute": 5, "limit_by": "ip", "policy": "redis",
                                                       "namespace": ns, "fault_tolerant": fault_tolerant,
                                                       "redis": settings})
        statuses = [client.event(iid, IP).status for _ in range(3)]
    finally:
        client.close()
    assert statuses == ([200] * 3 if fault_tolerant else [500] * 3), statuses


def test_a_ban_known_here_is_still_a_ban_while_redis_is_down(rl, fresh_redis):
    """fault_tolerant: false answers 500 for what Redis could not decide, not for what this node decided without
    it: a caller already banned (the ban cached here) keeps its ban status while Redis is down."""
    client = rl.client()
    banned = {"kong.client.get_forwarded_ip": "203.0.113.60"}
    other = {"kong.client.get_forwarded_ip": "203.0.113.61"}
    try:
        iid = client.start("fastguard-rate-limiting", {
            "minute": 1, "limit_by": "ip", "policy": "redis", "fault_tolerant": False, "ban_after": 1,
            "ban_for": 600, "ban_status": 403, "namespace": f"ban-{uuid.uuid4().hex[:8]}",
            "redis": {"host": "127.0.0.1", "port": fresh_redis.port, "timeout": 300}})
        assert [client.event(iid, banned).status for _ in range(3)] == [200, 403, 403]   # refused, then banned
        fresh_redis.kill()
        assert client.event(iid, other).status == 500       # Redis cannot decide: Kong's 500
        assert client.event(iid, banned).status == 403      # the ban known here: still the ban's answer
    finally:
        client.close()
