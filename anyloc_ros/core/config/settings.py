"""Settings: config dataclass fields declared with their description, range and choices.

A field declared with `setting(...)` carries its description and the values it may take; its
default is the field's default. Every check is derived from the declaration (`check_fields`:
type from the annotation, range, choices); a config's own `validate()` adds only rules across
fields. Node parameters are such fields (nodes declare their ROS parameters from them, offline
tools build the same dataclasses from the same params file, the README's parameter table is
generated from them: config/params.py lists which node reads which dataclass), and so are the
encoder config's sections (config/encoder.py), which are YAML, not ROS parameters.

    @dataclass
    class KeyframeGateConfig:
        PREFIX: ClassVar[str] = "keyframe."
        min_distance_m: float = setting(0.5, "new keyframe after moving this far", 0.0, 1e6)

gives the ROS parameter `keyframe.min_distance_m` (a field may override its full name).
"""

from __future__ import annotations

import array
import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Union

from ..errors import ConfigError


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: name, default, description and the values it may take."""

    name: str
    default: Any
    description: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    field: str = ""  # the settings dataclass field the value goes into

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(value as declared, None) or (value, why it is refused). Ints are accepted for floats."""
        d = self.default
        if isinstance(d, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(d, list):  # a list of numbers (ROS double array)
            if not isinstance(value, (list, tuple, array.array)) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                return value, f"{self.name}: expected a list of finite numbers, got {value!r}"
            return [float(v) for v in value], None
        if type(value) is not type(d):
            return value, f"{self.name}: expected {type(d).__name__}, got {value!r}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):
                return value, f"{self.name}: must be finite, got {value}"
            if self.min is not None and value < self.min or self.max is not None and value > self.max:
                return value, f"{self.name}: {value} is outside [{self.min}, {self.max}]"
        if self.choices and value not in self.choices:
            return value, f"{self.name}: {value!r} is not one of {list(self.choices)}"
        return value, None

    @property
    def range_text(self) -> str:
        if self.choices:
            return " \\| ".join(self.choices)
        if self.min is not None and self.max is not None:
            return f"[{self.min:g}, {self.max:g}]"
        return ""


def setting(default: Any, description: str, min: float | None = None, max: float | None = None,
            choices: tuple[str, ...] | None = None, name: str | None = None) -> Any:
    """A dataclass field that is also a ROS parameter (see the module docstring)."""
    meta = {"param": {"description": description, "min": min, "max": max, "choices": choices, "name": name}}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def specs_of(cls: type) -> list[ParamSpec]:
    """The ROS parameters of a settings dataclass, in field order."""
    prefix = getattr(cls, "PREFIX", "")
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("param")
        if meta is None:
            continue  # a plain field: set in code, not a parameter
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append(ParamSpec(meta["name"] or prefix + f.name, default, meta["description"], meta["min"],
                             meta["max"], meta["choices"], f.name))
    return out


def build(cls: type, values: dict[str, Any]) -> Any:
    """An instance of `cls` from parameter values by ROS name (config.params.NodeParameters
    checks them against their specs first); missing ones keep their default. The declarations'
    checks and the dataclass's own `validate()` (rules across fields) run on the result."""
    obj = cls(**{spec.field: values[spec.name] for spec in specs_of(cls) if spec.name in values})
    check_fields(obj)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj


def check_fields(obj: Any, section: str = "") -> None:
    """Every field of a config dataclass as declared: its annotated type (ints accepted for
    floats, then stored as floats; nested sections are left to their own validate()), and for
    fields declared with `setting`, its range and choices. A ConfigError names the field."""
    hints = typing.get_type_hints(type(obj))
    prefix = f"{section}." if section else getattr(type(obj), "PREFIX", "")
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        if typing.get_origin(tp) is None and tp not in (int, float, str, bool, list, type(None)):
            continue  # a nested section, checked by its own validate()
        meta = f.metadata.get("param")
        name = (meta and meta["name"]) or prefix + f.name
        if not _type_ok(value, tp):
            raise ConfigError(f"{name} must be {_type_name(tp)}, got {value!r}")
        value = _as_declared(value, tp)
        setattr(obj, f.name, value)
        if meta is None or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value}")
        lo, hi, choices = meta["min"], meta["max"], meta["choices"]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (lo is not None and value < lo or hi is not None and value > hi):
            raise ConfigError(f"{name} must be in [{lo:g}, {hi:g}], got {value}")
        if choices and value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list or tp is list:
        args = typing.get_args(tp)
        return isinstance(value, list) and (not args or all(_type_ok(v, args[0]) for v in value))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _as_declared(value: Any, tp: Any) -> Any:
    """A well-typed value with ints turned into floats where the schema says float (also in lists)."""
    origin = typing.get_origin(tp)
    if tp is float:
        return float(value)
    if origin is list:
        return [_as_declared(v, typing.get_args(tp)[0]) for v in value]
    if origin in (Union, types.UnionType):
        return _as_declared(value, next(a for a in typing.get_args(tp) if _type_ok(value, a)))
    return value


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _type_name(item))
    return {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "true/false",
            list: "a list"}.get(tp, getattr(tp, "__name__", str(tp)))
