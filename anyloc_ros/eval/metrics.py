"""Place-recognition metrics from a query x database similarity matrix.

* Recall@K: fraction of queries with at least one true positive among the K most similar
  database images (queries without any positive count as misses).
* Precision-recall of the best match: each query keeps only its best match; sweeping a
  threshold on that match's similarity gives precision (correct / accepted) and recall
  (correct / queries that have a positive). AUC-PR is the step-wise area (average precision)
  and R@100P the largest recall reached at precision 1 — what matters for loop closure,
  where one false positive can break a map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

KS = (1, 5, 10, 20)


def ranked(similarity: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k most similar database items per query, best first."""
    k = min(k, similarity.shape[1])
    part = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(similarity, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def recall_at_k(similarity: np.ndarray, positives: list[set[int]], ks: tuple[int, ...] = KS) -> dict[int, float]:
    return recall_from_ranking(ranked(similarity, max(ks)), positives, ks)


@dataclass
class PRCurve:
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    auc: float
    recall_at_100p: float


def recall_from_ranking(ranking: np.ndarray, positives: list[set[int]], ks: tuple[int, ...] = KS) -> dict[int, float]:
    """Recall@K from each query's ranked database indices (best first)."""
    hits = np.array([[bool(set(ranking[q, :k].tolist()) & positives[q]) for k in ks] for q in range(len(positives))])
    return {k: float(hits[:, i].mean()) for i, k in enumerate(ks)}


def best_match_pr(similarity: np.ndarray, positives: list[set[int]]) -> PRCurve:
    best = similarity.argmax(axis=1)
    return best_match_pr_of(best, similarity[np.arange(len(best)), best], positives)


def best_match_pr_of(best: np.ndarray, scores: np.ndarray, positives: list[set[int]]) -> PRCurve:
    """PR of each query's best match (database index `best`) accepted above a threshold on `scores`."""
    best, scores = np.asarray(best), np.asarray(scores, np.float64)
    correct = np.array([int(best[q]) in positives[q] for q in range(len(best))])
    n_pos = sum(1 for p in positives if p)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(correct[order])
    fp = np.cumsum(~correct[order])
    # one operating point per distinct threshold (ties are accepted together)
    last = np.r_[np.nonzero(np.diff(scores[order]))[0], len(order) - 1]
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / max(n_pos, 1)
    auc = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    perfect = recall[precision >= 1.0]
    return PRCurve(precision, recall, scores[order][last], auc, float(perfect.max()) if perfect.size else 0.0)
