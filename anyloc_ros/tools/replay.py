"""`anyloc replay`: a bag's camera and odometry through the recognition pipeline.

Two modes from one params file (written to the output folder): over DDS into the real node
processes, or offline through the same core objects in the same order (encode -> recognise,
query first -> Mapper) built from the same parameters (core/params.py), so both modes give
the same matches.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import AnyLocError
from .bags import CAMERA_INFO_TYPE, DEPTH_TYPE, IMAGE_TYPES, ODOM_TYPES, BagError, BagMessage, bag_poses, read_bag

log = logging.getLogger(__name__)


@dataclass
class FrameResult:
    stamp_ns: int
    top_ids: list[int]
    top_scores: list[float]
    loop_match: int | None = None
    latency_ms: float = 0.0
    loop_relative_pose: bool = False  # the closure carries the keyframe -> query relative pose (intrinsics known)
    closure: dict[str, Any] | None = None  # the published loop closure (closure_record)


def closure_record(query_stamp_ns: int, match_id: int, match_stamp_ns: int, verified: bool, inliers: int,
                   edge: tuple[Any, np.ndarray] | None, scale_known: bool) -> dict[str, Any]:
    """A published loop closure as replay's JSON lists it (the same fields from the core result
    offline and from the LoopClosure message over DDS)."""
    rec: dict[str, Any] = {"query_stamp_ns": int(query_stamp_ns), "match_id": int(match_id),
                           "match_stamp_ns": int(match_stamp_ns), "verified": bool(verified), "inliers": int(inliers),
                           "scale_known": bool(scale_known), "relative_pose": None, "covariance": None}
    if edge is not None:
        pose, cov = edge
        rec["relative_pose"] = [float(v) for v in pose.as_tuple()]
        rec["covariance"] = [float(v) for v in np.asarray(cov).ravel()]
    return rec


@dataclass
class ReplayResult:
    mode: str
    frames: list[FrameResult] = field(default_factory=list)
    map_path: str = ""
    skipped: dict[str, int] = field(default_factory=dict)  # bad messages skipped and counted, as the nodes do

    def skip(self, kind: str, why: Exception) -> None:
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        log.warning("replay: %s skipped: %s", kind, why)


def replay_offline(messages: list[BagMessage], params_file: Path, map_path: Path, localization: bool
                   ) -> ReplayResult:
    """The nodes' logic without DDS, built from the nodes' parameters in `params_file`:
    encode -> recognise (query first) -> Mapper (keyframe gate, add)."""
    from ..core.camera import CameraModel
    from ..core.config import EncoderSelection
    from ..core.database import PlaceDatabase
    from ..core.encoder import Encoder
    from ..core.loop_closure import KeyframeGateConfig, LoopClosureConfig
    from ..core.map_index import IndexConfig
    from ..core.mapping import Mapper
    from ..core.params import (
        CameraSettings,
        DepthSettings,
        EncoderNodeSettings,
        MappingSettings,
        NodeParameters,
        RecognitionSettings,
    )
    from ..core.recognition import PlaceRecognizer
    from ..core.sequence import SequenceConfig
    from ..core.verification import VerificationConfig
    from ..nodes.conversions import depth_msg_to_metres, message_to_rgb, stamp_to_ns

    enc_p = NodeParameters.from_file(params_file, "encoder_node")
    map_p = NodeParameters.from_file(params_file, "mapping_node")
    rec_p = NodeParameters.from_file(params_file, "recognition_node")
    enc_settings, mapping = enc_p.get(EncoderNodeSettings), map_p.get(MappingSettings)
    recognition = rec_p.get(RecognitionSettings)
    encoder = Encoder.from_config(enc_p.get(EncoderSelection).build())
    result = ReplayResult("offline", map_path=str(map_path))
    poses = bag_poses(messages, result.skip)
    if localization:
        db = PlaceDatabase(map_path, index=rec_p.get(IndexConfig), follower=True)
        mapper = None
    else:
        db = PlaceDatabase(map_path, encoder.signature(), index=map_p.get(IndexConfig), durable=mapping.durable)
        mapper = Mapper(db, map_p.get(KeyframeGateConfig))
        if mapping.new_session_on_start or mapping.session:
            mapper.new_session(mapping.session or None)
    recognizer = PlaceRecognizer(db, rec_p.get(LoopClosureConfig), rec_p.get(SequenceConfig),
                                 rec_p.get(VerificationConfig))
    compressor = enc_settings.patch_compressor(encoder.backbone.feature_dim)
    camera = enc_p.get(CameraSettings)  # intrinsics: the parameters', else the bag's latest camera_info
    depth_settings = enc_p.get(DepthSettings)

    def info_of(msg: Any) -> CameraModel | None:
        return CameraModel.from_camera_info(msg.k, msg.d, msg.distortion_model, msg.width, msg.height)

    # from the first frame on (the DDS mode latches the first camera_info ahead of the first image)
    info = next((i for m in messages if m.msgtype == CAMERA_INFO_TYPE and (i := info_of(m.msg))), None)
    # depth images by stamp: each colour frame takes the nearest within depth.slop_s, as the node's
    # ApproximateTimeSynchronizer pairs them
    depths = sorted((stamp_to_ns(m.msg.header.stamp), m.msg) for m in messages if m.msgtype == DEPTH_TYPE) \
        if depth_settings.enable else []
    depth_stamps = np.array([d[0] for d in depths], np.int64)
    for m in messages:
        if m.msgtype == CAMERA_INFO_TYPE:
            info = info_of(m.msg) or info
            continue
        if m.msgtype not in IMAGE_TYPES:
            continue
        t0 = time.perf_counter()
        stamp = stamp_to_ns(m.msg.header.stamp)
        try:  # a bad frame is skipped and counted, as the encoder node does
            rgb = message_to_rgb(m.msg)
        except AnyLocError as exc:
            result.skip("images", exc)
            continue
        depth = None
        if len(depth_stamps):
            k = int(np.argmin(np.abs(depth_stamps - stamp)))
            if abs(int(depth_stamps[k]) - stamp) <= depth_settings.slop_s * 1e9:
                try:
                    depth = depth_msg_to_metres(depths[k][1], depth_settings.scale, depth_settings.min_m,
                                                depth_settings.max_m)
                    if depth.shape != rgb.shape[:2]:
                        raise AnyLocError(f"depth image of {depth.shape[::-1]} for a colour image of {rgb.shape[1::-1]}")
                except AnyLocError as exc:  # counted; the frame goes on without depth, as in the node
                    result.skip("depth", exc)
                    depth = None
        try:
            enc = encoder.encode_frame(rgb, compressor, enc_settings.publish_keypoints,
                                       camera.camera_for(*rgb.shape[:2], info), depth, camera.mount())
        except AnyLocError as exc:
            result.skip("images", exc)
            continue
        desc, patches = enc.descriptor, enc.patches
        pose = poses.at(stamp)
        res = recognizer.recognize(desc, stamp, pose, patches,
                                   exclude_current_session=recognition.exclude_current_session, local=enc.local)
        if mapper is not None:
            kid, _ = mapper.offer(desc, stamp, m.msg.header.frame_id, pose,
                                  patches if mapping.store_patches else None,
                                  local=enc.local if mapping.store_local_features else None)
            if kid is not None:
                recognizer.observe_keyframe(kid, stamp, pose)
        closure = None
        if res.loop is not None:
            v = res.loop.verification
            edge = v.pose.in_base_frames() if v is not None and v.pose is not None else None
            closure = closure_record(stamp, res.loop.match.keyframe_id, res.loop.match.stamp_ns, v is not None and
                                     v.verified, v.inliers if v is not None else 0, edge,
                                     bool(edge is not None and v.pose.scale_known))
        result.frames.append(FrameResult(
            stamp, [x.keyframe_id for x in res.matches],
            [float(x.rerank_score if x.rerank_score is not None else x.score) for x in res.matches],
            res.loop.match.keyframe_id if res.loop else None, (time.perf_counter() - t0) * 1e3,
            closure is not None and closure["relative_pose"] is not None, closure))
    db.close()
    return result


def replay_dds(messages: list[BagMessage], params_file: Path, map_path: Path, localization: bool, rate: float, workdir: Path, timeout: float = 60.0) -> ReplayResult:
    """Publish the bag's raw CDR messages at the recorded (scaled) rate into the real nodes."""
    from ..nodes.conversions import pose_from_msg, stamp_to_ns
    from .ros_driver import DriverNode, NodeProcess

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
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from ..msg import LoopClosure, PlaceMatch
        from ..nodes.qos import latched_qos

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
        depth_pub = driver.node.create_publisher(Image, "depth", 100) \
            if any(m.msgtype == DEPTH_TYPE for m in messages) else None
        infos = [m for m in messages if m.msgtype == CAMERA_INFO_TYPE]
        info_pub = driver.node.create_publisher(CameraInfo, "camera_info", latched_qos()) if infos else None
        if info_pub is not None:
            # The encoder node asks for camera_info only when it needs it (keypoints, no camera.fx):
            # give it a moment to be seen, then the first one ahead of the first image, so every
            # frame has the intrinsics the offline mode gives it.
            deadline = time.monotonic() + 3.0
            while info_pub.get_subscription_count() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            if info_pub.get_subscription_count():
                info_pub.publish(infos[0].raw)
                time.sleep(0.5)
            else:
                info_pub = None
        sent: dict[int, float] = {}
        start_wall, start_bag = time.monotonic(), messages[0].stamp_ns
        for m in messages:
            delay = (m.stamp_ns - start_bag) / 1e9 / rate - (time.monotonic() - start_wall)
            if delay > 0:
                time.sleep(delay)
            if m.msgtype in IMAGE_TYPES:
                sent[stamp_to_ns(m.msg.header.stamp)] = time.monotonic()
                img_pub.publish(m.raw)
            elif m.msgtype == CAMERA_INFO_TYPE:
                if info_pub is not None:
                    info_pub.publish(m.raw)
            elif m.msgtype == DEPTH_TYPE:
                if depth_pub is not None:
                    depth_pub.publish(m.raw)
            elif odom_pub is not None:
                odom_pub.publish(m.raw)
        matches = driver.wait_for("place_matches", len(images), timeout)
        # a frame's loop closure is published just after its place match, on another topic: wait
        # until loop closures stop arriving (0.5 s quiet) so the last frames' are not cut off
        quiet_since, seen, give_up = time.monotonic(), len(driver.received["loop_closures"]), time.monotonic() + 5.0
        while time.monotonic() - quiet_since < 0.5 and time.monotonic() < give_up:
            time.sleep(0.05)
            if len(driver.received["loop_closures"]) != seen:
                quiet_since, seen = time.monotonic(), len(driver.received["loop_closures"])
        arrived = driver.arrival_times("place_matches")
        received = {stamp_to_ns(pm.query_stamp): (pm, t) for pm, t in zip(matches, arrived, strict=False)}
        loops = {stamp_to_ns(lc.query_stamp): lc for lc in driver.received["loop_closures"]}
        for stamp in sorted(sent):
            pm, t = received.get(stamp, (None, float("nan")))
            lc = loops.get(stamp)
            closure = None
            if lc is not None:
                p = lc.relative_pose
                edge = (pose_from_msg(p.pose), np.array(p.covariance, float).reshape(6, 6)) \
                    if lc.relative_pose_valid else None
                closure = closure_record(stamp, lc.match_id, stamp_to_ns(lc.match_stamp), lc.verified, lc.inliers, edge,
                                         lc.scale_known)
            result.frames.append(FrameResult(
                stamp, list(pm.keyframe_ids) if pm else [], [float(x) for x in pm.scores] if pm else [],
                lc.match_id if lc else None, (t - sent[stamp]) * 1e3, bool(lc and lc.relative_pose_valid), closure))
        if len(received) < len(images):
            raise BagError(f"only {len(received)} of {len(images)} frames produced a place match over DDS")
    finally:
        for n in nodes:
            n.stop()
        driver.close()
    return result


