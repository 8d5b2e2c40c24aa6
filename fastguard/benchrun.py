"""`fastguard bench`: run the comparison suites and write report.md, chart.png and bench.json.

The suites (bench/ in a checkout) are installed with the package as `fastguard._bench`, so this runs wherever
fastguard is installed, with the `bench` extra (from a checkout: `pip install '.[bench]'`). `--quick` runs a subset
with fewer rounds (under 2 minutes); `--check` exits 1 when a budget judged in the run is missed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

from fastguard.extras import install_hint

__all__ = ["run_bench", "chart", "QUICK_SELECTION", "BENCH_EXTRA"]

#: The comparisons `--quick` keeps: hot-key limiting, JWT cached / HS256 / RS256, Redis strict, Kong at concurrency 1.
QUICK_SELECTION = ("test_hot or test_cached or (uncached and (HS256 or RS256)) or raw_crypto or strict_fastguard "
                   "or raw_evalsha or limits_redis or (kong_events and -1]) or test_pair")
BENCH_EXTRA = install_hint("bench")
#: What the suites import (the competitors included), by import name.
_NEEDED = ("pytest", "pytest_benchmark", "numpy", "limits", "jwt", "joserfc", "pyrate_limiter", "redis", "kong_pdk",
           "msgpack", "matplotlib", "prometheus_client")


def run_bench(out: str = "bench/results", quick: bool = False, keyword: str | None = None,
              check: bool = False) -> int:
    missing = [name for name in _NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        sys.stderr.write(f"fastguard bench needs the benchmark extra ({', '.join(missing)} missing): "
                         f"{BENCH_EXTRA}\n")
        return 2
    out_dir = pathlib.Path(out).resolve()
    env = dict(os.environ)
    if quick:
        env["FASTGUARD_BENCH_QUICK"] = "1"
        keyword = f"({keyword}) and ({QUICK_SELECTION})" if keyword else QUICK_SELECTION
    cmd = [sys.executable, "-m", "fastguard._bench.report", "--out", str(out_dir)]
    if keyword:
        cmd += ["-k", keyword]
    if check:
        cmd.append("--check")
    sys.stderr.write(f"fastguard bench: {'quick run' if quick else 'full run'}, writing to {out_dir}\n")
    rc = subprocess.run(cmd, env=env).returncode
    if not (out_dir / "bench.json").is_file() or rc not in (0, 1):
        return rc
    png = chart(out_dir / "bench.json", out_dir / "chart.png")
    sys.stderr.write(f"written: {out_dir / 'report.md'}, {png}, {out_dir / 'bench.json'}\n")
    return rc


def chart(raw: pathlib.Path, png: pathlib.Path) -> pathlib.Path:
    """One horizontal bar chart per comparison group (time per call, log scale; smaller is better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(raw.read_text())
    groups: dict[str, list[tuple[str, float]]] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "contender" not in info:
            continue
        if b["group"] == "kong events":
            label = f"{info['case']} · {info['server']} · c={info['concurrency']}"
            value = info["p50_us"] * 1e3
        else:
            label = f"{info['contender']} ({info.get('algorithm', '-')})"
            value = b["stats"]["median"] / info.get("ops", 1) * 1e9
        groups.setdefault(b["group"] or b["name"], []).append((label, value))
    groups = {g: sorted(rows, key=lambda r: r[1]) for g, rows in groups.items() if len(rows) > 1}
    if not groups:
        groups = {"(no comparison in this run)": [("-", 1.0)]}
    heights = [max(1.2, 0.32 * len(rows) + 0.8) for rows in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (group, rows) in zip(axes[:, 0], groups.items(), strict=True):
        labels = [r[0] for r in rows]
        values = [r[1] for r in rows]
        colors = ["#1f77b4" if lab.startswith(("fastguard", "floor")) else "#bbbbbb" for lab in labels]
        colors = ["#2ca02c" if "fastguard" in lab else c for lab, c in zip(labels, colors, strict=True)]
        ax.barh(labels, values, color=colors)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(f"{group} — ns per call (p50 per request for Kong), smaller is better", fontsize=9, loc="left")
        ax.tick_params(axis="y", labelsize=7)
        ax.tick_params(axis="x", labelsize=7)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=6)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
