"""Envoy's global rate limit service (gRPC `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`), on
fastguard.side.decide: the messages are the published Envoy stubs (xds-protos), never hand-written protobuf.

As envoyproxy/ratelimit answers: one status per request descriptor, in request order (`code`, `current_limit` when
a rule applies, `limit_remaining`, `duration_until_reset`); `overall_code` OVER_LIMIT when any enforced descriptor
is; an empty domain or no descriptors is INVALID_ARGUMENT; an unknown domain is OK for every descriptor. A
descriptor's own `hits_addend` wins over the request's; 0 counts as 1. A descriptor carrying a `limit` (Envoy's
per-route override) is limited by it, per its entries.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from fastguard.limits import Limit, unit_seconds
from fastguard.side.decide import OK, OVER_LIMIT, Decider, Status
from fastguard.side.policy import MAX_UINT32, Rule

__all__ = ["RateLimitService", "add_to_server"]

log = logging.getLogger("fastguard.side")
_Response = rls_pb2.RateLimitResponse
_UNIT_NAMES = {v: k.lower() for k, v in _Response.RateLimit.Unit.items()}
_CODES = {OK: _Response.OK, OVER_LIMIT: _Response.OVER_LIMIT}


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):
    """ShouldRateLimit over a Decider (its domains may be swapped whole: `decider` is read once per call)."""

    def __init__(self, decider: Decider, headers: bool = False) -> None:
        self.decider = decider
        self.headers = headers     # RateLimit-Limit / -Remaining / -Reset in response_headers_to_add
        self._overrides: dict[tuple[str, int, int], Rule] = {}
        self._lock = threading.Lock()

    def _override(self, domain: str, limit: Any) -> Rule | None:
        """The rule of a descriptor's `limit` override (one per domain, count and unit), or None when unusable."""
        unit = _UNIT_NAMES.get(limit.unit, "unknown")
        key = (domain, limit.requests_per_unit, limit.unit)
        rule = self._overrides.get(key)
        if rule is None and unit != "unknown":
            count = limit.requests_per_unit
            limits = (Limit(count, unit_seconds(unit)),) if count else ()
            with self._lock:
                rule = self._overrides.setdefault(key, Rule(f"{domain}.override", unit, count, limits))
        return rule

    def respond(self, request: Any) -> Any:
        """The RateLimitResponse to a RateLimitRequest (ValueError for a request Envoy's service refuses)."""
        if not request.domain:
            raise ValueError("rate limit domain must not be empty")
        if not request.descriptors:
            raise ValueError("rate limit descriptor list must not be empty")
        descriptors = [[(e.key, e.value) for e in d.entries] for d in request.descriptors]
        hits = [(d.hits_addend.value if d.HasField("hits_addend") else 0) or request.hits_addend or 1
                for d in request.descriptors]
        overrides = [self._override(request.domain, d.limit) if d.HasField("limit") else None
                     for d in request.descriptors]
        verdict = self.decider.decide(request.domain, descriptors, hits=hits, overrides=overrides)
        response = _Response(overall_code=_CODES[verdict.overall])
        for status in verdict.statuses:
            response.statuses.append(_status(status))
        if self.headers:
            tightest = verdict.tightest()
            if tightest is not None and tightest.rule is not None:
                for name, value in (("RateLimit-Limit", tightest.rule.requests_per_unit),
                                    ("RateLimit-Remaining", tightest.remaining),
                                    ("RateLimit-Reset", tightest.reset_seconds)):
                    response.response_headers_to_add.add(key=name, value=str(value))
        return response

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
        """On grpcio's asyncio server: answered on the loop, or on a thread when decisions wait for Redis."""
        try:
            if self.decider.waits:
                return await asyncio.get_running_loop().run_in_executor(None, self.respond, request)
            return self.respond(request)
        except ValueError as exc:      # envoyproxy/ratelimit's answer to an empty domain or descriptor list
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception:             # noqa: BLE001 - an RPC error is an allow to Envoy (failure_mode_deny: false)
            log.exception("fastguard serve: ShouldRateLimit failed; answered OVER_LIMIT")
            return _Response(overall_code=_Response.OVER_LIMIT, statuses=[
                _Response.DescriptorStatus(code=_Response.OVER_LIMIT) for _ in request.descriptors])


def _status(status: Status) -> Any:
    out = _Response.DescriptorStatus(code=_CODES[status.code], limit_remaining=min(status.remaining, MAX_UINT32))
    rule = status.rule
    if rule is not None and not rule.unlimited:
        out.current_limit.requests_per_unit = min(rule.requests_per_unit, MAX_UINT32)
        out.current_limit.unit = _Response.RateLimit.Unit.Value(rule.unit.upper())
        if rule.name:
            out.current_limit.name = rule.name
        out.duration_until_reset.seconds = status.reset_seconds
    if status.code == OVER_LIMIT and math.isfinite(status.retry_after):
        out.duration_until_reset.seconds = max(out.duration_until_reset.seconds, math.ceil(status.retry_after))
    return out


def add_to_server(service: RateLimitService, server: Any) -> None:
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(service, server)
