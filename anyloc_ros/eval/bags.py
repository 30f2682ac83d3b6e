"""rosbag2 tools: `anyloc make-bag` (images + trajectory -> bag) and `anyloc replay`.

Bags are written and read with the `rosbags` library (sqlite3 or mcap storage, rosbag2
metadata version 9). `replay` runs a bag's camera (Image or CompressedImage) and odometry
through the pipeline either over DDS into the real node processes, or offline through the
same core objects in the same order (encode -> query -> keyframe gate -> add), so the two
modes give the same matches.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import AnyLocError
from ..core.images import list_images

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
ODOM_TYPES = ("nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped")


class BagError(AnyLocError, ValueError):
    """A bag cannot be written or read, or lacks the requested topics."""


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def make_bag(images: str | Path, output: str | Path, trajectory: str | Path | None = None, storage: str = "sqlite3",
             compressed: bool = False, image_topic: str = "/camera/image_raw", odom_topic: str = "/odom",
             fps: float = 10.0, frame_id: str = "camera", progress: bool = True) -> dict[str, Any]:
    """Write a rosbag2 bag: one Image (or CompressedImage) per image file, stamped by the file
    name when it is a timestamp (TUM) else at `fps`; with a TUM trajectory, every pose within
    the images' time span as nav_msgs/Odometry."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from tqdm import tqdm

    from .datasets import DatasetError, image_stamp, read_tum_trajectory

    paths = list_images(images)
    output = Path(output)
    if output.exists():
        raise BagError(f"output {output} exists; rosbag2 writes a new directory")
    if storage not in ("sqlite3", "mcap"):
        raise BagError(f"storage must be sqlite3 or mcap, got {storage!r}")
    try:
        stamps = [image_stamp(p) for p in paths]
    except DatasetError:
        if trajectory:
            raise
        stamps = [i / fps for i in range(len(paths))]
    ts = _typestore()
    Image, CompressedImage = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CompressedImage"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Odometry = ts.types["nav_msgs/msg/Odometry"]
    gm = {n: ts.types[f"geometry_msgs/msg/{n}"] for n in ("Point", "Quaternion", "Pose", "PoseWithCovariance",
                                                          "Twist", "Vector3", "TwistWithCovariance")}

    def header(t: float, frame: str):
        ns = int(round(t * 1e9))
        return Header(stamp=Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000), frame_id=frame), ns

    events: list[tuple[int, str, bytes]] = []
    if trajectory:
        t_traj, poses = read_tum_trajectory(trajectory)
        keep = (t_traj >= min(stamps) - 0.5) & (t_traj <= max(stamps) + 0.5)
        zero3 = gm["Vector3"](x=0.0, y=0.0, z=0.0)
        for t, p in zip(t_traj[keep], poses[keep], strict=True):
            h, ns = header(float(t), "odom")
            pose = gm["Pose"](position=gm["Point"](x=p[0], y=p[1], z=p[2]),
                              orientation=gm["Quaternion"](x=p[3], y=p[4], z=p[5], w=p[6]))
            msg = Odometry(header=h, child_frame_id=frame_id,
                           pose=gm["PoseWithCovariance"](pose=pose, covariance=np.zeros(36)),
                           twist=gm["TwistWithCovariance"](twist=gm["Twist"](linear=zero3, angular=zero3),
                                                           covariance=np.zeros(36)))
            events.append((ns, odom_topic, ts.serialize_cdr(msg, "nav_msgs/msg/Odometry")))
    img_type = IMAGE_TYPES[1] if compressed else IMAGE_TYPES[0]
    for p, t in tqdm(list(zip(paths, stamps, strict=True)), desc="images", unit="img", disable=not progress):
        h, ns = header(t, frame_id)
        if compressed:
            msg = CompressedImage(header=h, format="jpeg", data=np.frombuffer(p.read_bytes(), np.uint8)) \
                if p.suffix.lower() in (".jpg", ".jpeg") else \
                CompressedImage(header=h, format="png" if p.suffix.lower() == ".png" else "jpeg",
                                data=np.frombuffer(p.read_bytes(), np.uint8))
        else:
            bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if bgr is None:
                raise BagError(f"cannot read image {p}")
            msg = Image(header=h, height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8", is_bigendian=0,
                        step=bgr.shape[1] * 3, data=bgr.reshape(-1))
        events.append((ns, image_topic, ts.serialize_cdr(msg, img_type)))
    events.sort(key=lambda e: e[0])
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(output, version=9, storage_plugin=plugin) as writer:
        conns = {image_topic: writer.add_connection(image_topic, img_type, typestore=ts)}
        if trajectory:
            conns[odom_topic] = writer.add_connection(odom_topic, "nav_msgs/msg/Odometry", typestore=ts)
        for ns, topic, data in events:
            writer.write(conns[topic], ns, data)
    counts = {image_topic: len(paths), **({odom_topic: int(sum(1 for e in events if e[1] == odom_topic))}
                                         if trajectory else {})}
    return {"bag": str(output), "storage": storage, "messages": counts, "image_type": img_type}


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    stamp_ns: int  # bag receive time
    raw: bytes
    msg: Any = None


