"""Shared fixtures and markers.

The tests by kind: `unit/` (one module, in process), `differential/` (the compiled core against its pure twin,
Redis against the pure twin, conformance vectors), `integration/<part>/` (real servers and processes: redis, kong,
jwks, gateway). Markers follow: every test is marked `unit`, `differential` or `integration`, and `redis` /
`kong` / `gateway` when it needs a redis-server, runs plugin servers or nginx, so `pytest -m "not redis"` runs
where Redis is not installed.
Every behavioural test of the core runs against the compiled core and its pure-Python twin (`impl`).
"""

from __future__ import annotations

import importlib
import pathlib

import pytest
from support import PURE_ONLY

import fastguard as fg
from fastguard import _pure

HERE = pathlib.Path(__file__).parent
_REDIS_FIXTURES = {"redis_server", "fresh_redis", "redis_cluster", "own_cluster"}


def pytest_collection_modifyitems(items):
    for item in items:
        parts = pathlib.Path(str(item.fspath)).resolve().relative_to(HERE).parts
        kind = parts[0] if len(parts) > 1 else "unit"
        item.add_marker(kind)
        part = parts[1] if kind == "integration" and len(parts) > 2 else None
        if part in ("redis", "kong", "jwks", "gateway"):
            item.add_marker(part)
        if _REDIS_FIXTURES & set(getattr(item, "fixturenames", ())) or "redis" in item.module.__name__:
            item.add_marker("redis")


def _compiled_module():
    # Not skipped when missing: a missing build must fail the suite (test_build checks the reason).
    return importlib.import_module("fastguard._core")


@pytest.fixture(params=["compiled", "pure"])
def impl(request):
    """The core module under test: fastguard._core or fastguard._pure."""
    if request.param == "compiled":
        if PURE_ONLY:
            pytest.skip("FASTGUARD_NO_EXTENSIONS is set: pure mode asked for")
        return _compiled_module()
    return _pure


@pytest.fixture
def make(impl):
    """make(limits, algorithm="fixed_window", max_keys=1000) -> RateLimiter on the core under test."""

    def factory(limits, algorithm="fixed_window", max_keys=1000):
        return fg.RateLimiter(limits, algorithm=algorithm, max_keys=max_keys, _core=impl)

    return factory


# -- real Redis servers (fastguard/testing/servers.py): on free loopback ports, stopped by pid --------------------
@pytest.fixture(scope="session")
def redis_server():
    """A standalone redis-server for the whole run."""
    from fastguard.testing.servers import RedisProcess

    server = RedisProcess()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis():
    """A redis-server of this test's own (for tests that kill, pause or restart it)."""
    from fastguard.testing.servers import RedisProcess

    server = RedisProcess()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master Redis Cluster for the whole run."""
    from fastguard.testing.servers import RedisClusterProcesses

    cluster = RedisClusterProcesses(3)
    yield cluster
    cluster.stop()