def register(sub: Any) -> None:
    from .encoder_args import add_encoder_args

    p = sub.add_parser("replay", help="run a bag through the real nodes (DDS) or the same core code offline")
    add_encoder_args(p)
    p.add_argument("bag")
    p.add_argument("--map", help="existing map: localise against it (else a new map is built in --output)")
    p.add_argument("--offline", action="store_true", help="no DDS: the same core objects in the same order")
    p.add_argument("--params-file", help="node params file (both modes read it; default: the parameter defaults)")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed factor (DDS mode)")
    p.add_argument("--image-topic")
    p.add_argument("--odom-topic")
    p.add_argument("--camera-info-topic", help="intrinsics for loop closures' relative poses (default: the "
                   "camera_info beside the image topic; camera.fx etc. in the params file take precedence)")
    p.add_argument("--depth-topic", help="registered depth images (default: an Image topic named 'depth'); a bag "
                   "with depth replays with depth.enable unless the params file says otherwise")
    p.add_argument("--ground-truth", help="score each closure's relative pose against a trajectory: a TUM file "
                   "(timestamp tx ty tz qx qy qz qw of the robot base) or 'odom' (the bag's odometry is ground truth)")
    p.add_argument("--loop-radius", type=float, default=0.5, help="true loop: poses within this distance (m)")
    p.add_argument("--loop-min-gap", type=float, default=10.0, help="... and at least this far apart in time (s)")
    p.add_argument("--output", default="results/replay")
    p.set_defaults(func=_cmd_replay)