def read_bag(path: str | Path, image_topic: str | None = None, odom_topic: str | None = None) -> Iterator[BagMessage]:
    """Camera and odometry messages of a bag in time order (topics auto-detected by type)."""
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    ts = _typestore()
    try:
        reader = Reader(path)
        reader.open()
    except Exception as exc:
        raise BagError(f"cannot open bag {path}: {exc}") from exc
    try:
        topics = {c.topic: c.msgtype for c in reader.connections}
        image_topic = image_topic or next((t for t, m in topics.items() if m in IMAGE_TYPES), None)
        if image_topic is None or topics.get(image_topic) not in IMAGE_TYPES:
            raise BagError(f"bag {path} has no image topic {image_topic or ''} (topics: {topics})")
        if odom_topic is None:
            odom_topic = next((t for t, m in topics.items() if m in ODOM_TYPES), None)
        elif topics.get(odom_topic) not in ODOM_TYPES:
            raise BagError(f"bag {path} has no odometry topic {odom_topic} (topics: {topics})")
        conns = [c for c in reader.connections if c.topic in (image_topic, odom_topic)]
        for conn, stamp, raw in reader.messages(connections=conns):
            yield BagMessage(conn.topic, conn.msgtype, stamp, bytes(raw), ts.deserialize_cdr(raw, conn.msgtype))
    finally:
        reader.close()


# ----------------------------------------------------------------------------- replay
@dataclass
class FrameResult:
    stamp_ns: int
    top_ids: list[int]
    top_scores: list[float]
    loop_match: int | None = None
    latency_ms: float = 0.0


@dataclass
class ReplayResult:
    mode: str
    frames: list[FrameResult] = field(default_factory=list)
    map_path: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # bad messages skipped and counted, as the nodes do

    def skip(self, kind: str, why: Exception) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        log.warning("replay: %s skipped: %s", kind, why)


def bag_poses(messages: list[BagMessage], result: ReplayResult | None = None) -> Any:
    """All odometry of a bag in one PoseBuffer (the nodes wait for the pose covering each image).
    Invalid poses (non-unit quaternions, NaN) are skipped and counted, as the nodes do."""
    from ..core.errors import AnyLocError
    from ..core.pose_buffer import PoseBuffer

    buf = PoseBuffer(max_age_s=1e9)
    for m in messages:
        if m.msgtype in ODOM_TYPES:
            try:
                buf.add(*_pose_of(m))
            except AnyLocError as exc:
                if result is not None:
                    result.skip("poses", exc)
    return buf


def _pose_of(m: BagMessage):
    from ..nodes.conversions import pose_from_msg, stamp_to_ns

    p = m.msg.pose.pose if m.msgtype == ODOM_TYPES[0] else m.msg.pose
    return stamp_to_ns(m.msg.header.stamp), pose_from_msg(p)


