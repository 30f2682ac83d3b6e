"""Sequence matching (core/recognition/sequence.py) on synthetic traversals where the answer is known."""

import numpy as np
import pytest

from anyloc_ros.core.config.recognition import LoopClosureConfig, SequenceConfig
from anyloc_ros.core.errors import ConfigError
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.map.traversals import Traversals
from anyloc_ros.core.recognition.recognizer import PlaceRecognizer
from anyloc_ros.core.recognition.sequence import SequenceMatcher

DIM = 64
STEP = 100_000_000  # 10 Hz


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _route(n, seed=0):
    """Places along a route: distinct, neighbours somewhat alike (each shares with the next)."""
    r = np.random.default_rng(seed).normal(size=(n + 1, DIM))
    return _unit(r[1:] + 0.5 * r[:-1])


def _run(db, queries, config):
    rec = PlaceRecognizer(db, LoopClosureConfig(rerank=False), config)
    start = 10**15
    return [rec.query(q, start + i * STEP).matches[0].keyframe_id for i, q in enumerate(queries)]


@pytest.fixture
def aliased(tmp_path):
    """A 300-place map; the query re-traverses places 100..159 at the same speed, and every
    third query frame looks more like some place far away (perceptual aliasing: a different
    place each time, not a second consistent route)."""
    places = _route(300)
    db = PlaceDatabase(tmp_path, {"backbone": "synthetic", "dim": DIM})
    ids = db.add_many(places, [i * STEP for i in range(300)])
    rng = np.random.default_rng(1)
    truth = np.arange(100, 160)
    queries = _unit(places[truth] + 0.1 * rng.normal(size=(60, DIM)))
    fooled = np.arange(60) % 3 == 2
    far = (truth[fooled] + rng.integers(60, 240, fooled.sum())) % 300
    queries[fooled] = _unit(places[far] + 0.1 * rng.normal(size=(fooled.sum(), DIM)))
    yield db, ids, truth, queries, fooled
    db.close()


def test_sequence_is_right_where_single_frames_are_fooled(aliased):
    db, ids, truth, queries, fooled = aliased
    want = np.array(ids)[truth]
    single = _run(db, queries, SequenceConfig(enable=False))
    seq = _run(db, queries, SequenceConfig(enable=True, length=10))
    single_ok, seq_ok = np.abs(np.array(single) - want) <= 1, np.abs(np.array(seq) - want) <= 1
    assert not single_ok[fooled].any()  # every aliased frame fools single-frame search
    warm = np.arange(60) >= 10  # after one sequence length
    assert seq_ok[fooled & warm].all() and seq_ok[warm].all()
    assert seq_ok.mean() > single_ok.mean() + 0.25


