"""`cython -a` of the core: the functions that run per decision or per batch key touch no Python object.

Cython scores each line by the Python C-API work it generates; the only calls allowed in these functions are
PyMem_Raw* (allocation without the GIL, on growth and per batch, not per decision).
"""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOT = ["_new_state", "_decide", "_fresh", "_grow", "_victim", "_insert", "_remove", "_hit_locked", "_batch",
       "_chunk"]


def _function_lines(src: list[str], name: str) -> range:
    start = next(i for i, line in enumerate(src, 1) if re.match(rf"\s*cdef .*\b{name}\(", line))
    indent = len(src[start - 1]) - len(src[start - 1].lstrip())
    end = start
    for j in range(start, len(src)):
        line = src[j]
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        end = j + 1
    return range(start + 1, end + 1)


def _scores(html: str) -> dict[int, int]:
    return {int(m.group(2)): int(m.group(1)) for m in
            re.finditer(r'<pre class="cython line score-(\d+)"[^>]*>.*?<span class="">(\d+)</span>', html)}


def test_hot_functions_have_no_python_interaction(tmp_path):
    cython = shutil.which("cython") or str(pathlib.Path(sys.executable).with_name("cython"))
    if not pathlib.Path(cython).exists():
        pytest.fail("cython is not installed: it is part of the test extras")
    shutil.copytree(ROOT / "fastguard" / "core", tmp_path / "core")
    for name in ("_core.pyx", "_core.pxd"):
        shutil.copy(ROOT / "fastguard" / name, tmp_path / name)
    subprocess.run([cython, "-a", "-3", "-X", "cdivision=True", "_core.pyx", "-o", "_core.c"], cwd=tmp_path,
                   check=True, capture_output=True)
    # The core is one .pyx of includes: cython annotates each included file in an .html of its own.
    sources = [tmp_path / "_core.pyx", *sorted((tmp_path / "core").glob("*.pxi"))]
    offenders, found = [], set()
    for source in sources:
        src = source.read_text().splitlines()
        scores = _scores(source.with_suffix(".html").read_text())
        for name in HOT:
            if not any(re.match(rf"\s*cdef .*\b{name}\(", line) for line in src):
                continue
            assert scores, f"could not read the annotation of {source.name}"
            found.add(name)
            for n in _function_lines(src, name):
                if scores.get(n, 0) > 0 and "PyMem_Raw" not in src[n - 1]:
                    offenders.append(f"{source.name}:{name}:{n}: {src[n - 1].strip()} (score {scores[n]})")
    assert found == set(HOT), f"hot functions not found: {set(HOT) - found}"
    assert not offenders, "\n".join(offenders)
