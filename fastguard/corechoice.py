"""Which core runs: the compiled one (fastguard._core), or with FASTGUARD_NO_EXTENSIONS=1 the pure-Python twin
(fastguard._pure). A leaf: it imports nothing of fastguard's but the core it picks, and every module that needs the
core imports `core` from here (fastguard.jwt, .jwks, .keysafety, .ratelimit, .redis, .kong).
"""

from __future__ import annotations

import os
import warnings

if os.environ.get("FASTGUARD_NO_EXTENSIONS", "").strip() not in ("", "0"):
    warnings.warn("FASTGUARD_NO_EXTENSIONS is set: fastguard runs its pure-Python core (correct but slow)",
                  RuntimeWarning, stacklevel=2)
    from fastguard import _pure as core

    COMPILED = False
else:
    try:
        from fastguard import _core as core
    except ImportError as exc:  # a broken build must be loud, never a silent slow path
        _here = os.path.dirname(os.path.abspath(__file__))   # the package folder
        if os.path.isfile(os.path.join(os.path.dirname(_here), "pyproject.toml")):
            # a source checkout's folder found first on sys.path (Python puts the current directory there)
            raise ImportError(
                f"`import fastguard` found the source folder {_here}, which has no compiled core, before any "
                "installed fastguard: run Python from another directory (the installed package is then found), "
                "or build the core in place with `pip install -e .`. Set FASTGUARD_NO_EXTENSIONS=1 to run the "
                f"pure-Python core from the source. Cause: {exc}") from exc
        raise ImportError(
            "fastguard's compiled core (fastguard._core) is not built or failed to load: reinstall with "
            "`pip install .` (needs a C compiler and the Python headers), or set FASTGUARD_NO_EXTENSIONS=1 "
            f"to run the pure-Python core. Cause: {exc}") from exc
    COMPILED = True


__all__ = ["core", "COMPILED"]
