"""ONNX backbones: any dense-feature network exported to ONNX, run on onnxruntime (TensorRT /
CUDA execution providers when present, CPU otherwise): XFeat, or a DINOv2 layer/facet
extractor made by `anyloc export-onnx` (export_dinov2_onnx)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ..errors import ConfigError, FeatureDimensionError, WeightsNotFoundError
from .backbones import Dinov2Backbone, cuda_index
from .images import IMAGENET_MEAN, IMAGENET_STD, ResizePolicy, as_rgb_uint8

log = logging.getLogger(__name__)


def _file_fingerprint(path: Path) -> str:
    """Cheap identity of a (possibly multi-GB) model file: size + hash of its first MiB."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    return f"{path.stat().st_size}-{h.hexdigest()[:16]}"


class OnnxBackbone:
    """A dense-feature network exported to ONNX, run on onnxruntime.

    Args:
        model_path: the .onnx file.
        input_name / output_name: tensor names (default: the first input / output).
        resize / input_size / max_side / patch_size: how images are sized for a dynamic input
            (see `images.ResizePolicy`); a fixed input size in the graph is used as it is.
        mean / std: per-channel normalisation of RGB values in [0, 1].
        output_layout: "nchw" (B, D, h, w) or "nhwc" (B, h, w, D).
        device: "auto" / "cuda" use the TensorRT and CUDA providers when installed.
        spin: onnxruntime's idle threads spin for the next run (its default, fastest for
            back-to-back runs); off here: every run is followed by torch work (VLAD, keypoints, a
            torch backbone) on the same cores, which spinning threads slow (bench/per_frame.py).
    """

    kind = "onnx"

    def __init__(
        self,
        model_path: str | Path,
        input_name: str | None = None,
        output_name: str | None = None,
        input_size: tuple[int, int] | None = None,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
        output_layout: str = "nchw",
        device: str = "auto",
        max_side: int = 448,
        patch_size: int = 14,
        threads: int = 0,
        resize: str = "aspect",
        spin: bool = False,
    ) -> None:

        path = Path(model_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"ONNX model not found: {path}. Export one with `anyloc export-onnx` or set "
                "backbone.model_path to an existing .onnx file"
            )
        if output_layout not in ("nchw", "nhwc"):
            raise ConfigError(f"output_layout must be 'nchw' or 'nhwc', got {output_layout!r}")
        available = ort.get_available_providers()
        wanted: list[Any] = ["CPUExecutionProvider"]
        if device != "cpu":
            gpu = {"device_id": cuda_index(device)}  # cuda:1 runs on the second GPU, not the first
            wanted = [(p, gpu) for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available] + wanted
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        if not spin:  # idle threads sleep at once: a torch network sharing the CPU cores is not slowed
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise WeightsNotFoundError(f"cannot load ONNX model {path}: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self.input_name = input_name or next(iter(inputs))
        self.output_name = output_name or next(iter(outputs))
        if self.input_name not in inputs:
            raise ConfigError(f"{path} has no input {self.input_name!r}; inputs: {list(inputs)}")
        if self.output_name not in outputs:
            raise ConfigError(f"{path} has no output {self.output_name!r}; outputs: {list(outputs)}")
        in_shape = inputs[self.input_name].shape
        out_shape = outputs[self.output_name].shape
        if len(in_shape) != 4 or len(out_shape) != 4:
            raise ConfigError(f"ONNX model {path}: input {self.input_name!r} has rank {len(in_shape)} and output "
                              f"{self.output_name!r} rank {len(out_shape)}; a dense backbone takes (B, 3, H, W) "
                              "images and gives a rank-4 feature map (B, D, h, w) or (B, h, w, D)")
        fixed = all(isinstance(s, int) for s in in_shape[2:4])
        self.fixed_size = (int(in_shape[2]), int(in_shape[3])) if fixed else None
        self.fixed_batch = in_shape[0] if isinstance(in_shape[0], int) else None
        # a size fixed in the graph is the input, whatever the configured policy
        self.resize = (ResizePolicy("fixed", size=self.fixed_size, patch_size=1) if self.fixed_size else
                       ResizePolicy(resize, int(max_side), tuple(input_size) if input_size else None, int(patch_size)))
        self.output_layout = output_layout
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.patch_size = int(patch_size)
        self.model_path = path
        ch = out_shape[1] if output_layout == "nchw" else out_shape[-1]
        if not isinstance(ch, int):  # dynamic in the graph: ask the model once
            h, w = self.target_size(self.patch_size * 2, self.patch_size * 2)
            ch = self.forward(torch.zeros(1, 3, h, w)).shape[-1]
        self.feature_dim = int(ch)
        self.providers = self.session.get_providers()
        # XFeat's keypoint heads beside its descriptor map: logits (65 channels: an 8x8 cell's
        # positions + "none") and reliability (1 channel). With them the encoder gives local
        # features for geometric verification from the same network run.
        heads = {o.shape[1]: n for n, o in outputs.items()
                 if n != self.output_name and len(o.shape) == 4 and o.shape[1] in (65, 1)}
        self.keypoint_heads = (heads[65], heads[1]) if (set(heads) == {65, 1} and self.feature_dim == 64
                                                        and output_layout == "nchw") else None
        self._fingerprint = _file_fingerprint(path)
        # An extractor exported by `anyloc export-onnx` carries the signature of the DINOv2
        # layer/facet it computes, so vocabularies and maps built with either path match.
        sidecar = path.with_suffix(".json")
        self._exported_signature = None
        if sidecar.is_file():
            try:
                meta = json.loads(sidecar.read_text(encoding="utf-8"))
            except (ValueError, OSError) as exc:
                raise ConfigError(f"the ONNX model's sidecar {sidecar} is not valid JSON ({exc}); re-export the "
                                  "model with `anyloc export-onnx` or remove the sidecar") from exc
            sig = meta.get("signature") if isinstance(meta, dict) else None
            if sig is not None and (not isinstance(sig, dict) or not isinstance(sig.get("feature_dim"), int)):
                raise ConfigError(f"the ONNX model's sidecar {sidecar} has a malformed 'signature' record; "
                                  "re-export the model with `anyloc export-onnx`")
            self._exported_signature = sig

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return self.resize.input_size(height, width)

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return self.resize([as_rgb_uint8(im) for im in images], self.mean, self.std)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_with_heads(pixels, with_keypoints=False)[0]

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """onnxruntime hands its outputs back as host arrays, whatever the provider: `forward`."""
        return self.forward(pixels)

    def forward_with_heads(self, pixels: torch.Tensor, with_keypoints: bool = True
                           ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
        """(B, h, w, D) features and, when the model has keypoint heads and they are asked for,
        (descriptors (B, D, h, w), logits, reliability) as the network gave them."""
        x = pixels.numpy()
        step = self.fixed_batch or len(x)
        names = [self.output_name, *(self.keypoint_heads or ())] if with_keypoints else [self.output_name]
        try:
            runs = [self.session.run(names, {self.input_name: x[i : i + step]}) for i in range(0, len(x), step)]
        except Exception as exc:  # onnxruntime's own exception types: wrong input type, size, ...
            raise FeatureDimensionError(f"ONNX model {self.model_path.name} failed on a {tuple(x.shape)} input: "
                                        f"{str(exc)[:300]}") from exc
        out, *extra = (torch.from_numpy(np.concatenate([r[j] for r in runs], axis=0)) for j in range(len(names)))
        if out.ndim != 4:
            raise FeatureDimensionError(f"ONNX model {self.model_path.name} gave a rank-{out.ndim} output "
                                        f"{tuple(out.shape)}; a dense feature map has rank 4")
        heads = (out, *extra) if extra else None  # the descriptor map as the network gave it (NCHW)
        if self.output_layout == "nchw":
            out = out.permute(0, 2, 3, 1)
        return out.float().contiguous(), heads

    def extract(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return self.forward(self.preprocess(images))

    def preprocessing(self) -> str:
        return self.resize.name

    def signature(self) -> dict[str, Any]:
        if self._exported_signature:
            return dict(self._exported_signature)
        return {
            "backbone": self.kind,
            "model": f"{self.model_path.name}:{self._fingerprint}",
            "layer": self.output_name,
            "facet": self.output_layout,
            "feature_dim": self.feature_dim,
        }


def export_dinov2_onnx(backbone: Dinov2Backbone, output: str | Path, height: int, width: int, opset: int = 17) -> Path:
    """Export the backbone's layer/facet extractor to ONNX with dynamic batch and image size.

    The output is (B, h, w, D) ("nhwc"); load it with `OnnxBackbone(..., output_layout="nhwc",
    mean=IMAGENET_MEAN, std=IMAGENET_STD)` or the `onnx` backbone config written beside it.
    """
    if backbone.dtype != torch.float32:  # its weights were rounded when it was loaded
        raise ConfigError(f"export from a float32 backbone (this one holds {backbone.dtype} weights): construct it "
                          "with precision float32")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    extractor = backbone.extractor.float().cpu().eval()
    dummy = torch.zeros(1, 3, height, width)
    tmp = output.with_suffix(output.suffix + ".tmp")
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python branches
        torch.onnx.export(
            extractor,
            (dummy,),
            str(tmp),
            input_names=["pixel_values"],
            output_names=["features"],
            dynamic_axes={"pixel_values": {0: "batch", 2: "height", 3: "width"}, "features": {0: "batch", 1: "h", 2: "w"}},
            opset_version=opset,
            dynamo=False,
        )
    os.replace(tmp, output)
    extractor.to(backbone.device, backbone.dtype)
    sidecar = {
        "signature": backbone.signature(),
        "source_model": backbone.model_name,
        "output_layout": "nhwc",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "patch_size": backbone.patch_size,
        "export_size": [height, width],
    }
    output.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return output
