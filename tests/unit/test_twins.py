"""The twin map holds: every file of the compiled core names its pure-Python twin in its header, the twin exists and
names that file back (a maintainer changing one finds the other). The map broke once: core/bans.pxi named
_pure/bans.py, which is core/bangate.pxi's twin."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE = sorted((ROOT / "fastguard" / "core").glob("*.pxi"))


def _head(path: pathlib.Path, lines: int = 4) -> str:
    return "\n".join(path.read_text().splitlines()[:lines])


@pytest.mark.parametrize("pxi", CORE, ids=[p.name for p in CORE])
def test_each_core_file_and_its_pure_twin_name_each_other(pxi):
    named = re.findall(r"fastguard/_pure/(\w+)\.py", _head(pxi))
    assert named, f"{pxi.name}: its header names no fastguard/_pure/<twin>.py"
    twin = ROOT / "fastguard" / "_pure" / f"{named[0]}.py"
    assert twin.is_file(), f"{pxi.name} names {twin.name}, which does not exist"
    assert pxi.name in _head(twin), f"{twin.name} does not name {pxi.name} back"


def test_no_file_names_the_old_single_module_twin():
    """fastguard/_pure.py became a package; nothing may send a reader to the old file."""
    files = [p for folder in ("fastguard", "bindings") for p in (ROOT / folder).rglob("*")
             if p.suffix in (".py", ".pyx", ".pxd", ".pxi", ".pyi", ".lua")]
    stale = [str(p.relative_to(ROOT)) for p in files if "fastguard/_pure.py" in p.read_text(errors="replace")]
    assert stale == []
