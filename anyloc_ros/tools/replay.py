"""`anyloc replay`: a bag's camera and odometry through the recognition pipeline.

Two modes from one params file (written to the output folder): over DDS into the real node
processes, or offline through the same core objects in the same order (encode -> recognise,
query first -> Mapper) built from the same parameters (core/config/params.py), so both modes give
the same matches.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config.nodes import check_robot_id
from ..core.errors import AnyLocError
from .arg_types import non_negative_float, positive_float
from .bags import CAMERA_INFO_TYPE, DEPTH_TYPE, IMAGE_TYPES, BagError, BagMessage, bag_poses, read_bag
from .replay_dds import replay_dds, replay_fleet_dds
from .replay_records import FrameResult, ReplayResult, closure_record

log = logging.getLogger(__name__)


class DepthPairing:
    """Each colour frame's depth image offline: the nearest within depth.slop_s, as the encoder
    node's ApproximateTimeSynchronizer pairs them (none without depth.enable)."""

    def __init__(self, messages: list[BagMessage], settings: Any) -> None:
        from ..nodes.conversions import stamp_to_ns

        self.settings = settings
        found = sorted((stamp_to_ns(m.msg.header.stamp), m.msg) for m in messages if m.msgtype == DEPTH_TYPE) \
            if settings.enable else []
        self.stamps = np.array([d[0] for d in found], np.int64)
        self.images = [d[1] for d in found]

    def at(self, stamp: int, size: tuple[int, int], skip: Any) -> np.ndarray | None:
        """The depth in metres for a colour frame of `size`, or None; a depth image that cannot be
        used is skipped and counted (`skip`), and the frame goes on without depth, as in the node."""
        from ..nodes.images import depth_msg_to_metres

        if not len(self.stamps):
            return None
        k = int(np.argmin(np.abs(self.stamps - stamp)))
        if abs(int(self.stamps[k]) - stamp) > self.settings.slop_s * 1e9:
            return None
        s = self.settings
        try:
            depth = depth_msg_to_metres(self.images[k], s.scale, s.min_m, s.max_m)
            if depth.shape != size:
                raise AnyLocError(f"depth image of {depth.shape[::-1]} for a colour image of {size[::-1]}")
        except AnyLocError as exc:
            skip("depth", exc)
            return None
        return depth


