"""Re-ranking of retrieval candidates by mutual-nearest-neighbour matching of dense patches.

SelaVPR's second stage, training-free: local features are L2-normalised, matched by inner
product, and the *number* of mutual nearest neighbours between the query and a candidate is
its score. There is no RANSAC or other geometric verification, so scoring k candidates is k
small matrix products.

Stored patches are kept small so a map's memory and disk use stay bounded: the patch grid
is average-pooled to at most `grid`×`grid` cells and projected to `dim` dimensions with a
fixed random orthogonal matrix (seeded, so map and queries share it), stored as float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .types import Match


@dataclass
class PatchCompressor:
    feature_dim: int
    dim: int = 64
    grid: int = 32
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

    def __call__(self, features: torch.Tensor | np.ndarray) -> np.ndarray:
        """(h, w, D) patch features -> (n <= grid², d) float16 on the host, rows L2-normalised."""
        return self.compact(features).to(torch.float16).cpu().numpy()


def mutual_nn_count(a: np.ndarray, b: np.ndarray, min_similarity: float = 0.0) -> int:
    """Number of mutual nearest neighbours between two sets of L2-normalised features."""
    if len(a) == 0 or len(b) == 0:
        return 0
    return _mutual_from_similarity(np.asarray(a, np.float32) @ np.asarray(b, np.float32).T, min_similarity)


def rerank(query_patches: np.ndarray, candidates: list[Match], candidate_patches: list[np.ndarray | None],
           min_similarity: float = 0.0) -> list[Match]:
    """Order candidates by mutual-NN count (ties: global similarity); sets `rerank_score`.

    All candidates are scored with one matrix product against their stacked patches.
    Candidates without stored patches keep score -1 and go last."""
    q = np.asarray(query_patches, np.float32)
    have = [i for i, p in enumerate(candidate_patches) if p is not None and len(p)]
    for m in candidates:
        m.rerank_score = -1.0
    if have and len(q):
        stacked = np.concatenate([np.asarray(candidate_patches[i], np.float32) for i in have])
        # Both directions as row-wise argmaxes of a contiguous product: a column argmax over a
        # (query x candidate) block is several times slower than a second small matmul.
        q_to_c = q @ stacked.T  # (n_query, total candidate patches)
        c_to_q = stacked @ q.T  # (total candidate patches, n_query)
        rows = np.arange(len(q))
        start = 0
        for i in have:
            n = len(candidate_patches[i])
            best_c = q_to_c[:, start : start + n].argmax(axis=1)
            best_q = c_to_q[start : start + n].argmax(axis=1)
            mutual = best_q[best_c] == rows
            if min_similarity > 0:
                mutual &= q_to_c[rows, start + best_c] >= min_similarity
            candidates[i].rerank_score = float(mutual.sum())
            start += n
    return sorted(candidates, key=lambda m: (m.rerank_score, m.score), reverse=True)


def _mutual_from_similarity(s: np.ndarray, min_similarity: float) -> int:
    ab = s.argmax(axis=1)
    ba = s.argmax(axis=0)
    mutual = ba[ab] == np.arange(s.shape[0])
    if min_similarity > 0:
        mutual &= s[np.arange(s.shape[0]), ab] >= min_similarity
    return int(mutual.sum())
