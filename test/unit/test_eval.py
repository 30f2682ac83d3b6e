"""`anyloc eval` / `compare` on real data, dataset readers, and bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from anyloc_ros.eval.datasets import (
    DatasetError,
    load_tum_dataset,
    load_vg_dataset,
    read_positives_csv,
    read_vprbench_npy,
)

from ..conftest import CORRIDOR, REPO, TUM_DESK, require

XFEAT_CFG = REPO / "config" / "encoders" / "xfeat_vlad.yaml"


def anyloc(*args):
    return subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.realdata
def test_eval_on_corridor_matches_independent_metrics(tmp_path, corridor_vocab, corridor_features, corridor_gt):
    require(CORRIDOR)
    out = tmp_path / "eval"
    args = ["eval", "--config", str(XFEAT_CFG), "--vocabulary", str(corridor_vocab), "--device", "cpu",
            "--database", str(CORRIDOR / "ref"), "--queries", str(CORRIDOR / "query"),
            "--ground-truth", str(CORRIDOR / "ground_truth.csv"), "--output", str(out)]
    r = anyloc(*args)
    assert r.returncode == 0, r.stderr
    assert "recall@1" in r.stdout and "xfeat_vlad" in r.stdout
    res = json.loads((out / "results.json").read_text())
    for key in ("recall@1", "recall@5", "recall@10", "recall@20", "auc_pr", "recall_at_100p", "encode_ms", "query_ms",
                "dim", "encoder_config"):
        assert key in res
    assert set(res["pipelines"]) == {"retrieval", "single", "sequence"}
    retrieval, single, sequence = (res["pipelines"][p] for p in ("retrieval", "single", "sequence"))
    assert res["recall@1"] == single["recall@1"]  # the headline is the shipped single-frame pipeline
    print(f"corridor R@1: retrieval {retrieval['recall@1']:.3f}, single (re-ranked) {single['recall@1']:.3f}, "
          f"sequence {sequence['recall@1']:.3f}")
    # measured 2026-12-06 (24x24 re-ranking patches): 0.847 / 0.910 / 1.000 (README); the targets
    assert single["recall@1"] >= 0.90 and sequence["recall@1"] >= 0.97
    assert sequence["recall@1"] > single["recall@1"] > retrieval["recall@1"]
    assert res["dim"] == 2048
    for png in ("recall_at_k.png", "pr_curve.png", "similarity.png"):
        assert (out / png).stat().st_size > 5000

    # independent: descriptors from the cached features, metrics by plain numpy
    from anyloc_ros.core.encoding.aggregation import VLAD
    from anyloc_ros.core.encoding.vocabulary import Vocabulary

    vlad = VLAD(Vocabulary.load(corridor_vocab).centers)
    db = vlad.aggregate_batch(corridor_features["ref"].reshape(111, -1, 64))
    q = vlad.aggregate_batch(corridor_features["query"].reshape(111, -1, 64))
    sim = q @ db.T
    order = np.argsort(-sim, axis=1)
    for k in (1, 5, 10, 20):
        mine = np.mean([bool(set(order[i, :k]) & corridor_gt[i]) for i in range(111)])
        assert retrieval[f"recall@{k}"] == pytest.approx(mine, abs=1 / 111 + 1e-9)
    best, score = order[:, 0], sim.max(1)
    correct = np.array([best[i] in corridor_gt[i] for i in range(111)])
    # R@100P: queries accepted above the highest-scoring wrong match
    wrong_top = score[~correct].max()
    r100 = np.sum(correct & (score > wrong_top)) / 111
    assert retrieval["recall_at_100p"] == pytest.approx(r100, abs=2 / 111)

    again = anyloc(*args)  # second run: descriptors from the cache
    assert again.returncode == 0
    assert json.loads((out / "results.json").read_text())["descriptors_from_cache"] is True

    cmp = anyloc("compare", str(out / "results.json"), str(out / "results.json"), "--output", str(tmp_path / "cmp"))
    assert cmp.returncode == 0 and cmp.stdout.count("xfeat_vlad") == 6  # 2 results x 3 pipelines
    assert (tmp_path / "cmp" / "pr_curve.png").is_file()


def test_eval_bad_input_is_a_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = anyloc("eval", "--preset", "dinov2_vits14_gem", "--database", str(empty), "--queries", str(empty),
               "--ground-truth", str(tmp_path / "gt.csv"))
    assert r.returncode == 2 and "no images" in r.stderr and "Traceback" not in r.stderr
    require(CORRIDOR)
    gt = tmp_path / "short.csv"
    gt.write_text("query_index,matching_ref_indices\n0,1 2\n1,2\n")
    r = anyloc("eval", "--preset", "dinov2_vits14_gem", "--database", str(CORRIDOR / "ref"), "--queries",
               str(CORRIDOR / "query"), "--ground-truth", str(gt))
    assert r.returncode == 2 and "ground truth for 2 queries" in r.stderr
    r = anyloc("compare", str(gt))
    assert r.returncode == 2 and "cannot read result file" in r.stderr


def test_vprbench_npy_reader_refuses_code(tmp_path):
    gt = np.empty((3, 2), dtype=object)
    for i in range(3):
        gt[i, 0], gt[i, 1] = i, np.array([i, i + 1])
    np.save(tmp_path / "ground_truth_new.npy", gt, allow_pickle=True)
    assert read_vprbench_npy(tmp_path / "ground_truth_new.npy") == [{0, 1}, {1, 2}, {2, 3}]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = np.empty((1, 2), dtype=object)
    bad[0, 0], bad[0, 1] = 0, Evil()
    np.save(tmp_path / "evil.npy", bad, allow_pickle=True)
    with pytest.raises(DatasetError, match="refusing to unpickle builtins.print"):
        read_vprbench_npy(tmp_path / "evil.npy")


def test_csv_reader_checks_counts(tmp_path):
    f = tmp_path / "gt.csv"
    f.write_text("query_index,matching_ref_indices\n0,1 2\n2,3\n")
    with pytest.raises(DatasetError, match="expected indices 0..2"):
        read_positives_csv(f, 3)


def test_vg_format_positives_within_radius(tmp_path):
    import cv2

    db, q = tmp_path / "db", tmp_path / "q"
    db.mkdir()
    q.mkdir()
    img = np.zeros((8, 8, 3), np.uint8)
    for e, n in [(500000.0, 4000000.0), (500030.0, 4000000.0), (500100.0, 4000000.0)]:
        cv2.imwrite(str(db / f"@{e}@{n}@17@S@.jpg"), img)
    cv2.imwrite(str(q / "@500010.0@4000000.0@17@S@.jpg"), img)
    ds = load_vg_dataset(db, q, radius=25.0)
    assert ds.positives == [{0, 1}]  # 10 m and 20 m away; the third is 90 m away


@pytest.mark.realdata
def test_tum_sequence_positives_from_trajectory(tmp_path):
    """Even frames are the map, odd frames the queries; positives (within 5 cm and 5 degrees of
    viewing direction) are recomputed here from the ground-truth lines nearest each frame's
    stamp, with the relative rotation angle 2*acos(|<q1, q2>|)."""
    require(TUM_DESK)
    frames = sorted((TUM_DESK / "rgb").glob("*.png"))
    for name, part in (("db", frames[0::2]), ("q", frames[1::2])):
        (tmp_path / name).mkdir()
        for f in part:
            (tmp_path / name / f.name).symlink_to(f)
    ds = load_tum_dataset(tmp_path / "db", TUM_DESK / "groundtruth.txt", tmp_path / "q", TUM_DESK / "groundtruth.txt",
                          radius=0.05, max_angle_deg=5)
    assert len(ds.database) == 10 and len(ds.queries) == 10

    gt = np.loadtxt(TUM_DESK / "groundtruth.txt", comments="#")

    def pose(f):
        return gt[np.argmin(np.abs(gt[:, 0] - float(f.stem))), 1:]

    want = []
    for qf in frames[1::2]:
        qp = pose(qf)
        hits = set()
        for j, df in enumerate(frames[0::2]):
            dp = pose(df)
            angle = 2 * np.degrees(np.arccos(min(1.0, abs(float(np.dot(qp[3:], dp[3:]))))))
            if np.linalg.norm(qp[:3] - dp[:3]) <= 0.05 and angle <= 5:
                hits.add(j)
        want.append(hits)
    assert ds.positives == want
    assert any(want) and not all(len(w) == 10 for w in want)  # some neighbours, not everything
