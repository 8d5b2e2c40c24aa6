"""Benchmarks: run with `python -m pytest bench` (the default test run does not collect them).

FASTGUARD_BENCH_QUICK=1 (what `fastguard bench --quick` sets) runs fewer rounds: the same comparisons, noisier.
"""

import os

import pytest

QUICK = os.environ.get("FASTGUARD_BENCH_QUICK", "") == "1"


def rounds(n: int) -> int:
    """Rounds of a benchmark: n, or a fifth of it (at least 3) in quick mode."""
    return max(3, n // 5) if QUICK else n


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.benchmark)