def replay_offline(messages: list[BagMessage], encoder_config: Any, map_path: Path, localization: bool,
                   loop: Any, gate: Any, rerank_patches: tuple[int, int] = (64, 32)
                   ) -> ReplayResult:
    """The nodes' logic without DDS: encode -> recognise (query first) -> keyframe gate -> add."""
    from ..core.database import PlaceDatabase
    from ..core.encoder import Encoder
    from ..core.errors import AnyLocError
    from ..core.mapping import Mapper
    from ..core.recognition import PlaceRecognizer
    from ..core.rerank import PatchCompressor
    from ..nodes.conversions import compressed_msg_to_rgb, image_msg_to_rgb, stamp_to_ns

    encoder = Encoder.from_config(encoder_config)
    result = ReplayResult("offline", map_path=str(map_path))
    poses = bag_poses(messages, result)
    db = PlaceDatabase(map_path, None if localization else encoder.signature(), follower=localization)
    mapper = None if localization else Mapper(db, gate)
    if mapper is not None:
        mapper.new_session()
    recognizer = PlaceRecognizer(db, loop)
    compressor = PatchCompressor(encoder.backbone.feature_dim, *rerank_patches)
    for m in messages:
        if m.msgtype not in IMAGE_TYPES:
            continue
        t0 = time.perf_counter()
        try:  # a bad frame is skipped and counted, as the encoder node does
            rgb = compressed_msg_to_rgb(m.msg) if m.msgtype == IMAGE_TYPES[1] else image_msg_to_rgb(m.msg)
            desc, feats = encoder.encode_with_features([rgb])
        except AnyLocError as exc:
            result.skip("images", exc)
            continue
        patches = compressor(feats[0])
        stamp = stamp_to_ns(m.msg.header.stamp)
        pose = poses.at(stamp)
        res = recognizer.query(desc[0], stamp, pose, patches)
        if mapper is not None:
            kid, _ = mapper.offer(desc[0], stamp, m.msg.header.frame_id, pose, patches)
            if kid is not None:
                recognizer.observe_keyframe(kid, stamp, pose)
        result.frames.append(FrameResult(
            stamp, [x.keyframe_id for x in res.matches],
            [float(x.rerank_score if x.rerank_score is not None else x.score) for x in res.matches],
            res.loop.match.keyframe_id if res.loop else None, (time.perf_counter() - t0) * 1e3))
    db.close()
    return result


