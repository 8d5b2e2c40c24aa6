"""Plugin configuration fields: one declaration gives the checks at StartInstance and the schema Kong reads.

A field is declared once with its Kong type, default and constraints. `check(fields, config)` returns the config
with defaults filled in, or raises ConfigError naming the field (as `redis.port`, `claims_to_headers.sub`);
`kong_schema(fields)` renders the declaration in the shape of Kong's plugin schemas (what `--dump` prints).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Field", "ConfigError", "check", "kong_schema"]


from fastguard.errors import ConfigError  # noqa: E402 - re-exported: the plugins raise it by this name


@dataclass(frozen=True)
class Field:
    name: str
    type: str                                # string | integer | number | boolean | array | set | map | record
    default: Any = None
    required: bool = False
    one_of: tuple[Any, ...] | None = None
    between: tuple[float, float] | None = None
    gt: float | None = None
    len_min: int | None = None               # strings: Kong refuses "" unless len_min is 0
    len_max: int | None = None               # arrays: at most this many elements
    match_any: tuple[str, ...] | None = None  # strings: patterns, one must match (written to mean the same in Lua)
    elements: str | None = None              # element type of an array / set, or value type of a map
    element_one_of: tuple[Any, ...] | None = None
    element_gt: float | None = None
    element_between: tuple[float, float] | None = None
    element_fields: tuple[Field, ...] = field(default=())  # an array of records: the records' fields
    fields: tuple[Field, ...] = field(default=())  # of a record
    referenceable: bool = False              # may be a Kong vault reference ({vault://...}), resolved by Kong
    encrypted: bool = False                  # stored encrypted by Kong (keyring)
    help: str = ""


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("array", "set"):
        return isinstance(value, list)
    if kind in ("map", "record"):
        return isinstance(value, dict)
    raise AssertionError(kind)


def _check_value(f: Field, value: Any, path: str) -> Any:
    if not _type_ok(f.type, value):
        raise ConfigError(path, f"expected {'an' if f.type[0] in 'aei' else 'a'} {f.type}, got {value!r}")
    if f.type == "integer":
        value = int(value)
    if f.one_of is not None and value not in f.one_of:
        raise ConfigError(path, f"expected one of: {', '.join(map(str, f.one_of))}; got {value!r}")
    if f.between is not None and not f.between[0] <= value <= f.between[1]:
        raise ConfigError(path, f"value should be between {f.between[0]:g} and {f.between[1]:g}, got {value!r}")
    if f.gt is not None and not value > f.gt:
        raise ConfigError(path, f"value must be greater than {f.gt:g}, got {value!r}")
    if f.type == "string":
        if len(value) < (1 if f.len_min is None else f.len_min):
            raise ConfigError(path, "length must be at least 1" if f.len_min is None else
                              f"length must be at least {f.len_min}")
        if f.match_any is not None and not any(re.search(p, value) for p in f.match_any):
            raise ConfigError(path, f"expected a value matching one of {', '.join(f.match_any)}, got {value!r}")
    if f.type == "array" and f.element_fields:
        return [_check_fields(f.element_fields, item, f"{path}[{i + 1}].") for i, item in enumerate(value)]
    if f.type in ("array", "set"):
        if f.len_max is not None and len(value) > f.len_max:
            raise ConfigError(path, f"length must be at most {f.len_max}")
        out = []
        for i, item in enumerate(value):
            sub = Field(f"{i + 1}", f.elements or "string", one_of=f.element_one_of, gt=f.element_gt,
                        between=f.element_between)
            out.append(_check_value(sub, item, f"{path}[{i + 1}]"))
        if f.type == "set":  # Kong makes a set of it (make_set): duplicates go
            out = list({repr(v): v for v in out}.values())
        return out
    if f.type == "map":
        out_map = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(path, f"map keys must be non-empty strings, got {k!r}")
            out_map[k] = _check_value(Field(k, f.elements or "string"), v, f"{path}.{k}")
        return out_map
    if f.type == "record":
        return _check_fields(f.fields, value, path + ".")
    return value


def check(fields: tuple[Field, ...], config: Any, prefix: str = "",
          entity_checks: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    """The config with defaults filled in, then the entity checks (Kong's cross-field rules, as in the schema
    Kong reads); ConfigError for an unknown field, a wrong type or a broken constraint. Kong's own meta fields
    (`__plugin_id`, `route_id`, ...) are kept as they are."""
    out = _check_fields(fields, config, prefix)
    for entry in entity_checks:
        _entity_check(entry, out)
    return out


def _check_fields(fields: tuple[Field, ...], config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        raise ConfigError(prefix.rstrip(".") or "config", f"expected a record, got {config!r}")
    known = {f.name: f for f in fields}
    out: dict[str, Any] = {}
    for name, value in config.items():
        if name not in known:
            if not prefix and (name.startswith("__") or name in _KONG_META):
                out[name] = value
                continue
            raise ConfigError(prefix + name, "unknown field")
    for f in fields:
        value = config.get(f.name)
        if value is None:
            if f.required and f.default is None:
                raise ConfigError(prefix + f.name, "required field missing")
            if f.type == "record" and f.default is None:
                out[f.name] = _check_fields(f.fields, {}, prefix + f.name + ".")
            else:
                out[f.name] = list(f.default) if isinstance(f.default, (list, tuple)) else f.default
            continue
        out[f.name] = _check_value(f, value, prefix + f.name)
    return out


# -- entity checks: Kong's cross-field rules (kong/db/schema/init.lua, Schema.entity_checkers), on "config.x.y" ------
def _get(config: dict[str, Any], path: str) -> Any:
    value: Any = config
    for part in path.removeprefix("config.").split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _nonempty(value: Any) -> bool:
    """Kong's is_nonempty: not nil, not an empty table, not an empty string."""
    return value is not None and value != "" and value != [] and value != {}


