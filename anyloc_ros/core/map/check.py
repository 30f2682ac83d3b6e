"""A saved map, inspected offline (`anyloc map info` / `anyloc map check`): what it holds and
whether every row and the index are intact. Opened as a follower, so it reads a map while the
mapping node writes it, and a read-only copy (a backup, a card from a robot) without writing it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..config.map import IndexConfig
from .database import PlaceDatabase
from .index import MapIndex


@dataclass
class MapReport:
    path: str
    keyframes: int
    sessions: list[str]
    cameras: list[str]
    encoder_id: str
    dim: int
    index_type: str
    bytes_on_disk: int
    damaged: dict[int, str] = field(default_factory=dict)  # keyframe id -> the part that failed its checksum
    index_problems: list[str] = field(default_factory=list)
    checksummed: bool = True  # False: written before row checksums and not opened by a writer since
    full: bool = False  # every row and the index were verified (check), not only poses and descriptors (info)
    robot_id: str = ""  # the robot that maps into it (recorded by its mapping node)
    peer_keyframes: int = 0  # other robots' keyframes (fleet, merged maps)
    robots: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.index_problems

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "damaged": {str(k): v for k, v in self.damaged.items()}, "ok": self.ok}


def inspect_map(path: str | Path, full: bool = False) -> MapReport:
    """What the map at `path` holds; its poses and descriptors verified against their checksums,
    and with `full` also patches, thumbnails, local features and the saved index against the rows.
    MapError when it is not a map or cannot be opened."""
    path = Path(path).expanduser()
    with PlaceDatabase(path, follower=True) as db:
        store = db.store
        keyframes = store.keyframes("ORDER BY id")  # checks every row's pose-and-descriptor checksum
        if full:
            ids = db.ids().tolist()
            for kid in ids:
                store.blobs(kid)
                store.local_row(kid)
            store.origins(ids)
        report = MapReport(
            str(path), len(db), db.sessions(), sorted({k.frame_id for k in keyframes}),
            db.encoder_signature.id, db.dim, db.index_config.type,
            sum(f.stat().st_size for f in path.iterdir() if f.is_file()), dict(store.damaged),
            checksummed=store.checksummed, full=full, robot_id=db.robot_id,
            peer_keyframes=store.peer_count(), robots=store.robots())
        if full:
            report.index_problems = _index_problems(db, {k.id for k in keyframes})
    return report


def _index_problems(db: PlaceDatabase, intact: set[int]) -> list[str]:
    """The saved index.faiss against the intact rows: it must be the map's, undamaged, and hold
    each keyframe's own descriptor and nothing else (keyframes added after its last save are
    caught up on open: not a problem)."""
    meta_file = db.path / MapIndex.META
    if not (db.path / MapIndex.FILE).exists():
        return [] if not len(db) else ["no saved index (rebuilt from the rows on open)"]
    try:
        kind = json.loads(meta_file.read_text()).get("type")
    except (OSError, ValueError, AttributeError) as exc:
        return [f"{meta_file.name} is unreadable ({exc}); the index is rebuilt from the rows on open"]
    saved = MapIndex(db.path, db.dim, IndexConfig(type=kind if kind in ("flat", "ivf", "hnsw") else "flat"),
                     db.map_id, writable=False)
    reason, _ = saved.load(db.ids())
    if reason is not None:
        return [f"saved index: {reason}; it is rebuilt from the rows on open"]
    ids = faiss.vector_to_array(saved.index.id_map).astype(np.int64)
    vectors = faiss.downcast_index(saved.index.index).reconstruct_n(0, len(ids))
    problems = []
    held_damaged = sorted(set(ids.tolist()) - intact)
    if held_damaged:
        problems.append(f"saved index holds damaged keyframes {held_damaged[:10]}")
    rows = db.descriptors(ids)
    differ = [int(i) for i, v, r in zip(ids, vectors, rows, strict=True)
              if int(i) in intact and not np.allclose(v, r, atol=1e-6)]
    if differ:
        problems.append(f"saved index vectors differ from their rows for keyframes {differ[:10]}")
    return problems
