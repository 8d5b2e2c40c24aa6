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


NO_NUMPY = "import sys; sys.modules['numpy'] = None\n"  # `import numpy` now raises ImportError, as when absent


def test_nothing_but_hit_many_needs_numpy():
    """numpy is the `batch` extra: the limiter, the verifier and the Kong plugin server import and work without it,
    and hit_many says what to install."""
    code = NO_NUMPY + """
import fastguard as fg
lim = fg.RateLimiter("2/second")
assert lim.hit("a").allowed
import fastguard.kong.server, fastguard.kong.plugins, fastguard.redis, fastguard.metrics, fastguard.simulate
try:
    lim.hit_many(["a", "b"])
except ImportError as exc:
    print(exc)
else:
    raise SystemExit("hit_many worked without numpy")
"""
    for pure in ("0", "1"):
        env = dict(os.environ, FASTGUARD_NO_EXTENSIONS=pure) if pure == "1" else dict(os.environ)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert run.returncode == 0, run.stderr
        assert "pip install 'numpy>=1.24' (fastguard's batch extra; from a checkout: pip install '.[batch]')" \
            in run.stdout


def test_python_dash_m_fastguard_is_the_command():
    run = subprocess.run([sys.executable, "-m", "fastguard", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("fastguard "), run.stderr
