"""PlaceDatabase: the robot's map of keyframes and their place descriptors.

A map is a directory:

    map.sqlite    source of truth: keyframes (id, session, stamp, frame_id, pose, descriptor,
                  optional compact patch features), sessions, and the encoder signature
    index.faiss   search index derived from map.sqlite (flat / IVF / HNSW), always rebuildable
    index.json    what index.faiss holds (type, ids), so a stale index is detected

Durability: SQLite runs in WAL mode with synchronous=FULL, and each `add` is its own
transaction, so a keyframe is on disk once `add` returns (`durable=False` trades that for
speed: then it is on disk after `flush()`). The index is written atomically (write aside,
fsync, rename) on `save()`, `close()` and every `IndexConfig.save_every` additions; when it is
missing, damaged or behind the database on open, it is caught up or rebuilt from SQLite.

Several processes may open one map: one writer (the mapping node) and any number of
followers (`follower=True`, e.g. the recognition node), which never write and pick up the
writer's new keyframes with `refresh()`.

A map records the signature of the encoder that made its descriptors and refuses
descriptors from any other encoder (`MapError` naming the fields that differ).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, FeatureDimensionError, MapError
from .fileio import atomic_path
from .geometry import Pose

log = logging.getLogger(__name__)

FORMAT = "anyloc_ros.map/1"
# Encoder signature fields that must match for descriptors to be comparable.
ENCODER_KEYS = ("backbone", "model", "layer", "facet", "aggregation", "vocabulary", "pca", "dim")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keyframes (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL REFERENCES sessions(id),
    stamp_ns INTEGER NOT NULL,
    frame_id TEXT NOT NULL DEFAULT '',
    px REAL, py REAL, pz REAL, qx REAL, qy REAL, qz REAL, qw REAL,
    descriptor BLOB NOT NULL,
    patches BLOB,
    patches_shape TEXT,
    thumbnail BLOB
);
CREATE INDEX IF NOT EXISTS keyframes_session ON keyframes(session, id);
"""


