"""The three Kong plugins: fastguard-rate-limiting, fastguard-jwt and fastguard (JWT, then a rate limit by the
verified subject or a chosen claim, in one event).

Each plugin's request logic is a generator of PDK calls: it yields `(method, args)` and receives what Kong
answered. `fastguard kong-server` runs that generator directly, one step per RPC (no thread per event); the
`access(kong)` method drives the same generator through kong-pdk's `kong` object, so the modules also load
unchanged in the stock `kong-python-pluginserver -d DIR` (see bindings/kong/plugins/).

Round trips (PDK calls per event, allow path / refusal; docs/kong.md has the full table):
  rate limiting: 2 / 2 (the caller's identity, then set_headers or exit); 1 on the allow path with
      hide_client_headers; limit_by consumer without a consumer adds Kong's fallbacks (get_credential,
      get_forwarded_ip).
  jwt: 2 / 2 (get_headers, then service.request.set_headers — the claims' headers and the consumer headers, set
      or cleared — or exit); +1 get_query when the token is in the query string, +1 get_method when
      run_on_preflight is false.
  fastguard (both): 3 / 2 (get_headers, then the rate-limit headers and the upstream's, or exit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import fastguard as fg
from fastguard.kong import registry
from fastguard.kong.fields import Field, check, kong_schema
from fastguard.kong.limiting import Tiered, rate_limit_key
from fastguard.kong.pdk import MAY_WAIT, TERMINAL, PDKCall, PDKError, Steps, drive, failed, json_exit
from fastguard.kong.registry import entity_of
from fastguard.kong.schemas import (
    GUARD_CHECKS,
    GUARD_FIELDS,
    JWT_CHECKS,
    JWT_FIELDS,
    RATE_LIMITING_CHECKS,
    RATE_LIMITING_FIELDS,
    normalize,
)
from fastguard.kong.verifying import Verifying

__all__ = ["PluginBase", "RateLimitingPlugin", "JWTPlugin", "GuardPlugin", "PLUGINS", "PRIORITIES", "PDKError",
           "drive", "TERMINAL"]

log = logging.getLogger("fastguard.kong")
T = TypeVar("T")


def approve(mark: str) -> PDKCall:
    """kong.ctx.shared[mark] = true: this request was let through by the plugin (a post-function refuses any
    request without the mark, so a plugin server that is down or errs cannot let one through)."""
    return ("kong.ctx.shared.set", [mark, True])


class PluginBase:
    """kong-pdk's plugin contract: Plugin(config), one method per phase taking the `kong` PDK object."""

    fields: tuple[Field, ...] = ()
    #: Kong's cross-field rules (entity_checks), in the schema Kong reads and checked again at StartInstance.
    entity_checks: tuple[dict[str, Any], ...] = ()

    @classmethod
    def checked(cls, config: Any) -> dict[str, Any]:
        """The config as Kong's schema makes it (shorthands moved, defaults filled), or ConfigError."""
        return check(cls.fields, normalize(config), entity_checks=cls.entity_checks)

    def share(self, key: tuple[Any, ...], make: Callable[[], T]) -> T:
        """The object `make()` built for `key`, shared by every instance holding that key: Kong starts one instance
        per plugin entity per nginx worker, so a limiter or verifier made here counts and caches once for all of
        them. Put in the key what gives the object its state (the plugin entity, the limits...). Released by
        close(); the last user's release closes it (its `close()`, if any)."""
        key = ("plugin", type(self).__qualname__, *key)
        obj = registry.REGISTRY.acquire(key, make)
        self.__dict__.setdefault("_shared_keys", []).append(key)
        return obj

    def close(self) -> None:
        """CloseInstance: let go of what share() gave this instance."""
        for key in self.__dict__.pop("_shared_keys", ()):
            registry.REGISTRY.release(key)

    def steps(self) -> Steps:  # pragma: no cover - every plugin defines it
        raise NotImplementedError

    def state_lasts(self) -> float:
        """Seconds this instance's shared state still matters after its last event (a limiter's longest window or
        ban): an instance idle for longer may be released without a caller gaining anything. 0: only caches."""
        limiting = getattr(self, "limiting", None)
        return limiting.state_lasts if limiting is not None else 0.0

    def fault_answer(self) -> PDKCall | None:
        """What ends an event the server could not finish (a step it cannot encode, an error outside the plugin's
        own handling): an explicit 500, never a silent pass. None means pass the request on."""
        return json_exit(500, "An unexpected error occurred")

    def access(self, kong: Any) -> None:
        """The access phase under any kong-pdk server: drive `steps()` through the `kong` object."""
        drive(self.steps(), kong)

    @classmethod
    def schema(cls) -> list[dict[str, Any]]:
        return kong_schema(cls.fields)


