"""The fleet link over DDS: several robots share one place memory (core/fleet for the rules).

Topics, one set for the fleet (`fleet.topic`, default /anyloc_fleet):

* `<topic>/keyframes` (anyloc_ros/FleetKeyframe, reliable, transient-local with `fleet.history_depth`):
  each mapping node publishes its own keyframes there, compact, within `fleet.max_bytes_per_s`,
  and stores the peers' keyframes it accepts in its map, as the peers' sessions;
* `<topic>/requests` (FleetRequest): catch-up after an id (a robot that starts or restarts asks
  each peer it hears from for what it missed), and local features of a keyframe (the
  recognition node asks the owner when a peer keyframe is a loop-closure candidate);
* `<topic>/features` (FleetFeatures): the owner's answer; the recognition node verifies the
  waiting candidate with it and publishes an inter-robot LoopClosure (`match_robot_id`).

No transport of our own: DDS discovery, reliability and durability do the work, and DDS-Security
(SROS2 enclaves) is the answer to robots that are not who they say (README "Fleet").
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose as PoseMsg
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import serialize_message

from ..core.config.nodes import FleetSettings
from ..core.errors import AnyLocError
from ..core.fleet.budget import TokenBucket
from ..core.fleet.gate import PeerGate
from ..core.fleet.outbox import Outbox
from ..core.fleet.wire import FORMATS, PeerKeyframe, decode_descriptor, encode_descriptor, parse_peers
from ..core.map.database import PlaceDatabase
from ..core.types import LocalFeatures
from ..msg import FleetFeatures, FleetKeyframe, FleetRequest
from .conversions import ns_to_stamp, pose_from_msg, pose_to_msg, stamp_to_ns
from .descriptor_msg import EncoderGate, local_features_from_msg, local_features_to_msg
from .diagnostics import RateStats, log_error, log_throttled
from .qos import queue_qos


def keyframes_qos(depth: int) -> QoSProfile:
    """Reliable, transient-local: a robot that joins late gets the newest `depth` keyframes of each
    peer from DDS itself, and asks for the rest (catch-up)."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


def topics(settings: FleetSettings) -> tuple[str, str, str]:
    base = settings.topic.rstrip("/")
    return f"{base}/keyframes", f"{base}/requests", f"{base}/features"


