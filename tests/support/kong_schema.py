"""Kong's validation of a plugin config against the schema a plugin server dumps, written from Kong 3.10's
kong/db/schema/init.lua (field validators, defaults, and run_entity_check with its entity checkers) — an oracle
independent of fastguard.kong.fields, for what Kong's Admin API accepts.

Only what fastguard's dumps use is implemented; anything else fails loudly (AssertionError), never passes.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from fastguard.testing.tokens import jwk

_META = {"route_id", "service_id", "consumer_id", "protocols", "enabled", "id", "name", "ordering",
         "instance_name", "tags", "created_at", "updated_at"}


class Refused(Exception):
    pass


def _fields(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: spec for entry in record["fields"] for name, spec in entry.items()}


def _lua_pattern(pattern: str) -> str:
    # The dumps use anchored literal prefixes and `?` on one character: the same in Lua and Python.
    assert re.fullmatch(r"\^[A-Za-z/:]+\??[A-Za-z/:]*", pattern), pattern
    return pattern


def _value(spec: dict[str, Any], value: Any, path: str) -> Any:
    kind = spec["type"]
    ok = {"string": isinstance(value, str),
          "number": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
          "integer": isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and value == math.floor(value),
          "boolean": isinstance(value, bool),
          "array": isinstance(value, list), "set": isinstance(value, list),
          "map": isinstance(value, dict), "record": isinstance(value, dict)}[kind]
    if not ok:
        raise Refused(f"{path}: expected a {kind}")
    for name, arg in spec.items():
        if name in ("type", "default", "required", "description", "elements", "fields", "keys", "values",
                    "referenceable", "encrypted"):
            continue
        if name == "between" and not arg[0] <= value <= arg[1]:
            raise Refused(f"{path}: between")
        if name == "gt" and not value > arg:
            raise Refused(f"{path}: gt")
        if name == "one_of" and value not in arg:
            raise Refused(f"{path}: one_of")
        if name == "len_max" and len(value) > arg:
            raise Refused(f"{path}: len_max")
        if name == "match_any" and not any(re.search(_lua_pattern(p), value) for p in arg["patterns"]):
            raise Refused(f"{path}: match_any")
        if name not in ("between", "gt", "one_of", "len_max", "match_any", "len_min"):
            raise AssertionError(f"validator {name} not implemented")
    if kind == "string" and len(value) < spec.get("len_min", 1):  # Kong: "" is refused unless len_min is 0
        raise Refused(f"{path}: len_min")
    if kind in ("array", "set"):
        element = spec["elements"]
        out = [_value(element, v, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind == "set" and len({repr(v) for v in out}) != len(out):
            out = list(dict.fromkeys(out))  # Kong dedupes a set
        return out
    if kind == "map":
        return {_value(spec["keys"], k, f"{path} key"): _value(spec["values"], v, f"{path}.{k}")
                for k, v in value.items()}
    if kind == "record":
        return _record(spec, value, path + ".")
    return value


def _record(spec: dict[str, Any], value: dict[str, Any], prefix: str) -> dict[str, Any]:
    fields = _fields(spec)
    out = {}
    for name in value:
        if name not in fields and not (prefix == "config." and (name in _META or name.startswith("__"))):
            raise Refused(f"{prefix}{name}: unknown field")
    for name, field in fields.items():
        v = value.get(name)
        if v is None:
            if "default" in field:
                v = field["default"]
            elif field["type"] == "record":
                v = _record(field, {}, f"{prefix}{name}.")
        if v is None:
            if field.get("required"):
                raise Refused(f"{prefix}{name}: required field missing")
            out[name] = None
            continue
        out[name] = _value(field, v, prefix + name)
    return out


def _get(entity: dict[str, Any], path: str) -> Any:
    v: Any = entity
    for part in path.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return v


def _nonempty(v: Any) -> bool:
    return v is not None and v != "" and v != [] and v != {}


def _validate_field(rule: dict[str, Any], value: Any) -> bool:
    """Kong's Schema:validate_field for the validators entity checks use."""
    if value is None:
        return not rule.get("required") and "eq" not in rule
    tests = {"eq": lambda v, a: v == a, "ne": lambda v, a: v != a, "gt": lambda v, a: v > a,
             "one_of": lambda v, a: v in a, "contains": lambda v, a: a in v, "len_eq": lambda v, a: len(v) == a}
    return all(tests[name](value, arg) for name, arg in rule.items() if name != "required")


