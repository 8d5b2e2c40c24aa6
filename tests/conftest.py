"""Shared fixtures: every behavioural test runs against the compiled core and its pure-Python twin."""

from __future__ import annotations

import importlib
import os

import pytest

import fastguard as fg
from fastguard import _pure

PURE_ONLY = os.environ.get("FASTGUARD_NO_EXTENSIONS", "").strip() not in ("", "0")


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


# -- real Redis servers (tests/redis_servers.py): started on free loopback ports, stopped by pid -------------------
@pytest.fixture(scope="session")
def redis_server():
    """A standalone redis-server for the whole run."""
    from redis_servers import RedisProcess

    server = RedisProcess()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis():
    """A redis-server of this test's own (for tests that kill, pause or restart it)."""
    from redis_servers import RedisProcess

    server = RedisProcess()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster():
    """A 3-master Redis Cluster for the whole run."""
    from redis_servers import RedisClusterProcesses

    cluster = RedisClusterProcesses(3)
    yield cluster
    cluster.stop()
