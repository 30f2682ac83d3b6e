"""Recognition node: place matches and loop-closure candidates for every descriptor.

Subscribes `descriptors` (anyloc_ros/PlaceDescriptor), searches the map at `map_path`
(opened as a follower: it picks up the mapping node's new keyframes as they are added, or
serves a saved map for localisation), re-ranks the top-k by mutual-NN patch matching when
enabled, runs the loop-closure filter, verifies confirmed candidates geometrically (keypoints
from the descriptor message and the keyframe's stored ones) and publishes one closure per
revisited neighbourhood. Publishes:

* `place_matches` (anyloc_ros/PlaceMatch) for every query;
* `loop_closures` (anyloc_ros/LoopClosure) for confirmed candidates;
* optionally `relocalization_pose` (geometry_msgs/PoseWithCovarianceStamped, by default only
  for published loop closures: the matched keyframe's pose composed with the verified relative
  pose and its covariance, metric with depth, orientation only without; the rule is the per-frame
  step's, core/recognition/step.py), `loop_closure_markers` (visualization_msgs/MarkerArray) and
  `match_image` (sensor_msgs/Image: query | best match thumbnails side by side).

With `fleet.enable`, a confirmed candidate on another robot's keyframes waits for their local
features, asked of their owner (nodes/fleet.py), and is published as an inter-robot closure
(`match_robot_id`) once verified.
"""

from __future__ import annotations

import time
from typing import Any

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, PoseWithCovarianceStamped
from geometry_msgs.msg import Pose as PoseMsg
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import Marker, MarkerArray

from ..core.config.map import IndexConfig
from ..core.config.nodes import FleetSettings, MapSettings, PoseSettings, RecognitionSettings
from ..core.config.recognition import LoopClosureConfig, SequenceConfig, VerificationConfig
from ..core.encoding.images import decode_image_bytes
from ..core.errors import AnyLocError
from ..core.map.database import PlaceDatabase
from ..core.map.store import owner_session_id
from ..core.recognition.recognizer import PlaceRecognizer
from ..core.recognition.step import FrameStep, StepResult
from ..core.types import DescriptorFrame
from ..msg import LoopClosure, PlaceDescriptor, PlaceMatch
from .conversions import ns_to_stamp, pose_to_msg
from .descriptor_msg import EncoderGate, accept_descriptor
from .diagnostics import Diagnostics, RateStats, log_error
from .images import rgb_to_image_msg
from .parameters import declare, validate_map_path
from .pose_input import PoseInput
from .qos import latched_qos, queue_qos
from .spin import run_node


