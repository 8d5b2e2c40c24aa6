"""One HTTP request → one answer, for every HTTP-side front end (forward-auth, ext_authz gRPC and HTTP): the JWT
check, then the descriptors built by the domain's `rate_limits` actions, decided together by fastguard.side.decide.

A domain's HTTP side is its file's top-level `fastguard:` block (envoyproxy/ratelimit ignores it):

    fastguard:
      trusted_proxies: [10.0.0.0/8]   # whose X-Forwarded-For is believed (default: loopback), as Kong's trusted_ips
      jwt: {...}                       # fastguard.side.authn: Envoy jwt_authn provider fields
      rate_limits: [...]               # fastguard.side.actions: Envoy route rate_limits actions
      counts: {...}                    # fastguard.side.shared: Redis namespace, on_error, Kong's keys (not HTTP)

A domain without jwt or rate_limits is answered over RLS only: forward-auth refuses it (404) rather than allow
everything.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastguard.side.actions import ActionError, HttpRequest, RateLimitActions
from fastguard.side.authn import JwtCheck
from fastguard.side.decide import OVER_LIMIT, Decider, Verdict
from fastguard.side.policy import Domain, PolicyError, load_policies
from fastguard.side.shared import Counts, Stores

__all__ = ["Answer", "HttpPolicy", "Side", "compile_http", "client_address", "LOOPBACK"]

#: Networks are frozensets: their hash is computed once, so `_trusted`'s cache key costs a string hash per call.
LOOPBACK = frozenset((ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")))
_HTTP_KEYS = frozenset(("trusted_proxies", "jwt", "rate_limits"))
_BLOCK_KEYS = _HTTP_KEYS | {"counts"}
#: Longest X-Forwarded-For entry believed as an address (anything longer is not one).
_MAX_ADDRESS = 64


@dataclass(slots=True)   # made per request: a frozen init costs a setattr per field
class Answer:
    """What the gateway should do: `status` 200 lets the request through with `upstream` set and `remove` removed
    from it; 401/403/429 is the client's answer, with `downstream` headers; 404 an unknown domain."""

    status: int
    message: str = ""
    upstream: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    downstream: tuple[tuple[str, str], ...] = ()
    verdict: Verdict | None = None
    guarded: tuple[str, ...] = ()        # the identity headers only fastguard may set upstream


    @property
    def allowed(self) -> bool:
        return self.status == 200


class HttpPolicy:
    """A domain's `fastguard:` block, compiled."""

    def __init__(self, block: Mapping[str, Any], where: str, base_dir: str = ".") -> None:
        unknown = set(block) - _BLOCK_KEYS
        if unknown:
            raise PolicyError(where, f"unknown key {sorted(map(str, unknown))[0]!r} (trusted_proxies, jwt, "
                                     "rate_limits, counts)")
        try:
            self.trusted = _networks(block.get("trusted_proxies"), f"{where}.trusted_proxies")
            self.jwt = JwtCheck(block["jwt"], f"{where}.jwt", base_dir) if block.get("jwt") is not None else None
            self.actions = RateLimitActions(block.get("rate_limits") or [], f"{where}.rate_limits")
        except ActionError as exc:     # its text starts with the place: "<where>.rate_limits[0]...: message"
            text = str(exc)
            if text.startswith(where):
                field, _, message = text[len(where):].partition(": ")
                raise PolicyError(where + field, message) from None
            raise PolicyError(where, text) from None
        if self.actions.uses_claims and self.jwt is None:
            raise PolicyError(where, "a jwt_claim action needs a jwt block")
        if self.jwt is None and not len(self.actions):
            raise PolicyError(where, "the fastguard block needs jwt or rate_limits")
        #: headers only fastguard may set upstream: removed from the client's request unless fastguard sets them
        self.guarded = self.jwt.upstream_names if self.jwt is not None else ()


def _networks(value: Any, where: str) -> frozenset[Any]:
    if value is None:
        return LOOPBACK
    if not isinstance(value, list):
        raise ActionError(f"{where}: a list of addresses or networks (CIDR)")
    try:
        return frozenset(ipaddress.ip_network(str(v), strict=False) for v in value)
    except ValueError as exc:
        raise ActionError(f"{where}: {exc}") from None


@functools.lru_cache(maxsize=65536)     # parsing an address costs microseconds; a gateway's peers are few
def _trusted(address: str, networks: frozenset[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in n for n in networks)


def client_address(peer: str, forwarded_for: str | None, trusted: frozenset[Any]) -> str:
    """The client's address: the peer, unless it is a trusted proxy; then X-Forwarded-For read from the right,
    past every trusted proxy (nginx's real_ip_recursive, Kong's trusted_ips)."""
    if not forwarded_for or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, trusted):
            return hop[:_MAX_ADDRESS]
    return hops[0][:_MAX_ADDRESS] if hops else peer


