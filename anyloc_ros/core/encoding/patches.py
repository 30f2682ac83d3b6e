"""Compact patch features for re-ranking (recognition/rerank.py), made by the encoder.

Stored patches are kept small so a map's memory and disk use stay bounded: the patch grid is
average-pooled to at most `grid`×`grid` cells and projected to `dim` dimensions with a fixed
random orthogonal matrix (seeded, so map and queries share it), stored as float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..config.nodes import EncoderNodeSettings


@dataclass
class PatchCompressor:
    feature_dim: int
    dim: int = EncoderNodeSettings.patch_dim  # the encoder node's defaults: one copy of them
    grid: int = EncoderNodeSettings.patch_grid
    seed: int = 0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        d = min(self.dim, self.feature_dim)
        q, _ = np.linalg.qr(rng.normal(size=(self.feature_dim, d)))
        self._proj = {torch.device("cpu"): torch.from_numpy(q.astype(np.float32))}  # (D, d) orthonormal columns

    def signature(self) -> dict[str, int]:
        """What the compact patches depend on (cache keys)."""
        return {"feature_dim": self.feature_dim, "dim": self.dim, "grid": self.grid, "seed": self.seed}

    def compact(self, features: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(h, w, D) patch features -> (n <= grid², d) float32 rows, L2-normalised, on the
        features' device (a GPU encoder pools and projects there, and copies back only these)."""
        x = torch.as_tensor(features)
        if x.ndim != 3 or x.shape[-1] != self.feature_dim:
            raise ValueError(f"expected (h, w, {self.feature_dim}) patch features, got {tuple(x.shape)}")
        if x.device not in self._proj:
            self._proj[x.device] = self._proj[torch.device("cpu")].to(x.device)
        x = F.normalize(x.float(), dim=-1).permute(2, 0, 1).unsqueeze(0)  # (1, D, h, w)
        gh, gw = min(self.grid, x.shape[2]), min(self.grid, x.shape[3])
        x = F.adaptive_avg_pool2d(x, (gh, gw)).flatten(2).squeeze(0).T  # (n, D)
        return F.normalize(x @ self._proj[x.device], dim=-1)

    @classmethod
    def of(cls, settings: EncoderNodeSettings, feature_dim: int) -> PatchCompressor | None:
        """The compressor of the patches an encoder with these settings publishes (None: none)."""
        return cls(feature_dim, settings.patch_dim, settings.patch_grid) if settings.publish_patches else None

    def __call__(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """(h, w, D) patch features -> (n <= grid², d) float16 on the host, rows L2-normalised."""
        return self.compact(features).to(torch.float16).cpu().numpy()
