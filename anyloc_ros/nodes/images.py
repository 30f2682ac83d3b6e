"""Image messages <-> numpy, with validation that turns bad input into a clear `ImageError`
(stamps and poses: conversions.py, which loads no image library).

Colour conversion is rosbags-image's (cv_bridge's encodings; `to_cvtype`, `convert_color`):
on every encoding it converts, an unpadded valid message gives the identical image as its
`message_to_cvimage` (test/unit/test_conversions.py). Kept here only what it lacks, each shown by
that test: row padding (`step`; rosbags-image shears padded rows), data size and pixel-limit
checks, refusing signed encodings, generic nC3/16-bit images, and a clear ImageError instead of
its bare `assert` on a corrupt CompressedImage (a malformed message must never crash a node).
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from ..core.encoding.depth import DEPTH_ENCODINGS, depth_in_metres
from ..core.encoding.images import as_rgb_uint8, decode_image_bytes, max_image_pixels
from ..core.errors import ImageError

# Encodings whose rows are not `height` rows of `width` pixels.
_PLANAR = {"nv12", "nv21", "yuv420", "i420"}


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> HxWx3 uint8 RGB."""
    from rosbags.image.image import Format, convert_color, to_cvtype
    from rosbags.image.image import ImageError as RosbagsImageError

    enc = (msg.encoding or "").strip()
    if enc.lower() in _PLANAR:
        raise ImageError(f"image encoding {enc!r} (planar YUV) is not supported; publish rgb8/bgr8/mono8")
    try:
        _, fmt, typestr, nchan = to_cvtype(enc)
    except RosbagsImageError as exc:
        raise ImageError(f"unsupported image encoding {enc!r}") from exc
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ImageError(f"empty image ({w}x{h})")
    if h * w > max_image_pixels():
        raise ImageError(f"image of {w}x{h} pixels exceeds the limit of {max_image_pixels()} pixels (max_image_pixels)")
    dtype = np.dtype(typestr)
    if dtype.kind == "i":  # 8SC1, 16SC3 ...: no camera image; scaling would wrap negatives around
        raise ImageError(f"signed-integer image encoding {enc!r} is not supported (not a camera image); publish "
                         "mono8/rgb8/bgr8/mono16")
    row = w * nchan * dtype.itemsize
    if step < row:
        raise ImageError(f"image step {step} is smaller than width*channels*bytes = {row} for {enc}")
    data = memoryview(msg.data).cast("B") if not isinstance(msg.data, (bytes, bytearray)) else msg.data
    if len(data) < step * h:
        raise ImageError(f"image data has {len(data)} bytes, expected step*height = {step * h}")
    rows = np.frombuffer(data, dtype=np.uint8, count=step * h).reshape(h, step)[:, :row]
    img = np.ascontiguousarray(rows).view(dtype).reshape((h, w, nchan) if nchan > 1 else (h, w))
    if bool(msg.is_bigendian) != (sys.byteorder == "big") and dtype.itemsize > 1:
        img = img.byteswap()
    if fmt == Format.GENERIC:
        if img.ndim == 3 and nchan == 3:
            img = img[:, :, ::-1]  # OpenCV convention for nC3: BGR
        if img.dtype != np.uint8:
            img = (img.astype(np.float64) / np.iinfo(img.dtype).max * 255).astype(np.uint8) if img.dtype.kind in "ui" \
                else img
        return as_rgb_uint8(img)
    try:
        return np.ascontiguousarray(convert_color(img, enc, "rgb8"))
    except (RosbagsImageError, cv2.error) as exc:
        raise ImageError(f"cannot convert {enc!r} image to RGB: {exc}") from exc


def depth_msg_to_metres(msg: Any, scale: float = 0.001, min_m: float = 0.0, max_m: float = float("inf")
                        ) -> np.ndarray:
    """sensor_msgs/Image of a depth camera (16UC1 / mono16 in units of `scale` metres, 32FC1 in
    metres; REP 118) -> HxW float32 metres, NaN where there is no reading (0, NaN, outside
    [min_m, max_m])."""
    enc = (msg.encoding or "").strip()
    if enc not in DEPTH_ENCODINGS:
        raise ImageError(f"depth image encoding {enc!r} is not a depth encoding ({', '.join(DEPTH_ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ImageError(f"empty depth image ({w}x{h})")
    if h * w > max_image_pixels():
        raise ImageError(f"depth image of {w}x{h} pixels exceeds the limit of {max_image_pixels()} pixels")
    dtype = np.dtype(np.float32 if enc == "32FC1" else np.uint16)
    row = w * dtype.itemsize
    data = memoryview(msg.data).cast("B") if not isinstance(msg.data, (bytes, bytearray)) else msg.data
    if step < row or len(data) < step * h:
        raise ImageError(f"depth image data ({len(data)} bytes, step {step}) does not hold {w}x{h} {enc} pixels")
    img = np.ascontiguousarray(np.frombuffer(data, np.uint8, count=step * h).reshape(h, step)[:, :row]).view(dtype)
    if bool(msg.is_bigendian) != (sys.byteorder == "big"):
        img = img.byteswap()
    return depth_in_metres(img, scale, min_m, max_m)


def message_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image or CompressedImage (rclpy or rosbags message) -> HxWx3 uint8 RGB."""
    return compressed_msg_to_rgb(msg) if hasattr(msg, "format") else image_msg_to_rgb(msg)


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png, ...) -> HxWx3 uint8 RGB."""
    return decode_image_bytes(bytes(msg.data), what=f"compressed image ({msg.format or 'unknown format'})")


def rgb_to_image_msg(rgb: np.ndarray, msg_type: Any, header: Any = None) -> Any:
    msg = msg_type()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
    msg.encoding = "rgb8"
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return msg


def encode_jpeg(rgb: np.ndarray, max_side: int = 160, quality: int = 80) -> bytes:
    """Small JPEG thumbnail (for debug images and keyframe previews)."""
    h, w = rgb.shape[:2]
    s = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, int(w * s)), max(1, int(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else rgb
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("JPEG encoding failed")
    return buf.tobytes()