_CHECKERS = {  # name: (run_with_missing_fields, field_sources, required_fields)
    "at_least_one_of": (True, None, None),
    "mutually_exclusive": (True, None, None),
    "mutually_required": (True, None, None),
    "mutually_exclusive_sets": (True, ("set1", "set2"), ("set1", "set2")),
    "conditional": (False, ("if_field", "then_field"), ("if_field",)),
    "conditional_at_least_one_of": (True, ("if_field", "then_at_least_one_of", "else_then_at_least_one_of"),
                                    ("if_field",)),
}


def _entity_check(name: str, arg: Any, entity: dict[str, Any]) -> None:
    run_missing, sources, required_sources = _CHECKERS[name]
    if sources is None:
        names, required = list(arg), set(arg)
    else:
        names, required = [], set()
        for source in sources:
            v = arg.get(source)
            group = [v] if isinstance(v, str) else list(v or ())
            names += group
            if source in required_sources:
                required |= set(group)
    values = [_get(entity, n) for n in names]
    if all(v is None for v in values) and not run_missing:  # an insert is a full check
        return
    if not run_missing and any(v is None and n in required for n, v in zip(names, values, strict=True)):
        raise Refused(f"{name}: required field missing for the entity check")
    given = [n for n in names if _nonempty(_get(entity, n))]
    if name == "at_least_one_of" and not given:
        raise Refused(f"at_least_one_of {arg}")
    if name == "mutually_exclusive" and len(given) > 1:
        raise Refused(f"mutually_exclusive {arg}")
    if name == "mutually_required" and given and len(given) != len(arg):
        raise Refused(f"mutually_required {arg}")
    if name == "mutually_exclusive_sets" and any(n in given for n in arg["set1"]) and \
            any(n in given for n in arg["set2"]):
        raise Refused(f"mutually_exclusive_sets {arg}")
    if name == "conditional" and _validate_field(arg["if_match"], _get(entity, arg["if_field"])) and \
            not _validate_field(arg["then_match"], _get(entity, arg["then_field"])):
        raise Refused(f"conditional {arg}")
    if name == "conditional_at_least_one_of":
        if_value = _get(entity, arg["if_field"])
        if if_value is not None and _validate_field(arg["if_match"], if_value) and \
                not any(_nonempty(_get(entity, n)) for n in arg["then_at_least_one_of"]):
            raise Refused(f"conditional_at_least_one_of {arg}")


def kong_validate(schema: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """The config as Kong would store it (defaults filled), or Refused: what `POST /plugins` answers 400 to."""
    (config_spec,) = [spec for entry in schema["fields"] for name, spec in entry.items() if name == "config"]
    entity = {"config": _record(config_spec, config, "config.")}
    for check in schema.get("entity_checks", []):
        (name, arg), = check.items()
        _entity_check(name, arg, entity)
    return entity["config"]


#: A JWKS for the examples below.
DOCS_JWKS = json.dumps({"keys": [jwk("oct", kid="k1")]})

KONG_DOCS_EXAMPLES = {  # configs as Kong's documentation writes them, with the fields fastguard shares
    "fastguard-rate-limiting": [
        {"minute": 5, "policy": "local"},
        {"second": 5, "hour": 10000, "policy": "local", "limit_by": "ip"},
        {"minute": 5, "policy": "redis", "redis": {"host": "127.0.0.1", "port": 6379, "timeout": 2000,
                                                   "database": 0}},
        {"minute": 5, "policy": "redis", "redis_host": "127.0.0.1", "redis_port": 6379},   # Kong < 3.7's form
        {"minute": 5, "limit_by": "header", "header_name": "X-Consumer-ID", "hide_client_headers": True,
         "error_code": 429, "error_message": "API rate limit exceeded", "fault_tolerant": True, "sync_rate": -1},
        {"limit": [10, 100], "window_size": [60, 3600], "identifier": "consumer", "window_type": "sliding",
         "namespace": "orders", "retry_after_jitter_max": 0},                               # RLA's shape
    ],
    "fastguard-jwt": [
        {"jwks": DOCS_JWKS, "secret_is_base64": False, "run_on_preflight": True},
        {"jwks": DOCS_JWKS, "claims_to_verify": ["exp"], "maximum_expiration": 3600, "key_claim_name": "iss",
         "uri_param_names": ["jwt"], "cookie_names": [], "header_names": ["authorization"], "realm": "api"},
    ],
}
