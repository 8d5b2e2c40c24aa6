"""Rate limit policies in envoyproxy/ratelimit's configuration format, loaded unchanged, matched as its README says.

A domain file:

    domain: messaging
    descriptors:
      - key: message_type
        value: marketing            # optional; `*` matches any run of characters, anywhere, several times
        descriptors:                # nested: a request descriptor of two entries
          - key: to_number
            rate_limit: {unit: day, requests_per_unit: 5}
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 100, name: per_number}
        shadow_mode: true           # decided and counted, never refuses

Matching (envoyproxy/ratelimit's README, "Examples", and its src/config/config_impl.go): each entry of a request
descriptor is looked up at the next level by key and value, then by a wildcard value (in the file's order), then
by key alone; a rule applies only when it sits at the depth of the request descriptor's last entry. `replaces`
drops the rules it names, `unlimited: true` is OK with 2^32 - 1 remaining, `requests_per_unit: 0` refuses all,
`share_threshold` makes every value a wildcard matches one count. Every other key of a file is refused, as
envoyproxy/ratelimit refuses it, except fastguard's own, each optional, in a `rate_limit` block:

    algorithm: fixed_window | sliding_window | token_bucket | gcra   (fixed_window: envoyproxy/ratelimit's)
    unit_multiplier: 30          # the period is unit x unit_multiplier (30 seconds, 5 minutes...)
    windows: [{unit: minute, requests_per_unit: 600}]   # more limits, all checked, on the same key
    ban_after: 20, ban_for: 60   # a caller refused ban_after times within a window is refused for ban_for s

and the top-level `fastguard:` block, which envoyproxy/ratelimit ignores (the HTTP side of the side service).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastguard.limits import MAX_LIMITS, Limit, unit_seconds

__all__ = ["PolicyError", "Rule", "Domain", "load_domain", "load_policies", "UNITS"]

#: envoyproxy/ratelimit's units (the RateLimitResponse.RateLimit.Unit enum of Envoy's rls.proto, UNKNOWN aside).
UNITS = ("second", "minute", "hour", "day", "week", "month", "year")
#: What a domain file may hold: envoyproxy/ratelimit's keys (src/config/config_impl.go, validKeys), then fastguard's.
_THEIR_KEYS = frozenset(("domain", "key", "value", "descriptors", "rate_limit", "unit", "requests_per_unit",
                         "unlimited", "shadow_mode", "quota_mode", "name", "replaces", "detailed_metric",
                         "value_to_metric", "share_threshold", "metadata"))
_DESCRIPTOR_KEYS = frozenset(("key", "value", "descriptors", "rate_limit", "shadow_mode", "quota_mode",
                              "detailed_metric", "value_to_metric", "share_threshold", "metadata"))
_RATE_LIMIT_KEYS = frozenset(("unit", "requests_per_unit", "unlimited", "name", "replaces",
                              # fastguard's
                              "algorithm", "unit_multiplier", "windows", "ban_after", "ban_for"))
_ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket", "gcra")
#: A request descriptor's limit: the largest unsigned 32-bit value (Envoy's limit_remaining field).
MAX_UINT32 = 2**32 - 1


class PolicyError(ValueError):
    """A domain file that cannot be used: `source` (the file), `line` (1-based, when known), `field` (the place in
    the file, e.g. "descriptors[1].rate_limit") and what is wrong — said on one line, `file:line: field: message`.
    `where` is "<file>" or "<file>: <field>"."""

    def __init__(self, where: str, message: str, line: int | None = None) -> None:
        source, _, field = where.partition(": ")
        self.where, self.source, self.field, self.line = where, source, field, line
        self.message = " ".join(message.split())      # one log line, whatever the parser said
        at = f"{source}:{line}" if line else source
        super().__init__(f"{at}: {field}: {self.message}" if field else f"{at}: {self.message}")

    def located(self, text: str | None = None) -> PolicyError:
        """This error with the line of its field in the file (`text`, or the file read again); itself when the
        line is known or cannot be found."""
        if self.line is not None or not self.field:
            return self
        if text is None:
            try:
                with open(self.source, encoding="utf-8") as fh:
                    text = fh.read()
            except (OSError, UnicodeDecodeError):
                return self
        line = _line_of(text, self.field)
        return PolicyError(self.where, self.message, line) if line else self


def _line_of(text: str, field: str) -> int | None:
    """The 1-based line of `field` ("a.b[2].c") in a YAML document: of the deepest part of the path found."""
    import re

    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.BaseLoader)
    except yaml.YAMLError:
        return None
    line = None
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", field):
        if index and isinstance(node, yaml.SequenceNode) and int(index) < len(node.value):
            node = node.value[int(index)]
            line = node.start_mark.line + 1
        elif name and isinstance(node, yaml.MappingNode):
            found = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name.strip()]
            if not found:
                break
            line, node = found[0][0].start_mark.line + 1, found[0][1]
        else:
            break
    return line


@dataclass(frozen=True, eq=False)
class Rule:
    """The rate limit of one configured descriptor (`path`: envoyproxy/ratelimit's full key, e.g.
    "messaging.message_type_marketing.to_number")."""

    path: str
    unit: str                       # the first window's unit (Envoy's current_limit.unit)
    requests_per_unit: int          # the first window's count (0: every request refused)
    limits: tuple[Limit, ...]       # every window, as fastguard decides them (empty when unlimited or blocked)
    name: str | None = None
    replaces: frozenset[str] = frozenset()
    unlimited: bool = False
    shadow: bool = False
    algorithm: str = "fixed_window"
    ban_after: int = 0
    ban_for: float = 0.0

    @property
    def blocked(self) -> bool:
        return not self.unlimited and self.requests_per_unit == 0

    @functools.cached_property
    def signature(self) -> tuple[Any, ...]:
        """What the rule's counts depend on: a reloaded rule with the same signature keeps them."""
        return (self.path, tuple((x.count, x.period_ns) for x in self.limits), self.algorithm, self.ban_after,
                self.ban_for)


