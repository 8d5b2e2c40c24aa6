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
    """One panel per comparison group: how many times longer each other contender takes than fastguard for the
    same algorithm, as bars on a linear axis from zero with the ratio written on each (a bar past the 1× line:
    fastguard is faster), fastguard's own time per call in the panel's title in its unit. The numbers are the
    report's (fastguard._bench.report.comparisons): the chart and report.md never disagree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    try:
        from fastguard._bench.report import comparisons
    except ImportError:                     # a checkout run without the package installed
        from bench.report import comparisons

    panels = []
    for group, rows in comparisons(json.loads(raw.read_text())).items():
        bars = [r for r in rows if r["ratio"] is not None]
        if not bars:
            continue
        own = {r["algorithm"]: r["ns"] for r in rows if r["contender"] == "fastguard"}
        panels.append((group, bars, own))
    if not panels:
        panels = [("(no comparison in this run)", [], {})]
    heights = [max(1.4, 0.34 * len(bars) + 1.0) for _, bars, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (group, bars, own) in zip(axes[:, 0], panels, strict=True):
        labels = [f"{r['contender'][:38]} ({r['algorithm']})" if r["algorithm"] != "-" else r["contender"][:48]
                  for r in bars]
        ratios = [r["ratio"] for r in bars]
        colors = ["#2ca02c" if x >= 1 else "#d62728" for x in ratios]
        ax.barh(range(len(bars)), ratios, color=colors)
        ax.set_yticks(range(len(bars)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(0, max(ratios + [1.0]) * 1.18)
        ax.axvline(1.0, color="#444444", linewidth=0.8, linestyle="--")
        for y, x in enumerate(ratios):
            ax.text(x, y, f" {x:,.1f}×", va="center", fontsize=7)
        times = ", ".join(f"{alg}: {_with_unit(ns)}" for alg, ns in sorted(own.items()))
        ax.set_title(f"{group} — fastguard per call: {times}" if times else group, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlabel("their time / fastguard's (same algorithm)", fontsize=7)
    fig.legend(handles=[Patch(color="#2ca02c", label="fastguard faster"),
                        Patch(color="#d62728", label="fastguard slower"),
                        Patch(facecolor="none", edgecolor="#444444", linestyle="--", label="1× (as fast)")],
               loc="upper right", fontsize=8, ncol=3)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def _with_unit(ns: float) -> str:
    """A time per call in the unit that reads best: ns, µs or ms."""
    if ns < 1_000:
        return f"{ns:,.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:,.1f} µs"
    return f"{ns / 1_000_000:,.2f} ms"
