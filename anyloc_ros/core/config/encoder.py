"""Encoder configuration: one YAML file (or a named preset) -> backbone + aggregator + PCA +
local features.

Presets follow hloc's idea: a name stands for the model, its preprocessing and its output
in one small record, and a YAML file may start from a preset and override any field:

    preset: dinov2_vitg14_vlad
    aggregation: {vocabulary: vocab/indoor.npz}

Relative paths in a YAML file are resolved against the file's own directory. Every field is
declared once with its description and the values it may take (config/settings.py, as the node
parameters are); the checks derive from the declarations, `validate()` adds the rules across
fields. The names of the choices live here, so reading a config never loads a network.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from .settings import check_fields, setting

FACETS = ("query", "key", "value", "token")
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
PREPROCESS_PLACES = ("auto", "host", "device")
RESIZE_MODES = ("aspect", "fixed", "anyloc")
LOCAL_FEATURE_TYPES = ("auto", "backbone", "xfeat", "none")


@dataclass(frozen=True)
class Dinov2Size:
    hub_id: str
    hub_id_registers: str
    num_layers: int
    dim: int
    default_layer: int


# Default layer per size. ViT-G/14 layer 31 (value facet) is AnyLoc's measured best; for the
# smaller models AnyLoc reports the peak between the middle and the last block, so the same
# relative depth (~3/4) is the default until measured on the user's data.
DINOV2_SIZES: dict[str, Dinov2Size] = {
    "vits14": Dinov2Size("facebook/dinov2-small", "facebook/dinov2-with-registers-small", 12, 384, 9),
    "vitb14": Dinov2Size("facebook/dinov2-base", "facebook/dinov2-with-registers-base", 12, 768, 9),
    "vitl14": Dinov2Size("facebook/dinov2-large", "facebook/dinov2-with-registers-large", 24, 1024, 18),
    "vitg14": Dinov2Size("facebook/dinov2-giant", "facebook/dinov2-with-registers-giant", 40, 1536, 31),
}

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
    type: str = setting("dinov2", "the network", choices=("dinov2", "onnx"))
    # dinov2
    model: str = setting("vitg14", "DINOv2: a size key (vits14 ... vitg14), hub id or local directory")
    layer: int | None = setting(None, "DINOv2 block whose facet is taken (default: the size's)")
    facet: str = setting("value", "DINOv2 facet", choices=FACETS)
    registers: bool = setting(False, "DINOv2 with registers")
    download: bool = setting(False, "DINOv2: fetch a hub id the Hugging Face cache lacks from the hub (off: local "
                             "directories and the cache only, answered at once on an offline robot)")
    precision: str = setting("auto", "auto: float16 on CUDA, bfloat16 on a CPU with native bf16 (AVX512-BF16 / "
                             "AMX), else float32", choices=PRECISIONS)
    tf32: bool = setting(False, "float32 on CUDA may use TF32 tensor cores (~1e-3 relative error)")
    compile: str = setting("none", "torch.compile mode (reduce-overhead: CUDA graphs)", choices=COMPILE_MODES)
    preprocess: str = setting("auto", "where images are resized and normalised (auto: on the device on CUDA)",
                              choices=PREPROCESS_PLACES)
    # onnx
    model_path: str | None = setting(None, "ONNX: the .onnx file")
    input_name: str | None = setting(None, "ONNX: input tensor (default: the first)")
    output_name: str | None = setting(None, "ONNX: feature output (default: the first)")
    output_layout: str = setting("nchw", "ONNX: feature layout", choices=("nchw", "nhwc"))
    mean: list[float] | None = setting(None, "ONNX: per-channel mean of [0, 1] RGB (default ImageNet)")
    std: list[float] | None = setting(None, "ONNX: per-channel std (default ImageNet)")
    threads: int = setting(0, "ONNX: onnxruntime intra-op threads (0 = its default)", 0, 1024)
    # both: how images are sized (encoding/images.ResizePolicy)
    resize: str = setting("aspect", "aspect (long side <= max_side) | fixed (image_size) | anyloc (AnyLoc's resize "
                          "to image_size, default 480x640, crop to whole patches)", choices=RESIZE_MODES)
    max_side: int = setting(448, "longest image side with resize aspect", 14, 100_000)
    image_size: list[int] | None = setting(None, "[height, width] for resize fixed / anyloc")
    device: str = setting("auto", "auto (CUDA if available), cpu, cuda, cuda:N")

    def validate(self) -> None:
        check_fields(self, "backbone")
        if self.type == "onnx" and not self.model_path:
            raise ConfigError("backbone.model_path is required for an onnx backbone")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"backbone.image_size must be [height, width], got {self.image_size}")
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
    type: str = setting("vlad", "vlad (a vocabulary of cluster centres) or gem (none)", choices=("vlad", "gem"))
    vocabulary: str | None = setting(None, "VLAD vocabulary file (anyloc build-vocab, or AnyLoc's c_centers.pt)")
    mode: str = setting("hard", "VLAD assignment", choices=("hard", "soft"))
    soft_temperature: float = setting(1.0, "soft VLAD temperature", 1e-6, 1e6)
    intra_norm: bool = setting(True, "VLAD intra-normalisation")
    num_clusters: int = setting(32, "clusters of a vocabulary being built", 1, 1_000_000)
    p: float = setting(3.0, "GeM exponent", 1e-6, 1000.0)
    gem_mode: str = setting("anyloc", "anyloc (AnyLoc's code) | positive (classic GeM); see aggregation.GeM",
                            choices=("anyloc", "positive"))
    # the features a vocabulary file that does not record them clusters (AnyLoc's c_centers.pt)
    vocabulary_layer: int | None = setting(None, "DINOv2 layer a c_centers.pt vocabulary was built on")
    vocabulary_facet: str | None = setting(None, "DINOv2 facet a c_centers.pt vocabulary was built on")

    def validate(self) -> None:
        check_fields(self, "aggregation")


@dataclass
class ProjectionConfig:
    pca: str | None = setting(None, "a PCA file made by `anyloc fit-pca`")

    def validate(self) -> None:
        check_fields(self, "projection")


@dataclass
class LocalFeatureConfig:
    """Keypoints for geometric verification (encoding/local_features.py): the backbone's own
    heads, XFeat run beside it, or none."""

    type: str = setting("auto", "auto: the backbone's keypoint heads, else XFeat with model_path, else none",
                        choices=LOCAL_FEATURE_TYPES)
    model_path: str | None = setting(None, "XFeat ONNX weights (input 1x3x640x640, three heads)")
    nms: int = setting(5, "pixels of the network input between two keypoints", 1, 64)
    min_score: float = setting(1e-4, "keypoint score floor", 0.0, 1.0)

    def validate(self) -> None:
        check_fields(self, "local_features")
        if self.type == "xfeat" and not self.model_path:
            raise ConfigError("local_features.type xfeat needs local_features.model_path (XFeat ONNX weights)")


@dataclass
class EncoderConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    local_features: LocalFeatureConfig = field(default_factory=LocalFeatureConfig)
    batch_size: int = setting(8, "images per network run", 1, 100_000)
    preset: str | None = setting(None, "the preset this config starts from", choices=tuple(PRESETS))

    def validate(self) -> EncoderConfig:
        check_fields(self, "encoder")
        for section in (self.backbone, self.aggregation, self.projection, self.local_features):
            section.validate()
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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = _merge(base[k], v)
        else:
            base[k] = v
    return base
