"""The README's two commands are the contract: CI runs the test command verbatim, and the code is lint-clean."""

import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", section, re.S)]


def test_quick_start_has_exactly_two_commands():
    blocks = quick_start_commands()
    assert len(blocks) == 2, blocks
    assert all("\n" not in b for b in blocks), "each command fits one line, so it can be pasted as is"


def test_ci_runs_the_readme_test_command_verbatim():
    test_command = quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    if not pathlib.Path(ruff).exists():
        pytest.fail("ruff is not installed: it is part of the test extras")
    run = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_demo_runs_through_the_installed_command():
    exe = shutil.which("fastguard") or str(pathlib.Path(sys.executable).with_name("fastguard"))
    run = subprocess.run([exe, "demo", "--requests", "8", "--keys", "1000"], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "5 of 8 admitted." in run.stdout and "DENY" in run.stdout
    bad = subprocess.run([exe, "demo", "--limits", "5/fortnight"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown unit 'fortnight'" in bad.stderr
