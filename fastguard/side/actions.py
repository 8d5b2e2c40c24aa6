"""Descriptors from an HTTP request, in the vocabulary of Envoy's route `rate_limits` (envoy.config.route.v3.RateLimit):
what the forward-auth and ext_authz front ends send to the same decisions Envoy's own filter would ask for.

    fastguard:
      rate_limits:
        - actions: [{remote_address: {}}]                       # one descriptor: (remote_address, <client>)
        - actions:
            - {generic_key: {descriptor_value: api}}            # (generic_key, api)
            - {request_headers: {header_name: x-api-key, descriptor_key: api_key}}
        - actions: [{jwt_claim: {claim_name: sub, descriptor_key: sub}}]   # fastguard's: a verified claim

Each entry of `rate_limits` gives one descriptor when every action gives its entry, as Envoy's
RateLimitPolicyEntryImpl builds them (source/common/router/router_ratelimit.cc): a `request_headers` or
`query_parameters` action whose header or parameter is absent drops the descriptor, or with `skip_if_absent` only
its own entry; `header_value_match` adds ("header_match" or its descriptor_key, descriptor_value) when the headers
match as `expect_match` says and drops the descriptor otherwise. Entries are validated against Envoy's published
protobuf (xds-protos), so a file Envoy refuses is refused here; actions that need Envoy's own state (clusters,
metadata, extensions) are refused with a clear error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["HttpRequest", "RateLimitActions", "claim_value", "ActionError"]

#: One action's result: an entry, None (the action gives nothing: drop the descriptor) or SKIP (keep going).
SKIP = ()
Entry = tuple[str, str]
Action = Callable[["HttpRequest", Mapping[str, Any] | None], Any]


class ActionError(ValueError):
    """A `rate_limits` entry that cannot be used (the message names the entry and the field)."""


@dataclass(slots=True)   # made per request: a frozen init costs a setattr per field
class HttpRequest:
    """The client's request as a side service sees it: names lower-case, one value per header (the first),
    `path` with its query, `client` the address the service trusts as the client's."""

    method: str
    path: str
    host: str
    headers: Mapping[str, str]
    client: str
    scheme: str = "http"

    def header(self, name: str) -> str | None:
        """A header, or one of Envoy's pseudo-headers (`:path`, `:method`, `:authority`, `:scheme`)."""
        if name.startswith(":"):
            return {":path": self.path, ":method": self.method, ":authority": self.host,
                    ":scheme": self.scheme}.get(name)
        return self.headers.get(name)

    def query(self, name: str) -> str | None:
        _, _, query = self.path.partition("?")
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == name:
                return value
        return None


def claim_value(claims: Mapping[str, Any] | None, name: str) -> str | None:
    """A claim as text (`a.b` reaches into objects, as Envoy's claim_to_headers does): strings as they are, numbers
    and booleans as JSON writes them; None when absent or of another type."""
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return None


# -- header matching (envoy.config.route.v3.HeaderMatcher) ----------------------------------------------------
def _string_matcher(spec: Any, where: str) -> Callable[[str], bool]:
    """An envoy.type.matcher.v3.StringMatcher as a predicate."""
    kind = spec.WhichOneof("match_pattern")
    fold = spec.ignore_case
    if kind == "safe_regex":
        try:
            rx = re.compile(spec.safe_regex.regex)
        except re.error as exc:
            raise ActionError(f"{where}: bad regex {spec.safe_regex.regex!r} ({exc})") from None
        return lambda v: rx.fullmatch(v) is not None
    if kind not in ("exact", "prefix", "suffix", "contains"):
        raise ActionError(f"{where}: string_match {kind!r} is not supported (exact, prefix, suffix, contains, "
                          f"safe_regex)")
    want = getattr(spec, kind)
    want = want.lower() if fold else want
    test = {"exact": str.__eq__, "prefix": str.startswith, "suffix": str.endswith,
            "contains": str.__contains__}[kind]
    return lambda v: test(v.lower() if fold else v, want)


