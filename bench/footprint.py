"""What the plugin-server image pays for fastguard: installed size, and a plugin server's start time and memory
with and without numpy (the `batch` extra) — the figures of the README's "Install" section.

    python -m bench.footprint [--source PATH_OR_WHEEL]

Makes a fresh venv in a temporary folder, installs `<source>[kong]` (default: this checkout), measures the venv's
growth, then `fastguard kong-server fastguard-rate-limiting`: `--dump` wall time (median of 7 runs) and a serving
server's resident memory, first as installed (numpy absent), then with numpy installed and imported first (what
every server paid before numpy became optional).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _size_mb(folder: pathlib.Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def _server(python: pathlib.Path, folder: pathlib.Path, numpy_first: bool) -> tuple[float, float]:
    """(--dump wall time in ms, median of 7; VmRSS of a serving server in MiB)."""
    main = folder / f"fg_main_{int(numpy_first)}.py"  # a file, not -c: kong-pdk stats sys.argv[0] at plugin load
    main.write_text(("import numpy\n" if numpy_first else "") +
                    "import sys\nfrom fastguard.cli import main\nsys.exit(main())\n")
    times = []
    for _ in range(7):
        started = time.perf_counter()
        subprocess.run([python, main, "kong-server", "fastguard-rate-limiting", "--dump"], check=True,
                       capture_output=True, cwd=folder)
        times.append((time.perf_counter() - started) * 1e3)
    sock = folder / f"s{int(numpy_first)}.sock"
    proc = subprocess.Popen([python, main, "kong-server", "fastguard-rate-limiting", "--socket", sock], cwd=folder)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        with open(f"/proc/{proc.pid}/status") as fh:
            rss_kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
    finally:
        proc.terminate()
        proc.wait(10)
    return statistics.median(times), rss_kb / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(ROOT), help="what to install: a checkout or a wheel (default: here)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fg-footprint-") as tmp:
        folder = pathlib.Path(tmp)
        venv = folder / "venv"
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        empty = _size_mb(venv)
        pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-cache-dir"]
        subprocess.run([*pip, f"{args.source}[kong]"], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        installed = _size_mb(venv) - empty
        own = _size_mb(site / "fastguard")
        python = venv / "bin" / "python"
        without = _server(python, folder, numpy_first=False)
        subprocess.run([*pip, "numpy"], check=True)
        numpy_mb = sum(_size_mb(p) for p in site.glob("numpy*") if p.is_dir())
        with_numpy = _server(python, folder, numpy_first=True)
    print(f"pip install '<source>[kong]': +{installed:.1f} MB to a fresh venv (fastguard itself {own:.1f} MB); "
          f"numpy would add {numpy_mb:.1f} MB")
    print(f"plugin server without numpy: --dump {without[0]:.0f} ms (median of 7), serving {without[1]:.1f} MiB")
    print(f"plugin server with numpy imported first: --dump {with_numpy[0]:.0f} ms, serving {with_numpy[1]:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
