"""Node parameters: declared from the core parameter table (core/config/params.py), read once at
start-up and validated. Every problem is collected and raised together as a `ParameterError`,
which each node's `main()` reports as one clear start-up error."""

from __future__ import annotations

import os
from pathlib import Path

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

from ..core.config.params import NodeParameters, check_values, node_specs
from ..core.config.settings import ParamSpec
from ..core.errors import AnyLocError, ConfigError


class ParameterError(AnyLocError, ValueError):
    """Invalid node parameters (all problems listed)."""


def _descriptor(spec: ParamSpec) -> ParameterDescriptor:
    desc = ParameterDescriptor(description=spec.description)
    if spec.min is not None and spec.max is not None and not isinstance(spec.default, bool):
        if isinstance(spec.default, int):
            desc.integer_range = [IntegerRange(from_value=int(spec.min), to_value=int(spec.max), step=0)]
        elif isinstance(spec.default, float):
            desc.floating_point_range = [FloatingPointRange(from_value=float(spec.min), to_value=float(spec.max),
                                                            step=0.0)]
    if spec.choices:
        desc.additional_constraints = "one of: " + ", ".join(spec.choices)
    return desc


def declare(node: Node, kind: str) -> NodeParameters:
    """Declare and read the parameters of a node of `kind` (a key of core.params.NODE_PARAMETERS;
    the runtime name may differ); raise ParameterError listing every invalid one."""
    raw, errors = {}, []
    for spec in node_specs(kind):
        try:
            raw[spec.name] = node.declare_parameter(spec.name, spec.default, _descriptor(spec)).value
        except Exception as exc:  # rclpy raises InvalidParameterValueException / type errors
            errors.append(f"{spec.name}: {exc}")
    values, problems = check_values(kind, raw)
    errors += problems
    if not errors:
        params = NodeParameters(kind, values)
        for cls in params.groups:  # the rules across fields of each group (its validate())
            try:
                params.get(cls)
            except ConfigError as exc:
                errors.append(str(exc))
    if errors:
        raise ParameterError(f"invalid parameters for node '{node.get_name()}':\n  " + "\n  ".join(errors))
    return params


def validate_map_path(node_name: str, value: str, must_exist: bool = False) -> str:
    """A map directory parameter: set, no NUL bytes, not an existing file, and (when it must
    exist) holding a map. Returns the expanded absolute path."""
    if not value:
        raise ParameterError(f"node '{node_name}': map_path must be set")
    if "\x00" in value:
        raise ParameterError(f"node '{node_name}': map_path contains a NUL byte")
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ParameterError(f"node '{node_name}': map_path {path} exists and is not a directory")
    if not must_exist:
        parent = next((p for p in (path, *path.parents) if p.exists()), None)
        if parent is None or not os.access(parent, os.W_OK):
            raise ParameterError(f"node '{node_name}': cannot create a map at {path} (no writable parent directory)")
    return str(path)