def _header_matcher(spec: Any, where: str) -> Callable[[HttpRequest], bool]:
    name = spec.name.lower()
    kind = spec.WhichOneof("header_match_specifier")
    if kind is None:                                   # no specifier: the header is present
        def test(v: str) -> bool:
            return True
    elif kind == "present_match":
        present = spec.present_match
        if not present:
            def absent(req: HttpRequest) -> bool:
                return (req.header(name) is None) != spec.invert_match
            return absent
        def test(v: str) -> bool:
            return True
    elif kind == "string_match":
        test = _string_matcher(spec.string_match, where)
    elif kind in ("exact_match", "prefix_match", "suffix_match", "contains_match"):
        want = getattr(spec, kind)
        test = {"exact_match": lambda v: v == want, "prefix_match": lambda v: v.startswith(want),
                "suffix_match": lambda v: v.endswith(want), "contains_match": lambda v: want in v}[kind]
    elif kind == "safe_regex_match":
        try:
            rx = re.compile(spec.safe_regex_match.regex)
        except re.error as exc:
            raise ActionError(f"{where}: bad regex ({exc})") from None
        def test(v: str) -> bool:
            return rx.fullmatch(v) is not None
    else:
        raise ActionError(f"{where}: header matcher {kind!r} is not supported")
    invert, missing_as_empty = spec.invert_match, spec.treat_missing_header_as_empty

    def match(req: HttpRequest) -> bool:
        value = req.header(name)
        if value is None:
            if not missing_as_empty:
                return False       # Envoy: an absent header matches nothing, inverted or not
            value = ""
        return test(value) != invert
    return match


# -- the actions ---------------------------------------------------------------------------------------------
def _entry(read: Callable[[HttpRequest, Any], str | None], key: str, skip: bool) -> Action:
    """An action giving (key, what `read` finds); when it finds nothing, the descriptor is dropped, or with
    skip_if_absent only this entry (Envoy's RequestHeadersAction)."""
    def action(req: HttpRequest, claims: Any) -> Any:
        value = read(req, claims)
        if value is None:
            return SKIP if skip else None
        return (key, value)
    return action


def _build(action: Any, where: str) -> Action:
    kind = action.WhichOneof("action_specifier")
    if kind == "generic_key":
        entry = (action.generic_key.descriptor_key or "generic_key", action.generic_key.descriptor_value)
        return lambda req, claims: entry
    if kind == "remote_address":
        return lambda req, claims: ("remote_address", req.client) if req.client else None
    if kind == "masked_remote_address":
        v4 = action.masked_remote_address.v4_prefix_mask_len.value \
            if action.masked_remote_address.HasField("v4_prefix_mask_len") else 32
        v6 = action.masked_remote_address.v6_prefix_mask_len.value \
            if action.masked_remote_address.HasField("v6_prefix_mask_len") else 128
        if not (0 <= v4 <= 32 and 0 <= v6 <= 128):
            raise ActionError(f"{where}: masked_remote_address prefix lengths are 0-32 (v4) and 0-128 (v6)")

        def masked(req: HttpRequest, claims: Any) -> Entry | None:
            try:
                ip = ipaddress.ip_address(req.client)
            except ValueError:
                return None
            net = ipaddress.ip_network(f"{ip}/{v4 if ip.version == 4 else v6}", strict=False)
            return ("masked_remote_address", str(net))
        return masked
    if kind == "request_headers":
        spec = action.request_headers
        name, key, skip = spec.header_name.lower(), spec.descriptor_key, spec.skip_if_absent
        if not name or not key:
            raise ActionError(f"{where}: request_headers needs header_name and descriptor_key")

        return _entry(lambda req, claims: req.header(name), key, skip)
    if kind == "query_parameters":
        spec = action.query_parameters
        pname, key, skip = spec.query_parameter_name, spec.descriptor_key, spec.skip_if_absent
        if not pname or not key:
            raise ActionError(f"{where}: query_parameters needs query_parameter_name and descriptor_key")

        return _entry(lambda req, claims: req.query(pname), key, skip)
    if kind == "header_value_match":
        spec = action.header_value_match
        matchers = [_header_matcher(h, f"{where}.headers[{i}]") for i, h in enumerate(spec.headers)]
        expect = spec.expect_match.value if spec.HasField("expect_match") else True
        entry = (spec.descriptor_key or "header_match", spec.descriptor_value)

        def header_match(req: HttpRequest, claims: Any) -> Entry | None:
            return entry if all(m(req) for m in matchers) == expect else None
        return header_match
    raise ActionError(f"{where}: action {kind!r} needs Envoy's own state and is not supported by fastguard serve "
                      f"(generic_key, remote_address, masked_remote_address, request_headers, query_parameters, "
                      f"header_value_match, jwt_claim)")


