"""Fleet (#25): what a keyframe costs on the fleet topic, what the compact descriptor costs in
recall, and how long an inter-robot loop closure takes over DDS.

- bytes: serialised FleetKeyframe (CDR, what DDS carries before its own ~50-byte RTPS headers)
  per descriptor format and dimension, against Swarm-SLAM's GlobalDescriptor {keyframe_id,
  robot_id, float64[] descriptor} (its CDR size: 16 + 8 x dim bytes); and FleetFeatures, the
  answer to a local-feature request, for a real corridor keyframe (512 XFeat keypoints);
- recall: the map's descriptors sent through each format, the queries not (corridor and TUM
  fr1/xyz as bench/rerank.py sets them up, xfeat_vlad preset, vocabulary fitted on each map);
- latency: robot A (mapping node) maps the corridor's first traversal while robot B (mapping and
  recognition nodes) drives the second 20 frames behind, real processes over DDS on loopback
  (test/ros/test_fleet.py's harness): B's descriptor sent -> B's inter-robot LoopClosure received,
  which includes B asking A for the keyframe's local features and A answering.

    .venv/bin/python bench/fleet.py [--no-record]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import REPO, SHARED, record, table

from anyloc_ros.core.config.encoder import EncoderConfig
from anyloc_ros.core.encoding.encoder import Encoder, build_backbone
from anyloc_ros.core.encoding.images import list_images, load_image
from anyloc_ros.core.encoding.patches import PatchCompressor
from anyloc_ros.core.encoding.vocabulary import build_vocabulary
from anyloc_ros.core.fleet.wire import FORMATS, decode_descriptor, encode_descriptor
from anyloc_ros.eval.evaluate import encode_images
from anyloc_ros.eval.metrics import recall_at_k

DIMS = {512: "PCA to 512, the paper's", 2048: "xfeat_vlad (64 x 32)", 12288: "DINOv2 ViT-S VLAD (384 x 32)",
        49152: "DINOv2 ViT-G VLAD (1536 x 32)"}


def wire_sizes() -> list[list[object]]:
    from anyloc_ros.msg import FleetKeyframe
    from rclpy.serialization import serialize_message

    rows = []
    rng = np.random.default_rng(0)
    for dim, what in DIMS.items():
        d = rng.normal(size=dim).astype(np.float32)
        d /= np.linalg.norm(d)
        sizes = []
        for code, fmt in enumerate(FORMATS):
            data, scale = encode_descriptor(d, fmt)
            m = FleetKeyframe(robot_id="robot_a", map_id="0" * 32, session="20261206-120000-abcdef",
                              keyframe_id=12345, encoder_id="6a3c9d1c5c01", descriptor_format=code,
                              descriptor_scale=scale, pose_valid=True, frame_id="odom", camera="camera")
            m.descriptor = data
            sizes.append(len(serialize_message(m)))
        swarm = 16 + 8 * dim
        rows.append([f"{dim} ({what})", swarm, *sizes, f"{swarm / sizes[1]:.1f}x"])
    return rows


def features_size(frame) -> int:
    from anyloc_ros.msg import FleetFeatures
    from rclpy.serialization import serialize_message

    from anyloc_ros.nodes.descriptor_msg import local_features_to_msg

    m = FleetFeatures(from_robot="robot_a", to_robot="robot_b", map_id="0" * 32, keyframe_id=1, found=True)
    local_features_to_msg(frame.local, m)
    return len(serialize_message(m))


def recall_rows(tmp: Path) -> list[list[object]]:
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from rerank import datasets

    rows = []
    for name, ds in datasets(tmp).items():
        cfg = EncoderConfig.from_yaml(REPO / "config" / "encoders" / "xfeat_vlad.yaml")
        build_vocabulary(build_backbone(cfg), ds.database, 32, progress=False).save(tmp / f"{name}.npz")
        cfg.aggregation.vocabulary = str(tmp / f"{name}.npz")
        encoder = Encoder.from_config(cfg)
        db, _, _, _ = encode_images(encoder, ds.database, None, "", False)
        q, _, _, _ = encode_images(encoder, ds.queries, None, "", False)
        for code, fmt in enumerate(FORMATS):
            sent = np.stack([decode_descriptor(*_sent(v, fmt, code, db.shape[1])) for v in db])
            r = recall_at_k(q @ sent.T, ds.positives, (1, 5))
            cos = float(np.min(np.sum(sent * db / np.linalg.norm(db, axis=1, keepdims=True), axis=1)))
            rows.append([name, fmt, f"{r[1]:.3f}", f"{r[5]:.3f}", f"{cos:.5f}"])
            print(rows[-1], flush=True)
    return rows


def _sent(v: np.ndarray, fmt: str, code: int, dim: int) -> tuple[bytes, int, int, float]:
    """decode_descriptor's arguments for `v` as it travels in `fmt`."""
    data, scale = encode_descriptor(v, fmt)
    return data, code, dim, scale


