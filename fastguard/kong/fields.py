"""Plugin configuration fields: one declaration gives the checks at StartInstance and the schema Kong reads.

A field is declared once with its Kong type, default and constraints. `check(fields, config)` returns the config
with defaults filled in, or raises ConfigError naming the field (as `redis.port`, `claims_to_headers.sub`);
`kong_schema(fields)` renders the declaration in the shape of Kong's plugin schemas (what `--dump` prints).
"""

from __future__ import annotations

import math
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
    elements: str | None = None              # element type of an array / set, or value type of a map
    element_one_of: tuple[Any, ...] | None = None
    fields: tuple[Field, ...] = field(default=())  # of a record
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
    if f.type in ("array", "set"):
        out = []
        for i, item in enumerate(value):
            sub = Field(f"{i + 1}", f.elements or "string", one_of=f.element_one_of)
            out.append(_check_value(sub, item, f"{path}[{i + 1}]"))
        if f.type == "set" and len(set(map(repr, out))) != len(out):
            raise ConfigError(path, "duplicate elements in a set")
        return out
    if f.type == "map":
        out_map = {}
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ConfigError(path, f"map keys must be non-empty strings, got {k!r}")
            out_map[k] = _check_value(Field(k, f.elements or "string"), v, f"{path}.{k}")
        return out_map
    if f.type == "record":
        return check(f.fields, value, path + ".")
    return value


def check(fields: tuple[Field, ...], config: Any, prefix: str = "") -> dict[str, Any]:
    """The config with defaults filled in; ConfigError for an unknown field, a wrong type or a broken constraint.
    Kong's own meta fields (`__plugin_id`, `route_id`, ...) are kept as they are."""
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
            if f.required:
                raise ConfigError(prefix + f.name, "required field missing")
            out[f.name] = check(f.fields, {}, prefix + f.name + ".") if f.type == "record" and f.default is None \
                else (list(f.default) if isinstance(f.default, (list, tuple)) else f.default)
            continue
        out[f.name] = _check_value(f, value, prefix + f.name)
    return out


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
        if f.type in ("array", "set"):
            spec["elements"] = {"type": f.elements or "string"}
            if f.element_one_of is not None:
                spec["elements"]["one_of"] = list(f.element_one_of)
        if f.type == "map":
            spec["keys"] = {"type": "string"}
            spec["values"] = {"type": f.elements or "string"}
        if f.type == "record":
            spec["fields"] = kong_schema(f.fields)
        if f.help:
            spec["description"] = f.help
        out.append({f.name: spec})
    return out
