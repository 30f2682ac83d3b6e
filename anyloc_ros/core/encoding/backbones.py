"""Dense feature backbones: images in, patch features (B, h, w, D) out.

Two implementations share the `DenseBackbone` interface:

* `Dinov2Backbone` — DINOv2 (with or without registers) through transformers, any layer and
  facet (query | key | value | token). Only the blocks up to the chosen layer are kept and
  run; for the q/k/v facets the chosen block stops after its projection.
* `OnnxBackbone` (onnx_backbone.py) — any dense-feature network exported to ONNX, on
  onnxruntime: XFeat, or a DINOv2 extractor made by `anyloc export-onnx`.

CLS and register tokens are dropped. `features()` is the network alone and leaves its output
where it was computed (the GPU on a CUDA robot, in the compute precision), so the encoder can
aggregate there and copy back only the descriptor; `forward()` is the same as float32 on the host.

Precision policy (`precision: auto`): float16 on CUDA; on a CPU with native bfloat16 (AVX512-BF16
or AMX) bfloat16, else float32. float32 on CUDA runs in true fp32 unless `tf32: true` (PyTorch lets
cuDNN run the patch-embedding convolution in TF32 by default: 8e-4 from the CPU's features instead
of 3e-6). Trained ViT-G/14 has activations beyond fp16's range in places; non-finite features are
reported with the setting to change (`nonfinite_hint`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config.encoder import COMPILE_MODES, DINOV2_SIZES, FACETS, PRECISIONS, PREPROCESS_PLACES
from ..errors import ConfigError, WeightsNotFoundError
from .images import IMAGENET_MEAN, IMAGENET_STD, ResizePolicy, as_rgb_uint8

log = logging.getLogger(__name__)

class DenseBackbone(Protocol):
    """Images in, dense patch features out."""

    feature_dim: int

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Network input size (h, w) used for an image of the given size."""

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Validate, resize and normalise images into one (B, 3, h, w) float32 tensor.

        A batch is resized to one input size: the target size of its first image."""

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare network: (B, 3, h, w) pixels -> (B, h', w', D) features on the backbone's
        device, in its compute precision."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """`features` as float32 on the CPU."""

    def extract(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """`forward(preprocess(images))`."""

    def signature(self) -> dict[str, Any]:
        """What a vocabulary or map built on these features must match."""

    def preprocessing(self) -> str:
        """How images are sized for the network (part of the encoder signature: the same image
        at another resolution gives other descriptors)."""


def resolve_device(device: str) -> torch.device:
    """'auto' -> CUDA when available, else CPU; an unavailable CUDA request falls back to CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = _parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        log.warning("device %r requested but CUDA is not available; falling back to CPU", device)
        return torch.device("cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()  # else the first .to() fails deep in torch with "invalid device ordinal"
        raise ConfigError(f"device {device!r}: this machine has {n} CUDA device(s) (cuda:0 to cuda:{n - 1})")
    return dev


def _parse_device(device: str) -> torch.device:
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc


def cuda_index(device: str) -> int:
    """The GPU ordinal a device name asks for ("auto", "cuda": 0; "cuda:N": N), for libraries
    that take an ordinal (onnxruntime's providers)."""
    dev = _parse_device("cuda" if device == "auto" else device)
    if dev.type != "cuda":
        raise ConfigError(f"device {device!r} is not a CUDA device; use auto, cpu, cuda or cuda:N")
    return dev.index or 0




def cpu_has_native_bf16() -> bool:
    """The CPU computes bfloat16 matrix products natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe
        return False


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """'auto' -> float16 on CUDA, bfloat16 on a CPU with native bf16, else float32; or an
    explicit float32/float16/bfloat16."""
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if precision not in table:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float16" and device.type == "cpu":
        log.warning("float16 on CPU is slow and poorly supported; using float32")
        return torch.float32
    return table[precision]


def nonfinite_hint(dtype: torch.dtype) -> str:
    """What to change when a backbone gives NaN/inf features in `dtype`."""
    if dtype == torch.float16:
        return ("float16 overflow (trained ViT-G/14 has activations beyond fp16's range): set backbone.precision "
                "to bfloat16 (same range as float32, as fast on recent GPUs) or float32")
    return "the model weights or inputs are damaged (this happens in float32/bfloat16 only with a broken model)"


@contextlib.contextmanager
def fp32_math(device: torch.device, allow_tf32: bool) -> Iterator[None]:
    """float32 convolutions and matrix products on CUDA in true fp32 (IEEE) or TF32, for the
    duration of one forward; the process-wide settings are restored after it."""
    if device.type != "cuda":
        yield
        return
    mode = "tf32" if allow_tf32 else "ieee"
    conv, matmul = getattr(torch.backends.cudnn, "conv", None), torch.backends.cuda.matmul
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch >= 2.9
        saved = (conv.fp32_precision, matmul.fp32_precision)
        conv.fp32_precision, matmul.fp32_precision = mode, mode
        try:
            yield
        finally:
            conv.fp32_precision, matmul.fp32_precision = saved
    else:  # older torch: the legacy switches (mixing the two APIs is an error in newer ones)
        saved = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = matmul.allow_tf32 = allow_tf32
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32, matmul.allow_tf32 = saved


def _find_projection(block: nn.Module, facet: str) -> nn.Module:
    """The q/k/v Linear of a transformers DINOv2 block (names differ across versions)."""
    attn = block.attention
    names = {"query": ("q_proj", "query"), "key": ("k_proj", "key"), "value": ("v_proj", "value")}[facet]
    for holder in (attn, getattr(attn, "attention", None)):
        for name in names:
            if holder is not None and isinstance(getattr(holder, name, None), nn.Linear):
                return getattr(holder, name)
    raise ConfigError(f"cannot find the {facet} projection in {type(attn).__name__}")


class Dinov2FacetExtractor(nn.Module):
    """Embeddings + blocks 0..layer of a DINOv2 model, returning one facet of block `layer`.

    `value` (AnyLoc's choice) is the value projection of the block's LayerNorm'd input;
    `token` is the block's output. The forward pass is plain tensor code, so it exports to
    ONNX and traces as is.
    """

    def __init__(self, model: nn.Module, layer: int, facet: str, hub_positions: bool = False) -> None:
        super().__init__()
        blocks = model.encoder.layer
        self.embeddings = model.embeddings
        if hub_positions:  # as torch.hub's DINOv2 (AnyLoc's) resized them, not transformers'
            self.embeddings.interpolate_pos_encoding = types.MethodType(hub_interpolate_pos_encoding, self.embeddings)
        self.blocks = nn.ModuleList(list(blocks[: layer + 1]))
        self.facet = facet
        self.projection = None if facet == "token" else _find_projection(blocks[layer], facet)
        self.patch_size = int(model.config.patch_size)
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = pixel_values.shape[-2] // self.patch_size
        w = pixel_values.shape[-1] // self.patch_size
        x = self.embeddings(pixel_values)
        for block in self.blocks[:-1]:
            x = block(x)
        last = self.blocks[-1]
        x = last(x) if self.projection is None else self.projection(last.norm1(x))
        x = x[:, self.num_prefix_tokens :, :]
        return x.reshape(x.shape[0], h, w, x.shape[-1])


def hub_interpolate_pos_encoding(emb: nn.Module, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Position embeddings for an (height, width) input as DINOv2's torch.hub model makes them,
    which AnyLoc ran: bicubic with scale factors (patches + 0.1) / M (the hub's offset against
    float error), where transformers resizes to a size; at AnyLoc's 476x630 the two differ by
    ~2% (test/anyloc_reference.py transcribes the hub's rule)."""
    pos = emb.position_embeddings
    n = pos.shape[1] - 1
    ph, pw = emb.patch_embeddings.patch_size
    # Python ints also when traced for ONNX: the `anyloc` sizing gives every image one size, so the
    # exported graph holds that size's scale factors
    rows, cols = int(height) // ph, int(width) // pw
    if embeddings.shape[1] - 1 == n and height == width:
        return pos
    m = math.isqrt(n)
    grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((rows + 0.1) / m, (cols + 0.1) / m), mode="bicubic", align_corners=False)
    grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
    return torch.cat((pos[:, :1], grid), dim=1)


def load_dinov2(model: str, download: bool = False) -> nn.Module:
    """Load a DINOv2 / DINOv2-with-registers model from a local directory or a hub id.

    A local directory is read with no network access, and so is a hub id: from the Hugging Face
    cache (HF_HOME), unless `download` asks for the hub (and HF_HUB_OFFLINE is not set). An
    offline robot gets its answer at once instead of after the hub client's retries.
    """
    from transformers import AutoModel

    is_dir = Path(model).expanduser().is_dir()
    path = str(Path(model).expanduser()) if is_dir else model
    local_files_only = is_dir or not download or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a node's log and a CLI's one-line errors get no progress bars
    try:
        net = AutoModel.from_pretrained(path, local_files_only=local_files_only)
    except (OSError, ValueError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if is_dir or not local_files_only else \
            "not in the Hugging Face cache, and the hub was not asked"
        raise WeightsNotFoundError(
            f"DINOv2 weights {model!r} could not be loaded ({why}). "
            "On a machine with network access run `hf download facebook/dinov2-giant --local-dir "
            "<dir>` (or the -small/-base/-large / -with-registers-* variant you configured), copy <dir> "
            "to the robot and set backbone.model to that directory; or point HF_HOME at a cache that holds it"
            + ("." if local_files_only is False or is_dir else "; or set backbone.download: true to fetch it from "
               "the hub (needs network).")
        ) from exc
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if getattr(net.config, "model_type", "") not in ("dinov2", "dinov2_with_registers"):
        raise ConfigError(f"{model!r} is a {net.config.model_type!r} model, not DINOv2")
    return net.eval()


class Dinov2Backbone:
    """DINOv2 dense features of one layer and facet, via transformers.

    Args:
        model: hub id (e.g. "facebook/dinov2-giant") or a local directory saved with
            `save_pretrained`; a size key of `DINOV2_SIZES` ("vitg14", ...) picks the hub id.
        layer: zero-based block index (negative counts from the end); None = size default.
        facet: "query", "key", "value" or "token".
        resize: how images are sized: "aspect" (long side capped at `max_side`), "fixed"
            (`image_size`) or "anyloc" (AnyLoc's resize to `image_size`, default 480x640, and
            crop to whole patches); see `images.ResizePolicy`.
        max_side: longer image side for resize "aspect".
        image_size: (h, w) for resize "fixed" or "anyloc".
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "auto" (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32), "float32",
            "float16", "bfloat16".
        registers: with a size key, use the with-registers checkpoint.
        preprocess: where images are resized and normalised: "host" (OpenCV), "device" (torch on
            the backbone's device, after a uint8 upload) or "auto" (device on CUDA, else host).
        tf32: let float32 on CUDA use TF32 tensor cores (faster, ~1e-3 relative error).
        download: fetch a hub id missing from the Hugging Face cache (else: cache and local
            directories only, no network).
        compile: "none", or a `torch.compile` mode ("default", "reduce-overhead" = CUDA graphs on
            CUDA, "max-autotune"): compiled on the first image of each input size (seconds to
            minutes of start-up), worth it for batch-1 latency on a GPU.
    """

    kind = "dinov2"

    def __init__(
        self,
        model: str = "vitg14",
        layer: int | None = None,
        facet: str = "value",
        max_side: int = 448,
        image_size: tuple[int, int] | None = None,
        device: str = "auto",
        precision: str = "auto",
        registers: bool = False,
        resize: str = "aspect",
        preprocess: str = "auto",
        tf32: bool = False,
        compile: str = "none",
        download: bool = False,
    ) -> None:
        if preprocess not in PREPROCESS_PLACES:
            raise ConfigError(f"preprocess must be one of {PREPROCESS_PLACES}, got {preprocess!r}")
        if compile not in COMPILE_MODES:
            raise ConfigError(f"compile must be one of {COMPILE_MODES}, got {compile!r}")
        if facet not in FACETS:
            raise ConfigError(f"facet must be one of {FACETS}, got {facet!r}")
        size = DINOV2_SIZES.get(model)
        if size is not None:
            model = size.hub_id_registers if registers else size.hub_id
        net = load_dinov2(model, download)
        num_layers = int(net.config.num_hidden_layers)
        if layer is None:
            layer = size.default_layer if size else round(0.78 * (num_layers - 1))
        if not -num_layers <= layer < num_layers:
            raise ConfigError(f"layer {layer} out of range for a {num_layers}-block model")
        self.layer = layer % num_layers
        self.facet = facet
        self.model_name = model
        self.patch_size = int(net.config.patch_size)
        self.feature_dim = int(net.config.hidden_size)
        self.num_layers = num_layers
        self.architecture = f"{net.config.model_type}-d{self.feature_dim}-l{num_layers}-p{self.patch_size}"
        self.resize = ResizePolicy(resize, int(max_side), tuple(image_size) if image_size else None, self.patch_size)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        self.extractor = Dinov2FacetExtractor(net, self.layer, facet, hub_positions=resize == "anyloc").to(
            self.device, self.dtype).eval()
        del net  # blocks after `layer` and the final norm are never needed
        self.preprocess_on_device = preprocess == "device" or (preprocess == "auto" and self.device.type == "cuda")
        self.tf32 = bool(tf32)
        self.compile_mode = compile
        self._network: nn.Module = self.extractor
        if compile != "none":
            log.info("compiling the DINOv2 extractor (torch.compile mode %s): the first image of each input size "
                     "takes seconds to minutes", compile)
            self._network = torch.compile(self.extractor, mode=None if compile == "default" else compile,
                                          dynamic=False)

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return self.resize.input_size(height, width)

    def preprocessing(self) -> str:
        return self.resize.name

    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Validated, resized, ImageNet-normalised (B, 3, h, w) pixels: float32 on the host, or
        already on the device in the compute precision (`preprocess_on_device`)."""
        rgb = [as_rgb_uint8(im) for im in images]
        if self.preprocess_on_device:
            return self.resize.on_device(rgb, self.device, IMAGENET_MEAN, IMAGENET_STD, self.dtype)
        return self.resize(rgb, IMAGENET_MEAN, IMAGENET_STD)

    @torch.inference_mode()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare backbone: normalised pixels -> (B, h, w, D) features on the device, in the
        compute precision (nothing is copied back)."""
        with fp32_math(self.device, self.tf32):
            return self._network(pixels.to(self.device, self.dtype, non_blocking=True))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """`features` as float32 on the CPU (vocabulary building, tests)."""
        return self.features(pixels).float().cpu()

    def extract(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        return self.forward(self.preprocess(images))

    def signature(self) -> dict[str, Any]:
        return {
            "backbone": self.kind,
            "model": self.architecture,
            "layer": self.layer,
            "facet": self.facet,
            "feature_dim": self.feature_dim,
        }