def dds_latency(tmp: Path) -> tuple[str, int]:
    """Phase 1 of test/ros/test_fleet.py: B's frame -> inter-robot closure, over real DDS."""
    import sys

    sys.path.insert(0, str(REPO))
    from anyloc_ros.tools.ros_driver import DriverNode, isolated_dds_env

    isolated_dds_env()
    from anyloc_ros.msg import FleetKeyframe, Keyframe, LoopClosure, PlaceMatch
    from rclpy.serialization import serialize_message

    from anyloc_ros.nodes.fleet import keyframes_qos
    from test.ros.test_fleet import A_T0, B_T0, LAG, Robot, with_intrinsics

    corridor = SHARED / "corridor"
    cfg = EncoderConfig.from_yaml(REPO / "config" / "encoders" / "xfeat_vlad.yaml")
    build_vocabulary(build_backbone(cfg), list_images(corridor / "ref"), 32, progress=False).save(tmp / "v.npz")
    cfg.aggregation.vocabulary = str(tmp / "v.npz")
    enc = Encoder.from_config(cfg)
    comp = PatchCompressor(64)
    frames = {s: [with_intrinsics(enc.encode_frame(load_image(p), comp, keypoints=512))
                  for p in list_images(corridor / s)] for s in ("ref", "query")}
    feat_bytes = features_size(frames["ref"][0])
    sig = enc.signature()
    t = DriverNode()
    robots = []
    try:
        t.watch(Keyframe, "/robot_a/keyframes", 1000)
        t.watch(PlaceMatch, "/robot_b/place_matches", 1000)
        t.watch(LoopClosure, "/robot_b/loop_closures", 1000)
        t.watch(FleetKeyframe, "/anyloc_fleet/keyframes", keyframes_qos(1000))
        a = Robot(t, tmp, "robot_a", ("mapping_node",), dict(sig))
        b = Robot(t, tmp, "robot_b", ("mapping_node", "recognition_node"), dict(sig))
        robots = [a, b]
        for r in robots:
            t.wait_matched(r.desc, len(r.procs), 60, list(r.procs.values()))
            t.wait_matched(r.odom, len(r.procs), 60, list(r.procs.values()))
        t.wait_graph("/anyloc_fleet/keyframes", 2, 3)
        n, sent = len(frames["ref"]), {}
        for i in range(n + LAG):
            if i < n:
                a.drive(frames["ref"][i], i, A_T0, 0.0, sig.id, "/robot_a/keyframes", i)
            if i - LAG >= 0:
                sent[i - LAG] = b.drive(frames["query"][i - LAG], i - LAG, B_T0, 0.5, sig.id,
                                        "/robot_b/place_matches", i - LAG)
        time.sleep(2.0)
        loops = t.received["/robot_b/loop_closures"]
        arrived = t.arrival_times("/robot_b/loop_closures")
        lat = [1e3 * (at - sent[lc.query_stamp.sec - B_T0]) for lc, at in zip(loops, arrived, strict=True)]
        wire = [len(serialize_message(m)) for m in t.received["/anyloc_fleet/keyframes"] if m.robot_id == "robot_a"]
    finally:
        for r in robots:
            r.stop()
        t.close()
    inter = sum(bool(lc.match_robot_id) for lc in loops)
    line = (f"{inter} inter-robot closures of {len(loops)} (sequence matching, consistency 3); B's descriptor sent -> "
            f"closure received: {statistics.median(lat):.0f} ms median, {max(lat):.0f} ms max (both robots' nodes "
            f"and the driver on this 2-core machine; B's recognition step is ~3 ms, the rest is the request to A, "
            f"A's answer and DDS); A's keyframes on the fleet topic: {statistics.median(wire):,.0f} bytes each (float16, "
            f"2048-D)")
    return line, feat_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sizes = wire_sizes()
        (tmp / "dds").mkdir()
        latency, feat_bytes = dds_latency(tmp / "dds")
        recalls = recall_rows(tmp / "recall")
    body = ("Bytes per keyframe on the fleet topic (serialised FleetKeyframe, CDR) vs Swarm-SLAM's float64 "
            "GlobalDescriptor:\n\n"
            + table(["descriptor dim", "Swarm-SLAM float64", "float32", "float16 (default)", "int8",
                     "float64 / float16"], sizes)
            + f"\n\nA local-feature answer (FleetFeatures, 512 XFeat keypoints with 64-D float16 descriptors): "
              f"{feat_bytes} bytes, sent only for a peer keyframe that is a loop-closure candidate.\n\n"
            + "Recall of the map's descriptors sent through each format (queries as encoded):\n\n"
            + table(["data", "format", "Recall@1", "Recall@5", "worst cosine to the original"], recalls)
            + f"\n\nInter-robot closures over DDS (corridor, two robots): {latency}.")
    if args.no_record:
        print(body)
    else:
        record("Fleet: bytes per keyframe, recall of the compact descriptor, inter-robot closure latency",
               "python bench/fleet.py", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
