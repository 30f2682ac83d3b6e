"""Silent damage is detected, not served: every keyframe row carries checksums written with it;
a row that fails them is quarantined (never a match, a pose, patches, keypoints or a thumbnail;
counted; kept on disk), old maps are checksummed by their first writer, and `anyloc map
info/check` report a saved map offline, read-only copies included."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import stat
import subprocess
import sys

import numpy as np
import pytest

from anyloc_ros.core.geometry import Pose
from anyloc_ros.core.map.check import inspect_map
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.types import LocalFeatures

from ..conftest import REPO

SIG = {"backbone": "t", "dim": 16}


def unit(n: int) -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(n, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_map(path, n: int = 10) -> np.ndarray:
    x = unit(n)
    local = [LocalFeatures(np.full((4, 2), i, np.float32), np.ones((4, 8), np.float16), np.ones(4, np.float32),
                           (48, 64), depths=np.full(4, 1.5, np.float32)) for i in range(n)]
    with PlaceDatabase(path, SIG) as db:
        db.add_many(x, [i * 10**9 for i in range(n)], ["cam"] * n, [Pose(float(i), 0.0, 0.0) for i in range(n)],
                    patches=[np.full((4, 3), i, np.float32) for i in range(n)], thumbnails=[b"jpeg%d" % i for i in range(n)],
                    local=local)
    return x


def rot(path, sql: str, *params) -> None:
    """Bit rot SQLite does not notice: a value changed in place, its checksum left as written."""
    conn = sqlite3.connect(path / "map.sqlite")
    conn.execute(sql, params)
    conn.commit()
    conn.close()


def flip(blob: bytes, i: int = 5) -> bytes:
    return blob[:i] + bytes([blob[i] ^ 0x01]) + blob[i + 1:]


@pytest.fixture
def rotten(tmp_path):
    """A 10-keyframe map with one damaged value in each of four keyframes' rows."""
    x = make_map(tmp_path)
    conn = sqlite3.connect(tmp_path / "map.sqlite")
    desc3, = conn.execute("SELECT descriptor FROM keyframes WHERE id=3").fetchone()
    kp7, = conn.execute("SELECT keypoints FROM local_features WHERE id=7").fetchone()
    conn.close()
    rot(tmp_path, "UPDATE keyframes SET descriptor=? WHERE id=3", flip(desc3))
    rot(tmp_path, "UPDATE keyframes SET thumbnail=? WHERE id=5", b"jpeg5" + b"\x00")
    rot(tmp_path, "UPDATE local_features SET keypoints=? WHERE id=7", flip(kp7))
    rot(tmp_path, "UPDATE keyframes SET px=? WHERE id=8", 7.0000001)
    return tmp_path, x


def test_damaged_rows_are_quarantined_and_never_returned(rotten, caplog):
    path, x = rotten
    with caplog.at_level(logging.ERROR), PlaceDatabase(path, follower=True) as db:
        # keyframe 3's descriptor was damaged after the index was saved: the index still finds it,
        # its row fails on reading, it is quarantined and the search answers without it
        got = db.search(x[2], 3)[0]
        assert 3 not in [m.keyframe_id for m in got] and len(got) == 3
        assert db.damaged == {3: "pose and descriptor"}
        assert 3 not in [m.keyframe_id for m in db.search(x[2], 10)[0]]
        assert db.thumbnail(5) is None and db.patches(5) is None and db.thumbnail(4) == b"jpeg3"
        assert db.local_features(7) is None and db.local_features(6).keypoints[0, 0] == 5
        with pytest.raises(KeyError):
            db.get(8)
        assert [k.id for k in db.keyframes()] == [1, 2, 4, 5, 6, 7, 9, 10]
        assert set(db.damaged) == {3, 5, 7, 8} and db.stats().damaged == 4
        assert len(db) == 10  # kept on disk for inspection
    reports = [r.getMessage() for r in caplog.records if "fail their checksum" in r.getMessage()]
    assert len(reports) == 4  # once per keyframe, however often it is read


def test_a_rebuilt_index_leaves_damaged_rows_out(rotten):
    path, x = rotten
    (path / "index.faiss").unlink()
    with PlaceDatabase(path, SIG) as db:  # the writer rebuilds the index from the rows
        assert 3 in db.damaged and 8 in db.damaged
        assert 3 not in [m.keyframe_id for m in db.search(x[2], 10)[0]]
        kid = db.add(x[2], 99 * 10**9)  # the map keeps working
        assert db.search(x[2], 1)[0][0].keyframe_id == kid


