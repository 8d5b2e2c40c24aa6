"""Benchmarks: run with `python -m pytest bench` (the default test run does not collect them)."""

import pytest


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.benchmark)