def compile_http(domains: Mapping[str, Domain]) -> dict[str, HttpPolicy]:
    """The HTTP side of every domain whose `fastguard:` block has one (PolicyError for the first that is wrong)."""
    return {name: HttpPolicy(d.extra, f"{d.source}: fastguard", os.path.dirname(os.path.abspath(d.source)))
            for name, d in domains.items() if d.extra and set(d.extra) != {"counts"}}


def _challenge(message: str, invalid: bool) -> str:
    """WWW-Authenticate for a 401/403 (RFC 6750 §3): for a token that does not verify, the reason in
    error_description as well as in the body, since nginx's auth_request gives the client its own page instead of
    the body (printable ASCII only, quotes left out); no error at all when no token came (§3.1)."""
    if not invalid:
        return 'Bearer realm="fastguard"'
    said = "".join(c for c in message if " " <= c <= "~" and c not in '"\\')[:200]
    return f'Bearer realm="fastguard", error="invalid_token", error_description="{said}"'


def _rate_headers(verdict: Verdict) -> list[tuple[str, str]]:
    s = verdict.tightest()
    if s is None or s.rule is None:
        return []
    return [("RateLimit-Limit", str(s.rule.requests_per_unit)), ("RateLimit-Remaining", str(s.remaining)),
            ("RateLimit-Reset", str(s.reset_seconds))]


class Side:
    """Every domain's decisions and HTTP side, swapped together on reload."""

    def __init__(self, domains: Mapping[str, Domain], max_keys: int = 1_000_000, stores: Stores | None = None) -> None:
        self.decider = Decider(domains, max_keys=max_keys, stores=stores)
        self.http = compile_http(domains)
        self._lock = threading.Lock()

    @staticmethod
    def load(path: str) -> tuple[dict[str, Domain], dict[str, HttpPolicy]]:
        """Every domain of a config path, HTTP sides and counts blocks included, validated whole (PolicyError
        otherwise)."""
        domains = load_policies(path)
        try:
            for d in domains.values():
                Counts.of(d)
            return domains, compile_http(domains)
        except PolicyError as exc:
            raise exc.located() from None

    @property
    def waits(self) -> bool:
        """Decisions wait for Redis (strict mode): an event loop hands checks to a thread."""
        return self.decider.waits

    def swap(self, domains: Mapping[str, Domain], http: Mapping[str, HttpPolicy]) -> int:
        with self._lock:
            kept = self.decider.swap(domains)
            self.http = dict(http)
        return kept

    def default_domain(self) -> str | None:
        """The one domain with an HTTP side, when there is exactly one (ext_authz without context_extensions)."""
        http = self.http
        return next(iter(http)) if len(http) == 1 else None

    def policy(self, domain: str) -> HttpPolicy | None:
        return self.http.get(domain)

    def check(self, domain: str, req: HttpRequest) -> Answer:
        """The whole answer for one request to `domain` (its client address already resolved)."""
        policy = self.http.get(domain)
        if policy is None:
            return Answer(404, f"no forward-auth policy for domain {domain!r}")
        claims, upstream, remove = None, (), ()
        jwt = policy.jwt
        if jwt is not None:
            outcome = jwt.check(req)
            if outcome.status:
                challenge = _challenge(outcome.message, outcome.token is not None)
                return Answer(outcome.status, outcome.message, downstream=(("WWW-Authenticate", challenge),))
            claims = outcome.claims
            upstream = tuple(jwt.upstream(outcome))
            # identity headers fastguard did not set (and the token, unless forwarded) come off the request
            set_names = {n for n, _ in upstream}
            cleared = policy.guarded if jwt.forward else (*policy.guarded, *jwt.token_headers)
            remove = tuple(dict.fromkeys(n for n in cleared if n not in set_names))
        descriptors = policy.actions.descriptors(req, claims)
        if not descriptors:
            return Answer(200, "OK", upstream, remove, guarded=policy.guarded)
        verdict = self.decider.decide(domain, descriptors)
        if verdict.fault:   # on_error: deny while Redis cannot answer: not a rate limit, and never an allow
            return Answer(503, "rate limit store unavailable", verdict=verdict)
        headers = _rate_headers(verdict)
        if verdict.overall == OVER_LIMIT:
            wait = verdict.retry_after
            if math.isfinite(wait):
                headers.append(("Retry-After", str(max(1, math.ceil(wait)))))
            return Answer(429, "Too Many Requests", downstream=tuple(headers), verdict=verdict)
        return Answer(200, "OK", upstream, remove, tuple(headers), verdict, policy.guarded)