def test_maps_from_before_checksums_are_read_then_checksummed_by_their_writer(tmp_path, caplog):
    x = make_map(tmp_path)
    conn = sqlite3.connect(tmp_path / "map.sqlite")  # what a map of the previous version looks like
    for table, column in (("keyframes", "checksum"), ("keyframes", "blobs_checksum"), ("local_features", "checksum")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    conn.execute("DELETE FROM meta WHERE key='checksums'")
    conn.commit()
    conn.close()
    with PlaceDatabase(tmp_path, follower=True) as db:  # read unchecked until a writer opens it
        assert not db.store.checksummed and len(db.keyframes()) == 10 and db.local_features(2) is not None
    with caplog.at_level(logging.INFO), PlaceDatabase(tmp_path, SIG) as db:
        assert db.store.checksummed
    assert any("10 keyframes checksummed now" in r.getMessage() for r in caplog.records)
    desc, = sqlite3.connect(tmp_path / "map.sqlite").execute("SELECT descriptor FROM keyframes WHERE id=2").fetchone()
    rot(tmp_path, "UPDATE keyframes SET descriptor=? WHERE id=2", flip(desc))
    with PlaceDatabase(tmp_path, follower=True) as db:  # from now on, damage is detected
        assert 2 not in [m.keyframe_id for m in db.search(x[1], 3)[0]] and 2 in db.damaged
        assert db.local_features(4).keypoints.shape == (4, 2)


def test_a_checksum_that_went_missing_is_damage(tmp_path):
    make_map(tmp_path)
    rot(tmp_path, "UPDATE keyframes SET checksum=NULL WHERE id=4")
    with PlaceDatabase(tmp_path, SIG) as db:  # the writer does not checksum it anew: the map had checksums
        assert [k.id for k in db.keyframes()].count(4) == 0 and 4 in db.damaged


def test_map_check_reports_rows_and_index_and_exits_1(rotten, tmp_path_factory):
    path, _ = rotten
    report = inspect_map(path, full=True)
    assert not report.ok and set(report.damaged) == {3, 5, 7, 8}
    assert any("holds damaged keyframes [3, 8]" in p for p in report.index_problems)
    info = inspect_map(path)  # info checks poses and descriptors only
    assert set(info.damaged) == {3, 8} and info.cameras == ["cam"] and info.keyframes == 10
    # the CLI, on a read-only copy (a card taken off a robot)
    copy = tmp_path_factory.mktemp("ro") / "map"
    shutil.copytree(path, copy)
    for f in [copy, *copy.iterdir()]:
        f.chmod(f.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = {f.name: f.read_bytes() for f in copy.iterdir()}
    try:
        r = subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", "map", "check", str(copy)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stderr
        for kid in (3, 5, 7, 8):
            assert f"DAMAGED keyframe {kid}" in r.stdout
        r = subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", "map", "info", str(copy), "--json"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert sorted(json.loads(r.stdout)["damaged"]) == ["3", "8"]
        assert {f.name: f.read_bytes() for f in copy.iterdir()} == before  # nothing written
    finally:
        for f in [copy, *copy.iterdir()]:
            f.chmod(f.stat().st_mode | stat.S_IWUSR)


def test_map_check_passes_an_intact_map_and_catches_a_swapped_index_vector(tmp_path):
    import faiss

    make_map(tmp_path)
    r = subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", "map", "check", str(tmp_path)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "every row and the index: intact" in r.stdout, r.stdout + r.stderr
    # an index that passes its own checksum (rewritten with index.json) but holds another vector
    index = faiss.read_index(str(tmp_path / "index.faiss"))
    inner = faiss.downcast_index(index.index)
    vectors = inner.reconstruct_n(0, inner.ntotal)
    vectors[[0, 1]] = vectors[[1, 0]]
    inner.reset()
    inner.add(vectors)
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    meta = json.loads((tmp_path / "index.json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256((tmp_path / "index.faiss").read_bytes()).hexdigest()
    (tmp_path / "index.json").write_text(json.dumps(meta))
    report = inspect_map(tmp_path, full=True)
    assert report.damaged == {} and report.index_problems == [
        "saved index vectors differ from their rows for keyframes [1, 2]"]