def _matches(rule: dict[str, Any], value: Any) -> bool:
    """A field validator of an entity check (if_match / then_match): eq, ne, gt, one_of, contains, len_eq,
    required."""
    if value is None:  # Kong's validate_field on null: only `required` and `eq` can fail
        return not rule.get("required") and "eq" not in rule
    for name, wanted in rule.items():
        if name == "required":
            continue
        elif name == "eq" and value != wanted or name == "ne" and value == wanted:
            return False
        elif name == "gt" and not value > wanted:
            return False
        elif name == "one_of" and value not in wanted:
            return False
        elif name == "contains" and wanted not in value:
            return False
        elif name == "len_eq" and len(value) != wanted:
            return False
        elif name not in ("eq", "ne", "gt", "one_of", "contains", "len_eq"):
            raise AssertionError(f"entity check validator {name!r} is not implemented")
    return True


def _names(paths: list[str]) -> str:
    return ", ".join(f"'{p.removeprefix('config.')}'" for p in paths)


# Per checker: (run_with_missing_fields, the argument keys naming its fields, the keys whose fields are required)
_CHECKERS = {
    "at_least_one_of": (True, None, None),
    "mutually_exclusive": (True, None, None),
    "mutually_required": (True, None, None),
    "mutually_exclusive_sets": (True, ("set1", "set2"), ("set1", "set2")),
    "conditional": (False, ("if_field", "then_field"), ("if_field",)),
    "conditional_at_least_one_of": (True, ("if_field", "then_at_least_one_of", "else_then_at_least_one_of"),
                                    ("if_field",)),
}


def _entity_check(entry: dict[str, Any], cfg: dict[str, Any]) -> None:
    """One of Kong's entity checks, run as Kong's run_entity_check runs it on an insert: skipped when none of its
    fields is set; a field it requires that is missing is an error ("required field missing") unless the checker
    runs with missing fields."""
    (kind, arg), = entry.items()
    run_missing, sources, required_sources = _CHECKERS[kind]
    if sources is None:
        names, required = list(arg), set(arg)
    else:
        names, required = [], set()
        for key in sources:
            value = arg.get(key)
            group = [value] if isinstance(value, str) else list(value or ())
            names += group
            if key in required_sources:
                required.update(group)
    values = {n: _get(cfg, n) for n in names}
    if all(v is None for v in values.values()) and not run_missing:
        return
    missing = [n for n in names if values[n] is None and n in required and not run_missing]
    if missing:
        raise ConfigError(missing[0].removeprefix("config."), "required field missing (for an entity check)")
    _run_checker(kind, arg, cfg)