def replay_offline(messages: list[BagMessage], params_file: Path, map_path: Path, localization: bool,
                   peer_maps: dict[str, Path] | None = None) -> ReplayResult:
    """The nodes' logic without DDS, built from the nodes' parameters in `params_file`:
    encode -> recognise (query first) -> Mapper (keyframe gate, add). `peer_maps` (robot id ->
    map): other robots' keyframes as the fleet link delivers them (taken before the first frame,
    their local features answered at once)."""
    from ..core.camera import CameraModel
    from ..core.config.encoder import EncoderSelection
    from ..core.config.map import IndexConfig
    from ..core.config.nodes import (
        CameraSettings,
        DepthSettings,
        EncoderNodeSettings,
        FleetSettings,
        MappingSettings,
        RecognitionSettings,
    )
    from ..core.config.params import NodeParameters
    from ..core.config.recognition import KeyframeGateConfig, LoopClosureConfig, SequenceConfig, VerificationConfig
    from ..core.encoding.encoder import Encoder
    from ..core.encoding.patches import PatchCompressor
    from ..core.map.database import PlaceDatabase
    from ..core.recognition.mapping import Mapper
    from ..core.recognition.recognizer import PlaceRecognizer
    from ..core.recognition.step import FrameStep
    from ..core.types import DescriptorFrame
    from ..nodes.conversions import stamp_to_ns
    from ..nodes.images import message_to_rgb

    enc_p = NodeParameters.from_file(params_file, "encoder_node")
    map_p = NodeParameters.from_file(params_file, "mapping_node")
    rec_p = NodeParameters.from_file(params_file, "recognition_node")
    enc_settings, mapping = enc_p.get(EncoderNodeSettings), map_p.get(MappingSettings)
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
    peers = _take_peer_keyframes(db, peer_maps or {}, map_p.get(FleetSettings).descriptor_format)
    recognizer = PlaceRecognizer(db, rec_p.get(LoopClosureConfig), rec_p.get(SequenceConfig),
                                 rec_p.get(VerificationConfig), peer_features=peers.local_features)
    step = FrameStep(recognizer, mapper, rec_p.get(RecognitionSettings), mapping)
    compressor = PatchCompressor.of(enc_settings, encoder.backbone.feature_dim)
    camera = enc_p.get(CameraSettings)  # intrinsics: the parameters', else the bag's latest camera_info
    depths = DepthPairing(messages, enc_p.get(DepthSettings))

    def info_of(msg: Any) -> CameraModel | None:
        return CameraModel.from_camera_info(msg.k, msg.d, msg.distortion_model, msg.width, msg.height)

    # from the first frame on (the DDS mode latches the first camera_info ahead of the first image)
    info = next((i for m in messages if m.msgtype == CAMERA_INFO_TYPE and (i := info_of(m.msg))), None)
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
            depth = depths.at(stamp, rgb.shape[:2], result.skip)
            enc = encoder.encode_frame(rgb, compressor, enc_settings.publish_keypoints,
                                       camera.camera_for(*rgb.shape[:2], info), depth, camera.mount())
        except AnyLocError as exc:
            result.skip("images", exc)
            continue
        frame = DescriptorFrame(stamp, m.msg.header.frame_id, len(result.frames), enc.descriptor, patches=enc.patches,
                                local=enc.local)
        out = step(frame, poses.at(stamp))
        if out.recognition is not None and out.recognition.awaiting:  # (with peers: never, they answer at once)
            done = step.finish(out.recognition, frame.local)
            out.recognition, out.edge, out.relocalization = done.recognition, done.edge, done.relocalization
        closure = None
        if out.loop is not None:
            v = out.loop.verification
            origin = db.origin(out.loop.match.keyframe_id) if out.loop.match.robot_id else None
            closure = closure_record(stamp, origin[2] if origin else out.loop.match.keyframe_id,
                                     out.loop.match.stamp_ns, v is not None and v.verified,
                                     v.inliers if v is not None else 0, out.edge, out.scale_known,
                                     origin[0] if origin else "")
        result.frames.append(FrameResult(
            stamp, [x.keyframe_id for x in out.matches], [float(x.frame_score) for x in out.matches],
            out.loop.match.keyframe_id if out.loop else None, (time.perf_counter() - t0) * 1e3,
            out.edge is not None, closure))
    db.close()
    peers.close()
    return result


class _PeerMaps:
    """Other robots' saved maps, answering for their keyframes' local features (by origin)."""

    def __init__(self, db: Any, maps: dict[str, Any]) -> None:
        self.db, self.maps = db, maps  # (robot id, map id) -> PlaceDatabase

    def local_features(self, keyframe_id: int) -> Any:
        origin = self.db.origin(keyframe_id)
        src = self.maps.get(origin[:2]) if origin is not None else None
        return src.local_features(origin[2]) if src is not None else None

    def close(self) -> None:
        for m in self.maps.values():
            m.close()


def _take_peer_keyframes(db: Any, peer_maps: dict[str, Path], fmt: str) -> _PeerMaps:
    from ..core.fleet.wire import keyframes_as_sent
    from ..core.map.database import PlaceDatabase

    opened = {}
    for robot, path in peer_maps.items():
        src = PlaceDatabase(path, follower=True)
        opened[(robot, src.map_id)] = src
        db.add_peer_keyframes(keyframes_as_sent(src, robot, fmt))
    return _PeerMaps(db, opened)


