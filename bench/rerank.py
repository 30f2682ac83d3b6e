"""Re-ranking: what it buys (recall, closures) and what it costs, per patch grid.

For each compact-patch grid (the encoder node's `patch_grid`) and with re-ranking off, on real
data with the xfeat_vlad preset (vocabulary fitted on each map):
- corridor (111 map + 111 query images, ground truth +-2 frames) and TUM fr1/xyz (even frames the
  map, odd frames the queries; positives within 0.3 m and 20 deg) through `evaluate()`, the
  pipeline `anyloc eval` runs: Recall@1/5, AUC-PR, R@100P of the recognition node's ranking;
- corridor as one robot trajectory (map traversal, then the revisit, every frame a keyframe,
  consistency 3): loop closures, their precision and recall (as test_loop_closure.py);
- the cost of re-ranking the top 10 on the real candidates: `rerank()` (per candidate, two
  products that stay in cache) against the implementation it replaced (two products over all
  candidates stacked; the same mutual-NN counts), median ms per query.

    .venv/bin/python bench/rerank.py [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import SHARED, record, table

from anyloc_ros.core.config.encoder import EncoderConfig
from anyloc_ros.core.config.nodes import EncoderNodeSettings
from anyloc_ros.core.config.recognition import KeyframeGateConfig, LoopClosureConfig
from anyloc_ros.core.encoding.encoder import Encoder, build_backbone
from anyloc_ros.core.encoding.patches import PatchCompressor
from anyloc_ros.core.encoding.vocabulary import build_vocabulary
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.recognition.mapping import Mapper
from anyloc_ros.core.recognition.recognizer import PlaceRecognizer
from anyloc_ros.core.recognition.rerank import rerank
from anyloc_ros.core.recognition.step import FrameStep
from anyloc_ros.core.types import DescriptorFrame, Match
from anyloc_ros.eval.datasets import PlaceDataset, load_folder_dataset, load_tum_dataset
from anyloc_ros.eval.evaluate import EvalSettings, encode_images, evaluate

GRIDS = [16, 24, 32]
TOP_K = 10


def datasets(tmp: Path) -> dict[str, PlaceDataset]:
    c = SHARED / "corridor"
    fr1 = SHARED / "tum_fr1_xyz"
    for half, parity in (("map", 0), ("queries", 1)):  # alternate frames: map and revisit
        (tmp / "fr1" / half).mkdir(parents=True)
        for i, p in enumerate(sorted((fr1 / "rgb").glob("*.png"))):
            if i % 2 == parity:
                (tmp / "fr1" / half / p.name).symlink_to(p)
    gt = fr1 / "groundtruth.txt"
    return {"corridor": load_folder_dataset(c / "ref", c / "query", c / "ground_truth.csv"),
            "TUM fr1/xyz": load_tum_dataset(tmp / "fr1" / "map", gt, tmp / "fr1" / "queries", gt, 0.3, 20.0)}


def numpy_rerank_counts(q: np.ndarray, cands: list[np.ndarray]) -> list[int]:
    """The implementation `rerank()` replaced: two fp32 products over the stacked candidates."""
    q = q.astype(np.float32)
    stacked = np.concatenate([c.astype(np.float32) for c in cands])
    q_to_c, c_to_q = q @ stacked.T, stacked @ q.T
    counts, start, rows = [], 0, np.arange(len(q))
    for c in cands:
        best_c = q_to_c[:, start : start + len(c)].argmax(axis=1)
        best_q = c_to_q[start : start + len(c)].argmax(axis=1)
        counts.append(int((best_q[best_c] == rows).sum()))
        start += len(c)
    return counts


def rerank_cost(db: np.ndarray, db_patches: list, q: np.ndarray, q_patches: list) -> tuple[float, float, bool]:
    """Median ms per query of re-ranking its top 10 (ours, replaced) and whether the counts agree."""
    top = np.argsort(-(q @ db.T), axis=1)[:, :TOP_K]
    ours, theirs, same = [], [], True
    for i, cand in enumerate(top):
        matches = [Match(int(j), float(q[i] @ db[j])) for j in cand]
        t = time.perf_counter()
        rerank(q_patches[i], matches, [db_patches[j] for j in cand])
        ours.append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        counts = numpy_rerank_counts(q_patches[i], [db_patches[j] for j in cand])
        theirs.append((time.perf_counter() - t) * 1e3)
        same &= [int(m.rerank_score) for m in matches] == counts
    return statistics.median(ours), statistics.median(theirs), same


def corridor_closures(db: np.ndarray, db_patches: list | None, q: np.ndarray, q_patches: list | None,
                      positives: list[set[int]], tmp: Path) -> tuple[int, float, float]:
    """The two traversals as one trajectory (1 frame/s, 30 s between them): closures, precision, recall."""
    loop = LoopClosureConfig(exclude_recent_count=0, exclude_recent_s=120, consistency=3, consistency_window=3,
                             rerank=db_patches is not None, min_score=0.0, suppress_window=0)
    pdb = PlaceDatabase(tmp / f"traj_{time.monotonic_ns()}", {"backbone": "xfeat", "dim": db.shape[1]}, durable=False)
    step = FrameStep(PlaceRecognizer(pdb, loop), Mapper(pdb, KeyframeGateConfig(min_distance_m=0.0,
                                                                                  no_pose_interval_s=0.0)))
    correct = total = 0
    for t0, descs, patches, is_query in ((0, db, db_patches, False), (len(db) + 30, q, q_patches, True)):
        for i, d in enumerate(descs):
            out = step(DescriptorFrame((t0 + i) * 1_000_000_000, "", i, d,
                                       patches=patches[i] if patches is not None else None))
            if out.loop and is_query:
                total += 1
                correct += (out.loop.match.keyframe_id - 1) in positives[i]  # ids 1.. are the map
    pdb.close()
    return total, correct / max(total, 1), correct / len(positives)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, ds in datasets(tmp).items():
            cfg = EncoderConfig.from_yaml(Path(__file__).resolve().parents[1] / "config" / "encoders" / "xfeat_vlad.yaml")
            build_vocabulary(build_backbone(cfg), ds.database, 32, progress=False).save(tmp / f"{name}.npz")
            cfg.aggregation.vocabulary = str(tmp / f"{name}.npz")
            encoder = Encoder.from_config(cfg)
            for grid in [None, *GRIDS]:
                settings = EvalSettings(loop=LoopClosureConfig(rerank=grid is not None),
                                        encoder=EncoderNodeSettings(patch_grid=grid or EncoderNodeSettings.patch_grid))
                res = evaluate(ds, cfg, tmp / "out", tmp / "cache", progress=False, settings=settings)["pipelines"]
                single = res["single"]
                row = [name, "off" if grid is None else f"{grid}x{grid}", single["recall@1"], single["recall@5"],
                       single["auc_pr"], single["recall_at_100p"]]
                compress = PatchCompressor.of(settings.encoder, encoder.backbone.feature_dim) if grid else None
                db, _, _, dbp = encode_images(encoder, ds.database, tmp / "cache", "", False, compress=compress)
                q, _, _, qp = encode_images(encoder, ds.queries, tmp / "cache", "", False, compress=compress)
                if grid is None:
                    row += ["-", "-", "-"]
                else:
                    ours, theirs, same = rerank_cost(db, dbp, q, qp)
                    row += [f"{ours:.1f}", f"{theirs:.1f}", "yes" if same else "NO"]
                if name == "corridor":
                    n, precision, recall = corridor_closures(db, dbp, q, qp, ds.positives, tmp)
                    row.append(f"{n} ({precision:.3f} / {recall:.3f})")
                else:
                    row.append("-")
                rows.append(row)
                print(rows[-1], flush=True)
    body = table(["data", "re-ranking grid", "Recall@1", "Recall@5", "AUC-PR", "R@100P", "re-rank ms",
                  "stacked ms (replaced)", "same counts", "closures (precision / recall)"], rows) + (
        f"\n\nxfeat_vlad preset, vocabulary (32) fitted on each map; the recognition node's pipeline (top {TOP_K}, "
        "re-ranked by mutual-NN patch matches); re-rank ms: median per query over the real top-10 candidates "
        "(stored patches float16, 64-D). Closures: corridor as one trajectory, consistency 3, recency 120 s, "
        f"every frame a keyframe. Default `patch_grid`: {EncoderNodeSettings.patch_grid}.")
    if args.no_record:
        print(body)
    else:
        record("Re-ranking: recall, closures and cost per patch grid", "python bench/rerank.py", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
