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


def _bench(group, contender, algorithm, ns, ops=1000):
    return {"group": group, "name": f"{group}-{contender}-{algorithm}",
            "stats": {"median": ns * ops / 1e9, "mean": ns * ops / 1e9},
            "extra_info": {"contender": contender, "algorithm": algorithm, "ops": ops}}


def test_the_chart_and_the_report_tables_draw_the_same_numbers(tmp_path):
    """One source (bench.report.comparisons) for the tables and the chart's ratio bars; the chart is linear from
    zero with a legend (it had log axes, no legend, everything in ns)."""
    import json
    import re
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        from bench.report import comparisons, render
    finally:
        sys.path.remove(str(ROOT))
    from fastguard.benchrun import chart

    data = {"benchmarks": [_bench("hot key", "fastguard", "fixed_window", 90.0),
                           _bench("hot key", "limits", "fixed_window", 2_600.0),
                           _bench("hot key", "fastguard", "sliding_window", 95.0),
                           _bench("hot key", "limits", "sliding_window", 4_800.0)]}
    report = render(data)
    rows = dict(re.findall(r"^\| limits \| (\w+) \| [\d,]+ \| ([\d.]+)× \|$", report, re.M))
    drawn = {r["algorithm"]: r["ratio"] for r in comparisons(data)["hot key"] if r["ratio"] is not None}
    assert rows and {alg: float(x) for alg, x in rows.items()} == {alg: round(x, 1) for alg, x in drawn.items()}
    raw = tmp_path / "bench.json"
    raw.write_text(json.dumps(data))
    png = chart(raw, tmp_path / "chart.png")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