def write_replay_params(args: Any, out: Path, depth: bool = False) -> Path:
    """One params file for both modes: the user's (or the defaults), with the CLI's encoder
    selection for the encoder node and the settings replay needs (every frame queued, reliable,
    odometry as the pose source, depth on when the bag has it and the user did not say). The DDS
    nodes read it; the offline path builds the same objects."""
    from ..core.params import read_params_file
    from .encoder_args import encoder_selection
    from .ros_driver import write_params

    user = read_params_file(args.params_file) if args.params_file else {}
    sel = encoder_selection(args)
    enc = {"encoder_config": str(Path(sel.encoder_config).resolve()) if sel.encoder_config else "",
           "encoder_preset": sel.encoder_preset, "device": sel.device or "cpu", "queue_size": 1000,
           "qos_reliable": True}
    if sel.vocabulary:
        enc["vocabulary"] = str(Path(sel.vocabulary).resolve())
    if sel.pca:
        enc["pca"] = str(Path(sel.pca).resolve())
    if sel.local_features_model:
        enc["local_features_model"] = str(Path(sel.local_features_model).resolve())
    if depth and "depth.enable" not in user.get("encoder_node", {}) and "depth.enable" not in user.get("/**", {}):
        enc["depth.enable"] = True
    sections = {"/**": {"pose_source": "odom", **user.get("/**", {})},
                "encoder_node": {**user.get("encoder_node", {}), **enc},
                "mapping_node": user.get("mapping_node", {}), "recognition_node": user.get("recognition_node", {})}
    return write_params(out / "replay_params.yaml", sections)