def register(sub: Any) -> None:
    from .encoder_args import add_encoder_args

    p = sub.add_parser("replay", help="run a bag through the real nodes (DDS) or the same core code offline")
    add_encoder_args(p)
    p.add_argument("bag")
    p.add_argument("--map", help="existing map: localise against it (else a new map is built in --output)")
    p.add_argument("--offline", action="store_true", help="no DDS: the same core objects in the same order")
    p.add_argument("--params-file", help="node params file (both modes read it; default: the parameter defaults)")
    p.add_argument("--rate", type=positive_float, default=1.0, help="playback speed factor (DDS mode)")
    p.add_argument("--image-topic")
    p.add_argument("--odom-topic")
    p.add_argument("--camera-info-topic", help="intrinsics for loop closures' relative poses (default: the "
                   "camera_info beside the image topic; camera.fx etc. in the params file take precedence)")
    p.add_argument("--depth-topic", help="registered depth images (default: an Image topic named 'depth'); a bag "
                   "with depth replays with depth.enable unless the params file says otherwise")
    p.add_argument("--ground-truth", help="score each closure's relative pose against a trajectory: a TUM file "
                   "(timestamp tx ty tz qx qy qz qw of the robot base) or 'odom' (the bag's odometry is ground truth)")
    p.add_argument("--loop-radius", type=positive_float, default=0.5, help="true loop: poses within this distance (m)")
    p.add_argument("--loop-min-gap", type=non_negative_float, help="... and at least this far apart in time (s); default: the "
                   "run's loop.exclude_recent_s (a keyframe younger than that is, by the nodes' own rule, not a loop)")
    p.add_argument("--peer-bag", help="a second robot's bag: two bags as two robots of a fleet (README \"Fleet\"): the "
                   "peer maps its bag first, then this robot replays its own, taking the peer's keyframes as the fleet "
                   "link does (offline: the same core objects; DDS: each robot's nodes in its namespace)")
    p.add_argument("--robot-ids", default="robot_a,robot_b", help="with --peer-bag: the peer's and this robot's ids")
    p.add_argument("--output", default="results/replay")
    p.set_defaults(func=_cmd_replay)


