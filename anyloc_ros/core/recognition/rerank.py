"""Re-ranking of retrieval candidates by mutual-nearest-neighbour matching of dense patches
(the compact patches the encoder makes: encoding/patches.py).

SelaVPR's second stage, training-free: local features are L2-normalised, matched by inner
product, and the *number* of mutual nearest neighbours between the query and a candidate is
its score. There is no RANSAC or other geometric verification, so scoring k candidates is k
small matrix products.

"""

from __future__ import annotations

import numpy as np

from ..types import Match


def mutual_nn_count(a: np.ndarray, b: np.ndarray, min_similarity: float = 0.0) -> int:
    """Number of mutual nearest neighbours between two sets of L2-normalised features."""
    if len(a) == 0 or len(b) == 0:
        return 0
    return _mutual_count(np.asarray(a, np.float32), np.asarray(b, np.float32), min_similarity)


def rerank(query_patches: np.ndarray, candidates: list[Match], candidate_patches: list[np.ndarray | None],
           min_similarity: float = 0.0) -> list[Match]:
    """Order candidates by mutual-NN count (ties: global similarity); sets `rerank_score`.

    Candidates without stored patches keep score -1 and go last."""
    q = np.asarray(query_patches, np.float32)
    for m, p in zip(candidates, candidate_patches, strict=True):
        have = p is not None and len(p) and len(q)
        m.rerank_score = float(_mutual_count(q, np.asarray(p, np.float32), min_similarity)) if have else -1.0
    return sorted(candidates, key=lambda m: (m.rerank_score, m.score), reverse=True)


def _mutual_count(a: np.ndarray, b: np.ndarray, min_similarity: float) -> int:
    # One candidate at a time (its similarity block stays in cache: 576x576 is 1.3 MB), in torch's
    # thread pool: numpy's BLAS runs on one thread in the nodes (core/threads.py); 6.0 vs 8.1 ms
    # for the top 10 per frame (bench/per_frame.py context). Imported here: the mapping node
    # shares this room and loads no torch.
    import torch

    sim = torch.from_numpy(a) @ torch.from_numpy(b).T
    best_b = sim.argmax(dim=1)
    best_a = sim.argmax(dim=0)
    rows = torch.arange(len(a))
    mutual = best_a[best_b] == rows
    if min_similarity > 0:
        mutual &= sim[rows, best_b] >= min_similarity
    return int(mutual.sum())