def _cmd_replay(args: Any) -> int:
    bag = Path(args.bag)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.config is None:
        raise AnyLocError("replay needs --config (the encoder the nodes run)")
    localization = bool(args.map)
    map_path = Path(args.map) if args.map else out / ("map_offline" if args.offline else "map_dds")
    if localization and not (map_path / "map.sqlite").is_file():
        raise AnyLocError(f"no map at {map_path}")
    if not localization and map_path.exists():
        shutil.rmtree(map_path)
    messages = list(read_bag(bag, args.image_topic, args.odom_topic, args.camera_info_topic,
                             args.depth_topic))  # fails early on a missing topic
    if not any(m.msgtype in IMAGE_TYPES for m in messages):
        raise BagError(f"bag {bag} has no image messages to replay (its image topic is empty)")
    params = write_replay_params(args, out, depth=any(m.msgtype == DEPTH_TYPE for m in messages))
    truth = _ground_truth(args.ground_truth, messages) if args.ground_truth else None  # fails before the run
    if args.offline:
        result = replay_offline(messages, params, map_path, localization)
    else:
        from .ros_driver import isolated_dds_env

        isolated_dds_env()
        result = replay_dds(messages, params, map_path, localization, args.rate, out)
    from ..core.database import PlaceDatabase
    from ..eval.loops import loop_closure_pr
    from ..nodes.conversions import stamp_to_ns

    buf = bag_poses(messages)
    poses = {stamp_to_ns(m.msg.header.stamp): buf.at(stamp_to_ns(m.msg.header.stamp))
             for m in messages if m.msgtype in IMAGE_TYPES}
    # against a saved map every revisit counts; within one run only those far apart in time
    with PlaceDatabase(map_path, follower=True) as db:
        keyframes = db.keyframes()
    report = loop_closure_pr(result.frames, keyframes, poses, args.loop_radius,
                             0.0 if localization else args.loop_min_gap)
    lat = [f.latency_ms for f in result.frames if np.isfinite(f.latency_ms)]
    closures = [f.closure for f in result.frames if f.closure is not None]
    summary = {"mode": result.mode, "bag": str(bag), "map": str(map_path), "frames": len(result.frames),
               "frames_matched": sum(1 for f in result.frames if f.top_ids), **report,
               "loop_closures_with_relative_pose": sum(1 for f in result.frames if f.loop_relative_pose),
               "loop_closures_metric": sum(1 for c in closures if c["scale_known"]),
               "latency_ms_median": float(np.median(lat)) if lat else None, "skipped": result.skipped,
               "closures": closures,
               "matches": [{"stamp_ns": f.stamp_ns, "top_ids": f.top_ids, "scores": f.top_scores,
                            "loop_match": f.loop_match, "loop_relative_pose": f.loop_relative_pose}
                           for f in result.frames]}
    if truth is not None:
        summary["relative_pose_errors"] = _score_closures(closures, truth, out / f"closure_errors_{result.mode}.png")
    (out / f"replay_{result.mode}.json").write_text(json.dumps(summary, indent=2))
    errors = summary.get("relative_pose_errors", {})
    print(f"replay ({result.mode}): {summary['frames']} frames, {summary['frames_matched']} with matches, "
          f"{report['loop_closures']} loop closures ({summary['loop_closures_with_relative_pose']} with a relative "
          f"pose, {summary['loop_closures_metric']} metric; precision {report['loop_precision']:.3f}, recall "
          f"{report['loop_recall']:.3f} of {report['frames_with_true_loop']} frames with a true loop)"
          + (f"; against the ground truth: translation {errors['translation_error_m_median'] * 100:.1f} cm, rotation "
             f"{errors['rotation_error_deg_median']:.2f} deg median, {errors['inside_95_ellipsoid']:.2f} inside the 95% "
             "ellipsoid" if errors.get("closures_scored") and errors.get("translation_error_m_median") is not None
             else "") + f"; map {map_path}; results {out / f'replay_{result.mode}.json'}")
    return 0