def test_velocity_range_must_cover_the_traversal_speed(tmp_path):
    """The map was recorded at twice the query's place rate apart: the query sees every place,
    the map every second one... i.e. 0.5 map keyframes per query frame."""
    places = _route(400, seed=3)
    db = PlaceDatabase(tmp_path, {"backbone": "synthetic", "dim": DIM})
    ids = np.array(db.add_many(places[::2], [i * STEP for i in range(200)]))  # map: every 2nd place
    rng = np.random.default_rng(4)
    truth = np.arange(100, 220)  # query: every place, so 0.5 map keyframes per frame
    queries = _unit(places[truth] + 0.1 * rng.normal(size=(len(truth), DIM)))
    fooled = np.arange(len(truth)) % 3 == 2
    far = (truth[fooled] + rng.integers(80, 320, fooled.sum())) % 400
    queries[fooled] = _unit(places[far] + 0.1 * rng.normal(size=(fooled.sum(), DIM)))
    want = ids[truth // 2]
    warm = np.arange(len(truth)) >= 10

    def accuracy(lo, hi):
        got = _run(db, queries, SequenceConfig(enable=True, length=10, min_velocity=lo, max_velocity=hi))
        return float((np.abs(np.array(got) - want) <= 1)[warm].mean())

    right, wrong = accuracy(0.4, 0.6), accuracy(0.9, 1.1)
    assert right >= 0.95 and right > wrong + 0.2
    db.close()


def _matcher(config, rows):
    """A matcher over the traversals of (id, session, camera, owner's id) rows."""
    t = Traversals()
    t.add(rows)
    return SequenceMatcher(config, t.keys, t.ids_at)


def test_sequences_never_span_sessions():
    """Frames that matched keyframes 8, 9, 10 of session A predict 11 at velocity 1; keyframe 11
    starts session B, so that line counts only the current frame's own similarity."""
    cfg = SequenceConfig(enable=True, length=4, min_velocity=1, max_velocity=1)
    m = _matcher(cfg, [(i, "A" if i <= 10 else "B", "cam", None) for i in range(1, 40)])
    for j, kid in enumerate((8, 9, 10)):
        m.update("cam", j * STEP, np.array([kid, 30]), np.array([0.9, 0.1]))
    best = m.update("cam", 3 * STEP, np.array([11, 30]), np.array([0.5, 0.1]))
    eleven = next(r for r in best if r.keyframe_id == 11)
    assert eleven.score == pytest.approx((0.5 + 3 * 0.1) / 4)  # three floors, no help from session A
    m = _matcher(cfg, [(i, "A", "cam", None) for i in range(1, 40)])  # one session: a strong sequence
    for j, kid in enumerate((8, 9, 10)):
        m.update("cam", j * STEP, np.array([kid, 30]), np.array([0.9, 0.1]))
    best = m.update("cam", 3 * STEP, np.array([11, 30]), np.array([0.5, 0.1]))
    assert best[0].keyframe_id == 11 and best[0].score == pytest.approx((0.5 + 3 * 0.9) / 4)


def test_lines_follow_a_traversal_whose_ids_interleave_with_others():
    """Another robot's keyframes (owner ids 1, 2, 3, ...) stored between the robot's own, unevenly
    (ids 3, 4, 7, 8, 9, 12, ... here), and a second camera's: a line at velocity 1 follows the peer's
    traversal, as it follows contiguous ids. By id, no velocity in 0.8-1.2 fits those strides."""
    rows, peer = [], []
    kid = 0
    for r in range(1, 31):  # peer keyframe r, then 0-2 of the robot's own on two cameras
        kid += 1
        rows.append((kid, "robot_a:s1", "camera", r))
        peer.append(kid)
        for c in range(r % 3):
            kid += 1
            rows.append((kid, "s2", ("front", "rear")[c], None))
    m = _matcher(SequenceConfig(enable=True, length=5), rows)
    for j in range(4):  # frames 0-3 saw the peer's places 10-13 best, with decoys
        m.update("cam", j * STEP, np.array([peer[9 + j], rows[-1][0]]), np.array([0.9, 0.3]))
    best = m.update("cam", 4 * STEP, np.array([peer[13], peer[2]]), np.array([0.5, 0.55]))
    assert best[0].keyframe_id == peer[13]  # place 14: the line 10..14 along the peer's traversal
    assert best[0].score == pytest.approx((0.5 + 4 * 0.9) / 5)
    # the same ids read as positions (the old rule): the line breaks, the decoy wins on its single frame
    by_id = SequenceMatcher(SequenceConfig(enable=True, length=5), lambda ids: np.asarray(ids, np.int64),
                            lambda keys: np.asarray(keys, np.int64))
    for j in range(4):
        by_id.update("cam", j * STEP, np.array([peer[9 + j], rows[-1][0]]), np.array([0.9, 0.3]))
    assert by_id.update("cam", 4 * STEP, np.array([peer[13], peer[2]]), np.array([0.5, 0.55]))[0].keyframe_id != peer[13]


def test_keyframes_caught_up_late_take_their_place_in_the_traversal():
    """A catch-up stores a peer's older keyframes after its newer ones (higher local ids): they
    still sit before them along its traversal, and the newer ones move along at once."""
    t = Traversals()
    t.add([(1, "robot_a:s", "cam", 20), (2, "robot_a:s", "cam", 21), (3, "own", "cam", None)])
    assert [t.index(i) for i in (1, 2, 3)] == [0, 1, 0]
    t.add([(4 + k, "robot_a:s", "cam", 10 + k) for k in range(5)])  # owner ids 10-14, caught up
    assert [t.index(i) for i in (4, 8, 1, 2)] == [0, 4, 5, 6]
    keys = t.keys([1, 3, 99])
    assert list(t.ids_at(keys)) == [1, 3, -1] and keys[2] == -1
    t.remove([4])
    assert t.index(1) == 4 and t.index(4) == -1 and t.ids_at([keys[0]])[0] == 2  # index 5 is now 2


def test_clock_jumps_and_pauses_start_a_new_sequence():
    m = _matcher(SequenceConfig(enable=True, length=5, max_gap_s=2.0), [(i, "A", "cam", None) for i in range(1, 40)])
    for j in range(4):
        m.update("cam", 10 * STEP + j * STEP, np.array([5 + j]), np.array([0.9]))
    assert m.update("cam", 14 * STEP, np.array([9]), np.array([0.9]))[0].frames == 5
    assert m.update("cam", 3 * STEP, np.array([9]), np.array([0.9]))[0].frames == 1  # time went back
    assert m.update("cam", 4 * STEP, np.array([10]), np.array([0.9]))[0].frames == 2
    assert m.update("cam", 4 * STEP + 30 * 10**9, np.array([10]), np.array([0.9]))[0].frames == 1  # a 30 s pause
    assert m.update("other", 0, np.array([3]), np.array([0.9]))[0].frames == 1  # cameras are separate


def test_cost_is_bounded_by_candidates_not_map_size():
    """Work per query depends on length, velocities and top-k only: the key-to-id lookup (the map
    is reached twice per query) sees at most k·(1 + (L-1)·V) candidates (460 here), for a map of
    100k keyframes as for 1k: the same candidates at the far end of a 100k map cost the same."""
    cfg = SequenceConfig(enable=True, length=10, velocity_steps=5)
    k = 10
    bound = k * (1 + (cfg.length - 1) * cfg.velocity_steps)
    work = {}
    for map_size in (1_000, 100_000):
        t = Traversals()
        t.add((i, "A", "cam", None) for i in range(1, map_size + 1))
        looked_up: list[int] = []

        def ids_at(keys, looked_up=looked_up, t=t):
            looked_up.append(len(keys))
            return t.ids_at(keys)

        m = SequenceMatcher(cfg, t.keys, ids_at)
        rng = np.random.default_rng(0)
        for j in range(30):
            m.update("cam", j * STEP, rng.choice(1_000, k, replace=False) + 1 + (map_size - 1_000), rng.random(k))
        assert bound * 0.5 < max(looked_up) <= bound
        assert len(m._history["cam"]) == cfg.length  # memory: the last L frames' top-k only
        work[map_size] = looked_up
    assert work[1_000] == work[100_000]


def test_sequence_settings_are_checked():
    with pytest.raises(ConfigError, match="min_velocity <= max_velocity"):
        SequenceMatcher(SequenceConfig(min_velocity=2.0, max_velocity=1.0), lambda ids: ids, lambda keys: keys)
