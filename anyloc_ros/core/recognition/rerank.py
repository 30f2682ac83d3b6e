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