@dataclass(eq=False)
class _Node:
    rule: Rule | None = None
    share_threshold: bool = False
    exact: dict[tuple[str, str], _Node] = field(default_factory=dict)     # (key, value) -> node
    wildcards: list[tuple[str, tuple[str, ...], str, _Node]] = field(default_factory=list)  # key, parts, pattern
    by_key: dict[str, _Node] = field(default_factory=dict)               # key with no value -> node


def wildcard_match(parts: Sequence[str], value: str) -> bool:
    """`value` against a pattern split on `*` (each `*` any run of characters, in order)."""
    if len(parts) == 1:
        return parts[0] == value
    first, last = parts[0], parts[-1]
    if not value.startswith(first) or not value.endswith(last) or len(value) < sum(len(p) for p in parts):
        return False
    rest = value[len(first):len(value) - len(last)]
    for part in parts[1:-1]:
        at = rest.find(part)
        if at < 0:
            return False
        rest = rest[at + len(part):]
    return True


@dataclass(slots=True)   # made per request: a frozen init costs a setattr per field
class Match:
    """A request descriptor's rule, and the entries counted for it (a share_threshold wildcard's pattern in place
    of the value it matched)."""

    rule: Rule
    counted: tuple[tuple[str, str], ...]


class Domain:
    """One domain's descriptors, ready to match request descriptors (immutable once built)."""

    def __init__(self, name: str, root: _Node, source: str, extra: Mapping[str, Any] | None = None) -> None:
        self.name = name
        self._root = root
        self.source = source
        #: the file's top-level `fastguard:` block (the side service's HTTP side), as written
        self.extra: Mapping[str, Any] = extra or {}

    def rules(self) -> list[Rule]:
        """Every rule of the domain."""
        out, todo = [], [self._root]
        while todo:
            node = todo.pop()
            if node.rule is not None:
                out.append(node.rule)
            todo.extend(node.exact.values())
            todo.extend(w[3] for w in node.wildcards)
            todo.extend(node.by_key.values())
        return out

    def match(self, entries: Sequence[tuple[str, str]]) -> Match | None:
        """The rule for a request descriptor (its (key, value) entries), or None when none applies."""
        node = self._root
        counted: list[tuple[str, str]] = []
        rule = None
        for i, (key, value) in enumerate(entries):
            nxt = node.exact.get((key, value))
            shown = value
            if nxt is None:
                for wkey, parts, pattern, candidate in node.wildcards:
                    if wkey == key and wildcard_match(parts, value):
                        nxt = candidate
                        if candidate.share_threshold:
                            shown = pattern
                        break
            if nxt is None:
                nxt = node.by_key.get(key)
            if nxt is None:
                return None
            counted.append((key, shown))
            if i == len(entries) - 1:
                rule = nxt.rule
            elif not (nxt.exact or nxt.wildcards or nxt.by_key):
                return None   # the request goes deeper than the configuration
            node = nxt
        return Match(rule, tuple(counted)) if rule is not None else None


# -- loading ------------------------------------------------------------------------------------------------------
def _text(value: Any, where: str, what: str) -> str:
    if isinstance(value, (dict, list)):
        raise PolicyError(where, f"{what} must be a string")
    return "" if value is None else str(value)


