"""Run the benchmarks (rate limiting, JWT) and write a Markdown report with the budgets of docs/design.md.

    python -m bench.report [--out DIR] [-k EXPRESSION] [--check]      (from a checkout)
    python -m fastguard._bench.report [...]                           (installed: fastguard bench runs this)

Every figure comes from one pytest-benchmark run in one process; ratios compare contenders of that run.
Times are per decision (smaller is better).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from typing import Any

from fastguard.extras import DISTRIBUTION

#: The benchmark suite: bench/ of a checkout, or fastguard/_bench once installed (the same files).
HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "fastguard").is_dir()
DEFAULT_OUT = HERE / "results" if CHECKOUT else pathlib.Path("fastguard-bench-results")


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _redis_server_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split(" v=")[1].split()[0].join(["redis-server ", ""]) if " v=" in out else "redis-server ?"
    except (OSError, subprocess.SubprocessError):
        return "redis-server not installed"


def _ns(bench: dict) -> float:
    """Time of one decision in ns: the median round (benchmarks time loops of `ops` decisions). The median, not
    the mean: on a shared machine a stolen time slice lands in one round and would move a mean, and with it a
    ratio budget, by itself."""
    return bench["stats"]["median"] / bench["extra_info"].get("ops", 1) * 1e9


def comparisons(data: dict) -> dict[str, list[dict[str, Any]]]:
    """Per group where fastguard meets other contenders, each row: contender, algorithm, ns per call, and its time
    over fastguard's for the same algorithm (None for fastguard's own rows or with no fastguard row) — the one
    source of the report's tables and of the chart."""
    by_group: dict[str, list[dict]] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if "contender" in info and "algorithm" in info and b.get("group"):
            by_group.setdefault(b["group"], []).append(b)
    out: dict[str, list[dict[str, Any]]] = {}
    for group, rows in by_group.items():
        fastest = {b["extra_info"]["algorithm"]: _ns(b) for b in sorted(rows, key=_ns)
                   if b["extra_info"]["contender"] == "fastguard"}
        table = []
        for b in sorted(rows, key=_ns):
            info, ns = b["extra_info"], _ns(b)
            ref = fastest.get(info["algorithm"])
            table.append({"contender": info["contender"], "algorithm": info["algorithm"], "ns": ns,
                          "ratio": ns / ref if ref and info["contender"] != "fastguard" else None})
        out[group] = table
    return out