def _jwt_claim(spec: Any, where: str) -> Action:
    if not isinstance(spec, Mapping) or set(spec) - {"claim_name", "descriptor_key", "skip_if_absent"}:
        raise ActionError(f"{where}: jwt_claim is {{claim_name, descriptor_key, skip_if_absent}}")
    name, key = spec.get("claim_name"), spec.get("descriptor_key", spec.get("claim_name"))
    skip = spec.get("skip_if_absent", False)
    if not isinstance(name, str) or not name or not isinstance(key, str) or not key or not isinstance(skip, bool):
        raise ActionError(f"{where}: jwt_claim needs claim_name (text), descriptor_key (text), "
                          f"skip_if_absent (true/false)")

    return _entry(lambda req, claims: claim_value(claims, name), key, skip)


class RateLimitActions:
    """A domain's `rate_limits`: request → the descriptors to decide, in configuration order."""

    def __init__(self, rate_limits: Any, where: str = "rate_limits") -> None:
        from envoy.config.route.v3 import route_components_pb2
        from google.protobuf import json_format

        if not isinstance(rate_limits, list):
            raise ActionError(f"{where}: rate_limits is a list of {{actions: [...]}}")
        self.uses_claims = False
        self._entries: list[list[Action]] = []
        for i, item in enumerate(rate_limits):
            here = f"{where}[{i}]"
            if not isinstance(item, Mapping) or not isinstance(item.get("actions"), list) or not item["actions"]:
                raise ActionError(f"{here}: an entry is {{actions: [...]}} with at least one action")
            extra = set(item) - {"actions"}
            if extra:
                raise ActionError(f"{here}: {sorted(extra)[0]!r} is not supported by fastguard serve (actions)")
            built: list[Action] = []
            for j, act in enumerate(item["actions"]):
                at = f"{here}.actions[{j}]"
                if not isinstance(act, Mapping) or len(act) != 1:
                    raise ActionError(f"{at}: an action is a mapping with one key, e.g. {{remote_address: {{}}}}")
                if "jwt_claim" in act:
                    built.append(_jwt_claim(act["jwt_claim"], at))
                    self.uses_claims = True
                    continue
                try:
                    msg = json_format.ParseDict(dict(act), route_components_pb2.RateLimit.Action())
                except json_format.ParseError as exc:
                    raise ActionError(f"{at}: not an Envoy rate limit action ({exc})") from None
                built.append(_build(msg, at))
            self._entries.append(built)

    def __len__(self) -> int:
        return len(self._entries)

    def descriptors(self, req: HttpRequest, claims: Mapping[str, Any] | None = None) -> list[list[Entry]]:
        out = []
        for actions in self._entries:
            entries: list[Entry] = []
            for act in actions:
                got = act(req, claims)
                if got is None:
                    break
                if got is not SKIP:
                    entries.append(got)
            else:
                if entries:
                    out.append(entries)
        return out
