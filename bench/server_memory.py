"""Where a plugin server's memory goes: resident memory per open connection and per burst of requests, split into
what Python allocated (tracemalloc, which also sees msgpack's buffers) and what glibc's malloc holds (mallinfo2:
bytes in use and free in its heaps, mapped blocks; malloc_info: how many arenas) — the figures of docs/kong.md,
"Memory".

    python -m bench.server_memory [--connections 256] [--events 100] [--plugin fastguard-rate-limiting]

Starts `fastguard kong-server PLUGIN` (as Kong's start_cmd does, through a wrapper that starts tracemalloc and
writes these counters to a file on SIGUSR1), then plays Kong's side (fastguard.kong.client): an instance, the
connections opened with one request each, two bursts of `--events` events per connection, then the connections
closed. Each stage's counters are read from inside the server.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import sys
import tempfile
import time

from fastguard.kong.client import KongClient, ServerProcess

#: The server's main: tracemalloc from the start, and a SIGUSR1 handler that writes the counters as JSON.
WRAPPER = '''
import ctypes, json, os, re, signal, sys, tempfile, tracemalloc
tracemalloc.start()
OUT = os.environ["FG_MEMORY_OUT"]
libc = ctypes.CDLL(None)

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc.mallinfo2.restype = MallInfo2
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]

def dump(*_):
    info = libc.mallinfo2()
    with tempfile.NamedTemporaryFile("r", suffix=".xml") as xml:
        fp = libc.fopen(xml.name.encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        arenas = len(re.findall(r"<heap nr=", xml.read()))
    with open(f"/proc/{os.getpid()}/status") as fh:
        status = dict(line.split(":", 1) for line in fh)
    counters = {"rss": int(status["VmRSS"].split()[0]) * 1024, "threads": int(status["Threads"]),
                "traced": tracemalloc.get_traced_memory()[0], "heap_in_use": info.uordblks,
                "heap_free": info.fordblks, "heap_total": info.arena, "mapped": info.hblkhd, "arenas": arenas}
    with open(OUT + ".tmp", "w") as fh:
        json.dump(counters, fh)
    os.replace(OUT + ".tmp", OUT)

signal.signal(signal.SIGUSR1, dump)
from fastguard.cli import main
sys.exit(main())
'''

MiB = 1 << 20


def _counters(server: ServerProcess, out: pathlib.Path) -> dict:
    out.unlink(missing_ok=True)
    os.kill(server.proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no counters within 10 s")
        time.sleep(0.01)
    return json.loads(out.read_text())


def measure(plugin: str, connections: int, events: int) -> list[tuple[str, dict]]:
    with tempfile.TemporaryDirectory(prefix="fg-memory-") as tmp:
        folder = pathlib.Path(tmp)
        main = folder / "fg_memory_main.py"  # a file, not -c: kong-pdk stats sys.argv[0] at plugin load
        main.write_text(WRAPPER)
        out = folder / "counters.json"
        sock = str(folder / f"{plugin}.socket")
        server = ServerProcess([sys.executable, str(main), "kong-server", plugin, "--socket", sock,
                                "--max-connections", str(connections + 1)], sock, env={"FG_MEMORY_OUT": str(out)})
        stages = []
        try:
            client = KongClient(sock, 1)
            iid = client.start(plugin, {"second": 10**9, "limit_by": "ip"})
            pdk = {"kong.client.get_forwarded_ip": "10.0.0.1", "kong.client.get_consumer": {"id": "c-1"}}
            client.event(iid, pdk)
            stages.append(("idle, one instance", _counters(server, out)))
            many = KongClient(sock, connections)
            for _ in range(connections):
                many.status()
            stages.append((f"{connections} connections open", _counters(server, out)))
            for burst in (1, 2):
                for _ in range(connections * events):  # the client takes its connections in turn
                    many.event(iid, pdk)
                stages.append((f"burst {burst}: {events} events per connection", _counters(server, out)))
            many.close()
            client.status()
            stages.append(("connections closed", _counters(server, out)))
            client.close()
        finally:
            server.stop()
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugin", default="fastguard-rate-limiting")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--events", type=int, default=100, help="events per connection in each burst")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.events < 1:
        parser.error("--connections and --events must be at least 1")
    stages = measure(args.plugin, args.connections, args.events)
    print(f"fastguard kong-server {args.plugin}: {args.connections} connections, bursts of {args.events} events "
          "per connection (MiB)\n")
    print("| stage | RSS | Python (tracemalloc) | malloc in use | malloc free | mapped | arenas | threads |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, c in stages:
        print(f"| {name} | {c['rss'] / MiB:.2f} | {c['traced'] / MiB:.2f} | {c['heap_in_use'] / MiB:.2f} | "
              f"{c['heap_free'] / MiB:.2f} | {c['mapped'] / MiB:.2f} | {c['arenas']} | {c['threads']} |")
    idle, opened, first, second = (c for _, c in stages[:4])
    per_conn = (opened["rss"] - idle["rss"]) / args.connections
    print(f"\nper open connection: {per_conn / 1024:.1f} KiB resident, "
          f"{(opened['traced'] - idle['traced']) / args.connections / 1024:.1f} KiB allocated by Python; "
          f"first burst {(first['rss'] - opened['rss']) / MiB:+.2f} MiB, second burst "
          f"{(second['rss'] - first['rss']) / MiB:+.2f} MiB resident")
    return 0


if __name__ == "__main__":
    sys.exit(main())
