"""Benchmarks: run with `python -m pytest bench` (the default test run does not collect them).

FASTGUARD_BENCH_QUICK=1 (what `fastguard bench --quick` sets) runs half the rounds (at least 5): the same
comparisons, noisier.
"""

import os

import pytest

QUICK = os.environ.get("FASTGUARD_BENCH_QUICK", "") == "1"


def rounds(n: int) -> int:
    """Rounds of a benchmark: n, or half of it (at least 5) in quick mode — enough for the median of the rounds,
    which the budgets use, to shrug off a stolen time slice on a shared machine."""
    return max(5, n // 2) if QUICK else n


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.benchmark)
