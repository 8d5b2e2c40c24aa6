"""One real plugin-server process per fastguard plugin, per test module (Kong's start_cmd, as Kong runs it)."""

from __future__ import annotations

import pytest

from fastguard.kong.client import fastguard_server


@pytest.fixture(scope="module")
def rl(tmp_path_factory):
    server = fastguard_server("fastguard-rate-limiting", str(tmp_path_factory.mktemp("rl")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory):
    server = fastguard_server("fastguard-jwt", str(tmp_path_factory.mktemp("jwt")))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def guard(tmp_path_factory):
    server = fastguard_server("fastguard", str(tmp_path_factory.mktemp("guard")))
    yield server
    server.stop()