class RecognitionNode(Node):
    def __init__(self, name: str = "recognition_node", subscribe_descriptors: bool = True, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.params = params = declare(self, "recognition_node")  # kept: what the node runs with, for tools and tests
        self.map_settings = params.get(MapSettings)
        self.map_path = validate_map_path(name, self.map_settings.map_path, must_exist=True)
        self.settings = st = params.get(RecognitionSettings)
        self.index_config = params.get(IndexConfig)
        self.loop_config = params.get(LoopClosureConfig)
        self.sequence_config = params.get(SequenceConfig)
        self.verification_config = params.get(VerificationConfig)
        self.fleet_settings = params.get(FleetSettings)
        self.map_id = ""
        self.stats = RateStats()
        self.recognizer: PlaceRecognizer | None = None
        self.step: FrameStep | None = None
        self.encoders = EncoderGate()
        self._started = time.monotonic()
        self._edges: list[Any] = []
        self.poses = PoseInput(self, params.get(PoseSettings), self.stats)
        self.match_pub = self.create_publisher(PlaceMatch, "place_matches", 10)
        self.loop_pub = self.create_publisher(LoopClosure, "loop_closures", 10)
        self.reloc_pub = self.create_publisher(PoseWithCovarianceStamped, "relocalization_pose", 10) \
            if st.publish_relocalization else None
        self.marker_pub = self.create_publisher(MarkerArray, "loop_closure_markers", 10) if st.publish_markers else None
        self.image_pub = self.create_publisher(Image, "match_image", 2) if st.publish_debug_image else None
        if subscribe_descriptors:  # composed: frames arrive by direct call instead
            self.create_subscription(PlaceDescriptor, "descriptors", self._on_descriptor, queue_qos(st.descriptor_queue))
            # the encoders' signatures: descriptors of one the map accepts under another id are taken
            self.create_subscription(String, "encoder_info", lambda m: self.encoders.learn(m.data), latched_qos())
        self._last_seq: dict[str, int] = {}
        self.fleet: Any = None  # nodes/fleet.FleetRecognitionLink with fleet.enable
        if self.fleet_settings.enable:
            from .fleet import FleetRecognitionLink

            self.fleet = FleetRecognitionLink(self, self.fleet_settings, self.stats)
        self.diagnostics = Diagnostics(self, "recognition", self.stats)
        if not self._try_open():
            self.get_logger().info(f"waiting for a map at {self.map_path}")
            self._wait_timer = self.create_timer(0.5, self._try_open)

    def _try_open(self) -> bool:
        if self.recognizer is not None:
            return True
        path, wait_s = self.map_path, self.settings.map_wait_s
        if not PlaceDatabase.exists(path):
            if wait_s and time.monotonic() - self._started > wait_s:
                log_error(self, f"no map at {path} after {wait_s} s")
            return False
        try:
            db = PlaceDatabase(path, index=self.index_config, follower=True)
        except AnyLocError as exc:
            log_error(self, f"cannot open map: {exc}")
            self.diagnostics.set_status(2, f"cannot open map: {exc}")
            return False
        self.recognizer = PlaceRecognizer(db, self.loop_config, self.sequence_config, self.verification_config,
                                          peer_features=self.fleet.features if self.fleet is not None else None)
        self.step = FrameStep(self.recognizer, recognition=self.settings)
        self.map_id = str(db.store.meta("map_id") or "")
        self.recognizer.prime_from_map()  # restarted mid-session: what was just mapped is still recent
        self.diagnostics.set_status(0, "ok")
        self.encoders.map_signature = db.encoder_signature
        if getattr(self, "_wait_timer", None) is not None:
            self._wait_timer.cancel()
        self.stats.values["map_size"] = str(len(db))
        self.get_logger().info(f"recognising against {db.path}: {len(db)} keyframes in {len(db.sessions())} "
                               f"session(s), encoder {self.encoders.map_id}, index {db.index_config.type}")
        return True

    def _on_descriptor(self, msg: Any) -> None:
        frame = accept_descriptor(self, msg, self.stats, self.encoders)
        if frame is not None:
            self.handle_frame(frame, msg.header)

    def handle_frame(self, frame: DescriptorFrame, header: Any = None) -> StepResult | None:
        last = self._last_seq.get(frame.frame_id)  # each camera's encoder numbers its own frames
        if last is not None and frame.seq > last + 1:
            self.stats.inc("frames_dropped", frame.seq - last - 1)  # overwritten in the bounded queue
        self._last_seq[frame.frame_id] = frame.seq
        if self.step is None and not self._try_open():
            self.stats.inc("frames_without_map")
            return None
        t0 = time.perf_counter()
        try:
            out = self.step(frame, self.poses.at(frame.stamp_ns))
        except AnyLocError as exc:
            self.stats.inc("frames_rejected")
            log_error(self, f"query refused: {exc}")
            return None
        except Exception as exc:  # never let one frame stop the node
            self.stats.inc("frames_failed")
            log_error(self, f"query failed: {type(exc).__name__}: {exc}")
            return None
        self.stats.latency_ms.append((time.perf_counter() - t0) * 1e3)
        self.stats.inc("queries")
        result = out.recognition
        if result.suppressed:
            self.stats.inc("loop_closures_suppressed")
        if result.rejected is not None:
            self.stats.inc("loop_closures_rejected")
            if result.rejected.reason in ("distance", "depth"):  # metric checks: not a revisit, depth disagrees
                self.stats.inc(f"loop_closures_refused_{result.rejected.reason}")
        self.stats.values["map_size"] = str(self.recognizer.map_size)
        self.stats.values["damaged_keyframes"] = str(len(self.recognizer.db.damaged))
        if out.matches:
            self.stats.values["last_match_score"] = f"{out.matches[0].score:.3f}"
        if result.awaiting and self.fleet is not None:  # another robot's place: ask its owner for keypoints
            self.fleet.ask(self.recognizer.db, result, frame, header)
        self._publish(frame, out, header)
        return out

    def database(self) -> PlaceDatabase | None:
        return self.recognizer.db if self.recognizer is not None else None

    def finish_waiting(self, result: Any, frame: DescriptorFrame, header: Any, waited_s: float) -> None:
        """A candidate on another robot's keyframes, now that their owner's local features are here."""
        try:
            out = self.step.finish(result, frame.local)
        except Exception as exc:  # never let one answer stop the node
            self.stats.inc("frames_failed")
            log_error(self, f"fleet candidate failed: {type(exc).__name__}: {exc}")
            return
        if out.loop is None:
            self.stats.inc("loop_closures_rejected" if out.recognition.rejected is not None
                           else "loop_closures_suppressed")
            return
        self.stats.values["fleet_feature_wait_ms"] = f"{waited_s * 1e3:.1f}"
        self._publish_loop(frame, out, self._header(frame))

    # ---- outputs
    def _header(self, frame: DescriptorFrame) -> Header:
        h = Header()
        h.stamp = ns_to_stamp(frame.stamp_ns, type(h.stamp))
        h.frame_id = self.poses.frame_id  # the frame the robot poses are in (odometry): never labelled map
        return h

    def _publish(self, frame: DescriptorFrame, out: StepResult, header: Any) -> None:
        h = self._header(frame)
        matches = out.matches
        m = PlaceMatch(header=h, query_stamp=h.stamp, query_id=int(frame.seq), query_camera=frame.frame_id)
        m.keyframe_ids = [int(x.keyframe_id) for x in matches]
        m.scores = [float(x.frame_score) for x in matches]
        m.sequence_scores = [float(x.sequence_score) for x in matches if x.sequence_score is not None]
        m.session_ids = [x.session for x in matches]
        m.keyframe_stamps = [ns_to_stamp(x.stamp_ns, Time) for x in matches]
        m.poses = [pose_to_msg(x.pose, PoseMsg) for x in matches]
        m.pose_valid = [x.pose is not None for x in matches]
        m.keyframe_cameras = [x.frame_id for x in matches]
        m.encode_latency_ms = float(frame.encode_ms)
        self.match_pub.publish(m)
        if out.loop is not None:
            self._publish_loop(frame, out, h)
        if self.reloc_pub is not None and out.relocalization is not None:
            pose, cov = out.relocalization
            hint = PoseWithCovarianceStamped(header=h)
            hint.pose.pose = pose_to_msg(pose, PoseMsg)
            hint.pose.covariance = cov.ravel().tolist()
            self.reloc_pub.publish(hint)
        if self.image_pub is not None and matches and frame.thumbnail:
            self._publish_debug_image(frame, matches[0], header)

    def _publish_loop(self, frame: DescriptorFrame, out: StepResult, h: Header) -> None:
        lc = out.loop
        msg = self._loop_closure_msg(frame, out, h)
        self.loop_pub.publish(msg)
        self.stats.inc("loop_closures")
        if msg.match_robot_id:
            self.stats.inc("loop_closures_inter_robot")
        v, q = lc.verification, out.recognition.query
        self.get_logger().info(
            f"loop closure: query {q.id} -> keyframe {lc.match.keyframe_id}"
            + (f" (robot {msg.match_robot_id}'s {msg.match_id})" if msg.match_robot_id else "")
            + f" (score {lc.match.score:.3f}, {lc.consistent} consistent, "
            + (f"verified: {v.inliers} inliers" if v is not None else "unverified")
            + (f", relative pose ({'metric' if msg.scale_known else 'up to scale'})"
               if msg.relative_pose_valid else "") + ")")
        # another robot's keyframe pose is in its own odometry frame: no marker between the two
        if self.marker_pub is not None and q.pose is not None and lc.match.pose is not None and not msg.match_robot_id:
            self._publish_markers(h, q.pose, lc.match.pose)

    def _loop_closure_msg(self, frame: DescriptorFrame, out: StepResult, h: Header) -> LoopClosure:
        lc, q = out.loop, out.recognition.query
        msg = LoopClosure(header=h, robot_id=self.fleet_settings.robot_id, map_id=self.map_id, query_id=int(q.id),
                          query_stamp=h.stamp, query_session=q.session, match_id=int(lc.match.keyframe_id),
                          match_stamp=ns_to_stamp(lc.match.stamp_ns, Time), match_session=lc.match.session,
                          score=float(lc.match.score), query_camera=frame.frame_id, match_camera=lc.match.frame_id,
                          consistent_matches=int(lc.consistent))
        origin = self.recognizer.db.origin(lc.match.keyframe_id) if lc.match.robot_id else None
        if origin is not None:  # another robot's keyframe: named as its owner names it
            msg.match_robot_id, msg.match_map_id, msg.match_id = origin[0], origin[1], int(origin[2])
            msg.match_session = owner_session_id(origin[0], lc.match.session)
        msg.query_pose_valid = q.pose is not None
        msg.query_pose = pose_to_msg(q.pose, PoseMsg)
        msg.match_pose_valid = lc.match.pose is not None
        msg.match_pose = pose_to_msg(lc.match.pose, PoseMsg)
        v = lc.verification
        if v is not None:
            msg.verified, msg.keypoint_matches, msg.inliers = v.verified, int(v.matches), int(v.inliers)
            if out.edge is not None:
                rel, cov = out.edge
                msg.relative_pose_valid = True
                msg.relative_pose.pose = pose_to_msg(rel, PoseMsg)
                msg.relative_pose.covariance = [float(c) for c in cov.ravel()]
                msg.scale_known = out.scale_known
        return msg

    def _publish_markers(self, h: Any, a: Any, b: Any) -> None:
        self._edges.append((Point(x=a.x, y=a.y, z=a.z), Point(x=b.x, y=b.y, z=b.z)))
        self._edges = self._edges[-1000:]
        mk = Marker(header=h, ns="anyloc_loop_closures", id=0, type=Marker.LINE_LIST, action=Marker.ADD)
        mk.scale.x = 0.05
        mk.color.r, mk.color.g, mk.color.a = 1.0, 0.3, 1.0
        mk.pose.orientation.w = 1.0
        mk.points = [p for e in self._edges for p in e]
        self.marker_pub.publish(MarkerArray(markers=[mk]))

    def _publish_debug_image(self, frame: DescriptorFrame, best: Any, header: Any) -> None:
        try:
            q = decode_image_bytes(frame.thumbnail)
            t = self.recognizer.thumbnail(best.keyframe_id)
            m = decode_image_bytes(t) if t else np.zeros_like(q)
        except AnyLocError:
            return
        h = max(q.shape[0], m.shape[0])
        pad = lambda im: cv2.copyMakeBorder(im, 0, h - im.shape[0], 0, 0, cv2.BORDER_CONSTANT)  # noqa: E731
        canvas = np.ascontiguousarray(np.hstack([pad(q), np.zeros((h, 4, 3), np.uint8), pad(m)]))
        label = f"kf {best.keyframe_id} {best.score:.2f}"
        cv2.putText(canvas, label, (q.shape[1] + 8, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
        self.image_pub.publish(rgb_to_image_msg(canvas, Image, header))

    def close(self) -> None:
        if self.recognizer is not None:
            self.recognizer.close()


def main(args: list[str] | None = None) -> int:
    return run_node(RecognitionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
