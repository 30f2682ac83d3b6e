"""One camera frame, stage by stage: the real per-frame path on real 640x480 frames.

TUM fr1/xyz (../shared/data/tum_fr1_xyz: 40 RGB-D frames, Kinect v1) is fed twice, as a robot
mapping then revisiting, each frame as the nodes handle it: the sensor_msgs/Image -> RGB
conversion, `Encoder.encode_frame` (preprocessing, network, keypoints, aggregation, compact
patches; depth and the fr1 calibration applied), then `FrameStep` (search, re-ranking or
sequence, loop-closure filter, verification, map add). Loop closures are verified (metric PnP
on depth). Encoders: the `xfeat_vlad` preset (a vocabulary fitted on the frames) and a
random-weight DINOv2 ViT-S/14 (aspect 448, GeM) with XFeat beside it for keypoints.

Frame -> match is the conversion, the encoding and the recognition; the map add follows it.

    .venv/bin/python bench/per_frame.py [--device cuda] [--no-record]
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
from anyloc_ros.core.config.nodes import EncoderNodeSettings, MappingSettings
from anyloc_ros.core.config.recognition import KeyframeGateConfig, LoopClosureConfig, VerificationConfig
from anyloc_ros.core.encoding.encoder import Encoder, build_backbone
from anyloc_ros.core.encoding.images import list_images
from anyloc_ros.core.encoding.patches import PatchCompressor
from anyloc_ros.core.encoding.vocabulary import build_vocabulary
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.recognition.mapping import Mapper
from anyloc_ros.core.recognition.recognizer import PlaceRecognizer
from anyloc_ros.core.recognition.step import FrameStep
from anyloc_ros.core.types import DescriptorFrame
from anyloc_ros.eval.poses import load_tum_rgbd
from anyloc_ros.nodes.images import image_msg_to_rgb
from anyloc_ros.testing import VIT_SIZES, save_random_dinov2
from anyloc_ros.tools.ros_driver import image_msg

DATA = SHARED / "tum_fr1_xyz"
STAGES = ["decode", "preprocess", "forward", "keypoints", "aggregation", "search", "rerank", "filter",
          "verification", "frame -> match", "map add"]


def encoders(tmp: Path, device: str) -> dict[str, Encoder]:
    xfeat = EncoderConfig.from_yaml(Path(__file__).resolve().parents[1] / "config" / "encoders" / "xfeat_vlad.yaml")
    xfeat.backbone.device = device
    build_vocabulary(build_backbone(xfeat), list_images(DATA / "rgb"), 32, progress=False).save(tmp / "vocab.npz")
    xfeat.aggregation.vocabulary = str(tmp / "vocab.npz")
    save_random_dinov2(tmp / "vits14", **VIT_SIZES["ViT-S/14"])
    dino = EncoderConfig.from_dict({"preset": "dinov2_vits14_gem", "backbone": {"model": str(tmp / "vits14"),
                                                                               "device": device},
                                    "local_features": {"model_path": str(SHARED / "weights" / "xfeat.onnx")}})
    return {"XFeat + VLAD-32 (own keypoints)": Encoder.from_config(xfeat),
            "DINOv2 ViT-S/14 random + GeM, XFeat beside": Encoder.from_config(dino)}


def run(encoder: Encoder, tmp: Path) -> tuple[dict[str, list[float]], int]:
    frames, camera = load_tum_rgbd(DATA)
    node = EncoderNodeSettings()
    compress = PatchCompressor.of(node, encoder.backbone.feature_dim)
    db = PlaceDatabase(tmp / f"map_{id(encoder)}", encoder.signature(), durable=True)
    mapper = Mapper(db, KeyframeGateConfig(min_distance_m=0.05, min_rotation_deg=5.0))
    # the 26 s sequence revisits within seconds: short recency exclusions (the defaults exclude 30 s)
    loop = LoopClosureConfig(exclude_recent_count=1, exclude_recent_s=1.0, consistency=1, suppress_window=0,
                             min_score=0.0)
    step = FrameStep(PlaceRecognizer(db, loop, verification=VerificationConfig()), mapper,
                     mapping=MappingSettings())
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    closures = 0
    for rep in range(2):
        mapper.new_session(f"pass{rep}")
        for k, f in enumerate(frames):
            stamp = int((f.stamp + 30 * rep) * 1e9)
            msg = image_msg(f.rgb, stamp)
            t0 = time.perf_counter()
            rgb = image_msg_to_rgb(msg)
            t1 = time.perf_counter()
            enc = encoder.encode_frame(rgb, compress, node.publish_keypoints, camera, f.depth)
            t = encoder.timings
            kp = t.extra.get("keypoints", 0.0) * 1e3
            out = step(DescriptorFrame(stamp, "camera", k, enc.descriptor, patches=enc.patches, local=enc.local))
            closures += out.loop is not None
            r = step.recognizer.timings
            row = {"decode": (t1 - t0) * 1e3, "preprocess": t.preprocess * 1e3, "forward": t.backbone * 1e3,
                   "keypoints": kp, "aggregation": t.aggregate * 1e3 - kp, "search": r.get("search", 0.0),
                   "rerank": r.get("rerank", 0.0), "filter": r.get("filter", 0.0),
                   "verification": r.get("verification", 0.0), "map add": out.ms.get("map", 0.0)}
            row["frame -> match"] = (t1 - t0) * 1e3 + t.total * 1e3 + out.ms["recognise"]
            for s in STAGES:
                times[s].append(row[s])
    db.close()
    return times, closures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        results = {name: run(enc, tmp) for name, enc in encoders(tmp, args.device).items()}
    node = EncoderNodeSettings()
    rows = []
    for s in STAGES:
        row = [s]
        for times, _ in results.values():
            v = times[s]
            row.append(f"{statistics.median(v):.1f} / {np.percentile(v, 90):.1f}")
        rows.append(row)
    rows.append(["loop closures (80 frames)", *[str(c) for _, c in results.values()]])
    body = table(["stage (ms, median / p90)", *results], rows) + (
        f"\n\nDevice {args.device}; 80 frames (TUM fr1/xyz twice, 640x480, as sensor_msgs/Image rgb8), 512 keypoints "
        f"with depths, compact patches {node.patch_grid}x{node.patch_grid} (re-ranking the top 10), verification on "
        "(PnP on depth). 'preprocess' + 'forward' is the network's share; 'aggregation' is VLAD/GeM and the compact "
        "patches; 'filter' and 'verification' run on frames whose candidate is confirmed (0 otherwise). "
        "Frame -> match = decode + encode + recognise; the map add (SQLite, fsync) follows it.")
    if args.no_record:
        print(body)
    else:
        record(f"Per-frame path, stage by stage ({args.device})", "python bench/per_frame.py"
               + ("" if args.device == "cpu" else f" --device {args.device}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