class FleetMapLink:
    """The mapping node's half: its keyframes out, the peers' keyframes into its map, answers to
    catch-up and local-feature requests."""

    STORE_BATCH = 50  # peer keyframes written per transaction (one fsync)
    CATCH_UP_INTERVAL_S = 5.0
    # A catch-up request is volatile: one published before the peer's request reader has matched
    # ours (discovery is per endpoint: its keyframes can reach us first) is lost. While the peer's
    # first keyframe left a gap and no answer came, it is asked again, this many times at most.
    CATCH_UP_ATTEMPTS = 6

    def __init__(self, node: Node, db: PlaceDatabase, settings: FleetSettings, encoders: EncoderGate,
                 stats: RateStats, pose_frame: Callable[[], str]) -> None:
        self.node, self.db, self.settings, self.stats = node, db, settings, stats
        self.pose_frame = pose_frame  # the odometry frame the keyframe poses are in
        self.robot_id = settings.robot_id
        self.format = FORMATS.index(settings.descriptor_format)
        kf_topic, req_topic, feat_topic = topics(settings)
        qos = keyframes_qos(settings.history_depth)
        self.keyframe_pub = node.create_publisher(FleetKeyframe, kf_topic, qos)
        self.features_pub = node.create_publisher(FleetFeatures, feat_topic, queue_qos(100))
        self.request_pub = node.create_publisher(FleetRequest, req_topic, queue_qos(100))
        self.gate = PeerGate(self.robot_id, db.map_id, parse_peers(settings.peers), encoders.refusal,
                             settings.peer_queue, held=db.holds_peer_keyframe,
                             log=lambda m: node.get_logger().warn(m))
        self.bucket = TokenBucket(settings.max_bytes_per_s)  # a second's worth at once, then the rate
        self.outbox = Outbox()
        own = db.own_ids()
        self.outbox.add(own[-settings.history_depth:] if settings.history_depth else [])
        self._held_at_start = db.peer_keyframe_max_ids()  # catch-up starts after what we held then
        self._asked: dict[tuple[str, str], float] = {}  # peer map -> when a catch-up was asked
        # peer map -> [newest id heard from it, catch-ups sent] while its gap waits for an answer
        self._unanswered: dict[tuple[str, str], list[int]] = {}
        self._dropped_from: set[tuple[str, str]] = set()
        self._answer_budgets: dict[tuple[str, int], TokenBucket] = {}  # (asking robot, request kind) -> budget
        self._request_id = 0
        # keep-all: DDS never overwrites a burst (a catch-up, a flood) unseen, it slows the sender
        # down; the gate's per-peer queues decide what is dropped, and count it
        node.create_subscription(FleetKeyframe, kf_topic, self._on_keyframe, QoSProfile(
            depth=1, history=HistoryPolicy.KEEP_ALL, reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL))
        # requests are small: a deep queue so a burst reaches the per-robot budget (refused there, counted)
        node.create_subscription(FleetRequest, req_topic, self._on_request, queue_qos(1000))
        node.create_timer(0.05, self._tick)
        node.get_logger().info(
            f"fleet: robot {self.robot_id} shares its keyframes on {kf_topic} ({settings.descriptor_format}, "
            f"{'unlimited' if settings.max_bytes_per_s <= 0 else f'{settings.max_bytes_per_s:.0f} B/s'}; "
            f"{len(self.outbox)} of {len(own)} announced); peers: {settings.peers or 'any'}")

    # ---- out
    def keyframe_added(self, keyframe_id: int) -> None:
        self.outbox.add([keyframe_id])

    def _message(self, keyframe_id: int) -> Any | None:
        kf = self.db.get_or_none(keyframe_id)
        if kf is None:  # removed, or quarantined since it was queued
            return None
        data, scale = encode_descriptor(self.db.descriptors([keyframe_id])[0], FORMATS[self.format])
        m = FleetKeyframe(robot_id=self.robot_id, map_id=self.db.map_id, session=kf.session,
                          keyframe_id=int(kf.id), encoder_id=self.db.encoder_signature.id, descriptor_format=self.format,
                          descriptor_scale=float(scale), pose_valid=kf.pose is not None, frame_id=self.pose_frame(),
                          camera=kf.frame_id)
        m.stamp = ns_to_stamp(kf.stamp_ns, Time)
        m.descriptor = data
        m.pose = pose_to_msg(kf.pose, PoseMsg)
        return m

    def _send(self) -> None:
        while len(self.outbox):
            kid = self.outbox.peek()
            msg = self._message(kid)
            if msg is None:
                self.outbox.pop()
                continue
            size = len(serialize_message(msg))
            if not self.bucket.take(size):
                self.stats.values["fleet_outbox"] = str(len(self.outbox))
                return  # over budget: sent on a later tick, never dropped
            self.outbox.pop()
            self.keyframe_pub.publish(msg)
            self.stats.inc("fleet_keyframes_sent")
            self.stats.inc("fleet_bytes_sent", size)
        self.stats.values["fleet_outbox"] = "0"

    # ---- in
    def _on_keyframe(self, msg: Any) -> None:
        try:
            kf = PeerKeyframe(msg.robot_id, msg.map_id, msg.session, int(msg.keyframe_id), stamp_to_ns(msg.stamp),
                              msg.encoder_id, None, pose_from_msg(msg.pose) if msg.pose_valid else None,
                              msg.frame_id, msg.camera)
            if not self.gate.is_echo(kf.robot_id, kf.map_id):  # (an echo is counted by the gate, not decoded)
                kf.descriptor = decode_descriptor(bytes(msg.descriptor), int(msg.descriptor_format), self.db.dim,
                                                  float(msg.descriptor_scale))
        except (ValueError, TypeError, OverflowError) as exc:
            self.gate.counts["malformed"] += 1
            log_error(self.node, f"fleet: malformed keyframe from robot {msg.robot_id!r}: {exc}")
            return
        dropped = self.gate.counts["queue_dropped"]
        reason = self.gate.offer(kf)
        peer = (kf.robot_id, kf.map_id)
        waiting = self._unanswered.get(peer) if reason is None or reason == "duplicate" else None
        if waiting is not None:
            if kf.keyframe_id <= waiting[0]:
                del self._unanswered[peer]  # not newer than one heard before (history and live ids grow): the answer
            else:
                waiting[0] = kf.keyframe_id
        if self.gate.counts["queue_dropped"] != dropped:
            self._dropped_from.add(peer)  # asked again once its queue is empty (_tick)
        elif (reason is None or reason == "duplicate") and peer not in self._asked:  # first contact in this run
            if kf.keyframe_id > self._held_at_start.get(peer, -1) + 1:  # DDS history began after what we hold
                self._unanswered[peer] = [kf.keyframe_id, 0]
            self._catch_up(*peer)

    def _catch_up(self, robot: str, map_id: str) -> None:
        """Ask a peer for its keyframes after the newest we held when we started (what we missed
        while away; again after its queue overflowed, at most every CATCH_UP_INTERVAL_S)."""
        now = time.monotonic()
        if now - self._asked.get((robot, map_id), -1e9) < self.CATCH_UP_INTERVAL_S:
            return
        self._asked[(robot, map_id)] = now
        peer = (robot, map_id)
        if peer in self._unanswered:
            self._unanswered[peer][1] += 1
        after = self._held_at_start.get(peer, -1) + 1
        self._request_id += 1
        self.request_pub.publish(FleetRequest(from_robot=self.robot_id, to_robot=robot, map_id=map_id,
                                              kind=FleetRequest.CATCH_UP, keyframe_id=after,
                                              request_id=self._request_id))
        self.stats.inc("fleet_catch_up_requests")

    def _store(self) -> None:
        batch = self.gate.take(self.STORE_BATCH)
        if not batch:
            return
        try:
            ids = self.db.add_peer_keyframes(batch)
        except AnyLocError as exc:  # disk full, read-only: they are asked for again after a restart
            self.stats.inc("fleet_store_failures", len(batch))
            log_error(self.node, f"fleet: {len(batch)} peer keyframes not stored: {exc}")
            return
        stored = sum(i is not None for i in ids)
        self.stats.inc("fleet_keyframes_stored", stored)
        self.stats.inc("fleet_refused_duplicate", len(ids) - stored)

    def _on_request(self, msg: Any) -> None:
        if msg.to_robot != self.robot_id or msg.from_robot == self.robot_id:
            return
        if msg.map_id and msg.map_id != self.db.map_id:
            self.stats.inc("fleet_requests_for_other_map")
            return
        if not self._answer_allowed(msg.from_robot, msg.kind):
            return
        if msg.kind == FleetRequest.CATCH_UP:
            n = self.outbox.add(self.db.own_ids(after=int(msg.keyframe_id) - 1))
            self.stats.inc("fleet_catch_up_answered")
            self.node.get_logger().info(f"fleet: robot {msg.from_robot} catches up: {n} keyframes from id "
                                        f"{msg.keyframe_id} queued")
        elif msg.kind == FleetRequest.LOCAL_FEATURES:
            out = FleetFeatures(from_robot=self.robot_id, to_robot=msg.from_robot, map_id=self.db.map_id,
                                keyframe_id=msg.keyframe_id, request_id=msg.request_id)
            lf = self.db.local_features(int(msg.keyframe_id)) if self.db.is_own(int(msg.keyframe_id)) else None
            if lf is not None:
                local_features_to_msg(lf, out)
                out.found = True
            self.features_pub.publish(out)
            self.stats.inc("fleet_features_answered")
            self.stats.inc("fleet_bytes_sent", len(serialize_message(out)))

    def _answer_allowed(self, robot: str, kind: int) -> bool:
        """Requests are answered within a budget per asking robot: one catch-up per
        CATCH_UP_INTERVAL_S (each may queue the whole map), feature answers (~70 KB each) at twice
        fleet.max_feature_requests_per_s. A robot that asks more is refused, counted, told once."""
        bucket = self._answer_budgets.get((robot, kind))
        if bucket is None:
            if len(self._answer_budgets) >= 1000:  # a bounded table, even under made-up robot ids
                self._answer_budgets.clear()
            rate = self.settings.max_feature_requests_per_s
            bucket = self._answer_budgets[(robot, kind)] = TokenBucket(1.0 / self.CATCH_UP_INTERVAL_S, 1.0) \
                if kind == FleetRequest.CATCH_UP else TokenBucket(2 * rate, max(2 * rate, 6.0))
        ok = bucket.take(1)
        if not ok:
            self.stats.inc("fleet_requests_refused_too_often")
            log_throttled(self.node, f"fleet: robot {robot} asks more often than the request budget allows; "
                          "refused (counted in diagnostics)", "warn", float("inf"))
        return ok

    def _tick(self) -> None:
        try:
            self._store()
            self._send()
            now = time.monotonic()
            for peer in [p for p in self._dropped_from if not self.gate.waiting_from(p[0])
                         and now - self._asked.get(p, -1e9) >= self.CATCH_UP_INTERVAL_S]:
                self._dropped_from.discard(peer)
                self._catch_up(*peer)
            for peer, (_, attempts) in list(self._unanswered.items()):
                if now - self._asked.get(peer, -1e9) < self.CATCH_UP_INTERVAL_S:
                    continue
                if attempts >= self.CATCH_UP_ATTEMPTS:
                    del self._unanswered[peer]
                    self.stats.inc("fleet_catch_up_unanswered")
                    self.node.get_logger().warn(
                        f"fleet: robot {peer[0]} did not answer {attempts} catch-up requests; its keyframes older "
                        "than its DDS history are asked for again on the next start")
                else:
                    self._catch_up(*peer)
        except Exception as exc:  # never let the fleet link stop the mapping node
            self.stats.inc("fleet_failures")
            log_error(self.node, f"fleet: {type(exc).__name__}: {exc}")
        for reason, n in self.gate.counts.items():
            self.stats.counts[f"fleet_refused_{reason}"] = n
        self.stats.values["fleet_waiting"] = str(self.gate.waiting)


