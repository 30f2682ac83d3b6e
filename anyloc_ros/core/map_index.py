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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, MapError
from .fileio import atomic_file, describe_os_error, is_regular_file
from .settings import setting

log = logging.getLogger(__name__)


@dataclass
class IndexConfig:
    """Search index of a map. Cosine similarity = inner product of L2-normalised descriptors.

    type: "flat" (exact, default), "ivf" (inverted lists; trained once `ivf_min_train`
    keyframes exist, exact flat search until then) or "hnsw" (graph; no training).
    """

    PREFIX: ClassVar[str] = "index."
    type: str = setting("flat", "search index: flat (exact), ivf or hnsw", choices=("flat", "ivf", "hnsw"))
    nlist: int = setting(0, "IVF lists (0 = 4 sqrt(n) when trained)", 0, 1 << 20)
    nprobe: int = setting(16, "IVF lists searched per query", 1, 65536)
    ivf_min_train: int = setting(0, "keyframes before IVF is trained; exact search until then (0 = 39 nlist)",
                                 0, 1 << 30)
    hnsw_m: int = setting(32, "HNSW graph degree", 4, 256)
    hnsw_ef_construction: int = setting(200, "HNSW build breadth", 1, 65536)
    hnsw_ef_search: int = setting(128, "HNSW search breadth", 1, 65536)
    use_gpu: str = setting("auto", "faiss GPU for flat/IVF search", choices=("auto", "true", "false"))
    save_every: int = setting(1000, "write the index after this many additions (0 = only on save/close)",
                              0, 1 << 30)

    def validate(self) -> None:
        if self.type not in ("flat", "ivf", "hnsw"):
            raise ConfigError(f"index type must be flat, ivf or hnsw, got {self.type!r}")
        if self.use_gpu not in ("auto", "true", "false"):
            raise ConfigError(f"index use_gpu must be auto, true or false, got {self.use_gpu!r}")
        for name in ("nlist", "nprobe", "ivf_min_train", "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "save_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"index {name} must be an integer >= 0, got {v!r}")

    def factory_string(self, n_train: int = 0) -> str:
        """The faiss index factory string this config names, once `n_train` vectors exist
        (IVF before it can be trained is exact flat search)."""
        if self.type == "hnsw":
            return f"IDMap2,HNSW{self.hnsw_m},Flat"
        if self.type == "ivf" and n_train:
            return f"IDMap2,IVF{self.nlist or max(1, int(4 * np.sqrt(n_train)))},Flat"
        return "IDMap2,Flat"

    def ivf_threshold(self) -> int:
        return self.ivf_min_train or 39 * (self.nlist or 64)


def index_config_from_dict(d: dict[str, Any] | None) -> IndexConfig:
    try:
        cfg = IndexConfig(**(d or {}))
    except TypeError as exc:
        raise ConfigError(f"invalid index config: {exc}") from exc
    cfg.validate()
    return cfg


def build_index(dim: int, cfg: IndexConfig, n_train: int = 0) -> Any:
    """An empty faiss index for `cfg` (inner product on unit vectors), wrapped with keyframe ids.

    IVF is only built when `n_train` vectors are available to train it; before that the
    index is exact flat."""
    import faiss

    index = faiss.index_factory(dim, cfg.factory_string(n_train), faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(faiss.downcast_index(index).index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = cfg.hnsw_ef_construction
        inner.hnsw.efSearch = cfg.hnsw_ef_search
    elif isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(cfg.nprobe, inner.nlist)
    return index


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class MapIndex:
    """The faiss index of one map, on the CPU or (faiss-gpu) the GPU."""

    FILE = "index.faiss"
    META = "index.json"

    def __init__(self, directory: Path, dim: int, config: IndexConfig, map_id: str | None) -> None:
        self.directory, self.dim, self.config, self.map_id = directory, dim, config, map_id
        self.index: Any = None
        self.trained = False
        self._gpu: Any = None

    @property
    def on_gpu(self) -> bool:
        return self._gpu is not None

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
        self.index = self._maybe_gpu(cpu)

    def needs_training(self, count: Callable[[], int]) -> bool:
        """IVF not trained yet and `count()` keyframes to train on (counted only for IVF: it is a query)."""
        return self.config.type == "ivf" and not self.trained and count() >= self.config.ivf_threshold()

    def _maybe_gpu(self, index: Any) -> Any:
        import faiss

        cfg = self.config
        if cfg.use_gpu == "false" or cfg.type == "hnsw":
            return index
        ngpu = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        if ngpu == 0:
            if cfg.use_gpu == "true":
                log.warning("index use_gpu=true but faiss sees no GPU; searching on the CPU")
            return index
        try:  # pragma: no cover - needs a GPU build of faiss
            self._gpu = self._gpu or faiss.StandardGpuResources()
            return faiss.index_cpu_to_gpu(self._gpu, 0, index)
        except Exception as exc:  # pragma: no cover
            self._gpu = None
            log.warning("could not move the index to the GPU (%s); searching on the CPU", exc)
            return index

    def cpu(self) -> Any:
        import faiss

        if self._gpu is not None and self.index is not None:  # pragma: no cover - needs a GPU build
            return faiss.index_gpu_to_cpu(self.index)
        return self.index

    # ---------------------------------------------------------------- files
    def load(self, want_ids: np.ndarray) -> tuple[str | None, np.ndarray]:
        """Load index.faiss if it belongs to this map and holds nothing the map does not.
        Returns (None, ids to catch up) on success, else (why it must be rebuilt, empty)."""
        import faiss

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
        self.index = self._maybe_gpu(cpu)
        return None, np.setdiff1d(want_ids, have, assume_unique=True)

    def save(self) -> None:
        """Write index.faiss + index.json atomically (the database is already durable)."""
        import faiss

        cpu = self.cpu()
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
        except OSError as exc:
            raise MapError(f"cannot save the search index of map {self.directory}: {describe_os_error(exc)} "
                           "(the keyframes are safe in map.sqlite; the index is rebuilt from it)") from exc
