"""Settings: config dataclass fields that are also ROS parameters.

A field declared with `setting(...)` carries its parameter's description and range; its
default is the field's default. Nodes declare their ROS parameters from these fields, offline
tools build the same dataclasses from the same params file, and the README's parameter
table is generated from them, so each fact lives in one place (core/params.py lists which
node reads which dataclass).

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
from dataclasses import dataclass
from typing import Any


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
    """An instance of `cls` from parameter values by ROS name, already checked against their
    specs (core.params.NodeParameters does); missing ones keep their default. The dataclass's
    own `validate()` (rules across fields) runs on the result."""
    obj = cls(**{spec.field: values[spec.name] for spec in specs_of(cls) if spec.name in values})
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate()
    return obj
