"""Helpers of the tests only (the ones the benchmarks share live in fastguard.testing). tests/ is on sys.path
through tests/conftest.py, so every test imports them as `support.<module>`."""

from __future__ import annotations

import os

#: FASTGUARD_NO_EXTENSIONS asks for the pure-Python core: tests of the compiled one are skipped.
PURE_ONLY = os.environ.get("FASTGUARD_NO_EXTENSIONS", "").strip() not in ("", "0")
