"""The Kong-side protocol client (fastguard.kong.client), plus kong-pdk's stock server for comparisons."""

from __future__ import annotations

import os
import sys

from fastguard.kong.client import (  # noqa: F401 - re-exported for the tests and the benchmarks
    KongClient,
    Outcome,
    PDKFailure,
    RPCError,
    ServerProcess,
    fastguard_server,
)


def stock_server(plugin_dir: str, folder: str, name: str) -> ServerProcess:
    """kong-pdk's own server (kong-python-pluginserver -d DIR), unchanged."""
    code = "import sys; from kong_pdk.cli import start_server; sys.exit(start_server())"
    return ServerProcess([sys.executable, "-c", code, "-d", plugin_dir, "--kong-prefix", folder,
                          "--socket-name", f"{name}.sock"], os.path.join(folder, f"{name}.sock"))