def replay_dds(messages: list[BagMessage], params_file: Path, map_path: Path, localization: bool, rate: float, workdir: Path, timeout: float = 60.0) -> ReplayResult:
    """Publish the bag's raw CDR messages at the recorded (scaled) rate into the real nodes."""
    from ..nodes.conversions import stamp_to_ns
    from ..nodes.process import DriverNode, NodeProcess

    images = [m for m in messages if m.msgtype in IMAGE_TYPES]
    names = ["encoder_node", "recognition_node"] + ([] if localization else ["mapping_node"])
    transport = "compressed" if images and images[0].msgtype == IMAGE_TYPES[1] else "raw"
    nodes = [NodeProcess(n, params_file, workdir, "-p", f"map_path:={map_path}",
                         *(["-p", f"image_transport:={transport}"] if n == "encoder_node" else []))
             for n in names]
    driver = DriverNode("anyloc_replay")
    result = ReplayResult("dds", map_path=str(map_path))
    try:
        from geometry_msgs.msg import PoseStamped
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import CompressedImage, Image

        from ..msg import LoopClosure, PlaceMatch

        driver.watch(PlaceMatch, "place_matches", 1000)
        driver.watch(LoopClosure, "loop_closures", 1000)
        img_pub = driver.node.create_publisher(CompressedImage if transport == "compressed" else Image,
                                               "image/compressed" if transport == "compressed" else "image", 100)
        odom_pub = None
        odoms = [m for m in messages if m.msgtype in ODOM_TYPES]
        if odoms:
            odom_pub = driver.node.create_publisher(Odometry if odoms[0].msgtype == ODOM_TYPES[0] else PoseStamped,
                                                    "odom" if odoms[0].msgtype == ODOM_TYPES[0] else "pose", 1000)
        driver.wait_matched(img_pub, 1, 120, nodes)
        if odom_pub is not None:
            driver.wait_matched(odom_pub, len(names) - 1, 120)
        driver.wait_graph("descriptors", 1, len(names) - 1, 120)  # encoder -> recognition (+ mapping)
        driver.wait_graph("place_matches", 1, 1, 120)
        sent: dict[int, float] = {}
        start_wall, start_bag = time.monotonic(), messages[0].stamp_ns
        for m in messages:
            delay = (m.stamp_ns - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            if m.msgtype in IMAGE_TYPES:
                sent[stamp_to_ns(m.msg.header.stamp)] = time.monotonic()
                img_pub.publish(m.raw)
            elif odom_pub is not None:
                odom_pub.publish(m.raw)
        matches = driver.wait_for("place_matches", len(images), timeout)
        arrived = driver.arrival_times("place_matches")
        received = {stamp_to_ns(pm.query_stamp): (pm, t) for pm, t in zip(matches, arrived, strict=False)}
        loops = {stamp_to_ns(lc.query_stamp): lc.match_id for lc in driver.received["loop_closures"]}
        for stamp in sorted(sent):
            pm, t = received.get(stamp, (None, float("nan")))
            result.frames.append(FrameResult(
                stamp, list(pm.keyframe_ids) if pm else [], [float(x) for x in pm.scores] if pm else [],
                loops.get(stamp), (t - sent[stamp]) * 1e3))
        if len(received) < len(images):
            raise BagError(f"only {len(received)} of {len(images)} frames produced a place match over DDS")
    finally:
        for n in nodes:
            n.stop()
        driver.close()
    return result


def loop_ground_truth(result: ReplayResult, map_path: Path, poses_by_stamp: dict[int, Any], radius: float,
                      min_gap_s: float) -> dict[str, float]:
    """Loop-closure precision/recall against the trajectory: a loop is true when the two poses
    are within `radius` and at least `min_gap_s` apart in time."""
    from ..core.database import PlaceDatabase

    db = PlaceDatabase(map_path, follower=True)
    kfs = {k.id: k for k in db.keyframes()}
    db.close()
    tp = fp = possible = 0
    for f in result.frames:
        q = poses_by_stamp.get(f.stamp_ns)
        if q is None:
            continue
        near = [k for k in kfs.values() if k.pose is not None and q.distance_to(k.pose) <= radius
                and abs(f.stamp_ns - k.stamp_ns) / 1e9 >= min_gap_s]
        possible += bool(near)
        if f.loop_match is not None:
            k = kfs.get(f.loop_match)
            ok = k is not None and k.pose is not None and q.distance_to(k.pose) <= radius \
                and abs(f.stamp_ns - k.stamp_ns) / 1e9 >= min_gap_s
            tp, fp = tp + ok, fp + (not ok)
    return {"loop_closures": tp + fp, "loop_precision": tp / (tp + fp) if tp + fp else 1.0,
            "loop_recall": tp / possible if possible else 0.0, "frames_with_true_loop": possible}


def register(sub: Any) -> None:
    from ..cli import _add_encoder_args

    p = sub.add_parser("make-bag", help="write a rosbag2 bag from an image folder (+ TUM trajectory)")
    p.add_argument("--images", required=True)
    p.add_argument("--trajectory", help="TUM trajectory (timestamp tx ty tz qx qy qz qw) -> nav_msgs/Odometry")
    p.add_argument("--output", required=True)
    p.add_argument("--storage", choices=("sqlite3", "mcap"), default="sqlite3")
    p.add_argument("--compressed", action="store_true", help="CompressedImage instead of Image")
    p.add_argument("--image-topic", default="/camera/image_raw")
    p.add_argument("--odom-topic", default="/odom")
    p.add_argument("--fps", type=float, default=10.0, help="frame rate when file names are not timestamps")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_make_bag)

    p = sub.add_parser("replay", help="run a bag through the real nodes (DDS) or the same core code offline")
    _add_encoder_args(p)
    p.add_argument("bag")
    p.add_argument("--map", help="existing map: localise against it (else a new map is built in --output)")
    p.add_argument("--offline", action="store_true", help="no DDS: the same core objects in the same order")
    p.add_argument("--params-file", help="node params file (DDS mode; default config/anyloc.yaml values)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (DDS mode)")
    p.add_argument("--image-topic")
    p.add_argument("--odom-topic")
    p.add_argument("--loop-radius", type=float, default=0.5, help="true loop: poses within this distance (m)")
    p.add_argument("--loop-min-gap", type=float, default=10.0, help="... and at least this far apart in time (s)")
    p.add_argument("--output", default="results/replay")
    p.set_defaults(func=_cmd_replay)


def _cmd_make_bag(args: Any) -> int:
    info = make_bag(args.images, args.output, args.trajectory, args.storage, args.compressed, args.image_topic,
                    args.odom_topic, args.fps, progress=not args.quiet)
    print(f"wrote {info['bag']} ({info['storage']}): " + ", ".join(f"{t}: {n}" for t, n in info["messages"].items()))
    return 0


