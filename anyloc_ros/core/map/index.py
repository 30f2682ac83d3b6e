"""The search index of a map (`index.faiss` + `index.json`): derived from map.sqlite, always rebuildable.

`index.json` records what `index.faiss` holds: its type, whether it is trained, a sha256 of
the file and the id of the map it was built for. On open the index is used only when all of
these match the map (an index copied from another map, or damaged, or half-written, is
rebuilt from SQLite) and caught up with keyframes added after its last save.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..config.map import IndexConfig
from ..errors import MapError
from ..fileio import atomic_file, describe_os_error, is_regular_file
from .factory import build_index, copy_to_gpu, gpu_count, id_selector, sha256_file

log = logging.getLogger(__name__)


class MapIndex:
    """The faiss index of one map: a CPU index (the one saved, and searched with ID selectors)
    and, with faiss-gpu and `use_gpu`, a replica on the GPU that takes the searches.

    The replica is kept in step on every add and remove; searches restricted by IDs (sessions,
    excluded recent keyframes, max_id: GPU indexes take no selector) fetch more neighbours from
    the replica and filter them on the host, and go to the CPU index only when too few are left.
    """

    FILE = "index.faiss"
    META = "index.json"

    def __init__(self, directory: Path, dim: int, config: IndexConfig, map_id: str | None,
                 writable: bool = True) -> None:
        self.directory, self.dim, self.config, self.map_id = directory, dim, config, map_id
        self.writable = writable  # followers keep an index in memory and never write the files
        self._unsaved = 0  # keyframes added since the index files were last written
        self.index: Any = None  # the CPU index
        self.trained = False
        self.replica: Any = None  # the GPU copy that searches, when there is one

    @property
    def on_gpu(self) -> bool:
        return self.replica is not None

    # ---------------------------------------------------------------- building
    def build(self, n: int, sample: Any, batches: Any) -> None:
        """A fresh index over `batches()` ((ids, descriptors) pairs), trained on `sample()` for IVF."""
        train = self.config.type == "ivf" and n >= self.config.ivf_threshold()
        cpu = build_index(self.dim, self.config, n_train=n if train else 0)
        if train:
            cpu.index.train(sample())
        for ids, descs in batches():
            cpu.add_with_ids(descs, ids)
        self.trained = train
        self.index = cpu
        self._refresh_replica()

    def needs_training(self, count: Callable[[], int]) -> bool:
        """IVF not trained yet and `count()` keyframes to train on (counted only for IVF: it is a query)."""
        return self.config.type == "ivf" and not self.trained and count() >= self.config.ivf_threshold()

    def _refresh_replica(self) -> None:
        """(Re)make the GPU copy of the CPU index, with the configured nprobe (copied with it)."""
        self.replica = None
        if self.index is None:
            return

        inner = faiss.downcast_index(self.index.index)
        if isinstance(inner, faiss.IndexIVF):
            inner.nprobe = min(self.config.nprobe, inner.nlist)
        self.replica = self._to_gpu(self.index)

    def _to_gpu(self, index: Any) -> Any:
        cfg = self.config
        if cfg.use_gpu == "false" or cfg.type == "hnsw":
            return None
        if gpu_count() == 0:
            if cfg.use_gpu == "true":
                log.warning("index use_gpu=true but faiss sees no GPU (faiss-cpu installed?); searching on the CPU")
            return None
        try:
            return copy_to_gpu(index)
        except Exception as exc:  # faiss raises RuntimeError subclasses of its own
            log.warning("could not copy the index to the GPU (%s); searching on the CPU", exc)
            return None

    # ---------------------------------------------------------------- in step with the store
    def open(self, store: Any) -> None:
        """Load the saved index and add what it misses, or rebuild it from `store` (a MapStore)
        when it is missing, damaged or from another map."""
        reason, missing = self.load(store.all_ids())
        if reason is None:
            if len(missing):
                log.info("index of %s is %d keyframes behind the database; adding them", self.directory, len(missing))
                for s in range(0, len(missing), 4096):
                    self.add_from_store(missing[s : s + 4096], store, train=False)
                self.save_quietly()
            return
        if reason != "new map":
            log.warning("map %s: %s; rebuilding the index from %s", self.directory, reason, store.FILE)
        self.rebuild(store)

    def rebuild(self, store: Any) -> None:
        """A fresh index over every keyframe of `store` (trained, for IVF with enough of them)."""
        def sample() -> np.ndarray:
            ids = store.all_ids()
            if len(ids) > 100_000:
                ids = np.sort(np.random.default_rng(0).choice(ids, 100_000, replace=False))
            return self._finite_rows(ids, store.descriptors(ids, self.dim))[1]

        def batches() -> Iterable[tuple[np.ndarray, np.ndarray]]:
            for ids, descs in store.iter_descriptors(self.dim):
                yield self._finite_rows(ids, descs)

        self.build(store.count(), sample, batches)
        self.save_quietly()

    def add(self, descs: np.ndarray, ids: np.ndarray, store: Any, train: bool = True) -> None:
        """Index keyframes just written to `store` (an untrained IVF with enough of them is rebuilt)."""
        if len(ids) == 0:
            return
        if train and self.needs_training(store.count):
            self.rebuild(store)  # enough keyframes to train: rebuild as IVF, includes these
            return
        descs = np.ascontiguousarray(descs, dtype=np.float32)
        self.index.add_with_ids(descs, ids)
        if self.replica is not None:
            self.replica.add_with_ids(descs, ids)
        self._unsaved += len(ids)

    def save_if_due(self) -> None:
        """Write the index once `save_every` keyframes were added since it was last written."""
        if self.config.save_every and self._unsaved >= self.config.save_every:
            self.save_quietly()

    def add_from_store(self, ids: np.ndarray, store: Any, train: bool = True) -> None:
        ids, descs = self._finite_rows(ids, store.descriptors(ids, self.dim))
        self.add(descs, ids, store, train)

    def remove(self, ids: np.ndarray, store: Any) -> None:

        if self.config.type == "hnsw":
            self.rebuild(store)  # HNSW graphs cannot delete in place
            return
        self.index.remove_ids(faiss.IDSelectorBatch(ids))
        if self.replica is not None:  # GPU indexes cannot delete in place: copy the CPU index again
            self._refresh_replica()

    def _finite_rows(self, ids: np.ndarray, descs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = np.isfinite(descs).all(axis=1)
        if not ok.all():
            log.error("map %s: %d keyframes have damaged descriptors (%s...); they are left out of the index",
                      self.directory, int((~ok).sum()), ids[~ok][:5].tolist())
        return ids[ok], np.ascontiguousarray(descs[ok])

    def save_quietly(self) -> None:
        """Periodic saves: the keyframes are already durable in the store, so a failed save only logs."""
        try:
            self.save()
        except MapError as exc:
            log.warning("%s", exc)

    # ---------------------------------------------------------------- searching
    def search(self, q: np.ndarray, k: int, include: np.ndarray | None = None, exclude: np.ndarray | None = None,
               max_id: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, scores) of the top-k per unit query row, restricted to `include` ids, away from
        `exclude` ids and below `max_id` (faiss ID selectors); ids of -1 are empty slots."""

        index = self.index
        if index is None or index.ntotal == 0 or k <= 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in q]
        k = min(k, index.ntotal)
        restricted = include is not None or max_id is not None or (exclude is not None and len(exclude) > 0)
        if self.replica is not None:
            if not restricted:
                scores, ids = self.replica.search(q, k)
                return list(zip(ids, scores, strict=True))
            found = self._search_replica_filtered(q, k, include, exclude, max_id)
            if found is not None:
                return found
        sel, _keep = id_selector(include, exclude, max_id)
        params = None
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.config.hnsw_ef_search, k))
        elif isinstance(inner, faiss.IndexIVF):
            params = faiss.SearchParametersIVF(sel=sel, nprobe=min(self.config.nprobe, inner.nlist))
        elif sel is not None:
            params = faiss.SearchParameters(sel=sel)
        scores, ids = index.search(q, k, params=params)
        return list(zip(ids, scores, strict=True))

    GPU_MAX_K = 2048  # faiss GPU indexes return at most this many neighbours

    def _search_replica_filtered(self, q: np.ndarray, k: int, include: np.ndarray | None,
                                 exclude: np.ndarray | None, max_id: int | None
                                 ) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Top-k under the ID restrictions from the GPU replica: fetch k plus the excluded count
        (twice that when include / max_id also restrict), filter on the host; None when some
        query keeps fewer than k and the replica has more (the caller asks the CPU index)."""
        n = self.replica.ntotal
        fetch = k + (len(exclude) if exclude is not None else 0)
        if include is not None or max_id is not None:
            fetch *= 2
        fetch = min(fetch, n)
        if fetch > self.GPU_MAX_K:
            return None
        scores, ids = self.replica.search(q, fetch)
        ok = ids >= 0
        if max_id is not None:
            ok &= ids < max_id
        if include is not None:
            ok &= np.isin(ids, include)
        if exclude is not None and len(exclude):
            ok &= ~np.isin(ids, exclude)
        out = []
        for i_row, s_row, ok_row in zip(ids, scores, ok, strict=True):
            i_row, s_row = i_row[ok_row][:k], s_row[ok_row][:k]
            if len(i_row) < k and fetch < n:
                return None
            pad = k - len(i_row)  # faiss's convention for fewer than k: id -1
            out.append((np.concatenate([i_row, np.full(pad, -1, np.int64)]),
                        np.concatenate([s_row, np.full(pad, -np.inf, np.float32)])))
        return out

    # ---------------------------------------------------------------- files
    def load(self, want_ids: np.ndarray) -> tuple[str | None, np.ndarray]:
        """Load index.faiss if it belongs to this map and holds nothing the map does not.
        Returns (None, ids to catch up) on success, else (why it must be rebuilt, empty)."""

        index_file, meta_file = self.directory / self.FILE, self.directory / self.META
        none = np.zeros(0, np.int64)
        if not index_file.exists() and not index_file.is_symlink():
            return ("no index file" if len(want_ids) else "new map"), none
        try:
            if not is_regular_file(index_file) or not is_regular_file(meta_file):
                return "index.faiss or index.json is missing or not a regular file", none
            meta = json.loads(meta_file.read_text())
            if not isinstance(meta, dict):
                return "index.json is not a JSON object", none
            if meta.get("map_id") != self.map_id:
                return "the index belongs to another map (copied from elsewhere?)", none
            if meta.get("sha256") != sha256_file(index_file):
                return "checksum mismatch (damaged, or written by another process)", none
            cpu = faiss.read_index(str(index_file))
            if meta.get("type") != self.config.type or cpu.d != self.dim:
                return f"index is {meta.get('type')} {cpu.d}-D, config asks for {self.config.type} {self.dim}-D", none
            have = faiss.vector_to_array(cpu.id_map).astype(np.int64)
        except Exception as exc:  # faiss raises RuntimeError on damaged files, json ValueError
            return f"index file {index_file} is unreadable ({str(exc).splitlines()[0][:200] if str(exc) else exc})", none
        if len(have) != len(np.unique(have)) or len(np.setdiff1d(have, want_ids)):
            return "index holds keyframes the database does not", none
        self.trained = bool(meta.get("trained", False))
        self.index = cpu
        self._refresh_replica()
        return None, np.setdiff1d(want_ids, have, assume_unique=True)

    def save(self) -> None:
        """Write index.faiss + index.json atomically (the database is already durable); a
        follower's index is never written."""

        if not self.writable:
            return
        cpu = self.index
        try:
            with atomic_file(self.directory / self.FILE) as f:
                h = hashlib.sha256()

                def write(chunk: bytes) -> int:
                    h.update(chunk)
                    return f.write(chunk)

                faiss.write_index(cpu, faiss.PyCallbackIOWriter(write))
            meta = {"type": self.config.type, "trained": self.trained, "ntotal": int(cpu.ntotal), "dim": self.dim,
                    "sha256": h.hexdigest(), "map_id": self.map_id}
            with atomic_file(self.directory / self.META, "w") as f:
                f.write(json.dumps(meta))
            self._unsaved = 0
        except OSError as exc:
            raise MapError(f"cannot save the search index of map {self.directory}: {describe_os_error(exc)} "
                           "(the keyframes are safe in map.sqlite; the index is rebuilt from it)") from exc
