"""The build: the compiled core is what runs unless pure mode is asked for, loudly."""

import os
import subprocess
import sys

from support import PURE_ONLY

import fastguard as fg


def test_compiled_core_is_live_unless_pure_mode_was_asked_for():
    if PURE_ONLY:
        assert fg.COMPILED is False
    else:
        assert fg.COMPILED is True, "the compiled core did not load: the build is broken"
        from fastguard import _core

        assert fg.Decision is _core.Decision
        assert fg.RateLimiter("1/s")._table.__class__ is _core.Table


def test_pure_mode_warns_and_says_so():
    env = dict(os.environ, FASTGUARD_NO_EXTENSIONS="1")
    code = "import fastguard, sys; print(fastguard.COMPILED, fastguard.RateLimiter('1/s').hit('a').allowed)"
    run = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert run.stdout.split() == ["False", "True"]
    assert "FASTGUARD_NO_EXTENSIONS" in run.stderr and "RuntimeWarning" in run.stderr


def test_type_stub_names_match_the_compiled_module():
    import ast
    import pathlib

    import fastguard

    stub = pathlib.Path(fastguard.__file__).with_name("_core.pyi")
    tree = ast.parse(stub.read_text())
    names = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    assert {"Table", "Decision"} <= names
    for name in names:
        assert hasattr(fg._impl, name)