def node_params(args: Any, cfg_path: Path, out: Path) -> tuple[Path, Any, Any]:
    """One params file for both modes: the DDS nodes read it, the offline path builds the same configs."""
    import yaml

    from ..core.loop_closure import KeyframeGateConfig, LoopClosureConfig
    from ..nodes.process import write_params

    user: dict[str, Any] = {}
    if args.params_file:
        user = {k: v.get("ros__parameters", {}) for k, v in (yaml.safe_load(Path(args.params_file).read_text()) or
                                                             {}).items()}
    enc = {"encoder_config": str(cfg_path), "device": args.device or "cpu", "queue_size": 1000, "qos_reliable": True}
    if args.vocabulary:
        enc["vocabulary"] = str(Path(args.vocabulary).resolve())
    sections = {"/**": {"pose_source": "odom", **user.get("/**", {})},
                "encoder_node": {**enc, **user.get("encoder_node", {})},
                "mapping_node": user.get("mapping_node", {}), "recognition_node": user.get("recognition_node", {})}
    path = write_params(out / "replay_params.yaml", sections)
    r, m = sections["recognition_node"], sections["mapping_node"]
    loop = LoopClosureConfig(
        top_k=r.get("top_k", 10), min_score=r.get("loop.min_score", 0.0),
        exclude_recent_count=r.get("loop.exclude_recent_count", 50), exclude_recent_s=r.get("loop.exclude_recent_s", 30.0),
        exclude_travelled_m=r.get("loop.exclude_travelled_m", 0.0), consistency=r.get("loop.consistency", 3),
        consistency_window=r.get("loop.consistency_window", 3), rerank=r.get("loop.rerank", True))
    gate = KeyframeGateConfig(min_distance_m=m.get("keyframe.min_distance_m", 0.5),
                              min_rotation_deg=m.get("keyframe.min_rotation_deg", 15.0),
                              no_pose_interval_s=m.get("keyframe.no_pose_interval_s", 1.0))
    return path, loop, gate


def _cmd_replay(args: Any) -> int:
    from ..cli import _encoder_config

    bag = Path(args.bag)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.config is None:
        raise AnyLocError("replay needs --config (the encoder the nodes run)")
    cfg = _encoder_config(args)
    localization = bool(args.map)
    map_path = Path(args.map) if args.map else out / ("map_offline" if args.offline else "map_dds")
    if localization and not (map_path / "map.sqlite").is_file():
        raise AnyLocError(f"no map at {map_path}")
    if not localization and map_path.exists():
        shutil.rmtree(map_path)
    params, loop, gate = node_params(args, Path(args.config).resolve(), out)
    messages = list(read_bag(bag, args.image_topic, args.odom_topic))  # read once; fails early on a missing topic
    if not any(m.msgtype in IMAGE_TYPES for m in messages):
        raise BagError(f"bag {bag} has no image messages to replay (its image topic is empty)")
    if args.offline:
        result = replay_offline(messages, cfg, map_path, localization, loop, gate)
    else:
        from ..nodes.process import isolated_dds_env

        isolated_dds_env()
        result = replay_dds(messages, params, map_path, localization, args.rate, out)
    from ..nodes.conversions import stamp_to_ns

    buf = bag_poses(messages)
    poses = {stamp_to_ns(m.msg.header.stamp): buf.at(stamp_to_ns(m.msg.header.stamp))
             for m in messages if m.msgtype in IMAGE_TYPES}
    # against a saved map every revisit counts; within one run only those far apart in time
    report = loop_ground_truth(result, map_path, poses, args.loop_radius, 0.0 if localization else args.loop_min_gap)
    lat = [f.latency_ms for f in result.frames if np.isfinite(f.latency_ms)]
    summary = {"mode": result.mode, "bag": str(bag), "map": str(map_path), "frames": len(result.frames),
               "frames_matched": sum(1 for f in result.frames if f.top_ids), **report,
               "latency_ms_median": float(np.median(lat)) if lat else None, "skipped": result.skipped,
               "matches": [{"stamp_ns": f.stamp_ns, "top_ids": f.top_ids, "scores": f.top_scores,
                            "loop_match": f.loop_match} for f in result.frames]}
    (out / f"replay_{result.mode}.json").write_text(json.dumps(summary, indent=2))
    print(f"replay ({result.mode}): {summary['frames']} frames, {summary['frames_matched']} with matches, "
          f"{report['loop_closures']} loop closures (precision {report['loop_precision']:.3f}, recall "
          f"{report['loop_recall']:.3f} of {report['frames_with_true_loop']} frames with a true loop); map {map_path}; "
          f"results {out / f'replay_{result.mode}.json'}")
    return 0