class RateLimitingPlugin(PluginBase):
    """fastguard-rate-limiting: Kong's rate-limiting config and answers, plus algorithm, Redis Cluster, sync_rate."""

    fields = RATE_LIMITING_FIELDS
    entity_checks = RATE_LIMITING_CHECKS

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = self.checked(config)
        self.config = cfg
        self.limit_by = cfg["identifier"] or cfg["limit_by"]  # RLA's name wins when set
        self.tier_by = cfg["tier_by"]
        self.limiting = Tiered(cfg, entity_of(cfg))

    def close(self) -> None:
        self.limiting.close()

    def fault_answer(self) -> PDKCall | None:
        return self.limiting.default.fault_answer()

    def steps(self) -> Steps:
        try:
            key, consumer = yield from self._identifier()
            tier = None
            if self.tier_by:  # the consumer's id, username or custom_id picks the tier's limits
                if consumer is None and self.limit_by != "consumer":
                    consumer = yield ("kong.client.get_consumer", [])
                tier = consumer.get(self.tier_by.removeprefix("consumer_")) if isinstance(consumer, dict) else None
            limiting = self.limiting.pick(tier)
            if limiting.waits:
                yield MAY_WAIT
            answer = limiting.answer(key)
            if self.config["approval_mark"] and (answer is None or answer[0] not in TERMINAL):
                yield approve(self.config["approval_mark"])
        except PDKError as exc:
            answer = None if self.limiting.default.fault_tolerant else failed(exc, 500)
            log.warning("fastguard-rate-limiting: PDK error %s", exc)
        except Exception as exc:  # noqa: BLE001 - every error gets an explicit answer
            answer = None if self.limiting.default.fault_tolerant else failed(exc, 500)
            if self.limiting.default.fault_tolerant:
                log.error("fastguard-rate-limiting: %r (fault_tolerant: request allowed)", exc, exc_info=exc)
        if answer is not None:
            yield answer

    def _identifier(self) -> Generator[PDKCall, Any, tuple[bytes, Any]]:
        """Kong 3.10's get_identifier: the chosen entity's id, the header's value (an empty one included), the
        path when it is the configured one; whenever that is nil, the client's forwarded IP. Also the consumer,
        when it was read."""
        by, value, consumer = self.limit_by, None, None
        if by == "service":
            service = yield ("kong.router.get_service", [])
            value = service.get("id") if isinstance(service, dict) else None
        elif by in ("consumer", "credential"):
            if by == "consumer":
                consumer = yield ("kong.client.get_consumer", [])
                value = consumer.get("id") if isinstance(consumer, dict) else None
            if value is None:
                credential = yield ("kong.client.get_credential", [])
                value = credential.get("id") if isinstance(credential, dict) else None
                by = "credential"
        elif by == "header":
            value = yield ("kong.request.get_header", [self.config["header_name"]])
        elif by == "path":
            path = yield ("kong.request.get_path", [])
            value = path if path == self.config["path"] else None
        if value is None:
            ip = yield ("kong.client.get_forwarded_ip", [])
            return rate_limit_key("ip", ip), consumer
        return rate_limit_key(by, value), consumer


