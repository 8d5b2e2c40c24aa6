"""What the plugins speak: PDK calls as (method, args) tuples, Kong's JSON exits, and the driver that runs a
plugin's generator of PDK calls through kong-pdk's `kong` object (for the stock plugin server)."""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

__all__ = ["PDKCall", "Steps", "TERMINAL", "MAY_WAIT", "PDKError", "json_exit", "failed", "header", "drive"]

log = logging.getLogger("fastguard.kong")

PDKCall = tuple[str, list[Any]]
Steps = Generator[PDKCall, Any, None]
#: PDK calls after which Kong sends nothing more for the event.
TERMINAL = frozenset(("kong.response.exit", "kong.response.error"))
#: Not a PDK call: a plugin yields it just before work that may wait on the network (a Redis round trip, a JWKS
#: fetch). `fastguard kong-server` runs the rest of that step on a worker thread, so its event loop keeps serving
#: the other connections; it is answered with None and never reaches Kong.
MAY_WAIT: PDKCall = ("fastguard.may_wait", [])


class PDKError(Exception):
    """Kong answered a PDK call with an error (StepError)."""


def header(headers: dict[str, Any], name: str) -> str | None:
    """A header from kong.request.get_headers() (names in lower case; values strings or lists)."""
    value = headers.get(name.lower())
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def json_exit(status: int, message: Any, headers: dict[str, str] | None = None) -> PDKCall:
    body = message if isinstance(message, dict) else {"message": message}
    return ("kong.response.exit", [int(status), body, headers or {}])


def failed(exc: BaseException, status: int) -> PDKCall:
    """Any unexpected error: an explicit answer, never a silent pass (Kong fails open when a plugin errors)."""
    log.error("fastguard plugin error, answering %d: %r", status, exc, exc_info=exc)
    return json_exit(status, "An unexpected error occurred")


def drive(steps: Steps, kong: Any) -> None:
    """Run a plugin's steps through kong-pdk's `kong` object (any kong-pdk server). Handles both return styles
    of kong-pdk: Lua-style `(data, err)` tuples and plain values with PDKException."""
    try:
        call = next(steps)
        while True:
            method, args = call
            if method == MAY_WAIT[0]:  # this driver runs in a thread of its own already
                call = steps.send(None)
                continue
            target = kong
            for part in method.split(".")[1:]:
                target = getattr(target, part)
            try:
                out = target(*args)
            except Exception as exc:  # noqa: BLE001 - kong-pdk's PDKException in Python-style mode
                call = steps.throw(PDKError(str(exc)))
                continue
            if method in TERMINAL:
                steps.close()
                return
            if isinstance(out, tuple) and len(out) == 2:  # Lua style
                data, err = out
                if err:
                    call = steps.throw(PDKError(str(err)))
                    continue
                out = data
            call = steps.send(out)
    except StopIteration:
        return
