"""What to install for an optional part of fastguard, said once for every message that needs it.

fastguard-gateway is not on the package index yet, so `pip install 'fastguard-gateway[kong]'` would find nothing:
a hint names the packages the extra brings (read from the installed distribution's metadata, i.e. from
pyproject.toml), which pip installs from anywhere, and the extra for a checkout.
"""

from __future__ import annotations

import functools
import re

__all__ = ["install_hint", "DISTRIBUTION"]

DISTRIBUTION = "fastguard-gateway"


@functools.cache
def _requirements(extra: str) -> tuple[str, ...]:
    from importlib import metadata

    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return ()
    out = []
    for req in requires:
        spec, _, marker = req.partition(";")
        if re.search(rf"""extra\s*==\s*["']{re.escape(extra)}["']""", marker):
            out.append(spec.strip().replace(" ", ""))
    return tuple(out)


def install_hint(*extras: str) -> str:
    """`pip install '<packages>'` for these extras, naming the extras (and what a checkout installs)."""
    packages = [p for extra in extras for p in _requirements(extra)]
    names = ",".join(extras)
    if not packages:
        return f"install fastguard with its {names} extra (from a checkout: pip install '.[{names}]')"
    quoted = " ".join(f"'{p}'" if any(c in p for c in "<>=!;") else p for p in dict.fromkeys(packages))
    return f"pip install {quoted} (fastguard's {names} extra; from a checkout: pip install '.[{names}]')"
