"""ROS end to end: camera image published -> place match received, between processes over
DDS (640x480 rgb8, XFeat ONNX + VLAD, a 111-keyframe map), against the same encode + query
called in-process; then a sustained input rate above what the encoder can handle.

    .venv/bin/python bench/ros_e2e.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from _common import REPO, SHARED, record, table  # noqa: I001

from anyloc_ros.tools.ros_driver import DriverNode, NodeProcess, image_msg, isolated_dds_env, write_params


def main() -> None:
    from anyloc_ros.core.config.encoder import EncoderConfig
    from anyloc_ros.core.config.nodes import EncoderNodeSettings
    from anyloc_ros.core.config.recognition import LoopClosureConfig
    from anyloc_ros.core.encoding.encoder import Encoder, build_backbone
    from anyloc_ros.core.encoding.images import list_images, load_image
    from anyloc_ros.core.encoding.patches import PatchCompressor
    from anyloc_ros.core.encoding.vocabulary import build_vocabulary
    from anyloc_ros.core.map.database import PlaceDatabase
    from anyloc_ros.core.recognition.recognizer import PlaceRecognizer
    from anyloc_ros.core.recognition.step import FrameStep
    from anyloc_ros.core.types import DescriptorFrame

    isolated_dds_env()
    tmp = Path(tempfile.mkdtemp())
    cfg = EncoderConfig.from_yaml(REPO / "config/encoders/xfeat_vlad.yaml")
    cfg.backbone.device = "cpu"
    refs = list_images(SHARED / "corridor" / "ref")
    build_vocabulary(build_backbone(cfg), refs, 32, progress=False).save(tmp / "vocab.npz")
    cfg.aggregation.vocabulary = str(tmp / "vocab.npz")
    enc = Encoder.from_config(cfg)
    comp = PatchCompressor(64)
    db = PlaceDatabase(tmp / "map", enc.signature(), session="map")
    for p in refs:
        d, f = enc.encode_with_features([load_image(p)])
        db.add(d[0], 0, patches=comp(f[0]))
    db.close()
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted((SHARED / "tum_fr2_desk" /
                                                                                    "rgb").glob("*.png"))]
    # in-process: the same work the two nodes do per frame (conversion, encode, patches, thumbnail,
    # query with mutual-NN re-ranking of the top 10)
    from anyloc_ros.nodes.conversions import stamp_to_ns
    from anyloc_ros.nodes.images import encode_jpeg, image_msg_to_rgb

    db = PlaceDatabase(tmp / "map", follower=True)
    step = FrameStep(PlaceRecognizer(db, LoopClosureConfig(rerank=True)))  # the recognition node's step

    node = EncoderNodeSettings()  # the encoder node's defaults: keypoints, thumbnail size

    def in_process(n: int) -> tuple[list[float], list[float]]:
        """Per frame: ms for all of it, and ms up to the descriptor (the encoder node's share)."""
        total, encode = [], []
        for i in range(n):
            msg = image_msg(frames[i % len(frames)], i)
            t = time.perf_counter()
            rgb = image_msg_to_rgb(msg)
            frame = enc.encode_frame(rgb, comp, node.publish_keypoints)
            encode_jpeg(rgb, node.thumbnail_size)
            encode.append((time.perf_counter() - t) * 1e3)
            step(DescriptorFrame(i, "camera", i, frame.descriptor, patches=frame.patches, local=frame.local))
            total.append((time.perf_counter() - t) * 1e3)
        return total, encode

    params = write_params(tmp / "p.yaml", {"/**": {"map_path": str(tmp / "map"), "pose_source": "none"},
                                           "encoder_node": {"encoder_config": str(REPO / "config/encoders/"
                                                                                  "xfeat_vlad.yaml"),
                                                            "vocabulary": str(tmp / "vocab.npz"), "device": "cpu",
                                                            "queue_size": 2}})
    nodes = [NodeProcess(n, params, tmp) for n in ("encoder_node", "recognition_node")]
    driver = DriverNode("bench_driver")
    rows = []
    try:
        from anyloc_ros.msg import PlaceDescriptor, PlaceMatch
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image

        driver.watch(PlaceMatch, "place_matches", 1000)
        driver.watch(PlaceDescriptor, "descriptors", 1000)
        driver.watch(DiagnosticArray, "/diagnostics", 1000)

        def counters() -> dict[str, int]:
            """The nodes' latest /diagnostics counters ("encoder_node.frames_received", ...)."""
            out: dict[str, int] = {}
            for arr in driver.received["/diagnostics"]:
                for st in arr.status:
                    for kv in st.values:
                        if kv.value.isdigit():
                            out[f"{st.name.split(':')[0].strip('/')}.{kv.key}"] = int(kv.value)
            return out
        pub = driver.node.create_publisher(Image, "image", 10)
        driver.wait_matched(pub, 1, 120)
        driver.wait_graph("descriptors", 1, 1)
        driver.wait_graph("place_matches", 1, 1)

        def run(rate_hz: float, seconds: float, stamp0: int) -> tuple[list[float], int, int, int, list[float]]:
            sent = {}
            n = int(rate_hz * seconds)
            t0 = time.monotonic()
            before = len(driver.received["place_matches"])
            d_before = len(driver.received["descriptors"])
            received_before = counters().get("anyloc_ros.frames_received", 0)
            for i in range(n):
                delay = t0 + i / rate_hz - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                stamp = (stamp0 + i) * 1000
                sent[stamp] = time.monotonic()
                pub.publish(image_msg(frames[i % len(frames)], stamp))
            time.sleep(2.0)
            c = counters()
            print(f"{rate_hz} Hz: sent {n}, descriptors {len(driver.received['descriptors'])}, "
                  + ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if "frames" in k or "queries" in k), flush=True)
            got = driver.received["place_matches"][before:]
            arr = driver.arrival_times("place_matches")[before:]
            lat = [(a - sent[m.query_stamp.sec * 10**9 + m.query_stamp.nanosec]) * 1e3
                   for m, a in zip(got, arr, strict=True) if m.query_stamp.sec * 10**9 + m.query_stamp.nanosec in sent]
            d_lat = [(a - sent[stamp_to_ns(m.header.stamp)]) * 1e3 for m, a in
                     zip(driver.received["descriptors"][d_before:], driver.arrival_times("descriptors")[d_before:],
                         strict=True) if stamp_to_ns(m.header.stamp) in sent]
            return lat, n, len(got), c.get("anyloc_ros.frames_received", 0) - received_before, d_lat

        # warm-up of both paths (first ONNX runs, map pages, allocator), not measured; then blocks
        # of 10 frames alternate between them, so both see the same state of this shared machine
        in_process(5)
        run(4.0, 3.0, 500_000)
        inproc, inproc_enc, lat, d_lat, n, got, rx = [], [], [], [], 0, 0, 0
        for block in range(4):  # below capacity: every frame is encoded
            b_total, b_enc = in_process(10)
            b_lat, b_n, b_got, b_rx, b_dlat = run(4.0, 2.5, 1 + 1000 * block)
            inproc, inproc_enc, d_lat = inproc + b_total, inproc_enc + b_enc, d_lat + b_dlat
            lat, n, got, rx = lat + b_lat, n + b_n, got + b_got, rx + b_rx
        split = (f"At 4 Hz, medians: publish -> descriptor at the driver {statistics.median(d_lat):.1f} ms vs "
                 f"{statistics.median(inproc_enc):.1f} ms for the encoder's share in process; descriptor -> match "
                 f"{statistics.median(lat) - statistics.median(d_lat):.1f} ms vs "
                 f"{statistics.median(inproc) - statistics.median(inproc_enc):.1f} ms for the query.")
        rows.append(["4 Hz (below capacity)", n, rx, got, f"{statistics.median(lat):.1f}",
                     f"{statistics.median(inproc):.1f}", f"{statistics.median(lat) - statistics.median(inproc):.1f}",
                     f"{np.percentile(lat, 90):.1f}", "-"])
        lat, n, got, rx, _ = run(30.0, 15.0, 100_000)  # far above capacity: drops, bounded latency
        first, last = statistics.median(lat[:20]), statistics.median(lat[-20:])
        rows.append(["30 Hz (above capacity)", n, rx, got, f"{statistics.median(lat):.1f}",
                     f"{statistics.median(inproc):.1f}", f"{statistics.median(lat) - statistics.median(inproc):.1f}",
                     f"{np.percentile(lat, 90):.1f}", f"{first:.0f} -> {last:.0f}"])
    finally:
        for nd in nodes:
            nd.stop()
        driver.close()
        db.close()
    body = table(["input rate", "frames sent", "frames the encoder received", "place matches", "DDS median ms (publish -> match)",
                  "in-process median ms", "added by ROS/DDS ms", "DDS p90 ms", "latency first 20 -> last 20 ms"],
                 rows)
    body += ("\n\n" + split + " 640x480 rgb8 images from TUM fr2/desk, separate encoder and recognition processes, FastDDS with the "
             "shipped shared-memory profile, loopback only. In-process = message conversion + encode with 512 keypoints + patch "
             "compression + thumbnail + map query with re-ranking of the top 10, in one process, in blocks of 10 frames "
             "alternating with the 4 Hz DDS blocks (both after a warm-up). Target: <= 10 ms added at the median; above capacity the "
             "encoder's queue (2 frames) drops the rest, so latency stays flat instead of growing.")
    record("ROS end to end over DDS", "python bench/ros_e2e.py", body)


if __name__ == "__main__":
    main()