def _run_checker(kind: str, arg: Any, cfg: dict[str, Any]) -> None:
    if kind == "at_least_one_of":
        if not any(_nonempty(_get(cfg, p)) for p in arg):
            raise ConfigError(arg[0].removeprefix("config."), f"at least one of these fields must be non-empty: "
                                                              f"{_names(arg)}")
    elif kind == "mutually_exclusive":
        given = [p for p in arg if _nonempty(_get(cfg, p))]
        if len(given) > 1:
            raise ConfigError(given[-1].removeprefix("config."), f"only one of these fields may be set: "
                                                                 f"{_names(arg)}")
    elif kind == "mutually_required":
        given = [p for p in arg if _nonempty(_get(cfg, p))]
        if given and len(given) < len(arg):
            missing = next(p for p in arg if p not in given)
            raise ConfigError(missing.removeprefix("config."), f"all or none of these fields must be set: "
                                                               f"{_names(arg)}")
    elif kind == "mutually_exclusive_sets":
        one = [p for p in arg["set1"] if _nonempty(_get(cfg, p))]
        two = [p for p in arg["set2"] if _nonempty(_get(cfg, p))]
        if one and two:
            raise ConfigError(two[0].removeprefix("config."), f"these sets are mutually exclusive: "
                                                              f"({_names(arg['set1'])}), ({_names(arg['set2'])})")
    elif kind == "conditional":
        if _matches(arg["if_match"], _get(cfg, arg["if_field"])) and \
                not _matches(arg["then_match"], _get(cfg, arg["then_field"])):
            then = ", ".join(f"{k} {v!r}" for k, v in arg["then_match"].items())
            when = ", ".join(f"{k} {v!r}" for k, v in arg["if_match"].items())
            raise ConfigError(arg["then_field"].removeprefix("config."),
                              arg.get("then_err") or f"must be {then} when "
                                                     f"{arg['if_field'].removeprefix('config.')} is {when}")
    else:  # conditional_at_least_one_of
        if _get(cfg, arg["if_field"]) is not None and _matches(arg["if_match"], _get(cfg, arg["if_field"])) and \
                not any(_nonempty(_get(cfg, p)) for p in arg["then_at_least_one_of"]):
            raise ConfigError(arg["then_at_least_one_of"][0].removeprefix("config."),
                              arg.get("then_err") or f"at least one of these fields must be non-empty: "
                                                     f"{_names(arg['then_at_least_one_of'])}")


_KONG_META = {"route_id", "service_id", "consumer_id", "protocols", "enabled", "id", "name", "ordering",
              "instance_name", "tags", "created_at", "updated_at"}


def kong_schema(fields: tuple[Field, ...]) -> list[dict[str, Any]]:
    """The fields as Kong declares plugin config fields: [{name: {type, default, required, one_of, ...}}]."""
    out = []
    for f in fields:
        spec: dict[str, Any] = {"type": f.type}
        if f.default is not None:
            spec["default"] = list(f.default) if isinstance(f.default, tuple) else f.default
        if f.required:
            spec["required"] = True
        if f.one_of is not None:
            spec["one_of"] = list(f.one_of)
        if f.between is not None:
            spec["between"] = list(f.between)
        if f.gt is not None:
            spec["gt"] = f.gt
        if f.len_min is not None:
            spec["len_min"] = f.len_min
        if f.match_any is not None:
            spec["match_any"] = {"patterns": list(f.match_any)}
        if f.referenceable:
            spec["referenceable"] = True
        if f.encrypted:
            spec["encrypted"] = True
        if f.type in ("array", "set"):
            spec["elements"] = {"type": f.elements or "string"}
            if f.element_one_of is not None:
                spec["elements"]["one_of"] = list(f.element_one_of)
            if f.element_gt is not None:
                spec["elements"]["gt"] = f.element_gt
            if f.element_between is not None:
                spec["elements"]["between"] = list(f.element_between)
            if f.len_max is not None:
                spec["len_max"] = f.len_max
            if f.element_fields:
                spec["elements"] = {"type": "record", "fields": kong_schema(f.element_fields)}
        if f.type == "map":
            spec["keys"] = {"type": "string"}
            spec["values"] = {"type": f.elements or "string"}
        if f.type == "record":
            spec["fields"] = kong_schema(f.fields)
        if f.help:
            spec["description"] = f.help
        out.append({f.name: spec})
    return out
