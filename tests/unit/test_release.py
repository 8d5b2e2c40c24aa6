"""The release workflow builds what pyproject.toml declares and publishes it with trusted publishing on a tag."""

from __future__ import annotations

import pathlib

import pytest
import tomllib

yaml = pytest.importorskip("yaml")

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _workflow() -> dict:
    doc = yaml.safe_load((ROOT / ".github" / "workflows" / "wheels.yml").read_text())
    doc["on"] = doc.pop(True, doc.get("on"))            # YAML 1.1 reads the key `on` as true
    return doc


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_wheel_jobs_build_every_declared_arch_and_leave_the_rest_to_pyproject():
    cibw = _project()["tool"]["cibuildwheel"]
    jobs = _workflow()["jobs"]
    wheels = jobs["wheels"]
    assert sorted(wheels["strategy"]["matrix"]["arch"]) == sorted(cibw["linux"]["archs"])
    steps = wheels["steps"]
    build = [s for s in steps if str(s.get("uses", "")).startswith("pypa/cibuildwheel@")]
    assert len(build) == 1
    env = build[0].get("env", {})
    # only the arch is chosen per job; which Pythons, skips, images and tests stay pyproject.toml's
    assert set(env) == {"CIBW_ARCHS_LINUX"} and env["CIBW_ARCHS_LINUX"] == "${{ matrix.arch }}"
    qemu = [s for s in steps if str(s.get("uses", "")).startswith("docker/setup-qemu-action@")]
    assert qemu and "aarch64" in qemu[0]["if"]              # aarch64 runs under QEMU on an x86 runner
    assert cibw["build"] and cibw["test-command"]           # the declared matrix and its smoke test exist
    assert "sdist" in jobs


def test_publishing_is_trusted_and_only_on_a_version_tag():
    doc = _workflow()
    assert doc["on"]["push"]["tags"] == ["v*"]
    publish = doc["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}   # trusted publishing: no token in the repository
    assert publish["if"] == "startsWith(github.ref, 'refs/tags/v')"
    assert set(publish["needs"]) == {"wheels", "sdist"}
    uses = [s.get("uses", "") for s in publish["steps"]]
    assert any(u.startswith("pypa/gh-action-pypi-publish@") for u in uses)
    assert not any("password" in str(s.get("with", {})) for s in publish["steps"])


def test_the_distribution_name_is_the_one_the_docs_install():
    name = _project()["project"]["name"]
    readme = (ROOT / "README.md").read_text()
    assert name == "fastguard-gateway" and f"'{name}[kong,redis]'" in readme
    assert "not on the package index yet" in readme


def test_the_benchmark_report_names_the_installed_version():
    """report.md said "fastguard not installed": it looked up the distribution's old name."""
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        from bench.report import render
    finally:
        sys.path.remove(str(ROOT))
    from fastguard import __version__

    assert f"fastguard {__version__}," in render({"benchmarks": []})