def render(data: dict, verdicts: list[tuple[str, bool]] | None = None) -> str:
    """The Markdown report; each judged budget is also appended to `verdicts` as (budget, met)."""
    benches = data["benchmarks"]
    by_group: dict[str, list[dict]] = {}
    for b in benches:
        by_group.setdefault(b["group"] or b["name"], []).append(b)

    lines = ["# fastguard benchmarks", "",
             f"Machine: {_cpu()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
             f"Python {platform.python_version()}; fastguard {_version(DISTRIBUTION)}, limits {_version('limits')}, "
             f"numpy {_version('numpy')}, Cython {_version('Cython')}, redis-py {_version('redis')}, "
             f"hiredis {_version('hiredis')}, {_redis_server_version()}, pyrate-limiter {_version('pyrate-limiter')}, "
             f"PyJWT {_version('PyJWT')}, joserfc {_version('joserfc')}, cryptography {_version('cryptography')}, "
             f"kong-pdk {_version('kong-pdk')}.",
             "", "Times are per call, medians over rounds of loops of 1,000-100,000 calls (the loop's cost is included "
             "for every contender). **Smaller is better.** Produced by `python -m bench.report`.", ""]

    compared = comparisons(data)

    def table(group: str, title: str) -> dict[tuple[str, str], float]:
        rows = compared.get(group, [])
        found: dict[tuple[str, str], float] = {}
        if not rows:
            return found
        lines.extend([f"## {title}", "", "| contender | algorithm | ns / decision | vs fastguard |",
                      "|---|---|---:|---:|"])
        for r in rows:
            found[(r["contender"], r["algorithm"])] = r["ns"]
            ratio = f"{r['ratio']:.1f}×" if r["ratio"] is not None else ""
            lines.append(f"| {r['contender']} | {r['algorithm']} | {r['ns']:,.0f} | {ratio} |")
        lines.append("")
        return found

    hot = table("hot key", "One hot key (`hit`)")
    million = table("1M keys", "1,000,000 distinct keys, uniformly random order (`hit`)")
    many = table("hit_many (numpy ids, 1M keys)", "`hit_many`: batches of 100,000 numpy ids over 1M keys")

    two = by_group.get("hit_many two threads", [])
    speedup = two[0]["extra_info"]["speedup"] if two else None
    if two:
        info = two[0]["extra_info"]
        lines += ["## `hit_many` from two threads", "",
                  f"One thread: {info['one_thread_s'] * 1e3:.0f} ms, two threads: {info['two_threads_s'] * 1e3:.0f} ms "
                  f"for {info['ops']:,} decisions: **{speedup:.2f}×** the throughput of one thread.", ""]
    mem = {b["extra_info"]["contender"]: b["extra_info"]["bytes_per_key"] for b in by_group.get("bytes per key", [])}
    if mem:
        lines += ["## Memory per key (200,000 keys, one limit, sliding window; tracemalloc)", "",
                  "| contender | bytes / key |", "|---|---:|"]
        lines += [f"| {name} | {value:,.0f} |" for name, value in sorted(mem.items(), key=lambda kv: kv[1])]
        lines.append("")

    # JWT verification.
    cached = {b["extra_info"]["contender"]: _ns(b) for b in by_group.get("verify: cache hit", [])}
    families = ["HS256", "RS256", "PS256", "ES256", "EdDSA"]
    uncached = {alg: {b["extra_info"]["contender"]: _ns(b) for b in by_group.get(f"verify: uncached {alg}", [])}
                for alg in families}
    if cached or any(uncached.values()):
        lines += ["## JWT verification (µs per token; smaller is better)", "",
                  "| algorithm | fastguard | PyJWT | joserfc | floor: raw `cryptography` verify |",
                  "|---|---:|---:|---:|---:|"]
        if cached:
            lines.append(f"| RS256, cache hit | {cached.get('fastguard (cached)', 0) / 1000:.2f} | "
                         f"{cached.get('PyJWT', 0) / 1000:.1f} | | |")
        for alg in families:
            row = uncached[alg]
            if row:
                cells = [f"{row[c] / 1000:.2f}" if c in row else "" for c in
                         ("fastguard", "PyJWT", "joserfc", "floor: raw verify")]
                lines.append(f"| {alg}, uncached | " + " | ".join(cells) + " |")
        lines.append("")

    # Cluster mode on a real redis-server.
    redis_hit = {(b["extra_info"]["contender"], b["extra_info"]["algorithm"]): _ns(b) / 1000
                 for b in by_group.get("redis hit", [])}
    if redis_hit:
        lines += ["## Cluster mode: one decision on a real Redis (µs per decision; smaller is better)", "",
                  "| contender | algorithm | µs / decision |", "|---|---|---:|"]
        lines += [f"| {c} | {a} | {v:.1f} |" for (c, a), v in sorted(redis_hit.items(), key=lambda kv: kv[1])]
        lines.append("")
    pipelined = {b["extra_info"]["algorithm"]: 1e9 / _ns(b) for b in by_group.get("redis hit_many", [])}
    if pipelined:
        lines += ["Pipelined strict `hit_many` (10,000 keys a call): " + ", ".join(
            f"{alg} **{rate:,.0f} decisions/s**" for alg, rate in sorted(pipelined.items())) + ".", ""]
    local_first = {b["extra_info"]["contender"]: _ns(b) for b in by_group.get("local-first", [])}
    if local_first:
        lines += ["Local-first `hit` (sliding window, 1,000 keys): " + ", ".join(
            f"{c} {v:.0f} ns" for c, v in sorted(local_first.items(), key=lambda kv: kv[1])) + ".", ""]

    # Kong plugins through real plugin servers.
    kong = [b["extra_info"] for b in by_group.get("kong events", [])]
    kong_by = {(k["server"], k["case"], k["concurrency"]): k for k in kong}
    if kong:
        lines += ["## Kong plugins through real plugin servers (per request: p50 / p99 µs; events/s)", "",
                  "| plugin | server | concurrency 1 | concurrency 4 |", "|---|---|---:|---:|"]
        for case in dict.fromkeys(k["case"] for k in kong):
            for server in ("stock kong-pdk", "fastguard kong-server"):
                cells = []
                for c in (1, 4):
                    k = kong_by.get((server, case, c))
                    cells.append(f"{k['p50_us']:,.0f} / {k['p99_us']:,.0f} µs, {k['events_per_s']:,.0f}/s" if k else "")
                lines.append(f"| {case} | {server} | {cells[0]} | {cells[1]} |")
        lines.append("")

    gw = [b["extra_info"] for b in by_group.get("gateway http", [])]
    gw_by = {(g["case"], g["connections"]): g for g in gw}
    conns = sorted({g["connections"] for g in gw})
    if gw:
        lines += ["## HTTP through a real gateway (nginx + Lua playing Kong; wrk, 1 nginx worker, the upstream an "
                  "nginx location)", "",
                  "| case | " + " | ".join(f"{c} connections: requests/s, p50 / p99 ms" for c in conns) +
                  " | plugin server CPU per request | nginx worker CPU per request | plugin server RSS after |",
                  "|---|" + "---:|" * (len(conns) + 3)]

        def cpu(case: str, what: str, unit: str = "µs") -> str:
            return " / ".join(f"{g[what]:.0f} {unit}" for c in conns if (g := gw_by.get((case, c))) and what in g)

        for case in dict.fromkeys(g["case"] for g in gw):
            cells = [(f"{g['requests_per_s']:,.0f}, {g['p50_ms']:.2f} / {g['p99_ms']:.2f}" if g else "")
                     for g in (gw_by.get((case, c)) for c in conns)]
            lines.append(f"| {case} | " + " | ".join(cells) +
                         f" | {cpu(case, 'server_cpu_us_per_request')} | {cpu(case, 'gateway_cpu_us_per_request')}"
                         f" | {cpu(case, 'server_rss_mib', 'MiB')} |")
        lines.append("")
    soaks = [b["extra_info"] for b in by_group.get("gateway soak", [])]
    if soaks:
        lines += ["## Soak through the gateway (wrk, 64 connections, after a warm-up; plugin server RSS read every "
                  "second)", "", "| plugin | seconds | requests | RSS first / max / last | growth |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {k['case']} | {k['soak_s']} | {k['requests']:,} | {k['rss_first_mib']:.1f} / "
                  f"{k['rss_max_mib']:.1f} / {k['rss_last_mib']:.1f} MiB | {k['growth_mib']:+.2f} MiB |" for k in soaks]
        lines.append("")

    lines += _side_tables(by_group)

    # Budgets (docs/design.md), judged on this run only.
    checks = []

    def check(what: str, value: float | None, ok: bool | None, shown: str, absolute: bool = False) -> None:
        """A budget row. `absolute`: a time on the reference machine (not a ratio of the same run): shown with its
        verdict here, but not judged by --check, whose budgets hold on any machine."""
        verdict = "n/a" if ok is None else ("met" if ok else "**missed**")
        if absolute and ok is not None:
            verdict += " (absolute)"
        elif verdicts is not None and ok is not None and value is not None:
            verdicts.append((what, bool(ok)))
        checks.append(f"| {what} | {shown if value is not None else 'not measured'} | {verdict} |")

    # A ratio budget is judged on its paired benchmark (both contenders measured in alternation) when the run has
    # it, else on the two figures measured one after the other.
    pairs = {b["extra_info"]["pair"]: b["extra_info"] for b in by_group.get("paired (ratio budgets)", [])}

    def pair(name: str, a: str, b: str, a_ns: float | None, b_ns: float | None) -> tuple[float | None, ...]:
        p = pairs.get(name)
        return (p[f"{a}_ns"], p[f"{b}_ns"], ", interleaved") if p else (a_ns, b_ns, "")  # type: ignore[return-value]

    tracked, plain, how = pair("hot metrics", "on", "off", hot.get(("fastguard, metrics on", "fixed_window")),
                               hot.get(("fastguard", "fixed_window")))
    if tracked and plain:
        check("hot `hit` with metrics on ≤ 1.05× off", tracked, tracked <= 1.05 * plain,
              f"{tracked / plain:.2f}×{how}")
    for alg in ("fixed_window", "sliding_window"):
        ours = hot.get(("fastguard", alg))
        if ours:
            check(f"hot `hit` ≤ 120 ns ({alg})", ours, ours <= 120, f"{ours:.0f} ns", absolute=True)
        fast, theirs, how = pair(f"hot {alg}", "fastguard", "limits", ours, hot.get(("limits", alg)))
        if fast and theirs:
            check(f"hot `hit` ≥ 25× `limits` ({alg})", fast, theirs / fast >= 25, f"{theirs / fast:.1f}×{how}")
    worst_million = max((v for (c, _), v in million.items() if c == "fastguard"), default=None)
    check("`hit` over 1M keys ≤ 300 ns", worst_million, None if worst_million is None else worst_million <= 300,
          f"{worst_million:.0f} ns" if worst_million else "", absolute=True)
    floor = million.get(("floor: dict.get(key)", "-"))
    if floor and worst_million:
        lines_note = f"{worst_million / floor:.2f}× a plain `dict.get` of the same keys"
        check("`hit` over 1M keys vs a dict lookup (context)", floor, None, lines_note)
    worst_many = max((v for (c, _), v in many.items() if c == "fastguard"), default=None)
    check("`hit_many` ≤ 40 ns / key", worst_many, None if worst_many is None else worst_many <= 40,
          f"{worst_many:.0f} ns" if worst_many else "", absolute=True)
    check("`hit_many` two threads ≥ 1.7× one", speedup, None if speedup is None else speedup >= 1.7,
          f"{speedup:.2f}×" if speedup else "")
    ours_mem = mem.get("fastguard")
    check("≤ 64 bytes per key (one limit)", ours_mem, None if ours_mem is None else ours_mem <= 64,
          f"{ours_mem:.0f} B" if ours_mem else "")
    hit, pyjwt_rs = cached.get("fastguard (cached)"), cached.get("PyJWT")
    if hit:
        check("`verify()` cache hit ≤ 250 ns", hit, hit <= 250, f"{hit:.0f} ns", absolute=True)
    hit_p, pyjwt_rs, how = pair("verify cached RS256", "fastguard", "pyjwt", hit, pyjwt_rs)
    if hit_p and pyjwt_rs:
        check("cache hit ≥ 250× PyJWT RS256", hit_p, pyjwt_rs / hit_p >= 250, f"{pyjwt_rs / hit_p:.0f}×{how}")
    hs = uncached.get("HS256", {})
    ours_hs, pyjwt_hs, how = pair("verify uncached HS256", "fastguard", "pyjwt", hs.get("fastguard"), hs.get("PyJWT"))
    if ours_hs and pyjwt_hs:
        ratio = pyjwt_hs / ours_hs
        check("uncached HS256 ≥ 10× PyJWT", ratio, ratio >= 10, f"{ratio:.1f}×{how}")
    for alg in families[1:]:
        row = uncached.get(alg, {})
        if "fastguard" in row and "floor: raw verify" in row:
            extra = (row["fastguard"] - row["floor: raw verify"]) / 1000
            check(f"uncached {alg} ≤ raw verify + 3 µs", extra, extra <= 3, f"{extra:+.1f} µs",
                  absolute=True)
    strict = max((v for (c, _), v in redis_hit.items() if c == "fastguard strict"), default=None)
    floor_eval = redis_hit.get(("floor: raw EVALSHA 'return 1'", "-"))
    same = redis_hit.get(("raw EVALSHA, same script", "sliding_window"))
    strict_p, floor_p, how = pair("redis strict", "fastguard", "floor", strict and strict * 1000,
                                  floor_eval and floor_eval * 1000)
    if strict_p and floor_p:
        strict_p, floor_p = strict_p / 1000, floor_p / 1000
        check("Redis strict `hit` ≤ 1.1× a raw EVALSHA round trip ('return 1')", strict_p,
              strict_p <= 1.1 * floor_p, f"{strict_p / floor_p:.2f}× ({strict_p:.0f} vs {floor_p:.0f} µs{how})")
    if strict and same:
        check("Redis strict `hit` vs redis-py EVALSHA of the same script (context)", strict, None,
              f"{strict / same:.2f}× ({same:.0f} µs)")
    floor_eval_tls = None
    for b in by_group.get("redis hit over TLS", []):
        if b["extra_info"]["contender"].startswith("floor"):
            floor_eval_tls = _ns(b) / 1000
    strict_tls = next((_ns(b) for b in by_group.get("redis hit over TLS", [])
                       if not b["extra_info"]["contender"].startswith("floor")), None)
    us, floor_us, how = pair("redis strict tls", "fastguard", "floor", strict_tls,
                             floor_eval_tls and floor_eval_tls * 1000)
    if us and floor_us:
        us, floor_us = us / 1000, floor_us / 1000
        check("Redis strict `hit` over TLS ≤ 1.1× a raw redis-py EVALSHA over TLS", us, us <= 1.1 * floor_us,
              f"{us / floor_us:.2f}× ({us:.0f} vs {floor_us:.0f} µs{how})")
    for b in by_group.get("redis hit by limit", []):
        if floor_eval:
            us = _ns(b) / 1000
            path = "fast path" if b["extra_info"].get("fast_path") else "exact path"
            check(f"{b['extra_info']['contender']} ({path}) ≤ 1.1× a raw EVALSHA", us, us <= 1.1 * floor_eval,
                  f"{us / floor_eval:.2f}× ({us:.0f} µs)")
    worst_rate = min(pipelined.values(), default=None)
    check("pipelined `hit_many` ≥ 150k decisions/s", worst_rate,
          None if worst_rate is None else worst_rate >= 150_000, f"{worst_rate:,.0f}/s" if worst_rate else "")
    banned = {b["extra_info"]["contender"]: _ns(b) for b in by_group.get("banned key", [])}
    if banned:
        lines += ["A banned key's `hit`: " + ", ".join(f"{c} {v:.0f} ns" for c, v in sorted(banned.items())) + ".", ""]
    b_local, b_redis = banned.get("fastguard in process"), banned.get("fastguard strict Redis")
    if b_local and b_redis:
        check("banned key in cluster mode ≤ 1.5× in process (no round trip)", b_redis, b_redis <= 1.5 * b_local,
              f"{b_redis / b_local:.2f}× ({b_redis:.0f} vs {b_local:.0f} ns)")
    sync_ns, local_ns = local_first.get("fastguard sync=0.1"), local_first.get("fastguard in process")
    if sync_ns and local_ns:
        check("`sync=0.1` `hit` ≤ 2× in process", sync_ns, sync_ns <= 2 * local_ns, f"{sync_ns / local_ns:.2f}×")
    for b in by_group.get("local-first key spray", []):
        info = b["extra_info"]
        lag = info["max_sync_lag_s"]
        lines += [f"Local-first under a key spray ({info['contender']}): {_ns(b):.0f} ns per `hit`, the longest "
                  f"exchange took {lag * 1e3:.0f} ms (sync every {info['sync_interval_s']:g} s), "
                  f"{info['shared_keys']:,} keys in its bookkeeping.", ""]
        check("local-first key spray: longest exchange < the sync interval", lag,
              lag < info["sync_interval_s"], f"{lag * 1e3:.0f} ms")
    floor = "floor (1 PDK call)"
    for server in ("stock kong-pdk", "fastguard kong-server"):
        base = kong_by.get((server, floor, 1))
        for case in dict.fromkeys(k["case"] for k in kong):
            k = kong_by.get((server, case, 1))
            if base and k and case.startswith("fastguard"):  # the bundled plugins' budget (docs/design.md)
                ratio = k["p50_us"] / base["p50_us"]
                if server == "fastguard kong-server":
                    check(f"Kong: {case} ≤ 1.1× the floor per request ({server}, p50)", ratio, ratio <= 1.1,
                          f"{ratio:.2f}×")
                else:  # the stock server's cost per PDK call dominates: a 2-call plugin cannot meet it there
                    check(f"Kong: {case} vs the floor per request ({server}, p50; context)", ratio, None,
                          f"{ratio:.2f}×")
    for case in dict.fromkeys(k["case"] for k in kong):
        ours, stock = kong_by.get(("fastguard kong-server", case, 4)), kong_by.get(("stock kong-pdk", case, 4))
        if ours and stock and case == "floor (1 PDK call)":  # a plain kong-pdk plugin: kong-pdk's own handler path
            check(f"Kong: fastguard kong-server vs stock throughput at concurrency 4 ({case}; context)",
                  ours["events_per_s"] / stock["events_per_s"], None,
                  f"{ours['events_per_s'] / stock['events_per_s']:.2f}×")
        elif ours and stock:
            ratio = ours["events_per_s"] / stock["events_per_s"]
            check(f"Kong: fastguard kong-server ≥ 2× stock throughput at concurrency 4 ({case})", ratio,
                  ratio >= 2, f"{ratio:.2f}×")
    for plugin in ("fastguard-rate-limiting", "fastguard-jwt", "fastguard"):
        for c in conns:
            ours = gw_by.get((f"{plugin} (fastguard kong-server)", c))
            stock = gw_by.get((f"{plugin} (stock kong-pdk)", c))
            native = gw_by.get(("Lua shared-dict limiter", c))
            if ours and stock:
                ratio = ours["requests_per_s"] / stock["requests_per_s"]
                check(f"gateway: {plugin} on fastguard kong-server ≥ 3× the stock server's requests/s ({c} conn.)",
                      ratio, ratio >= 3, f"{ratio:.2f}×")
            if ours and native:
                ratio = ours["requests_per_s"] / native["requests_per_s"]
                check(f"gateway: {plugin} ≥ 0.3× the native Lua limiter's requests/s ({c} conn.)", ratio,
                      ratio >= 0.3, f"{ratio:.2f}×")
            few, many = gw_by.get((f"{plugin} (fastguard kong-server)", conns[0])), ours
            if c == conns[-1] and c != conns[0] and few and many:
                ratio = many["requests_per_s"] / few["requests_per_s"]
                check(f"gateway: no loss from {conns[0]} to {c} connections ({plugin}; ≥ 0.95×, the run's noise)",
                      ratio, ratio >= 0.95, f"{ratio:.2f}×")
            if c == conns[-1] and c != conns[0] and few and many and "server_rss_mib" in many:
                ratio = many["server_rss_mib"] / few["server_rss_mib"]
                check(f"gateway: plugin server RSS at {c} connections ≤ 1.2× at {conns[0]} ({plugin})", ratio,
                      ratio <= 1.2, f"{ratio:.2f}× ({many['server_rss_mib']:.1f} vs {few['server_rss_mib']:.1f} MiB)")
            if ours and "server_cpu_us_per_request" in ours and plugin != "fastguard":
                cpu, bound = ours["server_cpu_us_per_request"], 60 if plugin == "fastguard-rate-limiting" else 40
                check(f"gateway: plugin server CPU per request ≤ {bound} µs ({plugin}, {c} conn.)", cpu,
                      cpu <= bound, f"{cpu:.0f} µs", absolute=True)
    for k in soaks:
        check(f"gateway soak: no growth after warm-up ({k['case']}, {k['soak_s']} s; ≤ 1 MiB)", k["growth_mib"],
              k["growth_mib"] <= 1, f"{k['growth_mib']:+.2f} MiB over {k['requests']:,} requests")
    _side_budgets(by_group, check)
    lines += ["## Budgets (docs/design.md) in this run", "",
              "Ratios are judged (`--check`); \"(absolute)\" marks a time budget set on the reference machine, shown "
              "for this machine but not judged.", "", "| budget | measured | verdict |", "|---|---|---|", *checks, ""]
    return "\n".join(lines)