def _ground_truth(source: str, messages: list[BagMessage]) -> Any:
    """A PoseBuffer of the robot base's true poses: the bag's odometry, or a TUM trajectory file."""
    from ..core.pose_buffer import PoseBuffer
    from ..eval.datasets import read_tum_trajectory

    if source == "odom":
        buf = bag_poses(messages)
        if not len(buf):
            raise BagError("--ground-truth odom: the bag has no odometry")
        return buf
    from ..core.geometry import Pose

    t, poses = read_tum_trajectory(source)
    buf = PoseBuffer(max_age_s=1e9, max_extrapolation_s=0.05)
    for stamp, p in zip(t, poses, strict=True):
        buf.add(int(round(float(stamp) * 1e9)), Pose(*map(float, p)))
    return buf


def _score_closures(closures: list[dict[str, Any]], truth: Any, plot: Path) -> dict[str, Any]:
    """Each closure's relative pose against the truth (match base -> query base), its errors and
    Mahalanobis distance under its covariance, written into the closure record; the summary; a plot."""
    from ..core.geometry import Pose, pose_matrix
    from ..eval.plots import pose_errors
    from ..eval.poses import score, summarise

    scored = []
    for c in closures:
        a, b = truth.at(c["match_stamp_ns"]), truth.at(c["query_stamp_ns"])
        if a is None or b is None:
            continue
        T_true = np.linalg.inv(pose_matrix(a)) @ pose_matrix(b)
        c["true_distance_m"] = float(np.linalg.norm(T_true[:3, 3]))
        if c["relative_pose"] is None:
            continue
        cov = np.array(c["covariance"]).reshape(6, 6)
        s = score(pose_matrix(Pose(*c["relative_pose"])), cov, T_true, c["scale_known"])
        s["cov"] = cov
        c.update(translation_error_m=s["translation_error"], rotation_error_deg=float(np.degrees(s["rotation_error"])),
                 direction_error_deg=float(np.degrees(s["direction_error"])), mahalanobis2=s["nees"],
                 inside_95_ellipsoid=s["inside95"])
        scored.append(s)
    metric = [s for s in scored if s["dof"] == 6]
    out = summarise(metric or scored)
    out["metric"] = bool(metric)
    out["largest_true_distance_m"] = max((c.get("true_distance_m", 0.0) for c in closures), default=0.0)
    if scored:
        out["plot"] = str(pose_errors(metric or scored, plot))
    return out
