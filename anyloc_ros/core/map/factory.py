"""faiss indexes from factory strings (IndexConfig.factory_string), the ID selectors that restrict
a search, checksums of index files, and GPU copies (index.py keeps a map's index in step)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..config.map import IndexConfig
from ..errors import ConfigError


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

    index = faiss.index_factory(dim, cfg.factory_string(n_train), faiss.METRIC_INNER_PRODUCT)
    inner = faiss.downcast_index(faiss.downcast_index(index).index)
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efConstruction = cfg.hnsw_ef_construction
        inner.hnsw.efSearch = cfg.hnsw_ef_search
    elif isinstance(inner, faiss.IndexIVF):
        inner.nprobe = min(cfg.nprobe, inner.nlist)
    return index


def id_selector(include: np.ndarray | None, exclude: np.ndarray | None, max_id: int | None) -> tuple[Any, list]:
    """A faiss IDSelector for (ids in `include`) and not (ids in `exclude`) and (id < max_id), or
    None for no restriction; plus the objects it borrows, which the caller keeps alive while
    searching (faiss selectors do not own their arrays or sub-selectors)."""

    parts: list[Any] = []
    keep: list[Any] = []
    if max_id is not None:
        parts.append(faiss.IDSelectorRange(0, int(max_id)))
    if include is not None:
        keep.append(include)
        parts.append(faiss.IDSelectorBatch(include))
    if exclude is not None and len(exclude):
        inner = faiss.IDSelectorBatch(exclude)
        keep += [exclude, inner]
        parts.append(faiss.IDSelectorNot(inner))
    if not parts:
        return None, keep
    sel = parts[0]
    for p in parts[1:]:
        keep.append(sel)
        sel = faiss.IDSelectorAnd(sel, p)
    keep.extend(parts)
    return sel, keep


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


_GPU: dict[str, Any] = {}


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def copy_to_gpu(index: Any) -> Any:  # pragma: no cover - needs faiss-gpu (test_cuda.py)
    """A copy of a CPU index on GPU 0 (one StandardGpuResources per process: its scratch memory)."""

    if "resources" not in _GPU:
        _GPU["resources"] = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(_GPU["resources"], 0, index)
