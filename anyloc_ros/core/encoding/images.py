"""Image validation, loading and preprocessing shared by every backbone.

Images enter the core as HxWx3 uint8 RGB numpy arrays. Everything that arrives in another
form (grayscale, RGBA, float in [0, 1], a file, encoded bytes) is converted here once, and
anything that cannot be converted is refused with an `ImageError` naming the problem.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..config.encoder import RESIZE_MODES
from ..errors import ConfigError, ImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
# Default pixel limit: an 8K camera frame is 33 MP. Larger images are almost certainly a corrupt
# header or a decompression bomb (a few hundred KiB of PNG can declare gigabytes of pixels).
MAX_IMAGE_PIXELS = 50_000_000
_limit = {"pixels": MAX_IMAGE_PIXELS}


def set_max_image_pixels(pixels: int) -> None:
    """Set the pixel limit for every image decoded in this process (node parameter / CLI option)."""
    if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
        raise ImageError(f"the image pixel limit must be a positive integer, got {pixels!r}")
    _limit["pixels"] = pixels


def max_image_pixels() -> int:
    return _limit["pixels"]


def declared_size(data: bytes, what: str = "image") -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, without decoding it; None if unknown."""


    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError as exc:  # Pillow's own guard (beyond ~179 MP)
        raise ImageError(f"{what} declares more pixels than Pillow's guard allows, over the limit of "
                         f"{max_image_pixels()} (max_image_pixels); refused without decoding") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as a contiguous HxWx3 uint8 RGB array.

    Accepts HxW or HxWx1 (grayscale, replicated), HxWx3 (RGB), HxWx4 (RGBA, alpha dropped);
    dtype uint8, uint16 (scaled by 1/257) or float in [0, 1].
    """
    if not isinstance(image, np.ndarray):
        raise ImageError(f"expected a numpy array image, got {type(image).__name__}")
    if image.size == 0:
        raise ImageError(f"empty image (shape {image.shape})")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ImageError(f"expected an HxW or HxWxC image, got shape {image.shape}")
    h, w, c = image.shape
    if h * w > max_image_pixels():
        raise ImageError(f"image of {w}x{h} pixels exceeds the limit of {max_image_pixels()} pixels")
    if c not in (1, 3, 4):
        raise ImageError(f"expected 1, 3 or 4 channels (gray, RGB, RGBA), got {c} (shape {image.shape})")
    if image.dtype == np.uint8:
        out = image
    elif image.dtype == np.uint16:
        out = (image // 257).astype(np.uint8)
    elif image.dtype in (np.float32, np.float64, np.float16):
        if not np.isfinite(image).all():
            raise ImageError("float image contains NaN or inf")
        if image.min() < 0.0 or image.max() > 1.0:
            raise ImageError("float images must have values in [0, 1]")
        out = np.round(image * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"unsupported image dtype {image.dtype}; use uint8, uint16 or float in [0, 1]")
    if c == 1:
        out = np.repeat(out, 3, axis=2)
    elif c == 4:
        out = out[:, :, :3]
    return np.ascontiguousarray(out)


def decode_image_bytes(data: bytes | np.ndarray, what: str = "encoded image") -> np.ndarray:
    """Decode JPEG/PNG/... bytes into HxWx3 uint8 RGB, or raise `ImageError`."""
    data = bytes(data)
    if not data:
        raise ImageError(f"{what} is empty")
    size = declared_size(data, what)  # checked before decoding: a decompression bomb is refused cheaply
    if size is not None and size[0] * size[1] > max_image_pixels():
        raise ImageError(f"{what} declares {size[0]}x{size[1]} pixels, over the limit of {max_image_pixels()} "
                         "(max_image_pixels); refused without decoding")
    buf = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{what} could not be decoded (corrupt or unsupported format)")
    if size is None and bgr.shape[0] * bgr.shape[1] > max_image_pixels():  # a header Pillow cannot read
        raise ImageError(f"{what} has {bgr.shape[1]}x{bgr.shape[0]} pixels, over the limit of {max_image_pixels()} "
                         "(max_image_pixels)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, with a clear error for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"image file {path} cannot be read: {exc.strerror}") from exc
    return decode_image_bytes(data, what=f"image file {path}")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


ANYLOC_SIZE = (480, 640)  # AnyLoc's `hard_resize` (h, w), before the crop to whole patches


@dataclass(frozen=True)
class ResizePolicy:
    """How an image of any size becomes a network input (part of the encoder signature: the same
    image at another resolution gives other descriptors).

    * "aspect": keep the aspect ratio, cap the longer side at `max_side` (never upsample), round
      each side to the nearest multiple of `patch_size` (a stretch of at most half a patch).
      Fewer patches for small or wide images: the light option for CPUs.
    * "fixed": resize to `size` (h, w), multiples of `patch_size`.
    * "anyloc": AnyLoc's pipeline: resize to `size` (default 480x640; bilinear without
      antialiasing, as torchvision 0.14's tensor resize) and centre-crop each side down to a
      multiple of `patch_size` (476x630: 1,530 patches at patch size 14).
    """

    mode: str = "aspect"
    max_side: int = 448
    size: tuple[int, int] | None = None
    patch_size: int = 14

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ConfigError(f"resize mode must be one of {RESIZE_MODES}, got {self.mode!r}")
        if self.mode == "anyloc" and self.size is None:
            object.__setattr__(self, "size", ANYLOC_SIZE)
        p = self.patch_size
        if self.mode == "aspect":
            if self.size is not None:
                raise ConfigError("an image size is used only by resize 'fixed' or 'anyloc'; with 'aspect' "
                                  "the long side is capped at max_side")
            if self.max_side < p:
                raise ConfigError(f"max_side {self.max_side} is smaller than the patch size {p}")
            return
        if self.size is None or len(self.size) != 2 or min(self.size) < p:
            raise ConfigError(f"resize {self.mode!r} needs an image size [height, width] of at least one patch "
                              f"({p} px), got {self.size}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.mode == "fixed" and (self.size[0] % p or self.size[1] % p):
            raise ConfigError(f"image size {list(self.size)} must be multiples of the patch size {p} for resize "
                              "'fixed' (resize 'anyloc' crops to whole patches instead)")

    @property
    def name(self) -> str:
        """"aspect-max448-p14", "fixed-224x224" or "anyloc-480x640-p14"."""
        if self.mode == "aspect":
            return f"aspect-max{self.max_side}-p{self.patch_size}"
        h, w = self.size  # type: ignore[misc]
        return f"fixed-{h}x{w}" if self.mode == "fixed" else f"anyloc-{h}x{w}-p{self.patch_size}"

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The network input (h, w) for an image of the given size."""
        p = self.patch_size
        if self.mode == "aspect":
            scale = min(1.0, self.max_side / max(height, width))
            return (max(p, int(round(height * scale / p)) * p), max(p, int(round(width * scale / p)) * p))
        h, w = self.size  # type: ignore[misc]
        return (h // p * p, w // p * p)

    def __call__(self, images: Sequence[np.ndarray], mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
        """uint8 RGB images -> normalised float32 (B, 3, h, w), (x / 255 - mean) / std per channel.
        A batch takes the input size of its first image."""
        h, w = self.input_size(*images[0].shape[:2])
        if self.mode != "anyloc":
            return to_normalized_tensor(images, (h, w), mean, std)
        rh, rw = self.size  # type: ignore[misc]
        top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))  # torchvision's CenterCrop
        # AnyLoc resizes the normalised float image; the affine normalisation commutes with
        # bilinear interpolation, so resizing float pixels first gives the same values.
        crops = []
        for img in images:
            img = img.astype(np.float32)
            if img.shape[:2] != (rh, rw):
                img = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
            crops.append(np.ascontiguousarray(img[top:top + h, left:left + w]))
        return to_normalized_tensor(crops, (h, w), mean, std)

    def on_device(self, images: Sequence[np.ndarray], device: torch.device, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The same preprocessing on `device` (a CUDA robot's GPU): the uint8 images are uploaded
        as they are (pinned, non-blocking: a quarter of the bytes of float pixels), then resized,
        cropped and normalised there. Images of one batch must share one shape.

        AnyLoc's resize is bilinear without antialiasing on both paths (equal to float
        precision); upscaling is bilinear; downscaling is antialiased bilinear, the closest of
        torch's filters to the host path's OpenCV INTER_AREA (a 640x480 frame to 448x336: 0.5
        grey levels apart on average, against 1.1 for torch's "area")."""
        h, w = self.input_size(*images[0].shape[:2])
        x = upload_uint8(images, device).float()  # (B, 3, H, W), 0-255
        if self.mode == "anyloc":
            rh, rw = self.size  # type: ignore[misc]
            if tuple(x.shape[-2:]) != (rh, rw):
                x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
            top, left = int(round((rh - h) / 2.0)), int(round((rw - w) / 2.0))
            x = x[:, :, top:top + h, left:left + w]
        elif tuple(x.shape[-2:]) != (h, w):
            shrink = x.shape[-2] * x.shape[-1] > h * w
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=shrink)
        offset, scale = _normalisation_on(device, tuple(mean), tuple(std))
        return ((x - offset) * scale).to(dtype).contiguous()


_NORMALISATION: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _normalisation_on(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(255·mean, 1 / (255·std)) as (1, 3, 1, 1) tensors on `device`, made once per device."""
    key = (str(device), mean, std)
    if key not in _NORMALISATION:
        m = torch.tensor([255.0 * v for v in mean], dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor([1.0 / (255.0 * v) for v in std], dtype=torch.float32).view(1, 3, 1, 1)
        _NORMALISATION[key] = (m.to(device), s.to(device))
    return _NORMALISATION[key]


def upload_uint8(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Same-shape HxWx3 uint8 images -> a (B, 3, H, W) uint8 tensor on `device`. On CUDA the
    batch goes through pinned memory (torch's caching host allocator reuses it), so the copy
    is asynchronous."""
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ImageError(f"one batch must hold images of one shape, got {sorted(shapes)}")
    batch = torch.from_numpy(np.stack(images))  # (B, H, W, 3)
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    else:
        batch = batch.to(device)
    return batch.permute(0, 3, 1, 2)


def to_normalized_tensor(
    images: Sequence[np.ndarray],
    size: tuple[int, int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Resize RGB images (uint8, or float32 in 0-255) to `size` (h, w) and return a normalised
    float32 (B, 3, h, w) tensor, (x / 255 - mean) / std per channel."""
    h, w = size
    resized = []
    for img in images:
        if img.shape[:2] != (h, w):
            interp = cv2.INTER_AREA if img.shape[0] * img.shape[1] > h * w else cv2.INTER_LINEAR
            img = cv2.resize(img, (w, h), interpolation=interp)
        resized.append(img)
    # OpenCV's blob builder does the per-channel affine and the HWC -> NCHW transpose in one
    # vectorised pass (~10x faster than the same steps in torch on a 640x640 image).
    params = cv2.dnn.Image2BlobParams()
    params.scalefactor = (*(1.0 / (255.0 * s) for s in std), 0.0)
    params.mean = (*(255.0 * m for m in mean), 0.0)
    params.size = (w, h)
    params.swapRB = False
    params.ddepth = cv2.CV_32F
    return torch.from_numpy(cv2.dnn.blobFromImagesWithParams(resized, params))
