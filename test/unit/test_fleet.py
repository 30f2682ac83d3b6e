"""A fleet's shared place memory in the core (#25): the compact descriptor on the wire, which peer
keyframes are taken (own echo, peers list, other encoder, malformed, duplicates, floods), the
budgets, peer keyframes stored as the peer's sessions (surviving a restart, never twice), and
offline merging of two robots' maps."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from anyloc_ros.core.errors import ConfigError, MapError
from anyloc_ros.core.fleet.budget import TokenBucket
from anyloc_ros.core.fleet.gate import PeerGate
from anyloc_ros.core.fleet.outbox import Outbox
from anyloc_ros.core.fleet.wire import (
    PeerKeyframe,
    decode_descriptor,
    encode_descriptor,
    keyframes_as_sent,
    parse_peers,
)
from anyloc_ros.core.geometry import Pose
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.map.merge import merge_maps
from anyloc_ros.core.types import LocalFeatures

from ..conftest import REPO

SIG = {"backbone": "t", "dim": 16}


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def peer(i: int, robot: str = "robot_a", map_id: str = "mapA", d: np.ndarray | None = None, **kw) -> PeerKeyframe:
    fields = dict(robot_id=robot, map_id=map_id, session="s1", keyframe_id=i, stamp_ns=i * 10**9, encoder_id="enc",
                  descriptor=unit(1, i)[0] if d is None else d, pose=Pose(float(i), 0.0, 0.0), frame_id="odom",
                  camera="cam")
    fields.update(kw)
    return PeerKeyframe(**fields)


# ---------------------------------------------------------------- wire
@pytest.mark.parametrize("fmt,code,width,max_err", [("float32", 0, 4, 1e-6), ("float16", 1, 2, 1e-3),
                                                    ("int8", 2, 1, 2e-2)])
def test_descriptor_codec_round_trip(fmt, code, width, max_err):
    d = unit(50, 3)
    for v in d:
        data, scale = encode_descriptor(v, fmt)
        assert len(data) == 16 * width
        back = decode_descriptor(data, code, 16, scale)
        assert abs(float(back @ v) - 1.0) < max_err


def test_decode_refuses_what_does_not_fit():
    data, _ = encode_descriptor(unit(1)[0], "float16")
    with pytest.raises(ValueError, match="16-D"):
        decode_descriptor(data[:-2], 1, 16, 1.0)
    with pytest.raises(ValueError, match="format"):
        decode_descriptor(data, 7, 16, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        decode_descriptor(np.full(16, np.nan, "<f2").tobytes(), 1, 16, 1.0)
    with pytest.raises(ValueError, match="zeros"):
        decode_descriptor(bytes(32), 1, 16, 1.0)
    with pytest.raises(ValueError, match="scale"):
        decode_descriptor(bytes(16), 2, 16, float("nan"))
    with pytest.raises(ConfigError, match="format"):
        encode_descriptor(unit(1)[0], "float64")


def test_peers_parameter():
    assert parse_peers("") == frozenset()
    assert parse_peers("robot_a, robot_b robot_c") == {"robot_a", "robot_b", "robot_c"}
    with pytest.raises(ConfigError, match="robot id"):
        parse_peers("robot_a,1bad")


# ---------------------------------------------------------------- gate
def test_gate_refuses_bad_peers_with_counted_reasons():
    told = []
    held = {("robot_a", "mapA", 5)}
    gate = PeerGate("robot_b", "mapB", frozenset({"robot_a"}),
                    encoder_refusal=lambda e: None if e == "enc" else f"encoder {e} is not the map's",
                    held=lambda key: key in held, log=told.append)
    assert gate.offer(peer(1)) is None
    assert gate.offer(peer(2, robot="robot_b", map_id="mapX")) == "own_echo"  # our robot id coming back
    assert gate.offer(peer(3, robot="robot_x", map_id="mapB")) == "own_echo"  # our map coming back
    assert gate.offer(peer(4, robot="robot_c", map_id="mapC")) == "not_a_peer"
    assert gate.offer(peer(6, encoder_id="other")) == "other_encoder"
    assert gate.offer(peer(7, encoder_id="other")) == "other_encoder"
    assert gate.offer(peer(5)) == "duplicate"  # held in the map already
    assert gate.offer(peer(1)) == "duplicate"  # waiting in the queue already
    for bad in (peer(8, robot="has space"), peer(9, session=""), peer(10, keyframe_id=-1),
                peer(11, pose=Pose(float("nan"), 0, 0)), peer(12, session="bad session id"), peer(13, map_id="")):
        assert gate.offer(bad) == "malformed"
    assert dict(gate.counts) == {"own_echo": 2, "not_a_peer": 1, "other_encoder": 2, "duplicate": 2, "malformed": 6}
    assert [kf.keyframe_id for kf in gate.take(10)] == [1]
    # each refusal said once per robot and reason, not once per keyframe
    assert sum("other_encoder" in t for t in told) == 1 and sum("not_a_peer" in t for t in told) == 1


def test_gate_bounds_a_flooding_peer_and_serves_peers_in_turn():
    gate = PeerGate("robot_b", "mapB", queue_size=5)
    for i in range(100):
        gate.offer(peer(i, robot="robot_flood", map_id="mapF"))
    for i in range(3):
        gate.offer(peer(i, robot="robot_a"))
    assert gate.counts["queue_dropped"] == 95 and gate.waiting == 8
    taken = gate.take(4)
    # round-robin: the flooder does not starve robot_a; its queue kept the newest
    assert [kf.robot_id for kf in taken] == ["robot_flood", "robot_a", "robot_flood", "robot_a"]
    assert [kf.keyframe_id for kf in taken if kf.robot_id == "robot_flood"] == [95, 96]


def test_token_bucket_and_outbox():
    t = [0.0]
    bucket = TokenBucket(1000.0, 1000.0, clock=lambda: t[0])
    assert bucket.take(600) and not bucket.take(600)
    t[0] += 0.5
    assert bucket.take(600)
    t[0] -= 100  # a clock that jumps back refills nothing and breaks nothing
    assert not bucket.take(600)
    t[0] += 200
    assert bucket.take(5000)  # larger than the burst: passes when full, once
    assert not bucket.take(1)
    assert TokenBucket(0).take(10**9)  # 0 = unlimited
    box = Outbox()
    assert box.add([5, 3, 9, 3]) == 3 and box.add([5]) == 0
    assert [box.pop() for _ in range(len(box))] == [3, 5, 9]


# ---------------------------------------------------------------- the map
def test_peer_keyframes_stored_as_peer_sessions_once_and_survive_restart(tmp_path):
    own = unit(3, 1)
    with PlaceDatabase(tmp_path / "b", SIG) as db:
        db.new_session("b1")
        own_ids = db.add_many(own, [1, 2, 3])
        kfs = [peer(i) for i in range(10, 15)] + [peer(10, robot="robot_c", map_id="mapC")]
        ids = db.add_peer_keyframes(kfs)
        assert all(i is not None for i in ids)
        assert db.add_peer_keyframes([peer(11), peer(12)]) == [None, None]  # already held: not stored twice
        assert db.session == "b1"  # storing peers does not change the robot's own session
        assert db.own_ids() == own_ids and db.own_ids(after=own_ids[0]) == own_ids[1:]
        assert db.origin(ids[0]) == ("robot_a", "mapA", 10) and db.origin(own_ids[0]) is None
        assert db.local_id("robot_c", "mapC", 10) == ids[-1]
        assert db.peer_keyframe_max_ids() == {("robot_a", "mapA"): 14, ("robot_c", "mapC"): 10}
    with PlaceDatabase(tmp_path / "b", SIG) as db:  # restarted
        st = db.stats()
        assert st.keyframes == 9 and st.peer_keyframes == 6 and st.robots == ["robot_a", "robot_c"]
        assert {"robot_a:s1", "robot_c:s1", "b1"} <= set(st.sessions)
        m = db.search(kfs[2].descriptor, 1)[0][0]
        assert (m.keyframe_id, m.robot_id, m.session) == (ids[2], "robot_a", "robot_a:s1")
        assert m.pose == kfs[2].pose
        assert db.search(own[0], 1)[0][0].robot_id == ""
        assert db.holds_peer_keyframe(("robot_a", "mapA", 13)) and not db.holds_peer_keyframe(("robot_a", "mapA", 99))
        # a follower sees the same (the recognition node)
        with PlaceDatabase(tmp_path / "b", follower=True) as f:
            assert f.origin(ids[0]) == ("robot_a", "mapA", 10)
            assert [k.robot_id for k in f.refresh()] == [] and f.stats().peer_keyframes == 6


def test_traversal_index_follows_each_stream_in_writer_follower_and_after_restart(tmp_path):
    """Map positions (sequence lines, consistency and suppression windows) are indices along a
    traversal: another robot's keyframes stored between the robot's own, a catch-up of its older
    ones stored last, a second camera: each stream counts 0, 1, 2, ... in the order recorded, in
    the writer, in a follower that refreshes, after removals and after a restart."""
    def indices(db, ids):
        return [m.traversal_index for m in db.search_ids(unit(1, 99)[0], ids)]

    with PlaceDatabase(tmp_path / "b", SIG) as db, PlaceDatabase(tmp_path / "b", follower=True) as f:
        db.new_session("b1")
        db.search(unit(1, 0)[0], 1)  # the writer's traversals exist before the writes below (kept in step)
        f.search(unit(1, 0)[0], 1)
        own, rear, peers = [], [], []
        for r in range(20, 30):  # the peer's keyframes 20..29, each between two of the robot's own
            peers += db.add_peer_keyframes([peer(r)])
            own.append(db.add(unit(1, r)[0], r, "front"))
            rear.append(db.add(unit(1, r + 50)[0], r, "rear"))
        caught_up = db.add_peer_keyframes([peer(r) for r in range(10, 20)])  # older, stored last
        f.refresh()
        for d in (db, f):
            assert indices(d, caught_up + peers) == list(range(20))
            assert indices(d, own) == list(range(10)) and indices(d, rear) == list(range(10))
        db.remove([caught_up[0], own[0]])
        f.refresh()
        for d in (db, f):
            assert indices(d, caught_up[1:] + peers) == list(range(19)) and indices(d, own[1:]) == list(range(9))
    with PlaceDatabase(tmp_path / "b", SIG) as db:  # restarted: rebuilt from the map, the same
        assert indices(db, caught_up[1:] + peers) == list(range(19)) and indices(db, rear) == list(range(10))
        keys = db.traversal_keys(peers)
        assert list(db.ids_at_traversal_keys(keys)) == peers and list(np.diff(keys)) == [1] * 9


def test_peer_keyframe_descriptor_must_fit_the_map(tmp_path):
    with PlaceDatabase(tmp_path / "b", SIG) as db:
        with pytest.raises(Exception, match="dimensions"):
            db.add_peer_keyframes([peer(1, d=np.ones(8, np.float32))])
        assert len(db) == 0


def test_damaged_origin_quarantines_the_keyframe(tmp_path):
    import sqlite3

    with PlaceDatabase(tmp_path / "b", SIG) as db:
        ids = db.add_peer_keyframes([peer(1), peer(2)])
    conn = sqlite3.connect(tmp_path / "b" / "map.sqlite")
    conn.execute("UPDATE origins SET remote_id=7 WHERE id=?", (ids[0],))  # another robot's keyframe now?
    conn.commit()
    conn.close()
    with PlaceDatabase(tmp_path / "b", SIG) as db:
        assert db.origin(ids[0]) is None and ids[0] in db.damaged
        assert all(m.keyframe_id != ids[0] for m in db.search(peer(1).descriptor, 2)[0])
        assert db.origin(ids[1]) == ("robot_a", "mapA", 2)


# ---------------------------------------------------------------- merging saved maps
def _robot_map(path, robot: str, seed: int, n: int = 4) -> list[int]:
    local = LocalFeatures(np.zeros((4, 2), np.float32), np.ones((4, 8), np.float16), np.ones(4, np.float32), (48, 64))
    with PlaceDatabase(path, SIG) as db:
        db.set_robot_id(robot)
        db.new_session(f"{robot}_day1")
        return db.add_many(unit(n, seed), [i * 10**9 for i in range(n)], ["cam"] * n,
                           [Pose(float(i), 0.0, 0.0) for i in range(n)], patches=[np.ones((2, 3), np.float32)] * n,
                           thumbnails=[b"jpg"] * n, local=[local] * n)


def test_merge_keeps_sessions_robots_and_content(tmp_path):
    a_ids = _robot_map(tmp_path / "a", "robot_a", 1)
    _robot_map(tmp_path / "b", "robot_b", 2, n=3)
    report = merge_maps([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert report.keyframes == 7
    with PlaceDatabase(tmp_path / "out", follower=True) as out, PlaceDatabase(tmp_path / "a", follower=True) as a:
        st = out.stats()
        assert st.keyframes == 7 and st.robots == ["robot_a", "robot_b"]
        assert {"robot_a:robot_a_day1", "robot_b:robot_b_day1"} == set(st.sessions)
        kid = out.local_id("robot_a", a.map_id, a_ids[1])
        assert np.allclose(out.descriptors([kid]), a.descriptors([a_ids[1]]))
        assert out.get(kid).pose == a.get(a_ids[1]).pose
        assert out.local_features(kid) is not None and out.patches(kid) is not None and out.thumbnail(kid) == b"jpg"
    # merging again into the same output adds nothing twice
    assert merge_maps([tmp_path / "a"], tmp_path / "out").keyframes == 0
    # an output that is a symlink (to an empty directory) is refused, nothing written through it
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(MapError, match="symbolic link"):
        merge_maps([tmp_path / "a"], tmp_path / "link")
    assert not any((tmp_path / "empty").iterdir()) and (tmp_path / "link").is_symlink()
    assert not [p for p in tmp_path.iterdir() if ".merging-" in p.name]


def test_merge_refuses_mixed_encoders_naming_fields(tmp_path):
    _robot_map(tmp_path / "a", "robot_a", 1)
    with PlaceDatabase(tmp_path / "c", {"backbone": "other", "dim": 16}):
        pass
    with pytest.raises(MapError, match="backbone"):
        merge_maps([tmp_path / "a", tmp_path / "c"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_map_merge_cli(tmp_path):
    _robot_map(tmp_path / "a", "robot_a", 1)
    _robot_map(tmp_path / "b", "robot_b", 2)
    run = subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", "map", "merge", str(tmp_path / "a"),
                          str(tmp_path / "b"), str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert "8 keyframes" in run.stdout and "robot_a" in run.stdout
    info = subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", "map", "check", str(tmp_path / "out")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "8 keyframes of other robots (robot_a, robot_b)" in info.stdout, info.stdout
    with PlaceDatabase(tmp_path / "c", {"backbone": "other", "dim": 16}):
        pass
    bad = subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", "map", "merge", str(tmp_path / "a"),
                          str(tmp_path / "c"), str(tmp_path / "out2")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 1 and "backbone" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- two robots on the corridor, in the core
@pytest.mark.realdata
@pytest.mark.parametrize("arrival", ["stored_first", "live"])
def test_two_robots_share_the_corridor(tmp_path, corridor_frames, corridor_gt, arrival):
    """Robot A maps the first traversal; its keyframes reach robot B as the fleet topic carries
    them (float16 descriptors, no local features). B drives the second traversal, mapping its own
    keyframes and recognising: its closures are to A's keyframes, each waits for A's local features
    (asked of A's map, as the owner answers a request), then is verified; all correct, one within
    10 frames of every revisited place.

    stored_first: A's keyframes are all in B's map before B drives (ids follow A's traversal).
    live: B joins when A is 30 frames in and drives 20 behind; the DDS history hands B A's newest
    20 first, the catch-up the 10 older ones next, then A's keyframes arrive in uneven batches
    between B's own (ids no longer follow A's traversal; its traversal index does)."""
    from anyloc_ros.core.config.nodes import RecognitionSettings
    from anyloc_ros.core.config.recognition import KeyframeGateConfig, LoopClosureConfig, SequenceConfig
    from anyloc_ros.core.recognition.mapping import Mapper
    from anyloc_ros.core.recognition.recognizer import PlaceRecognizer
    from anyloc_ros.core.recognition.step import FrameStep
    from anyloc_ros.core.types import DescriptorFrame

    sig = {"backbone": "xfeat", "dim": len(corridor_frames["ref"][0].descriptor)}
    s = 10**9
    with PlaceDatabase(tmp_path / "a", sig, durable=False) as a, PlaceDatabase(tmp_path / "b", sig, durable=False) as b:
        mapper_a = Mapper(a, KeyframeGateConfig(min_distance_m=0.5))
        mapper_a.new_session("a1")
        for i, f in enumerate(corridor_frames["ref"]):
            mapper_a.offer(f.descriptor, (1000 + i) * s, "cam", Pose(float(i), 0.0, 0.0), local=f.local)
        wire = keyframes_as_sent(a, "robot_a")  # through the float16 codec, no local features
        if arrival == "stored_first":
            batches = {0: wire}
        else:  # by B's frame index: what has reached B before it
            rng = np.random.default_rng(7)
            batches, sent, lag = {0: wire[10:30], 1: wire[:10]}, 30, 20
            for i in range(2, len(corridor_frames["query"])):
                upto = min(len(wire), i + lag + 1 + int(rng.integers(-2, 3)))
                if upto > sent and rng.random() < 0.7:  # sometimes nothing arrives, then a batch
                    batches[i], sent = wire[sent:upto], upto
            batches[len(corridor_frames["query"]) - 1] = wire[sent:]
        cache: dict[int, LocalFeatures | None] = {}
        step = FrameStep(PlaceRecognizer(b, LoopClosureConfig(), SequenceConfig(enable=True), peer_features=cache.get),
                         Mapper(b, KeyframeGateConfig(min_distance_m=0.5)), RecognitionSettings(exclude_current_session=True))
        step.mapper.new_session("b1")
        loops, asked, waited = [], 0, 0
        for i, f in enumerate(corridor_frames["query"]):
            if batches.get(i):
                assert all(k is not None for k in b.add_peer_keyframes(batches[i]))
            frame = DescriptorFrame((5000 + i) * s, "cam", i, f.descriptor, patches=f.patches, local=f.local)
            out = step(frame, Pose(float(i), 0.5, 0.0))  # B's own odometry frame
            if out.recognition.awaiting:
                waited += 1
                for kid in out.recognition.awaiting:  # the owner's answer to a LOCAL_FEATURES request
                    robot, map_id, remote = b.origin(kid)
                    assert (robot, map_id) == ("robot_a", a.map_id)
                    cache[kid] = a.local_features(remote)
                    asked += 1
                out = step.finish(out.recognition, f.local)
            if out.loop is not None:
                loops.append((i, b.origin(out.loop.match.keyframe_id)[2] - 1, out.loop))
        own = len(b.own_ids())
        peer_ids = [b.local_id("robot_a", a.map_id, kf.keyframe_id) for kf in wire]
        interleaved = peer_ids != sorted(peer_ids) or peer_ids[-1] - peer_ids[0] >= len(peer_ids)
    correct = sum(ref in corridor_gt[i] for i, ref, _ in loops)
    print(f"{arrival}: inter-robot closures: {len(loops)}, correct {correct}; candidates waited {waited}, "
          f"features asked {asked}, B's own keyframes {own}")
    assert interleaved == (arrival == "live")
    assert len(loops) >= 5 and correct == len(loops)
    assert all(lc.match.robot_id == "robot_a" and lc.verification is not None and lc.verification.verified
               for _, _, lc in loops)
    # at least one closure per revisited stretch (suppress_window 10: the corridor's 111 frames in ~10)
    assert all(any(abs(ref - g) <= 10 for _, ref, _ in loops for g in corridor_gt[i]) for i in range(len(corridor_gt)))
    assert own == len(corridor_frames["query"]) and asked <= 3 * waited


def test_fleet_settings_are_checked():
    from anyloc_ros.core.config.nodes import FleetSettings
    from anyloc_ros.core.config.params import NodeParameters

    def settings(**values):
        return NodeParameters("mapping_node", values).get(FleetSettings)

    assert settings(robot_id="robot_a", **{"fleet.enable": True}).enable
    with pytest.raises(ConfigError, match="needs robot_id"):
        settings(**{"fleet.enable": True})
    with pytest.raises(ConfigError, match="robot id"):
        settings(robot_id="robot-a")
    with pytest.raises(ConfigError, match="absolute"):
        settings(robot_id="robot_a", **{"fleet.topic": "fleet"})
    with pytest.raises(ConfigError, match="fleet.peers"):
        settings(robot_id="robot_a", **{"fleet.peers": "robot_b,9x"})


def test_a_candidate_waiting_for_a_peer_is_not_rejected(tmp_path):
    """A better-ranked peer keyframe whose features failed and a second still on its way: the
    candidate waits (awaiting), it is not reported rejected (the node would count it so), and
    once the second answers it is decided."""
    from anyloc_ros.core.config.recognition import LoopClosureConfig, VerificationConfig
    from anyloc_ros.core.recognition.recognizer import PlaceRecognizer

    rng = np.random.default_rng(0)
    d = unit(1, 5)[0]
    near = [d + 0.01 * rng.normal(size=16).astype(np.float32) for _ in range(2)]

    def features(seed: int) -> LocalFeatures:
        r = np.random.default_rng(seed)
        desc = r.normal(size=(40, 8)).astype(np.float32)
        return LocalFeatures(r.uniform(0, 60, (40, 2)).astype(np.float32),
                             (desc / np.linalg.norm(desc, axis=1, keepdims=True)).astype(np.float16),
                             np.ones(40, np.float32), (48, 64))

    with PlaceDatabase(tmp_path / "b", SIG) as db:
        ids = db.add_peer_keyframes([peer(1, d=near[0]), peer(2, d=near[1])])
        answers = {ids[0]: features(1)}  # the first answered (and it will not verify); the second not yet
        rec = PlaceRecognizer(db, LoopClosureConfig(consistency=1, min_score=0.0, exclude_recent_count=0,
                                                    exclude_recent_s=0.0, suppress_window=0),
                              verification=VerificationConfig(), peer_features=answers.get)
        query = features(7)
        result = rec.query(d, 100 * 10**9, local=query)
        assert result.loop is None and result.candidate is not None
        assert result.awaiting == [ids[1]] and result.rejected is None
        answers[ids[1]] = features(2)
        done = rec.finish(result, query)
        assert done.loop is None and done.rejected is not None and not done.rejected.verified


def test_a_feature_request_that_timed_out_is_asked_again_later(monkeypatch):
    """The recognition node's fleet link: a request nobody answers (the owner's reader not yet
    matched to ours loses it; the owner is busy or gone) lets the waiting candidate go after
    fleet.feature_timeout_s and makes the keyframe featureless (the next-ranked decide) for
    RETRY_AFTER_S, then unknown again: the next candidate on it asks again, and an answer is
    taken. Before, a timed-out keyframe stayed featureless for good (until 256 others pushed
    it out of the cache)."""
    from types import SimpleNamespace

    from anyloc_ros.msg import FleetFeatures

    from anyloc_ros.core.config.nodes import FleetSettings
    from anyloc_ros.nodes import fleet as link_module
    from anyloc_ros.nodes.diagnostics import RateStats
    from anyloc_ros.nodes.fleet import NO_FEATURES, FleetRecognitionLink

    clock = [100.0]
    monkeypatch.setattr(link_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    sent, finished = [], []

    class Node:  # what the link uses of the recognition node
        def create_publisher(self, *_):
            return SimpleNamespace(publish=sent.append)

        def create_subscription(self, *_):
            pass

        def create_timer(self, *_):
            pass

        def database(self):
            return SimpleNamespace(origin=lambda kid: ("robot_a", "map_a", kid + 1000),
                                   local_id=lambda robot, map_id, remote: remote - 1000)

        def finish_waiting(self, result, frame, header, waited):
            finished.append((result, waited))

    settings = FleetSettings(robot_id="robot_b", feature_timeout_s=2.0)
    link = FleetRecognitionLink(Node(), settings, RateStats())
    db = Node().database()
    link.ask(db, SimpleNamespace(awaiting=[7]), None, None)
    assert [(m.to_robot, m.keyframe_id) for m in sent] == [("robot_a", 1007)] and link.features(7) is None
    clock[0] += 2.1  # no answer: the candidate is let go, keyframe 7 featureless for now
    link._expire()
    assert link.features(7) is NO_FEATURES and not link.waiting and not finished
    clock[0] += FleetRecognitionLink.RETRY_AFTER_S - 0.5
    link._expire()
    assert link.features(7) is NO_FEATURES  # the recogniser does not wait on it (not awaiting)
    clock[0] += 0.5
    link._expire()
    assert link.features(7) is None  # unknown again
    link.ask(db, SimpleNamespace(awaiting=[7]), "frame", None)
    assert len(sent) == 2 and sent[1].keyframe_id == 1007
    answer = FleetFeatures(from_robot="robot_a", to_robot="robot_b", map_id="map_a", keyframe_id=1007, found=False)
    link._on_features(answer)
    assert link.features(7) is NO_FEATURES and len(finished) == 1  # answered (no features there): decided
    clock[0] += 10 * FleetRecognitionLink.RETRY_AFTER_S
    link._expire()
    assert link.features(7) is NO_FEATURES  # an answer is kept: never asked again
