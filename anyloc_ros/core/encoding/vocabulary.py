"""VLAD vocabulary: cluster centres plus the metadata saying which features they fit.

A vocabulary is built by spherical k-means (faiss) on patch features streamed from many
images. Memory stays bounded: each image contributes at most `samples_per_image` random
patches, and a reservoir keeps at most `max_samples` of them however many images there are.

Files are self-describing .npz (centres + JSON metadata: backbone, layer, facet, feature
dim, image size, how it was made), loaded without pickle. AnyLoc's released `c_centers.pt`
files (a K×D tensor) are accepted too, loaded with `weights_only=True`.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm import tqdm

from ..errors import VocabularyError
from ..fileio import load_npz, save_npz
from ..types import digest
from .images import load_image

log = logging.getLogger(__name__)

# Signature fields a vocabulary must share with the backbone that feeds it.
SIGNATURE_KEYS = ("backbone", "model", "layer", "facet", "feature_dim")
FORMAT = "anyloc_ros.vocabulary/1"


@dataclass
class Vocabulary:
    centers: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        raw = np.asarray(self.centers)
        if raw.dtype.kind not in "fiu":
            raise VocabularyError(f"vocabulary centres must be numbers, got {raw.dtype} values")
        if not isinstance(self.metadata, dict):
            raise VocabularyError(f"vocabulary metadata must be a mapping, got {type(self.metadata).__name__}")
        c = raw.astype(np.float32)
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise VocabularyError(f"vocabulary centres must be a (K, D) matrix, got shape {c.shape}")
        if not np.isfinite(c).all():
            raise VocabularyError("vocabulary centres contain NaN or inf")
        self.centers = np.ascontiguousarray(c)

    @property
    def num_clusters(self) -> int:
        return int(self.centers.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.centers.shape[1])

    def content_hash(self) -> str:
        """Short hash of the centres: identifies the vocabulary in map and result metadata."""
        return digest(self.centers)

    def check_compatible(self, signature: dict[str, Any]) -> None:
        """Raise `VocabularyError` naming every field where this vocabulary and a backbone differ."""
        if signature.get("feature_dim") != self.feature_dim:
            raise VocabularyError(
                f"vocabulary has {self.feature_dim}-D centres but the backbone gives "
                f"{signature.get('feature_dim')}-D features ({_describe(signature)}); "
                "build a vocabulary for this backbone with `anyloc build-vocab`"
            )
        mine = {k: self.metadata.get(k) for k in SIGNATURE_KEYS if self.metadata.get(k) is not None}
        diffs = [f"{k}: vocabulary {mine[k]!r} vs backbone {signature.get(k)!r}" for k in mine if mine[k] != signature.get(k)]
        if diffs:
            raise VocabularyError(
                "vocabulary was built for other features (" + "; ".join(diffs) + "); build one for this "
                "backbone with `anyloc build-vocab`"
            )

    def save(self, path: str | Path) -> Path:
        meta = dict(self.metadata, format=FORMAT, num_clusters=self.num_clusters, feature_dim=self.feature_dim)
        return save_npz(path, meta, centers=self.centers)

    @classmethod
    def load(cls, path: str | Path, layer: int | None = None, facet: str | None = None) -> Vocabulary:
        """Load a vocabulary (.npz from `save`, or AnyLoc's `c_centers.pt`). A c_centers.pt does
        not record which features it clusters, so its `layer` and `facet` must be declared."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise VocabularyError(f"vocabulary file not found: {path}")
        if path.suffix in (".pt", ".pth"):
            return cls._load_anyloc(path, layer, facet)
        try:
            meta, arrays = load_npz(path)
        except Exception as exc:
            raise VocabularyError(f"vocabulary file {path} is unreadable or corrupt: {exc}") from exc
        if meta.get("format") != FORMAT or "centers" not in arrays:
            raise VocabularyError(f"{path} is not an anyloc_ros vocabulary (format {meta.get('format')!r})")
        bad = [f"{k}={meta[k]!r}" for k, kind in (("layer", (int, str)), ("facet", str), ("backbone", str),
                                                   ("model", str), ("feature_dim", int))
               if meta.get(k) is not None and (not isinstance(meta[k], kind) or isinstance(meta[k], bool))]
        if bad:
            raise VocabularyError(f"vocabulary file {path} has metadata of the wrong type ({', '.join(bad)}); "
                                  "rebuild it with `anyloc build-vocab`")
        try:
            return cls(arrays["centers"], meta)
        except VocabularyError as exc:
            raise VocabularyError(f"vocabulary file {path}: {exc}") from exc

    @classmethod
    def _load_anyloc(cls, path: Path, layer: int | None, facet: str | None) -> Vocabulary:

        if layer is None or facet is None:
            raise VocabularyError(
                f"{path}: an AnyLoc c_centers.pt does not record which features it clusters; declare them "
                "in the encoder config (aggregation.vocabulary_layer, aggregation.vocabulary_facet; AnyLoc's "
                "released ones are ViT-G/14 layer 31, value)")

        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise VocabularyError(f"cannot read AnyLoc vocabulary {path}: {exc}") from exc
        if isinstance(obj, dict):
            obj = obj.get("c_centers", obj.get("centers"))
        if not isinstance(obj, torch.Tensor) or obj.ndim != 2:
            raise VocabularyError(f"{path} does not hold a (K, D) tensor of cluster centres")
        log.info("loaded AnyLoc vocabulary %s (%d x %d), declared for layer %s, facet %s",
                 path, obj.shape[0], obj.shape[1], layer, facet)
        meta = {"source": f"anyloc:{path.name}", "layer": layer, "facet": facet,
                "note": "AnyLoc c_centers.pt; layer and facet as declared in the encoder config"}
        return cls(obj.float().numpy(), meta)


def _describe(sig: dict[str, Any]) -> str:
    return ", ".join(f"{k}={sig.get(k)}" for k in SIGNATURE_KEYS if k in sig)


class PatchReservoir:
    """Uniform random sample of at most `capacity` rows from a stream of (N_i, D) arrays."""

    def __init__(self, capacity: int, dim: int, seed: int = 0) -> None:
        self.buffer = np.empty((capacity, dim), dtype=np.float32)
        self.capacity = capacity
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        n = len(rows)
        free = min(max(self.capacity - self.seen, 0), n)
        if free:
            self.buffer[self.seen : self.seen + free] = rows[:free]
        rest = rows[free:]
        if len(rest):
            # Algorithm R, vectorised: row with global index t replaces slot j ~ U[0, t] if j < capacity.
            t = self.seen + free + np.arange(len(rest))
            j = (self.rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = j < self.capacity
            self.buffer[j[keep]] = rest[keep]
        self.seen += n

    @property
    def samples(self) -> np.ndarray:
        return self.buffer[: min(self.seen, self.capacity)]


def spherical_kmeans(samples: np.ndarray, num_clusters: int, niter: int = 50, seed: int = 0) -> np.ndarray:
    """Cosine k-means of L2-normalised samples, centres as AnyLoc keeps them.

    faiss's spherical k-means finds the clusters; each centre returned is the mean of the unit
    vectors assigned to it (norm below 1), as AnyLoc's cosine k-means (fast_pytorch_kmeans)
    stores them in c_centers.pt, so VLAD residuals are taken to the same points. An empty
    cluster keeps its unit centre."""

    x = np.ascontiguousarray(samples, dtype=np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if len(x) < num_clusters:
        raise VocabularyError(f"need at least {num_clusters} feature samples for {num_clusters} clusters, got {len(x)}")
    km = faiss.Kmeans(x.shape[1], num_clusters, niter=niter, spherical=True, seed=seed, verbose=False,
                      max_points_per_centroid=max(256, len(x) // num_clusters + 1))
    km.train(x)
    unit = km.centroids
    labels = (x @ unit.T).argmax(axis=1)
    sums = np.zeros_like(unit)
    np.add.at(sums, labels, x)
    counts = np.bincount(labels, minlength=num_clusters)[:, None]
    return np.where(counts > 0, sums / np.maximum(counts, 1), unit).astype(np.float32)


def fit_vocabulary(
    feature_stream: Iterable[np.ndarray],
    num_clusters: int = 32,
    samples_per_image: int = 1000,
    max_samples: int = 200_000,
    niter: int = 50,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Centres from a stream of per-image (N_i, D) features, with bounded memory."""
    rng = np.random.default_rng(seed)
    reservoir: PatchReservoir | None = None
    images = 0
    for feats in feature_stream:
        feats = np.asarray(feats, dtype=np.float32).reshape(-1, np.shape(feats)[-1])
        if len(feats) > samples_per_image:
            feats = feats[rng.choice(len(feats), samples_per_image, replace=False)]
        if reservoir is None:
            reservoir = PatchReservoir(max_samples, feats.shape[1], seed)
        reservoir.add(feats)
        images += 1
    if reservoir is None:
        raise VocabularyError("no features to build a vocabulary from")
    centers = spherical_kmeans(reservoir.samples, num_clusters, niter=niter, seed=seed)
    info = {
        "images": images,
        "samples": int(len(reservoir.samples)),
        "samples_per_image": samples_per_image,
        "kmeans": f"faiss spherical k-means, niter={niter}, seed={seed}; centres = means of assigned unit vectors",
    }
    return centers, info


def build_vocabulary(
    backbone: Any,
    image_paths: Sequence[Path],
    num_clusters: int = 32,
    samples_per_image: int = 1000,
    max_samples: int = 200_000,
    niter: int = 50,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
) -> Vocabulary:
    """Build a vocabulary from images with a dense backbone (features never all held at once)."""


    bar = tqdm(total=len(image_paths), desc="vocabulary features", unit="img", disable=not progress)
    size_seen: list[int] = []

    def stream() -> Iterable[np.ndarray]:
        for i in range(0, len(image_paths), batch_size):
            imgs = [load_image(p) for p in image_paths[i : i + batch_size]]
            feats = backbone.extract(imgs)  # (B, h, w, D)
            size_seen[:] = list(feats.shape[1:3])
            for f in feats:
                yield f.reshape(-1, f.shape[-1]).numpy()
            bar.update(len(imgs))

    try:
        centers, info = fit_vocabulary(stream(), num_clusters, samples_per_image, max_samples, niter, seed)
    finally:
        bar.close()
    meta = dict(backbone.signature())
    meta.update(
        info,
        feature_grid=size_seen,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        source_images=str(Path(image_paths[0]).parent) if image_paths else "",
    )
    meta["preprocess"] = backbone.preprocessing()  # recorded for the user; a vocabulary transfers across sizes
    return Vocabulary(centers, meta)
