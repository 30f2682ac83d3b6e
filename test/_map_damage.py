"""The damaged-map sweep of test_fuzz.py, importable by worker processes (the sweep runs on
every core: each worker damages its share of the cases in its own copy of the map)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

MAP_FILES = ("map.sqlite", "index.faiss", "index.json")
SIGNATURE = {"backbone": "t", "dim": 16}


def make_map(path: Path) -> np.ndarray:
    """A 40-keyframe map; returns its unit descriptors (keyframe id i+1 holds row i)."""
    from anyloc_ros.core.map.database import PlaceDatabase

    x = _descriptors()
    with PlaceDatabase(path, SIGNATURE) as db:
        db.add_many(x, list(range(40)))
    return x


def snapshot(db) -> dict[str, dict[int, object]]:
    """Everything a map returns per keyframe: the pristine content the damaged copies are held to."""
    ids = db.ids().tolist()
    return {"keyframes": {k.id: k for k in db.keyframes()},
            "descriptors": dict(zip(ids, db.descriptors(ids), strict=True)),
            "patches": {i: db.patches(i) for i in ids}, "thumbnail": {i: db.thumbnail(i) for i in ids},
            "local_features": {i: db.local_features(i) for i in ids}}


def altered(db, pristine: dict[str, dict[int, object]], queries: np.ndarray) -> list[str]:
    """What an opened (damaged) map returned that is not the pristine content and was not
    reported damaged (`db.damaged`): the stricter rule, nothing altered is ever returned."""
    bad: list[str] = []

    def check(kid: int, what: str, same: bool) -> None:
        if not same and kid not in db.damaged:
            bad.append(f"keyframe {kid}: altered {what} returned")

    def equal(a: object, b: object) -> bool:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.shape == b.shape and \
                np.array_equal(a, b, equal_nan=True)
        if hasattr(a, "keypoints"):  # LocalFeatures
            return hasattr(b, "keypoints") and all(equal(getattr(a, f), getattr(b, f)) for f in
                                                   ("keypoints", "descriptors", "image_size", "camera_matrix",
                                                    "camera_mount", "depths"))
        return a == b

    kfs = pristine["keyframes"]
    for k in db.keyframes():
        check(k.id, "keyframe row", k.id in kfs and k == kfs[k.id])
    for q in queries:
        for m in db.search(q, 5)[0]:
            p = kfs.get(m.keyframe_id)
            check(m.keyframe_id, "search result", p is not None and (m.session, m.stamp_ns, m.frame_id, m.pose) ==
                  (p.session, p.stamp_ns, p.frame_id, p.pose) and
                  abs(m.score - float(q @ pristine["descriptors"][m.keyframe_id])) < 1e-4)
    ids = sorted(kfs)
    for kid, d in zip(ids, db.descriptors(ids), strict=True):
        check(kid, "descriptor", not np.isfinite(d).all() or np.array_equal(d, pristine["descriptors"][kid]))
    for kid in ids:
        for what in ("patches", "thumbnail", "local_features"):
            got = getattr(db, what)(kid)
            check(kid, what, got is None or equal(got, pristine[what][kid]))
    return bad


def damages(target: str, size: int) -> Iterator[tuple[str, Callable[[bytes], bytes] | None]]:
    """Every position of the file damaged, deterministically: each byte inverted (index.json) or
    each 8-byte word (the index and the database: every byte is covered in a time CI can afford;
    test_field_map.py inverts every single byte of map.sqlite for a follower, and of its header
    page for a writer), truncation at every page (SQLite) or word boundary, the file zeroed, and
    the file deleted."""
    bytewise = size if target == "index.json" else 0
    for i in range(bytewise):
        yield f"invert byte {i}", lambda b, i=i: b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]
    for i in range(bytewise, size, 8):
        yield f"invert bytes {i}-{i + 7}", lambda b, i=i: b[:i] + bytes(x ^ 0xFF for x in b[i:i + 8]) + b[i + 8:]
    for cut in range(0, size, {"map.sqlite": 512, "index.faiss": 8}.get(target, 1)):
        yield f"truncate at {cut}", lambda b, cut=cut: b[:cut]
    yield "zeroed", lambda b: bytes(len(b))
    yield "deleted", None


def sweep(src: str, work: str, target: str, worker: int, workers: int) -> tuple[int, int, list[str]]:
    """Damage `target` in a copy of the map at `src` in each of this worker's cases and open it.

    Returns (cases, refused with MapError, failures): a failure is any other exception, a
    MapError that does not name the damaged file, or a map that opens and then misbehaves
    (index damage must be detected and the index rebuilt from SQLite, losing nothing) or returns
    content that is not the pristine map's without reporting that keyframe damaged."""
    from anyloc_ros.core.errors import MapError
    from anyloc_ros.core.map.database import PlaceDatabase

    logging.disable(logging.CRITICAL)  # thousands of expected "damaged" reports
    src_dir, d = Path(src), Path(work)
    pristine = {name: (src_dir / name).read_bytes() for name in MAP_FILES}
    x = _descriptors()
    with PlaceDatabase(src_dir, follower=True) as db:
        content = snapshot(db)
    d.mkdir(parents=True, exist_ok=True)
    (d / "map.lock").write_bytes((src_dir / "map.lock").read_bytes())
    f = d / target
    failures: list[str] = []
    cases = refused = 0
    for n, (what, damage) in enumerate(damages(target, len(pristine[target]))):
        if n % workers != worker:
            continue
        cases += 1
        for name, data in pristine.items():
            (d / name).write_bytes(data)
        for extra in d.iterdir():  # WAL/SHM files a previous open may have left
            if extra.name not in (*MAP_FILES, "map.lock"):
                extra.unlink()
        if damage is None:
            f.unlink()
        else:
            f.write_bytes(damage(pristine[target]))
        try:
            db = PlaceDatabase(d, SIGNATURE)
        except MapError as exc:
            refused += 1
            if target != "map.sqlite" or str(f) not in str(exc):
                failures.append(f"{what}: MapError {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - the sweep's point: nothing else may escape
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
            continue
        try:
            ids = set(db.ids().tolist())
            failures += [f"{what}: {a}" for a in altered(db, content, x[:3])]
            if target != "map.sqlite":
                lost = set(range(1, 41)) - ids
                if lost:
                    failures.append(f"{what}: keyframes lost {sorted(lost)}")
                for kid in (1, 17, 40):
                    got = db.search(x[kid - 1], 1)[0]
                    if got[0].keyframe_id != kid or abs(got[0].score - 1.0) > 1e-4:
                        failures.append(f"{what}: keyframe {kid} searched as {got[0]}")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{what}: opened, then {type(exc).__name__}: {exc}")
        finally:
            db.close()
    return cases, refused, failures


def _descriptors() -> np.ndarray:
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
