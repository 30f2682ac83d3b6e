"""Depth images registered to the colour image, and the depth at each keypoint.

RGB-D and stereo drivers publish depth registered 1:1 to the colour pixels (RealSense
`aligned_depth_to_color`, Kinect, ZED) as 16UC1 in millimetres or 32FC1 in metres (REP 118);
0, NaN and readings outside the sensor's range mean "no depth". A keypoint's depth is the
median of the valid readings around it, and none where too few are valid (holes) or where they
spread over a depth edge (a corner on a silhouette belongs to neither surface).
"""

from __future__ import annotations

import numpy as np

from ..errors import ImageError

DEPTH_ENCODINGS = {"16UC1": 0.001, "mono16": 0.001, "32FC1": 1.0}  # value -> metres


def depth_in_metres(depth: np.ndarray, scale: float | None = None, min_m: float = 0.0,
                    max_m: float = float("inf")) -> np.ndarray:
    """An HxW depth image as float32 metres, NaN where there is no reading (0, NaN, outside
    [min_m, max_m]): uint16 times `scale` (default millimetres), float as metres."""
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[:, :, 0]
    if d.ndim != 2 or d.size == 0:
        raise ImageError(f"a depth image is HxW with one channel, got shape {d.shape}")
    if d.dtype == np.uint16:
        out = d.astype(np.float32) * np.float32(0.001 if scale is None else scale)
    elif d.dtype.kind == "f":
        out = d.astype(np.float32, copy=True)
    else:
        raise ImageError(f"depth images are uint16 (millimetres) or float (metres), got {d.dtype}")
    with np.errstate(invalid="ignore"):
        out[~np.isfinite(out) | (out <= 0) | (out < min_m) | (out > max_m)] = np.nan
    return out


def sample_depths(depth_m: np.ndarray, keypoints: np.ndarray, radius: int = 2, min_m: float = 0.1,
                  max_m: float = 10.0, max_spread: float = 0.05) -> np.ndarray:
    """(n,) float32 depth in metres at each (x, y) keypoint (pixel positions in the depth image),
    NaN where there is none.

    The median of the valid readings in the (2 radius + 1)² window, kept when at least half
    the window is valid and the middle half of the readings lies within `max_spread` (relative)
    of the median, i.e. not across a depth edge."""
    kp = np.asarray(keypoints, np.float64).reshape(-1, 2)
    out = np.full(len(kp), np.nan, np.float32)
    if not len(kp):
        return out
    h, w = depth_m.shape
    r = int(radius)
    offs = np.arange(-r, r + 1)
    xs = np.clip(np.floor(kp[:, 0]).astype(np.int64)[:, None] + offs[None, :], 0, w - 1)
    ys = np.clip(np.floor(kp[:, 1]).astype(np.int64)[:, None] + offs[None, :], 0, h - 1)
    win = depth_m[ys[:, :, None], xs[:, None, :]].reshape(len(kp), -1).astype(np.float64)  # (n, (2r+1)²)
    win[~((win >= min_m) & (win <= max_m))] = np.nan
    enough = np.sum(np.isfinite(win), axis=1) * 2 >= win.shape[1]
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < w) & (kp[:, 1] >= 0) & (kp[:, 1] < h)
    ok = enough & inside
    if not ok.any():
        return out
    q25, med, q75 = np.nanpercentile(win[ok], [25, 50, 75], axis=1)
    flat = (q75 - q25) <= max_spread * med
    good = np.nonzero(ok)[0][flat]
    out[good] = med[flat]
    return out
