"""Local features (keypoints + descriptors) for geometric verification of loop closures, for
every encoder.

XFeat (Potje et al., CVPR 2024) gives them from its detector and descriptor heads. Where the
place encoder *is* XFeat (the `xfeat_vlad` preset) its own network run gives them for free
(`type: backbone`); beside any other backbone (DINOv2) the XFeat ONNX network runs as a second
network on the same device (`type: xfeat`, `model_path`: the weights). `auto` takes the
backbone's heads when it has them, else XFeat when its weights are configured, else none.

    local_features: {type: auto | backbone | xfeat | none, model_path: weights/xfeat.onnx}

Keypoints are picked at the resolution of XFeat's heads: each 8x8 cell's most likely position
(its 64-way softmax) scored by the cell's reliability, a cell kept unless a neighbouring cell's
keypoint within `nms` pixels scores higher. That is the full-resolution non-maximum suppression
restricted to where maxima can be (at most one per cell), at a fraction of its cost (no
full-resolution heatmap, upsampling or max-pool): 6 vs 47 ms per 640x480 frame here, with the
same matching quality on TUM fr1/xyz (bench/keypoints.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, FeatureDimensionError
from ..types import LocalFeatures
from .onnx_backbone import OnnxBackbone


def xfeat_keypoints(descriptors: torch.Tensor, logits: torch.Tensor, reliability: torch.Tensor,
                    image_size: tuple[int, int], top_k: int = 512, nms: int = 5,
                    min_score: float = 1e-4) -> LocalFeatures:
    """Up to `top_k` keypoints of one image from XFeat's heads, best first.

    descriptors (1, 64, h, w) at 1/8 resolution; logits (1, 65, h, w): each 8x8 cell's 64 pixel
    positions plus a "no keypoint" bin; reliability (1, 1, h, w). Positions are returned in the
    pixels of the original image of `image_size` (height, width)."""
    if logits.shape[1] != 65 or descriptors.ndim != 4 or reliability.shape[1] != 1:
        raise FeatureDimensionError(f"XFeat heads of unexpected shapes: descriptors {tuple(descriptors.shape)}, "
                                    f"logits {tuple(logits.shape)}, reliability {tuple(reliability.shape)}")
    prob = F.softmax(logits[0].float(), dim=0)[:64]  # (64, h, w)
    best, pos = prob.max(dim=0)
    h, w = best.shape
    score = best * reliability[0, 0].float()
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    px = (xs * 8 + pos % 8).float() + 0.5  # the position in the network input (8h x 8w pixels)
    py = (ys * 8 + torch.div(pos, 8, rounding_mode="floor")).float() + 0.5
    keep = score > min_score
    # a neighbouring cell's keypoint closer than nms // 2 (Chebyshev, as a nms x nms max-pool) that
    # scores higher wins; ties go to the earlier cell in raster order
    S = F.pad(score, (1, 1, 1, 1), value=-1.0)
    X = F.pad(px, (1, 1, 1, 1), value=-1e9)
    Y = F.pad(py, (1, 1, 1, 1), value=-1e9)
    half = nms // 2
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx == 0 and dy == 0:
                continue
            sl = (slice(1 + dy, 1 + dy + h), slice(1 + dx, 1 + dx + w))
            near = torch.maximum((X[sl] - px).abs(), (Y[sl] - py).abs()) <= half
            beaten = (S[sl] > score) | ((S[sl] == score) & (dy * w + dx < 0))
            keep &= ~(near & beaten)
    s = score[keep]
    order = torch.argsort(s, descending=True)[:top_k]
    px, py, s = px[keep][order], py[keep][order], s[order]
    in_h, in_w = 8 * h, 8 * w
    grid = torch.stack([px / in_w * 2 - 1, py / in_h * 2 - 1], dim=-1)[None, None]
    desc = F.grid_sample(descriptors.float(), grid, mode="bilinear", align_corners=False)[0, :, 0].T
    H, W = image_size
    pts = torch.stack([px * W / in_w, py * H / in_h], dim=1).numpy()
    return LocalFeatures(pts.astype(np.float32), F.normalize(desc, dim=-1).numpy().astype(np.float16),
                         s.numpy().astype(np.float32), (int(H), int(W)))


class XFeatExtractor:
    """XFeat's ONNX network run beside the place encoder's backbone, for its keypoints only."""

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0, nms: int = 5,
                 min_score: float = 1e-4) -> None:

        self.network = OnnxBackbone(model_path, output_name=None, device=device, threads=threads,
                                    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        if self.network.keypoint_heads is None:
            raise ConfigError(f"local_features.model_path {model_path} is not an XFeat network (it needs 64-channel "
                              "descriptors plus 65-channel keypoint and 1-channel reliability heads)")
        self.nms, self.min_score = nms, min_score

    def extract(self, images: list[np.ndarray], top_k: int) -> list[LocalFeatures]:
        _, heads = self.network.forward_with_heads(self.network.preprocess(images))
        return [xfeat_keypoints(*(hd[j : j + 1] for hd in heads), image_size=im.shape[:2], top_k=top_k, nms=self.nms,
                                min_score=self.min_score) for j, im in enumerate(images)]

    def signature(self) -> str:
        return xfeat_signature(self.network)


def xfeat_signature(network: Any) -> str:
    """What keypoint descriptors are comparable with: the XFeat network that made them."""
    return f"xfeat:{network.signature()['model']}"