#: The side service's published comparison: envoyproxy/ratelimit with Redis, as its users report it, per CPU.
ENVOY_RATELIMIT_PER_CPU = 2500


def _side_tables(by_group: dict[str, list[dict]]) -> list[str]:
    """The side service's tables (bench/test_bench_side.py): through nginx auth_request, and over gRPC."""
    lines: list[str] = []
    http = [b["extra_info"] for b in by_group.get("side http", [])]
    if http:
        lines += ["## The side service through nginx `auth_request` (wrk, 32 connections, 1 nginx worker)", "",
                  "| case | requests/s | p50 / p99 ms | guard's CPU per decision |", "|---|---:|---:|---:|"]
        for e in http:
            cpu = e.get("side_cpu_us_per_decision")
            lines.append(f"| {e['case']} | {e['requests_per_s']:,.0f} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | "
                         f"{f'{cpu:.1f} µs' if cpu is not None else '–'} |")
        lines.append("")
    grpc = [b["extra_info"] for b in by_group.get("side grpc", [])]
    if grpc:
        lines += ["## The side service over gRPC (ShouldRateLimit, a grpcio client keeping 64 calls in flight)", "",
                  "| case | decisions/s | p50 / p99 ms | server CPU per decision |", "|---|---:|---:|---:|"]
        lines += [f"| {e['case']} | {e['decisions_per_s']:,.0f} | {e['p50_ms']:.2f} / {e['p99_ms']:.2f} | "
                  f"{e['server_cpu_us_per_decision']:.0f} µs |" for e in grpc]
        lines.append("")
    return lines


