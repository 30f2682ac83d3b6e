"""The parameter table: which settings dataclasses each node reads, and params files.

Every ROS parameter of the package is a field of a settings dataclass (config/settings.py):
the recognition and map settings (config/recognition.py, config/map.py), the encoder selection
(config/encoder.py) and the nodes' own groups (config/nodes.py). `NODE_PARAMETERS` says which
node declares which groups. The
nodes declare exactly these; `anyloc replay --offline` and the other tools build the same
dataclasses from the same params file with `NodeParameters.from_file`; `anyloc params`
prints the table the README carries (a test keeps README, config/anyloc.yaml and this table
in agreement).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError
from .encoder import EncoderSelection
from .map import IndexConfig
from .nodes import (
    CameraSettings,
    DepthSettings,
    EncoderNodeSettings,
    FleetSettings,
    MappingSettings,
    MapSettings,
    PipelineSettings,
    PoseSettings,
    RecognitionSettings,
)
from .recognition import KeyframeGateConfig, LoopClosureConfig, SequenceConfig, VerificationConfig
from .settings import ParamSpec, build, specs_of

T = TypeVar("T")


NODE_PARAMETERS: dict[str, tuple[type, ...]] = {
    "encoder_node": (EncoderSelection, EncoderNodeSettings, CameraSettings, DepthSettings),
    "mapping_node": (MapSettings, IndexConfig, PoseSettings, MappingSettings, KeyframeGateConfig, FleetSettings),
    "recognition_node": (MapSettings, IndexConfig, PoseSettings, RecognitionSettings, LoopClosureConfig,
                         SequenceConfig, VerificationConfig, FleetSettings),
    "anyloc_pipeline": (PipelineSettings,),
}


def node_specs(node: str) -> list[ParamSpec]:
    """The parameters `node` declares, in table order (a group shared by two nodes is one copy)."""
    if node not in NODE_PARAMETERS:
        raise ConfigError(f"unknown node {node!r}; known: {sorted(NODE_PARAMETERS)}")
    return [s for cls in NODE_PARAMETERS[node] for s in specs_of(cls)]


def all_names() -> set[str]:
    return {s.name for node in NODE_PARAMETERS for s in node_specs(node)}


def check_values(node: str, values: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Every parameter of `node`: its default, or the given value as declared (ints become
    floats where floats are declared); and the problems, one line each (unknown names, types,
    ranges, choices)."""
    specs = {s.name: s for s in node_specs(node)}
    out = {name: s.default for name, s in specs.items()}
    errors = []
    for name, value in values.items():
        if name not in specs:
            errors.append(f"{name}: not a parameter of {node}")
            continue
        out[name], why = specs[name].check(value)
        if why:
            errors.append(why)
    return out, errors


class NodeParameters:
    """One node's parameter values (by ROS name) and the settings dataclasses built from them."""

    def __init__(self, node: str, values: dict[str, Any] | None = None) -> None:
        self.values, errors = check_values(node, values or {})
        if errors:
            raise ConfigError(f"invalid parameters for {node}: " + "; ".join(errors))
        self.node = node
        self.groups = NODE_PARAMETERS[node]
        self._built: dict[type, Any] = {}

    def get(self, cls: type[T]) -> T:
        """The settings object of group `cls` (built and validated once)."""
        if cls not in self.groups:
            raise ConfigError(f"{self.node} has no {cls.__name__} parameters")
        if cls not in self._built:
            self._built[cls] = build(cls, self.values)
        return self._built[cls]

    @classmethod
    def from_file(cls, path: str | Path | None, node: str, overrides: dict[str, Any] | None = None
                  ) -> NodeParameters:
        """The values a node named `node` takes from a ROS 2 params file (`/**` first, then its own
        section), then `overrides` (as `-p name:=value` on the command line would)."""
        values: dict[str, Any] = {}
        if path is not None:
            sections = read_params_file(path)
            own = {s.name for s in node_specs(node)}
            values.update({k: v for k, v in sections.get("/**", {}).items() if k in own})
            values.update(sections.get(node, {}))
        values.update(overrides or {})
        return cls(node, values)


def read_params_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """A ROS 2 params file as {"/**" or node name: {parameter: value}} (nested keys joined with
    dots, as rcl does). Names no node of the package declares are refused (typos)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"params file {path} is not a readable YAML file: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"params file {path} must map node names to ros__parameters")
    known, out = all_names(), {}
    for key, section in data.items():
        name = str(key).strip("/")
        name = "/**" if name in ("**", "") else name.rsplit("/", 1)[-1]  # "/ns/node", "/**/node" -> node
        params = section.get("ros__parameters") if isinstance(section, dict) else None
        if not isinstance(params, dict):
            raise ConfigError(f"params file {path}: section {key!r} has no ros__parameters mapping")
        flat = _flatten(params)
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ConfigError(f"params file {path}: section {key!r}: unknown parameters {unknown}")
        out.setdefault(name, {}).update(flat)
    return out


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def markdown_table() -> str:
    """The README's parameter table: every node's parameters, defaults and ranges."""
    rows = ["| node | parameter | default | range | description |", "|---|---|---|---|---|"]
    names = {node: {s.name for s in node_specs(node)} for node in NODE_PARAMETERS}
    seen: set[str] = set()
    for node in NODE_PARAMETERS:
        for s in node_specs(node):
            if s.name in seen:  # a shared group: listed once, under every node that reads it
                continue
            seen.add(s.name)
            readers = ", ".join(n for n in NODE_PARAMETERS if s.name in names[n])
            default = "`\"\"`" if s.default == "" else f"`{str(s.default).lower() if isinstance(s.default, bool) else s.default}`"
            rows.append(f"| {readers} | `{s.name}` | {default} | {s.range_text} | {s.description} |")
    return "\n".join(rows)


def params_file_text() -> str:
    """A params file holding every parameter at its default with its description: the shipped
    config/anyloc.yaml is this text (a test keeps them equal), a starting point to edit.
    Parameters several nodes declare are written once, under `/**`."""
    readers: dict[str, list[str]] = {}
    for node in NODE_PARAMETERS:
        for spec in node_specs(node):
            readers.setdefault(spec.name, []).append(node)
    sections: dict[str, list[ParamSpec]] = {"/**": []}
    seen: set[str] = set()
    for node in NODE_PARAMETERS:
        for spec in node_specs(node):
            if spec.name in seen:
                continue
            seen.add(spec.name)
            sections.setdefault("/**" if len(readers[spec.name]) > 1 else node, []).append(spec)
    lines = ["# anyloc_ros node parameters: every parameter at its default, with its description (generated",
             "# by `anyloc params --file` from the parameter table, core/config/params.py; README \"Parameters\"",
             "# lists ranges). Copy it and change what your robot needs; paths are absolute or relative to the",
             "# directory the nodes start in."]
    for section, specs in sections.items():
        lines += ["", f"{section}:", "  ros__parameters:"]
        for spec in specs:
            value = yaml.safe_dump(spec.default, default_flow_style=True).strip().removesuffix("...").strip()
            lines.append(f"    {spec.name}: {value}  # {spec.description}")
    return "\n".join(lines) + "\n"