@dataclass
class IndexConfig:
    """Search index of a map. Cosine similarity = inner product of L2-normalised descriptors.

    type: "flat" (exact, default), "ivf" (inverted lists; trained once `ivf_min_train`
    keyframes exist, exact flat search until then) or "hnsw" (graph; no training).
    """

    type: str = "flat"
    nlist: int = 0  # IVF lists; 0 = 4·sqrt(n) at training time
    nprobe: int = 16
    ivf_min_train: int = 0  # 0 = 39·nlist (faiss's minimum for a good k-means)
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    use_gpu: str = "auto"  # auto | true | false (GPU faiss when available; flat and IVF only)
    save_every: int = 1000  # write the index after this many additions (0 = only on save/close)

    def validate(self) -> None:
        if self.type not in ("flat", "ivf", "hnsw"):
            raise ConfigError(f"index type must be flat, ivf or hnsw, got {self.type!r}")
        if self.use_gpu not in ("auto", "true", "false"):
            raise ConfigError(f"index use_gpu must be auto, true or false, got {self.use_gpu!r}")
        for name in ("nlist", "nprobe", "ivf_min_train", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "save_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"index {name} must be >= 0")


@dataclass
class Keyframe:
    id: int
    session: str
    stamp_ns: int
    frame_id: str = ""
    pose: Pose | None = None


@dataclass
class Match:
    """One search result: a map keyframe and its similarity to the query."""

    keyframe_id: int
    score: float
    session: str = ""
    stamp_ns: int = 0
    frame_id: str = ""
    pose: Pose | None = None
    rerank_score: float | None = None


@dataclass
class MapStats:
    keyframes: int
    sessions: list[str]
    current_session: str
    dim: int
    index_type: str
    index_trained: bool
    encoder: dict[str, Any] = field(default_factory=dict)


class PlaceDatabase:
    DB_FILE = "map.sqlite"
    INDEX_FILE = "index.faiss"
    INDEX_META = "index.json"

    def __init__(
        self,
        path: str | Path,
        encoder_signature: dict[str, Any] | None = None,
        index: IndexConfig | None = None,
        create: bool = True,
        durable: bool = True,
        session: str | None = None,
        follower: bool = False,
    ) -> None:
        self.path = Path(path).expanduser()
        self.follower = follower
        self.index_config = index or IndexConfig()
        self.index_config.validate()
        self.durable = durable
        self._lock = threading.RLock()
        self._adds_since_save = 0
        db_file = self.path / self.DB_FILE
        self._existed = db_file.exists()
        if not self._existed:
            if not create or follower:
                raise MapError(f"no map at {self.path} (missing {db_file})")
            if encoder_signature is None:
                raise MapError(f"creating a map at {self.path} needs the encoder signature")
            self.path.mkdir(parents=True, exist_ok=True)
        self._conn = self._connect(db_file)
        self._gpu = None
        self._index = None
        self._trained = False
        try:
            self._init_meta(encoder_signature)
            self._load_or_rebuild_index()
            self._last_id = int(self._all_ids().max(initial=0))
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise MapError(f"map database {db_file} is corrupt ({exc}); restore it from a backup") from exc
        # The current session: the one asked for, else the newest; a new map gets one on first add.
        self.session = self.sessions()[-1] if self.sessions() else ""
        if session and not follower:
            self.new_session(session)

    @classmethod
    def exists(cls, path: str | Path) -> bool:
        return (Path(path).expanduser() / cls.DB_FILE).is_file()

    # ---------------------------------------------------------------- storage
    def _connect(self, db_file: Path) -> sqlite3.Connection:
        if self._existed and db_file.stat().st_size == 0:
            raise MapError(f"map database {db_file} is empty or truncated (no map metadata); restore it from a "
                           "backup, or remove the map directory to start a new map")
        try:
            conn = sqlite3.connect(db_file, check_same_thread=False, isolation_level=None, timeout=30)
            # Damaged text must not raise deep inside a query later: show it, replaced.
            conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]  # before anything writes to the file
            if check != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise MapError(f"map database {db_file} is corrupt or not a map ({exc}); restore it from a backup") from exc
        return conn

    def _meta(self, key: str) -> Any:
        row = self._conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def _set_meta(self, key: str, value: Any) -> None:
        self._conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    def _init_meta(self, signature: dict[str, Any] | None) -> None:
        fmt = self._meta("format")
        if fmt is None:
            if self._existed:  # e.g. a zero-length file after a power cut: never start over silently
                raise MapError(f"map database {self.path / self.DB_FILE} is empty or truncated (no map metadata); "
                               "restore it from a backup, or remove the map directory to start a new map")
            if signature is None:
                raise MapError(f"{self.path / self.DB_FILE} has no map metadata")
            if not signature.get("dim"):
                raise MapError("the encoder signature must include the descriptor dimension 'dim'")
            with self._conn:
                self._conn.execute("BEGIN")
                self._set_meta("format", FORMAT)
                self._set_meta("encoder", signature)
                self._set_meta("created", time.time())
        elif fmt != FORMAT:
            raise MapError(f"{self.path / self.DB_FILE} has map format {fmt!r}; this version reads {FORMAT!r}")
        stored = self._meta("encoder") or {}
        if signature is not None:
            diffs = [
                f"{k}: map {stored.get(k)!r} vs encoder {signature.get(k)!r}"
                for k in ENCODER_KEYS
                if stored.get(k) != signature.get(k)
            ]
            if diffs:
                raise MapError(
                    f"map {self.path} was built with another encoder (" + "; ".join(diffs) + "); "
                    "use the map's encoder config or start a new map"
                )
        self.encoder_signature = stored
        self.dim = int(stored["dim"])

    # ---------------------------------------------------------------- sessions
    def sessions(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT id FROM sessions ORDER BY created, rowid")]

    def new_session(self, session_id: str | None = None) -> str:
        """Start a new traversal in this map; later `add` calls tag keyframes with it."""
        if self.follower:
            raise MapError(f"map {self.path} is open as a follower (read-only)")
        sid = session_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO sessions(id, created) VALUES (?, ?)", (sid, time.time()))
            self.session = sid
        return sid

    # ---------------------------------------------------------------- adding
    def validate_descriptor(self, d: np.ndarray) -> np.ndarray:
        """The descriptor as a unit float32 vector, or FeatureDimensionError (wrong dimension, NaN/inf, zero)."""
        d = np.asarray(d, dtype=np.float32).reshape(-1)
        if d.shape[0] != self.dim:
            raise FeatureDimensionError(f"descriptor has {d.shape[0]} dimensions, the map holds {self.dim}-D descriptors")
        if not np.isfinite(d).all():
            raise FeatureDimensionError("descriptor contains NaN or inf")
        n = float(np.linalg.norm(d))
        if n == 0.0:
            raise FeatureDimensionError("descriptor is all zeros")
        return d / n

    def add(
        self,
        descriptor: np.ndarray,
        stamp_ns: int,
        frame_id: str = "",
        pose: Pose | None = None,
        session: str | None = None,
        patches: np.ndarray | None = None,
        thumbnail: bytes | None = None,
    ) -> int:
        """Add one keyframe; returns its id. Durable when this returns (unless durable=False)."""
        return self.add_many([descriptor], [stamp_ns], [frame_id], [pose], session, [patches], [thumbnail])[0]

    def add_many(
        self,
        descriptors: Sequence[np.ndarray] | np.ndarray,
        stamps_ns: Sequence[int],
        frame_ids: Sequence[str] | None = None,
        poses: Sequence[Pose | None] | None = None,
        session: str | None = None,
        patches: Sequence[np.ndarray | None] | None = None,
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> list[int]:
        """Add keyframes in one transaction; returns their ids."""
        if self.follower:
            raise MapError(f"map {self.path} is open as a follower (read-only); only the writer adds keyframes")
        n = len(stamps_ns)
        descs = np.stack([self.validate_descriptor(d) for d in descriptors]) if n else np.zeros((0, self.dim), np.float32)
        frame_ids = frame_ids or [""] * n
        poses = poses or [None] * n
        patches = patches or [None] * n
        thumbnails = thumbnails or [None] * n
        with self._lock:
            sid = session or self.session or self.new_session()
            if sid not in self.sessions():
                self._conn.execute("INSERT INTO sessions(id, created) VALUES (?, ?)", (sid, time.time()))
            rows = []
            for i in range(n):
                p = poses[i]
                pv = p.as_tuple() if p is not None else (None,) * 7
                pa = patches[i]
                pb = None if pa is None else np.ascontiguousarray(pa, dtype=np.float16).tobytes()
                ps = None if pa is None else json.dumps(list(np.shape(pa)))
                rows.append((sid, int(stamps_ns[i]), frame_ids[i], *pv, descs[i].tobytes(), pb, ps, thumbnails[i]))
            ids = []
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    cur = self._conn.execute(
                        "INSERT INTO keyframes(session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw, descriptor, "
                        "patches, patches_shape, thumbnail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                        r,
                    )
                    ids.append(int(cur.lastrowid))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._index_add(descs, np.array(ids, dtype=np.int64))
            self._last_id = max([self._last_id, *ids])
            self._adds_since_save += n
            if self.index_config.save_every and self._adds_since_save >= self.index_config.save_every:
                self.save_index()
        return ids

    # ---------------------------------------------------------------- index
    def _new_index(self, n_train: int = 0) -> Any:
        return build_index(self.dim, self.index_config, n_train)

    def _ivf_threshold(self) -> int:
        cfg = self.index_config
        if cfg.ivf_min_train:
            return cfg.ivf_min_train
        return 39 * (cfg.nlist or 64)

    def _maybe_gpu(self, index: Any) -> Any:
        import faiss

        cfg = self.index_config
        if cfg.use_gpu == "false" or cfg.type == "hnsw":
            return index
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if ngpu == 0:
            if cfg.use_gpu == "true":
                log.warning("index use_gpu=true but faiss sees no GPU; searching on the CPU")
            return index
        try:
            self._gpu = self._gpu or faiss.StandardGpuResources()
            return faiss.index_cpu_to_gpu(self._gpu, 0, index)
        except Exception as exc:  # pragma: no cover - needs a GPU build
            log.warning("could not move the index to the GPU (%s); searching on the CPU", exc)
            return index

    def _cpu_index(self) -> Any:
        import faiss

        if self._gpu is not None and self._index is not None:  # pragma: no cover - needs a GPU build
            return faiss.index_gpu_to_cpu(self._index)
        return self._index

    def _index_add(self, descs: np.ndarray, ids: np.ndarray) -> None:
        if len(ids) == 0:
            return
        if self.index_config.type == "ivf" and not self._trained and len(self) >= self._ivf_threshold():
            self.reindex()  # enough keyframes to train: rebuild as IVF, includes these
            return
        self._index.add_with_ids(np.ascontiguousarray(descs, dtype=np.float32), ids)

    def _all_ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self._conn.execute("SELECT id FROM keyframes ORDER BY id")), dtype=np.int64)

    def _iter_descriptors(self, ids: np.ndarray | None = None, chunk: int = 4096) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        if ids is None:
            cur = self._conn.execute("SELECT id, descriptor FROM keyframes ORDER BY id")
            while rows := cur.fetchmany(chunk):
                yield (np.array([r[0] for r in rows], np.int64),
                       np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), self.dim))
            return
        for s in range(0, len(ids), chunk):
            part = ids[s : s + chunk]
            yield part, self.descriptors(part)

    def _finite_rows(self, ids: np.ndarray, descs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(descs).all(axis=1)
        if not ok.all():
            log.error("map %s: %d keyframes have damaged descriptors (%s...); they are left out of the index",
                      self.path, int((~ok).sum()), ids[~ok][:5].tolist())
        return ids[ok], descs[ok]

    def reindex(self) -> None:
        """Rebuild the search index from SQLite (and train it, for IVF with enough keyframes)."""
        with self._lock:
            n = len(self)
            train = self.index_config.type == "ivf" and n >= self._ivf_threshold()
            cpu = self._new_index(n_train=n if train else 0)
            if train:
                ids = self._all_ids()
                sample = ids if n <= 100_000 else np.sort(np.random.default_rng(0).choice(ids, 100_000, replace=False))
                cpu.index.train(self.descriptors(sample))
            for ids, descs in self._iter_descriptors():
                cpu.add_with_ids(*self._finite_rows(ids, descs)[::-1])
            self._trained = train
            self._index = self._maybe_gpu(cpu)
            self.save_index()

    def _load_or_rebuild_index(self) -> None:
        import faiss

        index_file = self.path / self.INDEX_FILE
        meta_file = self.path / self.INDEX_META
        reason = None
        if not index_file.exists():
            reason = "no index file" if len(self) else None
        else:
            try:
                meta = json.loads(meta_file.read_text())
                if meta.get("sha256") != _sha256(index_file):
                    raise ValueError("checksum mismatch (damaged or written by another process)")
                cpu = faiss.read_index(str(index_file))
                if meta.get("type") != self.index_config.type or cpu.d != self.dim:
                    reason = f"index is {meta.get('type')} {cpu.d}-D, config asks for {self.index_config.type} {self.dim}-D"
                else:
                    have = faiss.vector_to_array(cpu.id_map).astype(np.int64)
                    want = self._all_ids()
                    missing = np.setdiff1d(want, have, assume_unique=True)
                    if len(have) != len(np.unique(have)) or len(np.setdiff1d(have, want)):
                        reason = "index holds keyframes the database does not"
                    else:
                        self._trained = bool(meta.get("trained", False))
                        self._index = self._maybe_gpu(cpu)
                        if len(missing):
                            log.info("index %s is %d keyframes behind the database; adding them", index_file, len(missing))
                            for ids, descs in self._iter_descriptors(missing):
                                self._index.add_with_ids(*self._finite_rows(ids, descs)[::-1])
                            self.save_index()
                        return
            except Exception as exc:  # faiss raises RuntimeError on damaged files, json ValueError
                reason = f"index file {index_file} is unreadable ({str(exc).splitlines()[0][:200]})"
        if reason:
            log.warning("map %s: %s; rebuilding the index from %s", self.path, reason, self.DB_FILE)
        self._index = None
        self.reindex()

    def save_index(self) -> None:
        """Write index.faiss + index.json atomically (the database is already durable)."""
        import faiss

        if self.follower:
            return  # only the writer owns the index files
        with self._lock:
            cpu = self._cpu_index()
            with atomic_path(self.path / self.INDEX_FILE) as tmp:
                faiss.write_index(cpu, str(tmp))
                digest = _sha256(tmp)
            meta = {"type": self.index_config.type, "trained": self._trained, "ntotal": int(cpu.ntotal), "dim": self.dim,
                    "sha256": digest}
            with atomic_path(self.path / self.INDEX_META) as tmp:
                tmp.write_text(json.dumps(meta))
            self._adds_since_save = 0

    # ---------------------------------------------------------------- queries
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM keyframes").fetchone()[0])

    def ids(self, session: str | None = None) -> np.ndarray:
        if session is None:
            return self._all_ids()
        rows = self._conn.execute("SELECT id FROM keyframes WHERE session=? ORDER BY id", (session,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def descriptors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = [int(i) for i in ids]
        out = np.empty((len(ids), self.dim), np.float32)
        pos = {kid: j for j, kid in enumerate(ids)}
        for s in range(0, len(ids), 900):  # SQLite's bound-parameter limit
            part = ids[s : s + 900]
            q = f"SELECT id, descriptor FROM keyframes WHERE id IN ({','.join('?' * len(part))})"
            for kid, blob in self._conn.execute(q, part):
                out[pos[kid]] = np.frombuffer(blob, np.float32)
        return out

    def patches(self, keyframe_id: int) -> np.ndarray | None:
        row = self._conn.execute("SELECT patches, patches_shape FROM keyframes WHERE id=?", (int(keyframe_id),)).fetchone()
        if row is None or row[0] is None:
            return None
        return np.frombuffer(row[0], np.float16).reshape(json.loads(row[1])).astype(np.float32)

    def get(self, keyframe_id: int) -> Keyframe:
        row = self._conn.execute(
            "SELECT id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw FROM keyframes WHERE id=?",
            (int(keyframe_id),),
        ).fetchone()
        if row is None:
            raise KeyError(keyframe_id)
        return _keyframe(row)

    def keyframes(self, session: str | None = None) -> list[Keyframe]:
        sql = "SELECT id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw FROM keyframes"
        rows = self._conn.execute(sql + (" WHERE session=? ORDER BY id" if session else " ORDER BY id"),
                                  (session,) if session else ())
        return [_keyframe(r) for r in rows]

    def _selector(self, sessions, exclude_sessions, max_id, exclude_ids) -> Any:
        import faiss

        parts: list[Any] = []
        keep: list[Any] = []  # faiss selectors do not own the arrays / sub-selectors they use
        if max_id is not None:
            parts.append(faiss.IDSelectorRange(0, int(max_id)))
        if sessions is not None:
            ids = np.concatenate([self.ids(s) for s in sessions] or [np.zeros(0, np.int64)])
            keep.append(ids)
            parts.append(faiss.IDSelectorBatch(ids))
        excl = [self.ids(s) for s in (exclude_sessions or [])]
        if exclude_ids is not None:
            excl.append(np.asarray(list(exclude_ids), np.int64))
        if excl:
            ids = np.concatenate(excl)
            keep.append(ids)
            inner = faiss.IDSelectorBatch(ids)
            keep.append(inner)
            parts.append(faiss.IDSelectorNot(inner))
        if not parts:
            return None, keep
        sel = parts[0]
        for p in parts[1:]:
            keep.append(sel)
            sel = faiss.IDSelectorAnd(sel, p)
        keep.extend(parts)
        return sel, keep

    def search(
        self,
        queries: np.ndarray,
        k: int = 5,
        *,
        sessions: Sequence[str] | None = None,
        exclude_sessions: Sequence[str] | None = None,
        max_id: int | None = None,
        exclude_ids: Iterable[int] | None = None,
    ) -> list[list[Match]]:
        """Top-k keyframes by cosine similarity for each query (best first).

        sessions / exclude_sessions restrict the search to, or away from, traversals;
        max_id keeps only keyframes with id < max_id (e.g. to exclude recent ones).
        """
        import faiss

        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.shape[1] != self.dim:
            raise FeatureDimensionError(f"query has {q.shape[1]} dimensions, the map holds {self.dim}-D descriptors")
        if not np.isfinite(q).all():
            raise FeatureDimensionError("query descriptor contains NaN or inf")
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        with self._lock:
            if self._index is None or self._index.ntotal == 0 or k <= 0:
                return [[] for _ in q]
            sel, _keep = self._selector(sessions, exclude_sessions, max_id, exclude_ids)
            params = None
            cfg = self.index_config
            inner = faiss.downcast_index(self._index.index) if self._gpu is None else None
            if isinstance(inner, faiss.IndexHNSW):
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(cfg.hnsw_ef_search, k))
            elif isinstance(inner, faiss.IndexIVF):
                params = faiss.SearchParametersIVF(sel=sel, nprobe=min(cfg.nprobe, inner.nlist))
            elif sel is not None:
                params = faiss.SearchParameters(sel=sel)
            if sel is not None and self._gpu is not None:  # pragma: no cover - GPU indexes take no selector
                return self._search_filtered_exact(q, k, sel)
            scores, ids = self._index.search(q, min(k, self._index.ntotal), params=params)
            return [self._matches(i_row, s_row) for i_row, s_row in zip(ids, scores, strict=True)]

    def _search_filtered_exact(self, q: np.ndarray, k: int, sel: Any) -> list[list[Match]]:  # pragma: no cover
        cpu = self._cpu_index()
        import faiss

        scores, ids = cpu.search(q, min(k, cpu.ntotal), params=faiss.SearchParameters(sel=sel))
        return [self._matches(i, s) for i, s in zip(ids, scores, strict=True)]

    def _matches(self, ids: np.ndarray, scores: np.ndarray) -> list[Match]:
        valid = [(int(i), float(s)) for i, s in zip(ids, scores, strict=True) if i >= 0]
        if not valid:
            return []
        q = ("SELECT id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw FROM keyframes WHERE id IN "
             f"({','.join('?' * len(valid))})")
        info = {r[0]: _keyframe(r) for r in self._conn.execute(q, [i for i, _ in valid])}
        out = []
        for i, s in valid:
            kf = info.get(i)
            if kf is not None:
                out.append(Match(i, s, kf.session, kf.stamp_ns, kf.frame_id, kf.pose))
        return out

    # ---------------------------------------------------------------- maintenance
    def remove(self, ids: Iterable[int]) -> int:
        """Delete keyframes from the map (database first, then the index)."""
        ids = np.asarray(sorted({int(i) for i in ids}), dtype=np.int64)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for s in range(0, len(ids), 900):
                    part = ids[s : s + 900].tolist()
                    self._conn.execute(f"DELETE FROM keyframes WHERE id IN ({','.join('?' * len(part))})", part)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            if self.index_config.type == "hnsw" or self._gpu is not None:
                self.reindex()  # HNSW graphs (and GPU indexes) cannot delete in place
            else:
                import faiss

                self._index.remove_ids(faiss.IDSelectorBatch(ids))
                self.save_index()
        return len(ids)

    def refresh(self) -> list[Keyframe]:
        """Follower: pick up keyframes the writer added since the last call (oldest first)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT id, session, stamp_ns, frame_id, px, py, pz, qx, qy, qz, qw FROM keyframes WHERE id > ? "
                "ORDER BY id", (self._last_id,)).fetchall()
            sessions = self.sessions()
            self.session = sessions[-1] if sessions else ""  # the writer may have started a new one
            if not rows:
                return []
            new = [_keyframe(r) for r in rows]
            ids = np.array([k.id for k in new], np.int64)
            self._index_add(self.descriptors(ids), ids)
            self._last_id = int(ids[-1])
            return new

    def thumbnail(self, keyframe_id: int) -> bytes | None:
        row = self._conn.execute("SELECT thumbnail FROM keyframes WHERE id=?", (int(keyframe_id),)).fetchone()
        return None if row is None else row[0]

    def flush(self) -> None:
        """Make every added keyframe durable (needed only with durable=False) and save the index."""
        if self.follower:
            return
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(FULL)")
            self.save_index()

    def save(self) -> None:
        self.flush()

    def stats(self) -> MapStats:
        return MapStats(len(self), self.sessions(), self.session, self.dim, self.index_config.type,
                        self._trained, dict(self.encoder_signature))

    def close(self) -> None:
        with self._lock:
            if self._conn is None:
                return
            try:
                self.flush()
            finally:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> PlaceDatabase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def build_index(dim: int, cfg: IndexConfig, n_train: int = 0) -> Any:
    """An empty faiss index for `cfg` (inner product on unit vectors), wrapped with keyframe ids.

    IVF is only built when `n_train` vectors are available to train it; before that the
    index is exact flat."""
    import faiss

    if cfg.type == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = cfg.hnsw_ef_construction
        inner.hnsw.efSearch = cfg.hnsw_ef_search
    elif cfg.type == "ivf" and n_train:
        nlist = cfg.nlist or max(1, int(4 * np.sqrt(n_train)))
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.nprobe = min(cfg.nprobe, nlist)
    else:
        inner = faiss.IndexFlatIP(dim)
    return faiss.IndexIDMap2(inner)


def _keyframe(row: Sequence[Any]) -> Keyframe:
    pose = Pose(*row[4:11]) if row[4] is not None else None
    return Keyframe(int(row[0]), row[1], int(row[2]), row[3], pose)


def index_config_from_dict(d: dict[str, Any] | None) -> IndexConfig:
    try:
        cfg = IndexConfig(**(d or {}))
    except TypeError as exc:
        raise ConfigError(f"invalid index config: {exc}") from exc
    cfg.validate()
    return cfg


__all__ = ["PlaceDatabase", "IndexConfig", "Keyframe", "Match", "MapStats", "index_config_from_dict"]
