"""The place encoder: dense backbone -> aggregator (VLAD | GeM) -> optional PCA.

    encoder = Encoder.from_config("config/encoders/xfeat_vlad.yaml")
    descriptors = encoder.encode(images)  # (B, dim) float32, rows L2-normalised

`signature()` says exactly which features a descriptor is made of (backbone, layer, facet,
vocabulary hash, PCA hash, dim); maps and evaluation caches record it so descriptors from
different encoders are never mixed.

On a GPU everything after the upload of the uint8 images stays there: preprocessing, the
network, VLAD / GeM, PCA, normalisation and the compact re-ranking patches; only descriptors
(and the patches, when asked) come back. `timings.host_bytes` counts what came back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..camera import CameraModel
from ..config.encoder import EncoderConfig, LocalFeatureConfig
from ..errors import ConfigError, FeatureDimensionError, ImageError
from ..geometry import Pose
from ..types import EncoderSignature, LocalFeatures, digest
from .aggregation import VLAD, GeM
from .backbones import DenseBackbone, Dinov2Backbone, nonfinite_hint
from .depth import sample_depths
from .images import IMAGENET_MEAN, IMAGENET_STD, as_rgb_uint8
from .local_features import XFeatExtractor, xfeat_keypoints, xfeat_signature
from .onnx_backbone import OnnxBackbone
from .projection import PCA
from .vocabulary import Vocabulary


def build_backbone(cfg: EncoderConfig) -> DenseBackbone:
    b = cfg.backbone
    if b.type == "dinov2":
        return Dinov2Backbone(
            model=b.model, layer=b.layer, facet=b.facet, max_side=b.max_side,
            image_size=tuple(b.image_size) if b.image_size else None,
            device=b.device, precision=b.precision, registers=b.registers, resize=b.resize,
            preprocess=b.preprocess, tf32=b.tf32, compile=b.compile, download=b.download,
        )
    return OnnxBackbone(
        b.model_path, input_name=b.input_name, output_name=b.output_name,
        input_size=tuple(b.image_size) if b.image_size else None,
        mean=b.mean if b.mean is not None else IMAGENET_MEAN,
        std=b.std if b.std is not None else IMAGENET_STD,
        output_layout=b.output_layout, device=b.device, max_side=b.max_side, threads=b.threads, resize=b.resize,
    )


@dataclass
class FrameEncoding:
    """What the encoder makes of one camera frame."""

    descriptor: np.ndarray  # (dim,) float32, unit length
    patches: np.ndarray | None = None  # compact patch features for re-ranking
    local: LocalFeatures | None = None  # keypoints for geometric verification


@dataclass
class EncodeTimings:
    """Wall time of the last `encode` call, split by stage (seconds)."""

    preprocess: float = 0.0
    backbone: float = 0.0
    aggregate: float = 0.0
    images: int = 0
    host_bytes: int = 0  # bytes of results brought back from the device (descriptors, patches, features)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return self.preprocess + self.backbone + self.aggregate


class Encoder:
    """Images -> L2-normalised global place descriptors."""

    def __init__(
        self,
        backbone: DenseBackbone,
        aggregator: VLAD | GeM,
        pca: PCA | None = None,
        vocabulary: Vocabulary | None = None,
        config: EncoderConfig | None = None,
        batch_size: int = 8,
        local: LocalFeatureConfig | None = None,
    ) -> None:
        if vocabulary is not None:  # the one compatibility check (every constructor path passes here)
            vocabulary.check_compatible(backbone.signature())
        if isinstance(aggregator, VLAD) and aggregator.feature_dim != backbone.feature_dim:
            raise FeatureDimensionError(
                f"VLAD vocabulary is {aggregator.feature_dim}-D but the backbone gives {backbone.feature_dim}-D features"
            )
        agg_dim = aggregator.dim if isinstance(aggregator, VLAD) else backbone.feature_dim
        if pca is not None and pca.input_dim != agg_dim:
            raise FeatureDimensionError(f"PCA expects {pca.input_dim}-D descriptors but the aggregator gives {agg_dim}-D")
        self.backbone = backbone
        self.aggregator = aggregator
        self.vocabulary = vocabulary
        if pca is not None:
            pca.check_fitted_for(self.pca_binding())
        self.pca = pca
        self.config = config
        self.batch_size = batch_size
        self.dim = pca.output_dim if pca is not None else agg_dim
        self.timings = EncodeTimings()
        self.local_features, self._xfeat = _local_features(local or LocalFeatureConfig(), backbone)

    @classmethod
    def from_config(cls, config: EncoderConfig | dict[str, Any] | str | Path) -> Encoder:
        if isinstance(config, (str, Path)):
            config = EncoderConfig.from_yaml(config)
        elif isinstance(config, dict):
            config = EncoderConfig.from_dict(config)
        backbone = build_backbone(config)
        agg = config.aggregation
        vocab = None
        if agg.type == "vlad":
            if not agg.vocabulary:
                raise ConfigError("aggregation.vocabulary is required for VLAD; build one with `anyloc build-vocab`")
            vocab = Vocabulary.load(agg.vocabulary, agg.vocabulary_layer, agg.vocabulary_facet)
            aggregator: VLAD | GeM = VLAD(vocab.centers, agg.mode, agg.soft_temperature, agg.intra_norm)
        else:
            aggregator = GeM(agg.p, mode=agg.gem_mode)
        pca = PCA.load(config.projection.pca) if config.projection.pca else None
        return cls(backbone, aggregator, pca, vocab, config, config.batch_size, config.local_features)

    def signature(self) -> EncoderSignature:
        """Everything that must match for two descriptors to be comparable."""
        sig = EncoderSignature(self.pca_binding())
        sig["pca"] = digest(self.pca.components) if self.pca is not None else None
        sig["dim"] = self.dim
        sig["preprocess"] = self.backbone.preprocessing()
        dtype = getattr(self.backbone, "dtype", None)  # recorded, not enforced (see EncoderSignature)
        sig["precision"] = str(dtype).replace("torch.", "") if dtype is not None else "onnx"
        sig["local_features"] = self.local_signature()
        return sig

    def local_signature(self) -> str:
        """Which network made the keypoint descriptors ("none" without local features): keyframes
        of one map must have comparable ones."""
        if self.local_features == "backbone":
            return xfeat_signature(self.backbone)
        if self._xfeat is not None:
            return self._xfeat.signature()
        return "none"

    def pca_binding(self) -> dict[str, Any]:
        """What a PCA is fitted to: the un-projected descriptors of this backbone and aggregation."""
        sig = dict(self.backbone.signature())
        if isinstance(self.aggregator, VLAD):
            sig["aggregation"] = f"vlad-{self.aggregator.mode}-k{self.aggregator.num_clusters}"
            if self.aggregator.mode == "soft":
                sig["aggregation"] += f"-t{self.aggregator.soft_temperature:g}"
            sig["vocabulary"] = self.vocabulary.content_hash() if self.vocabulary else digest(self.aggregator.centers)
        else:
            sig["aggregation"] = self.aggregator.name()
            sig["vocabulary"] = None
        return sig

    def aggregate(self, features: torch.Tensor) -> np.ndarray:
        """(B, h, w, D) or (B, N, D) patch features -> (B, dim) descriptors."""
        return self.aggregate_tensor(features).detach().cpu().numpy().astype(np.float32, copy=False)

    def aggregate_tensor(self, features: torch.Tensor) -> torch.Tensor:
        """`aggregate` on the features' device: (B, dim) float32 tensor, rows L2-normalised."""
        x = features.reshape(features.shape[0], -1, features.shape[-1])
        desc = self.aggregator.aggregate_batch_tensor(x)
        if self.pca is not None:
            desc = F.normalize(self.pca.transform_tensor(desc), dim=-1)
        return desc

    def encode(self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """HxWx3 uint8 RGB images (a list, or one image) -> (B, dim) float32, rows L2-normalised."""
        return self._run(images, batch_size, keep_features=False)[0]

    def encode_with_features(
        self, images: Sequence[np.ndarray] | np.ndarray, batch_size: int | None = None
    ) -> tuple[np.ndarray, list[torch.Tensor]]:
        """Descriptors plus each image's (h, w, D) patch features (for re-ranking / caching)."""
        descs, feats, _, _ = self._run(images, batch_size, keep_features=True)
        return descs, feats

    @property
    def provides_keypoints(self) -> bool:
        """Local features for geometric verification: the backbone's keypoint heads (XFeat) or
        XFeat run beside it (local_features in the encoder config)."""
        return self.local_features != "none"

    def encode_frame(self, rgb: np.ndarray, compress: Callable[[torch.Tensor], np.ndarray] | None = None,
                     keypoints: int = 0, camera: CameraModel | None = None, depth: np.ndarray | None = None,
                     mount: Pose | None = None) -> FrameEncoding:
        """One camera frame -> descriptor, compact patches (the patch features through `compress`,
        a rerank.PatchCompressor, when given) and up to `keypoints` local features, finished with
        the camera: each keypoint's depth from `depth` (HxW metres, registered to `rgb`, NaN = no
        reading: depth.depth_in_metres), the lens distortion removed from the positions (they are
        ideal pinhole pixels of `camera.K` afterwards), the intrinsics and the mount attached."""
        desc, _, local, patches = self._run([rgb], None, keep_features=False, compress=compress,
                                            keypoints=keypoints if self.provides_keypoints else 0)
        lf = local[0]
        if lf is not None:
            lf = finish_local_features(lf, camera, depth, mount)
        return FrameEncoding(desc[0], patches[0], lf)

    def _run(self, images: Any, batch_size: int | None, keep_features: bool, keypoints: int = 0,
             compress: Callable[[torch.Tensor], np.ndarray] | None = None
             ) -> tuple[np.ndarray, list[torch.Tensor], list[LocalFeatures | None], list[np.ndarray | None]]:
        """Descriptors; (h, w, D) float32 host features when kept; up to `keypoints` local features
        per image (0: none; the backbone must have keypoint heads); compact patches when a
        compressor is given. Features stay on the backbone's device: only descriptors, compact
        patches and features that were asked for are brought back (`timings.host_bytes`)."""
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
            images = [images]
        images = list(images)
        if not images:
            raise ImageError("no images to encode")
        rgb = [as_rgb_uint8(im) for im in images]
        bs = batch_size or self.batch_size
        out = np.empty((len(rgb), self.dim), dtype=np.float32)
        feats: list[torch.Tensor] = [None] * len(rgb)  # type: ignore[list-item]
        local: list[LocalFeatures | None] = [None] * len(rgb)
        patches: list[np.ndarray | None] = [None] * len(rgb)
        t = EncodeTimings(images=len(rgb))
        # Batch images of one shape together, so one batch is one network input size.
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(rgb):
            groups.setdefault(im.shape, []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), bs):
                chunk = idx[s : s + bs]
                t0 = time.perf_counter()
                pixels = self.backbone.preprocess([rgb[i] for i in chunk])
                _sync(pixels)
                t1 = time.perf_counter()
                own_heads = keypoints and self.local_features == "backbone"
                f, heads = self.backbone.forward_with_heads(pixels) if own_heads else (self.backbone.features(pixels), None)
                _sync(f)
                t2 = time.perf_counter()
                desc = self.aggregate(f)
                t.host_bytes += desc.nbytes
                if not np.isfinite(desc).all():
                    raise FeatureDimensionError(
                        f"the encoder produced NaN/inf descriptors from {f.dtype} features: "
                        + nonfinite_hint(f.dtype))
                out[chunk] = desc
                t_kp = time.perf_counter()
                if heads is not None:  # XFeat's keypoints from the same run
                    for j, i in enumerate(chunk):
                        local[i] = xfeat_keypoints(*(h[j : j + 1] for h in heads), image_size=rgb[i].shape[:2],
                                                   top_k=keypoints)
                elif keypoints and self._xfeat is not None:  # XFeat beside the backbone
                    for i, lf in zip(chunk, self._xfeat.extract([rgb[i] for i in chunk], keypoints), strict=True):
                        local[i] = lf
                t.extra["keypoints"] = t.extra.get("keypoints", 0.0) + time.perf_counter() - t_kp
                for j, i in enumerate(chunk):
                    if compress is not None:
                        patches[i] = compress(f[j])
                        t.host_bytes += patches[i].nbytes
                    if keep_features:
                        feats[i] = f[j].float().cpu()
                        t.host_bytes += feats[i].numel() * 4
                t3 = time.perf_counter()
                t.preprocess += t1 - t0
                t.backbone += t2 - t1
                t.aggregate += t3 - t2
        self.timings = t
        return out, feats, local, patches


