"""Map settings: the search index (its logic: core/map/index.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .settings import check_fields, setting


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
        check_fields(self)


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
