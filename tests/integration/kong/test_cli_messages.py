"""What an operator sees when something is missing or wrong: a message naming the cause and the fix, exit status 2,
never a traceback (each of these was a traceback or a wrong cause before)."""

from __future__ import annotations

import argparse
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from fastguard.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[3]


def run(*args: str, code: str | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "fastguard.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd or tempfile.gettempdir())


def test_importing_the_source_folder_says_it_shadows_the_installed_package(tmp_path):
    """`import fastguard` from a checkout's root finds the source folder (no compiled core) first."""
    shutil.copytree(ROOT / "fastguard", tmp_path / "fastguard", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    # as after the Quick start's (non-editable) install: no editable finder ahead of the current directory
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
            "(getattr(f, '__module__', '') + getattr(f, '__name__', '') + type(f).__module__).lower()]; "
            "import fastguard")
    r = run(code=code, cwd=str(tmp_path))
    assert r.returncode == 1 and "found the source folder" in r.stderr and "another directory" in r.stderr


def test_simulate_with_redis_but_without_the_redis_extra_names_the_extra():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "fastguard-simulate-*")))
    code = ("import sys; sys.modules['redis'] = None; from fastguard.cli import main; "
            "sys.exit(main(['simulate', '--redis', 'redis://127.0.0.1:6379/0', '--requests', '10']))")
    r = run(code=code)
    assert r.returncode == 2 and "redis extra" in r.stderr and "pip install" in r.stderr, r.stderr
    assert "cannot be reached" not in r.stderr and "Traceback" not in r.stderr
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "fastguard-simulate-*"))) == before  # none left


def _value_options():
    """(subcommand, option, a bad value) for every option of every subcommand that takes a value."""
    bad = {int: ["-5", "abc", "1.5"], float: ["-1", "nan", "abc", "inf"]}
    out = []
    for action in build_parser()._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            for opt in sub._actions:
                if not opt.option_strings or opt.nargs == 0 or opt.dest == "help":
                    continue
                flag = opt.option_strings[-1]
                kind = getattr(opt.type, "__name__", None)
                if opt.choices:
                    values = ["no-such-choice"]
                elif kind in ("whole number", "seconds"):
                    values = bad[int] if kind == "whole number" else bad[float]
                elif kind == "limits":
                    values = ["", "10/fortnight", "-1/second"]
                else:
                    continue                    # free text (paths, URLs, names): refused later, with their own message
                out += [pytest.param(name, flag, v, id=f"{name} {flag} {v}") for v in values]
    return out


PREFIX = {"verify": ["verify", "x.y.z", "--secret", "s"], "bans": ["bans", "list", "--redis", "redis://127.0.0.1:1"]}


@pytest.mark.parametrize("command, flag, value", _value_options())
def test_every_bad_option_value_is_a_usage_error_naming_the_option(command, flag, value):
    r = run(*PREFIX.get(command, [command]), f"{flag}={value}")
    # whole numbers that are valid ints for an option with no lower bound (--seed) are accepted
    if command == "simulate" and flag == "--seed" and value == "-5":
        return
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert "Traceback" not in r.stderr and flag in r.stderr, r.stderr[-500:]


def test_small_simulate_cases_that_were_refused_now_run():
    """`--limits 100/5m` (the README's syntax: Rate Limiting Advanced's window_size), `--mix login=1`."""
    r = run("simulate", "--limits", "100/5m", "--requests", "200", "--json")
    assert r.returncode == 0, r.stderr
    r = run("simulate", "--mix", "login=1", "--requests", "100", "--json")
    assert r.returncode == 0 and '"route": "login"' in r.stdout and '"route": "api"' not in r.stdout, r.stderr


@pytest.mark.parametrize("argv, flag", [
    (["simulate", "--ban-after", "-1"], "--ban-after"),        # was a traceback
    (["simulate", "--ban-for", "0"], "--ban-for"),             # was a traceback
    (["simulate", "--requests", "-5"], "--requests"),          # named demo's options
    (["verify", "x.y.z", "--secret", "s", "--leeway", "-1"], "--leeway"),   # was "unusable key", exit 2 anyway
])
def test_the_values_that_used_to_end_badly(argv, flag):
    r = run(*argv)
    assert r.returncode == 2 and flag in r.stderr and "Traceback" not in r.stderr, r.stderr[-400:]
    assert "--keys" not in r.stderr and "unusable key" not in r.stderr


def test_verify_says_when_the_key_set_cannot_be_fetched():
    """A JWKS that cannot be fetched is the environment's problem (exit 2), not an invalid token (exit 1)."""
    from fastguard.testing.servers import free_port

    r = run("verify", "a.b.c", "--jwks", f"http://127.0.0.1:{free_port()}/jwks")
    assert r.returncode == 2 and "the key set cannot be fetched" in r.stderr and "Traceback" not in r.stderr
