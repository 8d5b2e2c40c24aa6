"""Helpers of the tests only (the ones the benchmarks share live in fastguard.testing). tests/ is on sys.path
through tests/conftest.py, so every test imports them as `support.<module>`."""

from __future__ import annotations

import os

#: FASTGUARD_NO_EXTENSIONS asks for the pure-Python core: tests of the compiled one are skipped.
PURE_ONLY = os.environ.get("FASTGUARD_NO_EXTENSIONS", "").strip() not in ("", "0")


def early_in_a_second(margin: float = 0.3) -> None:
    """Wait, if need be, until the wall clock's second has at least `margin` s left: a test that expects a few
    requests to share one second's window (a server counts by its clock) must not straddle two, however slow the
    machine."""
    import time

    left = 1 - time.time() % 1
    if left < margin:
        time.sleep(left + 0.01)