def _flag(value: Any, where: str, what: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "yes", "on"):
        return True
    if text in ("false", "no", "off"):
        return False
    raise PolicyError(where, f"{what} must be true or false, got {value!r}")


def _whole(value: Any, where: str, what: str, low: int, high: int) -> int:
    try:
        n = int(str(value), 10)
    except (TypeError, ValueError):
        raise PolicyError(where, f"{what} must be a whole number, got {value!r}") from None
    if not low <= n <= high:
        raise PolicyError(where, f"{what} must be between {low} and {high}, got {n}")
    return n


def _window(block: Mapping[str, Any], where: str) -> tuple[str, int, Limit | None]:
    """(unit, requests_per_unit, the Limit — None for 0) of a rate_limit block or one of its `windows`."""
    unit = _text(block.get("unit"), f"{where}.unit", "unit").lower()
    if unit not in UNITS:
        raise PolicyError(f"{where}.unit", f"invalid rate limit unit {block.get('unit')!r}: {', '.join(UNITS)}")
    count = _whole(block.get("requests_per_unit", 0), f"{where}.requests_per_unit", "requests_per_unit", 0,
                   MAX_UINT32)
    times = _whole(block.get("unit_multiplier", 1), f"{where}.unit_multiplier", "unit_multiplier", 1, 1_000_000)
    return unit, count, Limit(count, unit_seconds(unit) * times) if count else None


def _rule(path: str, where: str, d: Mapping[str, Any]) -> Rule:
    block = d["rate_limit"]
    if not isinstance(block, Mapping):
        raise PolicyError(where, "rate_limit must be a mapping")
    unknown = set(block) - _RATE_LIMIT_KEYS
    if unknown:
        raise PolicyError(where, f"unknown key {sorted(unknown)[0]!r} in rate_limit")
    name = _text(block.get("name"), where, "name") or None
    replaces = []
    for r in block.get("replaces") or ():
        if not isinstance(r, Mapping) or set(r) - {"name"}:
            raise PolicyError(where, "replaces is a list of {name: ...}")
        n = _text(r.get("name"), where, "replaces name")
        if not n:
            raise PolicyError(where, "should not have an empty replaces entry")
        if n == name:
            raise PolicyError(where, "replaces should not contain name of same descriptor")
        replaces.append(n)
    shadow = _flag(d.get("shadow_mode"), where, "shadow_mode")
    if _flag(block.get("unlimited"), where, "unlimited"):
        if block.get("unit") not in (None, ""):
            raise PolicyError(where, "should not specify rate limit unit when unlimited")
        return Rule(path, "unknown", 0, (), name, frozenset(replaces), unlimited=True, shadow=shadow)
    unit, count, first = _window(block, where)
    limits = [first] if first is not None else []
    for i, extra in enumerate(block.get("windows") or ()):
        if not isinstance(extra, Mapping) or set(extra) - {"unit", "requests_per_unit", "unit_multiplier"}:
            raise PolicyError(f"{where}.windows[{i}]", "a window is {unit, requests_per_unit, unit_multiplier}")
        _, n, lim = _window(extra, f"{where}.windows[{i}]")
        if lim is None or first is None:
            raise PolicyError(f"{where}.windows[{i}]", "windows need requests_per_unit above 0 (0 refuses all)")
        limits.append(lim)
    if len(limits) > MAX_LIMITS:
        raise PolicyError(where, f"at most {MAX_LIMITS} windows per rule")
    algorithm = _text(block.get("algorithm") or "fixed_window", where, "algorithm")
    if algorithm not in _ALGORITHMS:
        raise PolicyError(where, f"algorithm must be one of {', '.join(_ALGORITHMS)}, got {algorithm!r}")
    ban_after = _whole(block.get("ban_after", 0), where, "ban_after", 0, 2**40)
    try:
        ban_for = float(block.get("ban_for", 0) or 0)
    except (TypeError, ValueError):
        raise PolicyError(where, f"ban_for must be seconds, got {block.get('ban_for')!r}") from None
    if not 0 <= ban_for <= 100 * 365 * 86_400 or (ban_after and not ban_for):
        raise PolicyError(where, "ban_for must be seconds up to 100 years, and above 0 with ban_after")
    return Rule(path, unit, count, tuple(limits), name, frozenset(replaces), shadow=shadow, algorithm=algorithm,
                ban_after=ban_after, ban_for=ban_for)