class JWTPlugin(PluginBase):
    """fastguard-jwt: Kong's jwt config and 401 answers, plus JWKS, issuers, audiences, leeway, claims_to_headers."""

    fields = JWT_FIELDS
    entity_checks = JWT_CHECKS

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = self.checked(config)
        self.verifying = Verifying(self.config, entity_of(self.config))

    def close(self) -> None:
        self.verifying.close()

    def steps(self) -> Steps:
        try:
            answer = yield from self._authenticated()
            if self.config["approval_mark"] and (answer is None or answer[0] not in TERMINAL):
                yield approve(self.config["approval_mark"])
        except PDKError as exc:
            answer = failed(exc, 500)
        except Exception as exc:  # noqa: BLE001 - fail closed
            answer = failed(exc, 500)
        if answer is not None:
            yield answer

    def _authenticated(self) -> Generator[PDKCall, Any, PDKCall | None]:
        """The request authenticated (or refused), then admitted by `_admit`. Every request that goes on to the
        upstream carries no client copy of a header this plugin can set: the claims' headers are set from the
        verified token or cleared, and so are the consumer headers (X-Consumer-*, X-Credential-Identifier,
        X-Anonymous-Consumer), except on a request another plugin authenticated (that plugin set them)."""
        verifying = self.verifying
        method = None
        if not verifying.preflight:
            method = yield ("kong.request.get_method", [])
        if method == "OPTIONS":  # run_on_preflight false: a preflight request goes on unverified
            return (yield from self._admit(None, None, verifying.clear_all))
        if verifying.anonymous:
            # Kong's "logical OR": a request another plugin already authenticated is not verified again, and a
            # failed verification makes the request the anonymous consumer's instead of a 401
            credential = yield ("kong.client.get_credential", [])
            if credential:
                return (yield from self._admit(None, credential, verifying.clear_claims))
        verified, refusal = yield from self._claims()
        if verified is not None:
            claims, upstream = verified
            return (yield from self._admit(claims, None, upstream))
        if not verifying.anonymous or refusal[0] != "kong.response.exit" or refusal[1][0] != 401:
            return refusal  # a 500 (an unusable key set) is not an authentication failure
        upstream, refusal = yield from verifying.as_anonymous()
        if refusal is not None:
            return refusal
        return (yield from self._admit(None, None, {**verifying.clear_claims, **upstream}))

    def _admit(self, claims: dict[str, Any] | None, credential: Any,
               upstream: dict[str, Any]) -> Generator[PDKCall, Any, PDKCall | None]:
        """What lets an authenticated request go on: its upstream headers (the verified claims, or None for a
        preflight or anonymous request; `credential`: another plugin's, when that one authenticated it)."""
        return ("kong.service.request.set_headers", [upstream]) if upstream else None
        yield  # a generator, like the plugins' other steps

    def _claims(self) -> Generator[PDKCall, Any, tuple[Any, PDKCall | None]]:
        """((verified claims, the upstream headers to set), None), or (None, the answer that refuses the request):
        the token verified, then the consumer it names made the request's (consumer_claim)."""
        claims, refusal = yield from self.verifying.verified()
        if claims is None:
            return None, refusal
        refusal = self._unusable(claims)
        if refusal is not None:
            return None, refusal
        if self.verifying.consumer_claim:
            upstream, refusal = yield from self.verifying.identify(claims)
            if refusal is not None:
                return None, refusal
        else:  # no consumer is authenticated: no client's copy of a consumer header may reach the upstream
            upstream = self.verifying.no_consumer
        return (claims, self.verifying.upstream_headers(claims, upstream)), None

    def _unusable(self, claims: dict[str, Any]) -> PDKCall | None:
        """The 401 for verified claims this plugin still cannot use, else None."""
        return None


class GuardPlugin(JWTPlugin):
    """fastguard: verify the JWT, then rate-limit by a verified claim (`limit_by_claim`, default sub). Requests
    that go on without a verified token — the anonymous consumer's, preflight requests with run_on_preflight
    false — are limited by the client's IP address; a request another plugin authenticated (with `anonymous`), by
    that plugin's credential."""

    fields = GUARD_FIELDS
    entity_checks = GUARD_CHECKS

    def __init__(self, config: dict[str, Any]) -> None:
        cfg = self.checked(config)
        self.config = cfg
        entity = entity_of(cfg)
        self.verifying = Verifying(cfg, entity, "fastguard")
        try:
            self.limiting = Tiered(cfg, entity)
        except BaseException:
            self.verifying.close()
            raise

    def close(self) -> None:
        self.verifying.close()
        self.limiting.close()

    def _unusable(self, claims: dict[str, Any]) -> PDKCall | None:
        if claims.get(self.config["limit_by_claim"]) is None:
            return self.verifying.refusal(fg.MissingClaim(claim=self.config["limit_by_claim"]), True)
        return None

    def _admit(self, claims: dict[str, Any] | None, credential: Any,
               upstream: dict[str, Any]) -> Generator[PDKCall, Any, PDKCall | None]:
        tier = None
        if claims is not None:
            key = rate_limit_key("claim", claims[self.config["limit_by_claim"]])
            tier = claims.get(self.config["tier_claim"]) if self.config["tier_claim"] else None
        elif isinstance(credential, dict) and credential.get("id") is not None:
            key = rate_limit_key("credential", credential["id"])
        else:
            key = rate_limit_key("ip", (yield ("kong.client.get_forwarded_ip", [])))
        limiting = self.limiting.pick(tier)
        if limiting.waits:
            yield MAY_WAIT
        answer = limiting.answer(key)
        if answer is not None and answer[0] in TERMINAL:
            return answer
        if upstream:
            if answer is not None:
                yield answer
            return ("kong.service.request.set_headers", [upstream])
        return answer


PLUGINS: dict[str, type[PluginBase]] = {
    "fastguard-rate-limiting": RateLimitingPlugin,
    "fastguard-jwt": JWTPlugin,
    "fastguard": GuardPlugin,
}
#: Kong's priorities of the bundled plugins ours extend (jwt before rate-limiting).
PRIORITIES = {"fastguard-rate-limiting": 910, "fastguard-jwt": 1450, "fastguard": 1450}