def write_replay_params(args: Any, out: Path, depth: bool = False) -> Path:
    """One params file for both modes: the user's (or the defaults), with the CLI's encoder
    selection for the encoder node and the settings replay needs (every frame queued, reliable,
    odometry as the pose source, depth on when the bag has it and the user did not say). The DDS
    nodes read it; the offline path builds the same objects."""
    from ..core.config.params import read_params_file
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
    # `/**/<node>`: the nodes' sections also in a robot's namespace (--peer-bag)
    sections = {"/**": {"pose_source": "odom", **user.get("/**", {})},
                "/**/encoder_node": {**user.get("encoder_node", {}), **enc},
                "/**/mapping_node": user.get("mapping_node", {}),
                "/**/recognition_node": user.get("recognition_node", {})}
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
    peer_messages, robots = [], ("", "")
    if args.peer_bag:
        if localization:
            raise AnyLocError("--peer-bag replays two robots that map: not with --map")
        robots = tuple(r.strip() for r in args.robot_ids.split(","))
        if len(robots) != 2 or robots[0] == robots[1]:
            raise AnyLocError(f"--robot-ids needs two different ids, got {args.robot_ids!r}")
        for r in robots:
            check_robot_id(r, "--robot-ids entry")
        peer_messages = list(read_bag(Path(args.peer_bag), args.image_topic, args.odom_topic, args.camera_info_topic,
                                      args.depth_topic))
        messages_all = messages + peer_messages  # ground truth over both robots' stamps
    else:
        messages_all = messages
    truth = _ground_truth(args.ground_truth, messages_all) if args.ground_truth else None  # fails before the run
    peer_map = out / f"peer_map_{'offline' if args.offline else 'dds'}"
    if args.peer_bag and peer_map.exists():
        shutil.rmtree(peer_map)
    if args.offline:
        if args.peer_bag:
            replay_offline(peer_messages, params, peer_map, False)
        result = replay_offline(messages, params, map_path, localization,
                                {robots[0]: peer_map} if args.peer_bag else None)
    else:
        from .ros_driver import isolated_dds_env

        isolated_dds_env()
        if args.peer_bag:
            result = replay_fleet_dds(peer_messages, messages, params, peer_map, map_path, robots, args.rate, out)
        else:
            result = replay_dds(messages, params, map_path, localization, args.rate, out)
    from ..core.map.database import PlaceDatabase
    from ..eval.loops import loop_closure_pr
    from ..eval.poses import score_closures
    from ..nodes.conversions import stamp_to_ns

    buf = bag_poses(messages)
    poses = {stamp_to_ns(m.msg.header.stamp): buf.at(stamp_to_ns(m.msg.header.stamp))
             for m in messages if m.msgtype in IMAGE_TYPES}
    with PlaceDatabase(map_path, follower=True) as db:
        keyframes = db.keyframes()
    # against a saved map every revisit counts; within one run only those far apart in time
    min_gap = 0.0 if localization else args.loop_min_gap
    if min_gap is None:  # by the nodes' own rule, what is younger is not a loop
        from ..core.config.params import NodeParameters
        from ..core.config.recognition import LoopClosureConfig

        min_gap = NodeParameters.from_file(params, "recognition_node").get(LoopClosureConfig).exclude_recent_s
    report = loop_closure_pr(result.frames, keyframes, poses, args.loop_radius, min_gap)
    lat = [f.latency_ms for f in result.frames if np.isfinite(f.latency_ms)]
    closures = [f.closure for f in result.frames if f.closure is not None]
    summary = {"mode": result.mode, "bag": str(bag), "map": str(map_path), "frames": len(result.frames),
               **({"peer_bag": args.peer_bag, "robot_ids": list(robots),
                   "inter_robot_closures": sum(1 for f in result.frames if f.closure and f.closure["match_robot_id"])}
                  if args.peer_bag else {}),
               "frames_matched": sum(1 for f in result.frames if f.top_ids), **report,
               "true_loop_radius_m": args.loop_radius, "true_loop_min_gap_s": min_gap,
               "loop_closures_with_relative_pose": sum(1 for f in result.frames if f.loop_relative_pose),
               "loop_closures_metric": sum(1 for c in closures if c["scale_known"]),
               "latency_ms_median": float(np.median(lat)) if lat else None, "skipped": result.skipped,
               "closures": closures,
               "matches": [{"stamp_ns": f.stamp_ns, "top_ids": f.top_ids, "scores": f.top_scores,
                            "loop_match": f.loop_match, "loop_relative_pose": f.loop_relative_pose}
                           for f in result.frames]}
    if truth is not None:
        summary["relative_pose_errors"] = score_closures(closures, truth, out / f"closure_errors_{result.mode}.png")
    (out / f"replay_{result.mode}.json").write_text(json.dumps(summary, indent=2))
    errors = summary.get("relative_pose_errors", {})
    print(f"replay ({result.mode}): {summary['frames']} frames, {summary['frames_matched']} with matches, "
          f"{report['loop_closures']} loop closures ({summary['loop_closures_with_relative_pose']} with a relative "
          f"pose, {summary['loop_closures_metric']} metric; precision {report['loop_precision']:.3f}, recall "
          f"{report['loop_recall']:.3f} of {report['frames_with_true_loop']} frames with a true loop: within "
          f"{args.loop_radius} m{'' if localization else f', {min_gap:g} s apart'})"
          + (f"; against the ground truth: translation {errors['translation_error_m_median'] * 100:.1f} cm, rotation "
             f"{errors['rotation_error_deg_median']:.2f} deg median, {errors['inside_95_ellipsoid']:.2f} inside the 95% "
             "ellipsoid" if errors.get("closures_scored") and errors.get("translation_error_m_median") is not None
             else "") + (f"; {summary['inter_robot_closures']} of them to {robots[0]}'s keyframes" if args.peer_bag
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