def _load(node: _Node, descriptors: Any, path: str, where: str, count: list[int], limit: int) -> None:
    if descriptors is None:
        return
    if not isinstance(descriptors, list):
        raise PolicyError(where, "descriptors must be a list")
    for i, d in enumerate(descriptors):
        here = f"{where}[{i}]"
        if not isinstance(d, Mapping):
            raise PolicyError(here, "a descriptor is a mapping")
        unknown = set(d) - _DESCRIPTOR_KEYS
        if unknown:
            raise PolicyError(here, f"unknown key {sorted(unknown)[0]!r}")
        count[0] += 1
        if count[0] > limit:
            raise PolicyError(where, f"more than {limit} descriptors in one domain")
        key = _text(d.get("key"), here, "key")
        if not key:
            raise PolicyError(here, "descriptor has empty key")
        value = _text(d.get("value"), here, "value")
        full = f"{path}.{key}_{value}" if value else f"{path}.{key}"
        child = _Node()
        if d.get("rate_limit") is not None:
            child.rule = _rule(full, f"{here}.rate_limit", d)
        child.share_threshold = _flag(d.get("share_threshold"), here, "share_threshold")
        if child.share_threshold and "*" not in value:
            raise PolicyError(here, f"share_threshold can only be used with wildcard values (containing '*'), "
                                    f"but found {key}: {value!r}")
        duplicate = f"duplicate descriptor composite key '{full}'"
        if value and "*" in value:
            if any(w[0] == key and w[2] == value for w in node.wildcards):
                raise PolicyError(here, duplicate)
            node.wildcards.append((key, tuple(value.split("*")), value, child))
        elif value:
            if (key, value) in node.exact:
                raise PolicyError(here, duplicate)
            node.exact[(key, value)] = child
        else:
            if key in node.by_key:
                raise PolicyError(here, duplicate)
            node.by_key[key] = child
        _load(child, d.get("descriptors"), full, f"{here}.descriptors", count, limit)


#: The most descriptors one domain may configure (a bound on what a file can make the service hold).
MAX_DESCRIPTORS = 100_000


def load_domain(text: str, source: str = "<string>", max_descriptors: int = MAX_DESCRIPTORS) -> Domain:
    """One domain from a YAML document (PolicyError naming the file and the place otherwise)."""
    import yaml

    try:
        doc = yaml.load(text, Loader=yaml.BaseLoader)  # every scalar as written: typed per field below
    except yaml.YAMLError as exc:
        mark, context = getattr(exc, "problem_mark", None), getattr(exc, "context", None)
        context_mark = getattr(exc, "context_mark", None)
        said = getattr(exc, "problem", None) or str(exc)
        if context and context_mark is not None:
            said = f"{context} (line {context_mark.line + 1}): {said}"
        raise PolicyError(source, f"not YAML: {said}", mark.line + 1 if mark else None) from None
    if not isinstance(doc, Mapping):
        raise PolicyError(source, "a domain file is a mapping with domain and descriptors")
    extra = doc.get("fastguard")
    if extra is not None:   # the HTTP side is Envoy's vocabulary, typed as Envoy reads YAML (true, 60, 2s)
        extra = yaml.safe_load(text).get("fastguard")
    unknown = set(doc) - {"domain", "descriptors", "fastguard"}
    if unknown:
        first = sorted(unknown)[0]
        raise PolicyError(f"{source}: {first}", f"config error, unknown key {first!r}").located(text)
    name = _text(doc.get("domain"), f"{source}: domain", "domain")
    if not name:
        raise PolicyError(source, "config file cannot have empty domain")
    root = _Node()
    try:
        _load(root, doc.get("descriptors"), name, f"{source}: descriptors", [0], max_descriptors)
    except PolicyError as exc:
        raise exc.located(text) from None
    if extra is not None and not isinstance(extra, Mapping):
        raise PolicyError(f"{source}: fastguard", "the fastguard block is a mapping").located(text)
    return Domain(name, root, source, extra)


def _files(path: str) -> Iterable[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".yaml", ".yml")))
    return [path]


def load_policies(path: str) -> dict[str, Domain]:
    """Every domain of a file or of a folder's *.yaml / *.yml files, validated whole: PolicyError for the first
    problem (a duplicate domain included), nothing half-loaded."""
    domains: dict[str, Domain] = {}
    for file in _files(path):
        try:
            with open(file, encoding="utf-8") as fh:
                text = fh.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(file, f"cannot be read ({exc})") from None
        domain = load_domain(text, file)
        if domain.name in domains:
            raise PolicyError(file, f"duplicate domain '{domain.name}' in config file (also in "
                                    f"{domains[domain.name].source})")
        domains[domain.name] = domain
    return domains
