"""Resident memory of each node: at start, after real frames, and through a 20k-keyframe session.

The three nodes run as the launch file runs them (separate processes, FastDDS with the shipped
profile, loopback), the xfeat_vlad preset with a vocabulary fitted on TUM fr1/xyz:
1. at start: every node up and matched, the encoder's signature latched;
2. real frames: the 40 fr1/xyz 640x480 frames published to the encoder node (descriptors with
   512 keypoints, compact patches and thumbnails reach the mapping and recognition nodes);
3. a long session: those 40 descriptor messages published again and again with new stamps
   straight to the mapping and recognition nodes (every one a keyframe: no poses, no keyframe
   interval) until the map holds `--keyframes`; RSS sampled along the way. Publishing is paced
   by the mapping node's `keyframes` output, so none is dropped; the recognition node takes what
   its 2-frame queue holds, as on a robot.

    .venv/bin/python bench/node_memory.py [--keyframes 20000] [--no-record]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil
from _common import REPO, SHARED, record, table

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, image_msg, isolated_dds_env, write_params

NODES = ("encoder_node", "mapping_node", "recognition_node")


def rss_mib(nodes: dict[str, NodeProcess]) -> dict[str, float]:
    return {n: psutil.Process(p.proc.pid).memory_info().rss / 2**20 for n, p in nodes.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keyframes", type=int, default=20_000)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    from anyloc_ros.core.config.encoder import EncoderConfig
    from anyloc_ros.core.encoding.encoder import build_backbone
    from anyloc_ros.core.encoding.images import list_images
    from anyloc_ros.core.encoding.vocabulary import build_vocabulary
    from anyloc_ros.eval.poses import load_tum_rgbd

    isolated_dds_env()
    samples: list[list[object]] = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as d:
        tmp = Path(d)
        cfg = EncoderConfig.from_yaml(REPO / "config/encoders/xfeat_vlad.yaml")
        build_vocabulary(build_backbone(cfg), list_images(SHARED / "tum_fr1_xyz" / "rgb"), 32,
                         progress=False).save(tmp / "vocab.npz")
        params = write_params(tmp / "p.yaml", {
            "/**": {"map_path": str(tmp / "map"), "pose_source": "none"},
            "encoder_node": {"encoder_config": str(REPO / "config/encoders/xfeat_vlad.yaml"),
                             "vocabulary": str(tmp / "vocab.npz"), "device": "cpu"},
            "mapping_node": {"keyframe.no_pose_interval_s": 0.0, "new_session_on_start": True}})
        nodes = {n: NodeProcess(n, params, tmp) for n in NODES}
        driver = DriverNode("bench_memory_driver")
        try:
            from anyloc_ros.msg import Keyframe, PlaceDescriptor, PlaceMatch
            from sensor_msgs.msg import Image

            driver.watch(PlaceDescriptor, "descriptors", 1000)
            driver.watch(Keyframe, "keyframes", 1000)
            driver.watch(PlaceMatch, "place_matches", 1000)
            image_pub = driver.node.create_publisher(Image, "image", 10)
            driver.wait_matched(image_pub, 1, 120)
            driver.wait_graph("descriptors", 1, 2)
            driver.wait_graph("keyframes", 1, 1)
            time.sleep(3.0)  # the nodes' start-up work settles
            samples.append(["at start", 0, *rss_mib(nodes).values()])

            frames, _ = load_tum_rgbd(SHARED / "tum_fr1_xyz")
            for f in frames:
                image_pub.publish(image_msg(f.rgb, int(f.stamp * 1e9)))
                time.sleep(0.25)  # below the encoder's rate: every frame is encoded
            real = driver.wait_for("descriptors", len(frames), 60)
            driver.wait_for("keyframes", len(real), 60)
            samples.append([f"after {len(frames)} real frames", len(driver.received["keyframes"]),
                            *rss_mib(nodes).values()])

            desc_pub = driver.node.create_publisher(PlaceDescriptor, "descriptors", 100)
            driver.wait_matched(desc_pub, 2, 30)
            sent, stamp, t0 = len(driver.received["keyframes"]), int(frames[-1].stamp * 1e9), time.monotonic()
            every = max(args.keyframes // 8, 1)
            while sent < args.keyframes:
                batch = min(50, args.keyframes - sent)
                for _ in range(batch):
                    msg = real[sent % len(real)]
                    stamp += 100_000_000  # 10 Hz
                    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
                    msg.thumbnail.header.stamp = msg.header.stamp
                    msg.seq = sent
                    desc_pub.publish(msg)
                    sent += 1
                driver.wait_for("keyframes", sent, 120)  # the mapping node has stored them all
                if sent // every > (sent - batch) // every or sent == args.keyframes:
                    samples.append([f"{sent:,} keyframes ({time.monotonic() - t0:.0f} s)", sent,
                                    *rss_mib(nodes).values()])
                    print(samples[-1], flush=True)
            queries = len(driver.received["place_matches"])
            map_mib = sum(p.stat().st_size for p in (tmp / "map").rglob("*") if p.is_file()) / 2**20
        finally:
            for n in nodes.values():
                n.stop()
            driver.close()
    rows = [[label, kf, *(f"{v:.0f}" for v in mib)] for label, kf, *mib in samples]
    warm, end = samples[1], samples[-1]  # after the real frames (networks warmed up) -> the end of the session
    added = max(end[1] - warm[1], 1)
    body = table(["when", "keyframes in the map", *(f"{n} MiB" for n in NODES)], rows) + (
        "\n\nResident set size (psutil) of each node process. Over the session (after the real frames -> "
        f"{end[1]:,} keyframes): "
        + ", ".join(f"{n} {e - s:+.0f} MiB ({(e - s) * 2**20 / added:,.0f} B/keyframe)"
                    for n, s, e in zip(NODES, warm[2:], end[2:], strict=True))
        + "; the maps' flat index holds 8,192 B/keyframe (2048-D float32)"
        + f". The recognition node answered {queries:,} queries (the rest dropped by its 2-frame queue). Map on disk "
        f"{map_mib:,.0f} MiB ({map_mib * 2**20 / samples[-1][1] / 1024:,.0f} KiB per keyframe: 2048-D descriptor, "
        "compact patches, 512 keypoints with descriptors, thumbnail). xfeat_vlad preset, defaults otherwise.")
    if args.no_record:
        print(body)
    else:
        record("Node memory: at start and through a long session", "python bench/node_memory.py"
               + ("" if args.keyframes == 20_000 else f" --keyframes {args.keyframes}"), body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
