"""Encoder configuration: one YAML file (or a named preset) -> backbone + aggregator + PCA.

Presets follow hloc's idea: a name stands for the model, its preprocessing and its output
in one small record, and a YAML file may start from a preset and override any field:

    preset: dinov2_vitg14_vlad
    aggregation: {vocabulary: vocab/indoor.npz}

Relative paths in a YAML file are resolved against the file's own directory.
"""

from __future__ import annotations

import copy
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union

import yaml

from .backbones import COMPILE_MODES, DINOV2_SIZES, FACETS, PRECISIONS, PREPROCESS_PLACES
from .errors import ConfigError
from .images import RESIZE_MODES
from .local_features import LocalFeatureConfig
from .settings import setting

PRESETS: dict[str, dict[str, Any]] = {
    # AnyLoc's pipeline step for step: images resized to 480x640 and cropped to whole patches,
    # DINOv2 ViT-G/14 layer 31 value facet, hard VLAD over 32 clusters (PCA whitened when a PCA
    # file from `anyloc fit-pca` is set). The paper's best.
    "dinov2_vitg14_vlad": {
        "backbone": {"type": "dinov2", "model": "vitg14", "layer": 31, "facet": "value", "resize": "anyloc"},
        "aggregation": {"type": "vlad", "mode": "hard"},
    },
    "dinov2_vitl14_vlad": {
        "backbone": {"type": "dinov2", "model": "vitl14", "layer": 18, "facet": "value", "resize": "anyloc"},
        "aggregation": {"type": "vlad", "mode": "hard"},
    },
    "dinov2_vitb14_vlad": {
        "backbone": {"type": "dinov2", "model": "vitb14", "layer": 9, "facet": "value", "resize": "anyloc"},
        "aggregation": {"type": "vlad", "mode": "hard"},
    },
    # Small and vocabulary-free: for robots with little compute and no domain images yet. The
    # aspect-kept resize (long side <= 448, never upsampled) runs half of AnyLoc's 1,530 patches
    # on a 640x480 camera and 99 instead of 1,530 on a 160x120 one.
    "dinov2_vits14_gem": {
        "backbone": {"type": "dinov2", "model": "vits14", "layer": 9, "facet": "value", "resize": "aspect",
                     "max_side": 448},
        "aggregation": {"type": "gem", "p": 3.0},
    },
    # The real pretrained dense network available offline: XFeat's 64-D descriptors, 80x80 grid
    # (its graph fixes the input at 640x640, whatever the resize setting).
    "xfeat_vlad": {
        "backbone": {"type": "onnx", "output_name": "output", "output_layout": "nchw",
                     "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "aggregation": {"type": "vlad", "mode": "hard"},
    },
}


@dataclass
class BackboneConfig:
    type: str = "dinov2"  # dinov2 | onnx
    # dinov2
    model: str = "vitg14"  # size key, hub id or local directory
    layer: int | None = None
    facet: str = "value"
    registers: bool = False
    # auto: float16 on CUDA, bfloat16 on a CPU with native bf16 (AVX512-BF16 / AMX), else float32
    precision: str = "auto"
    tf32: bool = False  # float32 on CUDA may use TF32 tensor cores (~1e-3 relative error)
    compile: str = "none"  # none | default | reduce-overhead (CUDA graphs) | max-autotune (torch.compile)
    preprocess: str = "auto"  # where images are resized/normalised: auto (device on CUDA) | host | device
    # onnx
    model_path: str | None = None
    input_name: str | None = None
    output_name: str | None = None
    output_layout: str = "nchw"
    mean: list[float] | None = None
    std: list[float] | None = None
    threads: int = 0
    # both: how images are sized (images.ResizePolicy): aspect (long side <= max_side) | fixed
    # (image_size) | anyloc (AnyLoc's resize to image_size, default 480x640, crop to whole patches)
    resize: str = "aspect"
    max_side: int = 448
    image_size: list[int] | None = None
    device: str = "auto"

    def validate(self) -> None:
        check_types(self, "backbone")
        if self.type not in ("dinov2", "onnx"):
            raise ConfigError(f"backbone.type must be 'dinov2' or 'onnx', got {self.type!r}")
        if self.facet not in FACETS:
            raise ConfigError(f"backbone.facet must be one of {FACETS}, got {self.facet!r}")
        for name, allowed in (("precision", PRECISIONS), ("compile", COMPILE_MODES), ("preprocess", PREPROCESS_PLACES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"backbone.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.type == "onnx" and not self.model_path:
            raise ConfigError("backbone.model_path is required for an onnx backbone")
        if self.max_side < 14:
            raise ConfigError(f"backbone.max_side must be >= 14, got {self.max_side}")
        if self.threads < 0:
            raise ConfigError(f"backbone.threads must be >= 0, got {self.threads}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"backbone.image_size must be [height, width], got {self.image_size}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"backbone.resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.resize == "fixed" and self.image_size is None:
            raise ConfigError("backbone.resize 'fixed' needs backbone.image_size [height, width]")
        if self.resize == "aspect" and self.image_size is not None and self.type == "dinov2":
            raise ConfigError("backbone.image_size is used by resize 'fixed' or 'anyloc'; set backbone.resize "
                              "(with 'aspect' the long side is capped at max_side)")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None and len(v) != 3:
                raise ConfigError(f"backbone.{name} must have 3 values, got {v}")
        if self.type == "dinov2" and self.model in DINOV2_SIZES and self.layer is not None:
            n = DINOV2_SIZES[self.model].num_layers
            if not -n <= self.layer < n:
                raise ConfigError(f"backbone.layer {self.layer} out of range for {self.model} ({n} blocks)")


@dataclass
class AggregationConfig:
    type: str = "vlad"  # vlad | gem
    vocabulary: str | None = None
    mode: str = "hard"
    soft_temperature: float = 1.0
    intra_norm: bool = True
    num_clusters: int = 32  # used when building a vocabulary
    p: float = 3.0
    gem_mode: str = "anyloc"  # anyloc (AnyLoc's code) | positive (classic GeM); see aggregation.GeM
    # the features a vocabulary file that does not record them clusters (AnyLoc's c_centers.pt)
    vocabulary_layer: int | None = None
    vocabulary_facet: str | None = None

    def validate(self) -> None:
        check_types(self, "aggregation")
        if self.type not in ("vlad", "gem"):
            raise ConfigError(f"aggregation.type must be 'vlad' or 'gem', got {self.type!r}")
        if self.gem_mode not in ("anyloc", "positive"):
            raise ConfigError(f"aggregation.gem_mode must be 'anyloc' or 'positive', got {self.gem_mode!r}")
        if self.mode not in ("hard", "soft"):
            raise ConfigError(f"aggregation.mode must be 'hard' or 'soft', got {self.mode!r}")
        if self.soft_temperature <= 0 or self.p <= 0 or self.num_clusters < 1:
            raise ConfigError("aggregation.soft_temperature, p and num_clusters must be positive")


@dataclass
class ProjectionConfig:
    pca: str | None = None  # path of a PCA file made by `anyloc fit-pca`


@dataclass
class EncoderConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    local_features: LocalFeatureConfig = field(default_factory=LocalFeatureConfig)
    batch_size: int = 8
    preset: str | None = None

    def validate(self) -> EncoderConfig:
        check_types(self, "")
        self.backbone.validate()
        self.aggregation.validate()
        check_types(self.projection, "projection")
        check_types(self.local_features, "local_features")
        self.local_features.validate()
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, base_dir: str | Path | None = None) -> EncoderConfig:
        data = copy.deepcopy(data or {})
        preset = data.get("preset")
        if preset is not None:
            if preset not in PRESETS:
                raise ConfigError(f"unknown encoder preset {preset!r}; known: {sorted(PRESETS)}")
            data = _merge(copy.deepcopy(PRESETS[preset]), data)
        unknown = set(data) - {"backbone", "aggregation", "projection", "local_features", "batch_size", "preset"}
        if unknown:
            raise ConfigError(f"unknown encoder config keys: {sorted(map(str, unknown))}")
        sections = {}
        for name in ("backbone", "aggregation", "projection", "local_features"):
            section = data.get(name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"encoder config section '{name}' must be a mapping, got {type(section).__name__}")
            sections[name] = section
        try:
            cfg = cls(
                backbone=BackboneConfig(**sections["backbone"]),
                aggregation=AggregationConfig(**sections["aggregation"]),
                projection=ProjectionConfig(**sections["projection"]),
                local_features=LocalFeatureConfig(**sections["local_features"]),
                batch_size=data.get("batch_size", 8),
                preset=preset,
            )
        except TypeError as exc:  # unknown field in a section
            raise ConfigError(f"invalid encoder config: {exc}") from exc
        cfg.validate()  # types first: paths are resolved only in a well-typed config
        if base_dir is not None:
            cfg.resolve_paths(Path(base_dir))
        return cfg.validate()

    @classmethod
    def from_yaml(cls, path: str | Path) -> EncoderConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"encoder config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
            raise ConfigError(f"encoder config {path} is not a readable YAML text file: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"encoder config {path} must be a mapping")
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except ConfigError as exc:
            raise ConfigError(f"encoder config {path}: {exc}") from exc

    def resolve_paths(self, base: Path) -> None:
        def fix(p: str | None) -> str | None:
            if p is None:
                return None
            q = Path(os.path.expandvars(p)).expanduser()
            return str(q if q.is_absolute() else (base / q).resolve())

        self.backbone.model_path = fix(self.backbone.model_path)
        self.aggregation.vocabulary = fix(self.aggregation.vocabulary)
        self.projection.pca = fix(self.projection.pca)
        self.local_features.model_path = fix(self.local_features.model_path)
        # A DINOv2 model given as a directory relative to the file (hub ids stay as they are).
        if self.backbone.type == "dinov2" and (base / self.backbone.model).is_dir():
            self.backbone.model = str((base / self.backbone.model).resolve())


@dataclass
class EncoderSelection:
    """Which encoder a node or command runs: a config file or a preset, plus the usual overrides.

    The nodes read these as ROS parameters and the CLI as `--config/--preset/--vocabulary/
    --pca/--device`; both build the EncoderConfig here."""

    encoder_config: str = setting("", "encoder config YAML (backbone + aggregation + PCA); empty = encoder_preset")
    encoder_preset: str = setting("dinov2_vitg14_vlad", "named encoder preset used when encoder_config is empty",
                                  choices=tuple(PRESETS))
    vocabulary: str = setting("", "VLAD vocabulary file; overrides the encoder config's aggregation.vocabulary")
    pca: str = setting("", "PCA file; overrides the encoder config's projection.pca")
    device: str = setting("", "encoder device: auto (CUDA if available), cpu, cuda, cuda:N; empty = the encoder "
                          "config's backbone.device (auto unless set)")
    local_features_model: str = setting("", "XFeat ONNX weights run beside the backbone for keypoints (geometric "
                                        "verification of loop closures with DINOv2); overrides local_features."
                                        "model_path")

    def build(self) -> EncoderConfig:
        if self.encoder_config:
            cfg = EncoderConfig.from_yaml(self.encoder_config)
        else:
            cfg = EncoderConfig.from_dict({"preset": self.encoder_preset})
        if self.vocabulary:
            cfg.aggregation.vocabulary = str(Path(self.vocabulary).expanduser().resolve())
        if self.pca:
            cfg.projection.pca = str(Path(self.pca).expanduser().resolve())
        if self.device:
            cfg.backbone.device = self.device
        if self.local_features_model:
            cfg.local_features.model_path = str(Path(self.local_features_model).expanduser().resolve())
        return cfg.validate()


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
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
    return {type(None): "null", str: "a string", int: "an integer", float: "a number", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def check_types(obj: Any, section: str) -> None:
    """The config dataclass is the schema: every field must have its declared type (ints are
    accepted for floats, then stored as floats), else a ConfigError naming the field."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        if typing.get_origin(tp) is None and tp not in (int, float, str, bool, type(None)):
            continue  # a nested section, checked by its own validate()
        if not _type_ok(value, tp):
            raise ConfigError(f"{section + '.' if section else ''}{f.name} must be {_type_name(tp)}, got {value!r}")
        setattr(obj, f.name, _as_declared(value, tp))


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = v
    return base
