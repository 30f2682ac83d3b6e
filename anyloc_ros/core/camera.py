"""The camera a frame was taken with: pinhole intrinsics, lens distortion and the image size
they refer to (what sensor_msgs/CameraInfo carries, or the `camera.*` parameters).

Geometry (verification, relative poses) works on ideal pinhole pixels: the encoder removes the
lens distortion from its keypoints once (`undistort`), so everything downstream uses only K.
Distortion models are ROS's (image_geometry): plumb_bob and rational_polynomial (OpenCV's
radial-tangential coefficients k1 k2 p1 p2 k3 [k4 k5 k6]) and equidistant (fisheye k1..k4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError

DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant")
_COEFFS = {"plumb_bob": (4, 5), "rational_polynomial": (4, 5, 8, 12, 14), "equidistant": (4,)}


@dataclass(frozen=True)
class CameraModel:
    K: np.ndarray  # 3x3 pinhole matrix
    distortion: np.ndarray = field(default_factory=lambda: np.zeros(0))  # coefficients; empty or zeros = none
    model: str = "plumb_bob"
    width: int = 0  # image size K refers to (0 = unknown: used as it is for any image)
    height: int = 0

    def __post_init__(self) -> None:
        K = np.asarray(self.K, np.float64).reshape(3, 3)
        d = np.asarray(self.distortion, np.float64).ravel()
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "distortion", d)
        problems = check_camera(K, d, self.model)
        if problems:
            raise ConfigError("invalid camera: " + "; ".join(problems))

    @classmethod
    def from_camera_info(cls, k: Any, d: Any, model: str, width: int, height: int) -> CameraModel | None:
        """From a CameraInfo's fields, or None where it holds no usable pinhole (an uncalibrated
        driver publishes zeros) or an unknown distortion model with non-zero coefficients."""
        K = np.asarray(k, np.float64)
        D = np.asarray(d if d is not None else [], np.float64).ravel()
        model = model or "plumb_bob"
        if K.size != 9:
            return None
        if model not in DISTORTION_MODELS and np.any(D != 0):
            return None
        try:
            return cls(K.reshape(3, 3), D, model if model in DISTORTION_MODELS else "plumb_bob", int(width), int(height))
        except ConfigError:
            return None

    @property
    def distorted(self) -> bool:
        return bool(self.distortion.size and np.any(self.distortion != 0))

    def for_image(self, height: int, width: int) -> CameraModel:
        """This camera for an image of another size (a driver's resized stream): K scaled, the
        distortion unchanged (it acts on normalised coordinates)."""
        if not self.width or not self.height or (self.width, self.height) == (width, height):
            return self
        S = np.diag([width / self.width, height / self.height, 1.0])
        return CameraModel(S @ self.K, self.distortion, self.model, width, height)

    def undistort(self, points: np.ndarray) -> np.ndarray:
        """(n, 2) distorted pixel positions -> the ideal pinhole pixels of K (unchanged without distortion)."""
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        if not self.distorted or not len(pts):
            return pts.astype(np.float32)
        # OpenCV only here: the camera settings are read by processes that never touch an image
        # (the mapping node), and this module must not load it for them
        import cv2

        src = pts.reshape(-1, 1, 2)
        if self.model == "equidistant":
            out = cv2.fisheye.undistortPoints(src, self.K, self.distortion[:4], P=self.K)
        else:
            out = cv2.undistortPoints(src, self.K, self.distortion, P=self.K)
        return out.reshape(-1, 2).astype(np.float32)


def check_camera(K: np.ndarray, distortion: np.ndarray, model: str) -> list[str]:
    """Problems with intrinsics, one line each (empty: usable)."""
    problems = []
    if not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0 or abs(np.linalg.det(K)) < 1e-9:
        problems.append("K must be finite with fx, fy > 0")
    if model not in DISTORTION_MODELS:
        problems.append(f"distortion model {model!r} is not one of {list(DISTORTION_MODELS)}")
    elif distortion.size and np.any(distortion != 0) and distortion.size not in _COEFFS[model]:
        problems.append(f"{model} takes {' or '.join(map(str, _COEFFS[model]))} distortion coefficients, "
                        f"got {distortion.size}")
    if not np.isfinite(distortion).all():
        problems.append("distortion coefficients must be finite")
    return problems