def _side_budgets(by_group: dict[str, list[dict]], check: Any) -> None:
    """The side service's budgets (issue: the side service), judged on this run's figures."""
    http = {e["case"]: e for e in (b["extra_info"] for b in by_group.get("side http", []))}
    floor = http.get("floor (auth_request to nginx 204)")
    for case, kong in (("fastguard: limit by IP", "Kong path: limit by IP"),
                       ("fastguard: JWT (cached)", "Kong path: JWT (cached)"),
                       ("fastguard: JWT + limit", "Kong path: JWT + limit")):
        ours = http.get(case)
        if ours and floor and case == "fastguard: limit by IP":
            ratio = ours["requests_per_s"] / floor["requests_per_s"]
            check("side service ≥ 0.8× the auth_request floor's requests/s (limit)", ratio, ratio >= 0.8,
                  f"{ratio:.2f}×")
        if ours and http.get(kong):
            ratio = ours["requests_per_s"] / http[kong]["requests_per_s"]
            check(f"side service ≥ 2× the Kong path's requests/s ({case.split(': ', 1)[1]})", ratio, ratio >= 2,
                  f"{ratio:.2f}×")
        if ours and case != "fastguard: JWT + limit":
            cpu, bound = ours["side_cpu_us_per_decision"], 20 if case == "fastguard: limit by IP" else 25
            check(f"side service CPU per decision ≤ {bound} µs ({case.split(': ', 1)[1]})", cpu, cpu <= bound,
                  f"{cpu:.1f} µs", absolute=True)
    one, two = http.get("fastguard: limit by IP"), http.get("fastguard: limit by IP, --workers 2")
    if one and two:
        ratio = two["requests_per_s"] / one["requests_per_s"]
        check("side service --workers 2 ≥ 1.6× one worker", ratio, ratio >= 1.6, f"{ratio:.2f}×")
    grpc = {e["case"]: e for e in (b["extra_info"] for b in by_group.get("side grpc", []))}
    ours, floor = grpc.get("fastguard serve --grpc"), grpc.get("grpc floor (constant OK)")
    if ours and floor:
        ratio = ours["decisions_per_s"] / floor["decisions_per_s"]
        check("gRPC ShouldRateLimit ≥ 0.7× the framework floor (same server flavour)", ratio, ratio >= 0.7,
              f"{ratio:.2f}×")
    if ours:
        per_cpu = 1e6 / ours["server_cpu_us_per_decision"]
        check(f"gRPC decisions per server CPU-second ≥ 1.5× envoyproxy/ratelimit's published "
              f"~{ENVOY_RATELIMIT_PER_CPU:,}/s", per_cpu, per_cpu >= 1.5 * ENVOY_RATELIMIT_PER_CPU,
              f"{per_cpu:,.0f}/s ({per_cpu / ENVOY_RATELIMIT_PER_CPU:.2f}×)", absolute=True)
    half = grpc.get("fastguard at half its peak")
    if half:
        check("gRPC p99 < 2 ms at half the peak rate", half["p99_ms"], half["p99_ms"] < 2,
              f"{half['p99_ms']:.2f} ms", absolute=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for report.md and the JSON "
                                                                "(default: %(default)s)")
    parser.add_argument("-k", dest="keyword", default=None, help="only benchmarks matching this pytest -k expression")
    parser.add_argument("--check", action="store_true", help="exit 1 when a budget judged in this run is missed")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    raw = out / "bench.json"
    cmd = [sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider",
           f"--benchmark-json={raw}", "--benchmark-columns=rounds"]   # times per call: in the report below
    if args.keyword:
        cmd += ["-k", args.keyword]
    print("running:", " ".join(cmd), file=sys.stderr, flush=True)
    # From a checkout, in the checkout (its pyproject's pytest settings); installed, in an empty folder, so that no
    # `fastguard` folder in the working directory shadows the installed package.
    with tempfile.TemporaryDirectory(prefix="fastguard-bench-") as scratch:
        # a basetemp of its own: pytest prunes old ones in the shared default, which may hold the caller's files
        run = subprocess.run([*cmd, f"--basetemp={scratch}/pytest"], cwd=ROOT if CHECKOUT else scratch)
    if run.returncode != 0:
        print(f"benchmarks failed (pytest exit {run.returncode})", file=sys.stderr)
        return 3  # not 1: that means a missed budget
    verdicts: list[tuple[str, bool]] = []
    report = render(json.loads(raw.read_text()), verdicts)
    (out / "report.md").write_text(report)
    print(report)
    print(f"\nwritten: {out / 'report.md'}", file=sys.stderr)
    if args.check:
        missed = [what for what, ok in verdicts if not ok]
        print(f"budgets judged in this run: {len(verdicts)}, met {len(verdicts) - len(missed)}, missed "
              f"{len(missed)}" + "".join(f"\n  missed: {what}" for what in missed), file=sys.stderr)
        if not verdicts:
            print("no budget was measured by the benchmarks selected", file=sys.stderr)
            return 1
        return 1 if missed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