def _local_features(cfg: LocalFeatureConfig, backbone: Any) -> tuple[str, XFeatExtractor | None]:
    """("backbone" | "xfeat" | "none", the XFeat network run beside the backbone)."""
    cfg.validate()
    heads = getattr(backbone, "keypoint_heads", None) is not None
    kind = cfg.type
    if kind == "auto":
        kind = "backbone" if heads else ("xfeat" if cfg.model_path else "none")
    if kind == "backbone" and not heads:
        raise ConfigError("local_features.type backbone: this backbone has no keypoint heads; use type xfeat with "
                          "local_features.model_path (XFeat ONNX weights) or type none")
    if kind != "xfeat":
        return kind, None
    device = getattr(backbone, "device", "auto")
    return kind, XFeatExtractor(cfg.model_path, device=str(device) if device is not None else "auto", nms=cfg.nms,
                                min_score=cfg.min_score)


def finish_local_features(lf: LocalFeatures, camera: CameraModel | None, depth: np.ndarray | None,
                          mount: Pose | None) -> LocalFeatures:
    """A frame's keypoints with the camera applied: depths sampled at the detected (distorted)
    positions, then the positions undistorted, K and the mount attached. The one place nodes and
    offline tools finish local features."""
    h, w = lf.image_size
    depths = None
    if depth is not None:
        if depth.shape[:2] != (h, w):
            raise ImageError(f"depth image of {depth.shape[1]}x{depth.shape[0]} does not match the colour image "
                             f"of {w}x{h}")
        depths = sample_depths(depth, lf.keypoints)
    cam = camera.for_image(h, w) if camera is not None else None
    kp = cam.undistort(lf.keypoints) if cam is not None else lf.keypoints
    return LocalFeatures(kp, lf.descriptors, lf.scores, lf.image_size, None if cam is None else cam.K, mount, depths)


def _sync(t: torch.Tensor) -> None:
    """Wait for a CUDA tensor's kernels, so the stage timings are the stages' (on the host a no-op;
    on a GPU it costs a few microseconds: the descriptor copy waits anyway)."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)
