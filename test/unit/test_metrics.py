"""Metrics on hand-made similarity matrices with known answers."""

import numpy as np
import pytest

from anyloc_ros.eval.metrics import best_match_pr, ranked, recall_at_k


def test_recall_at_k_known_values():
    # 4 queries x 5 database items; positives by construction
    sim = np.array([
        [0.9, 0.1, 0.2, 0.3, 0.0],  # best = 0 (positive)          -> hit at 1
        [0.1, 0.2, 0.8, 0.7, 0.0],  # ranking 2, 3, 1 ; positive 3  -> hit at 2
        [0.5, 0.4, 0.3, 0.2, 0.1],  # positive 4 is ranked last     -> hit at 5
        [0.3, 0.3, 0.3, 0.3, 0.9],  # no positive at all            -> never a hit
    ])
    pos = [{0}, {3}, {4}, set()]
    r = recall_at_k(sim, pos, ks=(1, 2, 5, 20))
    assert r == {1: 0.25, 2: 0.5, 5: 0.75, 20: 0.75}
    assert ranked(sim, 3)[1].tolist() == [2, 3, 1]


def test_pr_curve_auc_and_recall_at_100_precision():
    # best-match scores and correctness, by design: 0.9 ok, 0.8 ok, 0.7 wrong, 0.6 ok
    sim = np.array([[0.9, 0.0], [0.0, 0.8], [0.7, 0.1], [0.6, 0.2]])
    pos = [{0}, {1}, {1}, {0}]
    pr = best_match_pr(sim, pos)
    np.testing.assert_allclose(pr.precision, [1.0, 1.0, 2 / 3, 3 / 4])
    np.testing.assert_allclose(pr.recall, [0.25, 0.5, 0.5, 0.75])
    assert pr.recall_at_100p == pytest.approx(0.5)
    # step-wise AP: 0.25*1 + 0.25*1 + 0*2/3 + 0.25*3/4
    assert pr.auc == pytest.approx(0.25 + 0.25 + 0.1875)


def test_pr_when_the_top_score_is_wrong_and_ties():
    sim = np.array([[0.9, 0.0], [0.5, 0.0], [0.5, 0.0]])
    pos = [{1}, {0}, {0}]
    pr = best_match_pr(sim, pos)
    assert pr.recall_at_100p == 0.0  # the most confident match is wrong
    np.testing.assert_allclose(pr.precision, [0.0, 2 / 3])  # tied scores are accepted together
    np.testing.assert_allclose(pr.recall, [0.0, 2 / 3])
    assert pr.auc == pytest.approx(2 / 3 * 2 / 3)
