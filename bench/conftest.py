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


def alternate(benchmark, pair: str, loops: dict, ops, n_rounds: int) -> None:
    """Time the contenders of a ratio budget in alternation — each round runs every contender's loop of `ops`
    calls (one count for all, or a count per contender name) once, in an order that flips every round — and record
    each one's median ns per call in extra_info (`<contender>_ns`). Measured one after the other, two figures can
    straddle a change in the machine's speed (a shared machine drifts by 10-20 % within minutes); measured side by
    side, their ratio does not."""
    import statistics
    import time

    times: dict = {name: [] for name in loops}
    order = list(loops.items())

    def one_round() -> None:
        for name, fn in order:
            started = time.perf_counter_ns()
            fn()
            times[name].append(time.perf_counter_ns() - started)
        order.reverse()

    benchmark.group = "paired (ratio budgets)"
    benchmark.pedantic(one_round, rounds=n_rounds, iterations=1, warmup_rounds=1)
    per_name = ops if isinstance(ops, dict) else dict.fromkeys(loops, ops)
    for name, spent in times.items():
        benchmark.extra_info[f"{name}_ns"] = statistics.median(spent[1:]) / per_name[name]  # warm-up round left out
    benchmark.extra_info.update(pair=pair, ops=per_name)
