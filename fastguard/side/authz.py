"""Envoy's external authorization (gRPC `envoy.service.auth.v3.Authorization/Check`), on fastguard.side.gate: the
messages are the published Envoy stubs (xds-protos).

The domain is the route's `context_extensions["domain"]`, else the one domain with a `fastguard:` block. The client
is `source.address` (Envoy's own view of the downstream address, the one its `remote_address` action uses). An
allowed request gets the claim headers (`ok_response.headers`, overwriting) and every other header only fastguard
may set removed (`headers_to_remove`, with the token's header when `forward` is false, as jwt_authn does), and the
client gets RateLimit-* (`response_headers_to_add`); a refused one gets `denied_response` with 401 (WWW-Authenticate),
403 or 429 (Retry-After, RateLimit-*). A domain with no policy is refused (403): never an allow by misconfiguration.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2, status_pb2

from fastguard.side.actions import HttpRequest
from fastguard.side.gate import Answer, Side

__all__ = ["AuthorizationService", "add_to_server"]

log = logging.getLogger("fastguard.side")

_GRPC_CODE = {401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED, 404: code_pb2.PERMISSION_DENIED,
              429: code_pb2.RESOURCE_EXHAUSTED, 503: code_pb2.UNAVAILABLE}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _options(headers: Any) -> list[Any]:
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=_OVERWRITE)
            for k, v in headers]


def _headers(http: Any) -> dict[str, str]:
    if http.headers:
        return {k.lower(): v for k, v in http.headers.items()}
    out: dict[str, str] = {}
    for h in http.header_map.headers:        # Envoy's encode_raw_headers: the values as bytes
        out.setdefault(h.key.lower(), h.value or h.raw_value.decode("utf-8", "surrogateescape"))
    return out


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, side: Side) -> None:
        self.side = side

    def _request(self, request: Any) -> tuple[str, HttpRequest] | Answer:
        attrs = request.attributes
        domain = attrs.context_extensions.get("domain") or self.side.default_domain()
        if domain is None:
            return Answer(403, "no domain: set context_extensions domain on the route, or give one domain a "
                               "fastguard block")
        http = attrs.request.http
        client = attrs.source.address.socket_address.address
        return domain, HttpRequest(http.method or "GET", http.path or "/", http.host, _headers(http), client,
                                   http.scheme or "http")

    def _check(self, domain: str, req: HttpRequest) -> Answer:
        answer = self.side.check(domain, req)
        return Answer(403, answer.message, downstream=answer.downstream) if answer.status == 404 else answer

    def answer(self, request: Any) -> Answer:
        """The answer to a CheckRequest, decided on the calling thread."""
        prepared = self._request(request)
        return prepared if isinstance(prepared, Answer) else self._check(*prepared)

    async def Check(self, request: Any, context: Any) -> Any:  # noqa: N802 - the proto's name
        """On grpcio's asyncio server: answered on the loop, or on a thread when the decision waits (Redis in strict
        mode, a remote key set not cached yet)."""
        try:
            prepared = self._request(request)
            if isinstance(prepared, Answer):
                answer = prepared
            else:
                policy = self.side.policy(prepared[0])
                if self.side.waits or (policy is not None and policy.jwt is not None
                                       and policy.jwt.needs_thread(prepared[1])):
                    answer = await asyncio.get_running_loop().run_in_executor(None, self._check, *prepared)
                else:
                    answer = self._check(*prepared)
        except Exception:  # noqa: BLE001 - an RPC error is an allow under failure_mode_allow: answer a refusal
            log.exception("fastguard serve: Check failed; answered 500")
            answer = Answer(500, "Internal Server Error")
        return _response(answer)


def _response(answer: Answer) -> Any:
    if answer.allowed:
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=_options(answer.upstream), headers_to_remove=list(answer.remove),
                response_headers_to_add=_options(answer.downstream)))
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE.get(answer.status, code_pb2.PERMISSION_DENIED),
                                 message=answer.message),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status={"code": answer.status}, headers=_options(answer.downstream), body=answer.message))


def add_to_server(service: AuthorizationService, server: Any) -> None:
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