# what a peer keyframe "has" when its owner has none for it or did not answer: verification fails
# on it (no keypoint matches) and moves on to the next-ranked keyframe
NO_FEATURES = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 0), np.float16), np.zeros(0, np.float32),
                            (0, 0))


@dataclass
class _Waiting:
    """A confirmed candidate whose keyframes are a peer's: it waits for their local features."""

    result: Any  # RecognitionResult
    frame: Any  # DescriptorFrame
    header: Any
    keyframes: set[int]
    deadline: float
    asked: float = field(default_factory=time.monotonic)


class FleetRecognitionLink:
    """The recognition node's half: asks owners for the local features of peer candidates, and
    finishes the waiting candidates when they arrive (the node publishes what verifies)."""

    CACHE = 256  # peer keyframes' local features kept (a revisit asks once)
    # An unanswered request (owner busy, gone, or its reader not yet matched to ours: the request
    # is lost) makes its keyframes featureless for this long, then they are asked for again.
    RETRY_AFTER_S = 10.0

    def __init__(self, node: Any, settings: FleetSettings, stats: RateStats) -> None:
        self.node, self.settings, self.stats = node, settings, stats
        _, req_topic, feat_topic = topics(settings)
        self.request_pub = node.create_publisher(FleetRequest, req_topic, queue_qos(100))
        node.create_subscription(FleetFeatures, feat_topic, self._on_features, queue_qos(100))
        # a burst of one candidate's neighbourhood (verification.candidates keyframes) at once
        self.bucket = TokenBucket(settings.max_feature_requests_per_s, max(settings.max_feature_requests_per_s, 3.0))
        self.cache: OrderedDict[int, LocalFeatures | None] = OrderedDict()
        self.asked: dict[int, float] = {}  # local keyframe id -> when
        self.timed_out: dict[int, float] = {}  # local keyframe id -> when its request timed out
        self.waiting: list[_Waiting] = []
        self._request_id = 0
        node.create_timer(0.1, self._expire)

    def features(self, keyframe_id: int) -> LocalFeatures | None:
        return self.cache.get(keyframe_id)

    def ask(self, db: PlaceDatabase, result: Any, frame: Any, header: Any) -> None:
        """The candidate's peer keyframes lack local features here: ask their owners, and keep the
        candidate until they answer (or `fleet.feature_timeout_s`)."""
        now = time.monotonic()
        wanted = set()
        for kid in result.awaiting:
            origin = db.origin(kid)
            if origin is None:
                continue
            if now - self.asked.get(kid, -1e9) < self.settings.feature_timeout_s:
                wanted.add(kid)
                continue  # asked already; the answer is on its way
            if not self.bucket.take(1):
                self.stats.inc("fleet_feature_requests_over_budget")
                continue  # a later frame of the same revisit asks again
            wanted.add(kid)
            self._request_id += 1
            robot, map_id, remote = origin
            self.request_pub.publish(FleetRequest(from_robot=self.settings.robot_id, to_robot=robot, map_id=map_id,
                                                  kind=FleetRequest.LOCAL_FEATURES, keyframe_id=remote,
                                                  request_id=self._request_id))
            self.asked[kid] = now
            self.stats.inc("fleet_feature_requests")
        if wanted:
            self.waiting.append(_Waiting(result, frame, header, wanted, now + self.settings.feature_timeout_s))
            self.waiting = self.waiting[-8:]  # only the newest candidates are worth finishing

    def _on_features(self, msg: Any) -> None:
        if msg.to_robot != self.settings.robot_id:
            return
        db = self.node.database()
        if db is None:
            return
        kid = db.local_id(msg.from_robot, msg.map_id, int(msg.keyframe_id))
        if kid is not None and self.timed_out.pop(kid, None) is not None:
            self.cache.pop(kid, None)  # a late answer replaces the timeout's placeholder
        if kid is None or kid not in self.asked or kid in self.cache:
            self.stats.inc("fleet_features_unrequested")  # only answers to our own open requests are taken
            return
        try:
            lf = local_features_from_msg(msg) if msg.found else None
        except ValueError as exc:
            self.stats.inc("fleet_features_malformed")
            log_error(self.node, f"fleet: malformed local features from robot {msg.from_robot}: {exc}")
            lf = None
        self.cache[kid] = lf if lf is not None else NO_FEATURES
        self.cache.move_to_end(kid)
        while len(self.cache) > self.CACHE:
            self.cache.popitem(last=False)
        self.stats.inc("fleet_features_received")
        ready = [w for w in self.waiting if w.keyframes <= set(self.cache)]
        self.waiting = [w for w in self.waiting if w not in ready]
        for w in ready:
            self.node.finish_waiting(w.result, w.frame, w.header, time.monotonic() - w.asked)

    def _expire(self) -> None:
        """Candidates whose owner did not answer in time: their keyframes count as having no
        features (verification fails on them, and the next-ranked keyframes decide)."""
        now = time.monotonic()
        for kid in [k for k, t in self.timed_out.items() if now - t >= self.RETRY_AFTER_S]:
            del self.timed_out[kid]
            self.cache.pop(kid, None)  # unknown again: the next candidate on it waits and asks again
        if len(self.asked) > 4 * self.CACHE:  # open requests only: the answered ones are in the cache
            self.asked = {k: t for k, t in self.asked.items() if now - t < self.settings.feature_timeout_s}
        late = [w for w in self.waiting if now > w.deadline]
        if late:
            self.stats.inc("fleet_feature_timeouts", len(late))
            self.waiting = [w for w in self.waiting if now <= w.deadline]
            for w in late:
                for kid in w.keyframes - set(self.cache):
                    self.cache[kid] = NO_FEATURES
                    self.timed_out[kid] = now
