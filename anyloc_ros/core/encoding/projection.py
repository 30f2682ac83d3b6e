"""PCA projection of global descriptors (e.g. 49,152-D VLAD -> 512-D), optionally whitened.

AnyLoc reports that PCA to 512-D loses little accuracy for a 96x smaller descriptor. The
fit uses the thin SVD of the centred descriptor matrix, so with n descriptors of dimension d
it costs O(n²d) memory-light work even when d is far larger than n.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, FeatureDimensionError
from ..fileio import load_npz, save_npz

log = logging.getLogger(__name__)

FORMAT = "anyloc_ros.pca/1"
WHITEN_MIN_SAMPLES_PER_DIM = 10


@dataclass
class PCA:
    mean: np.ndarray  # (d_in,)
    components: np.ndarray  # (d_out, d_in), rows orthonormal
    scale: np.ndarray  # (d_out,) 1/sqrt(eigenvalue) when whitened, else ones
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def output_dim(self) -> int:
        return int(self.components.shape[0])

    @classmethod
    def fit(cls, descriptors: np.ndarray, output_dim: int = 512, whiten: bool = True, eps: float = 1e-6) -> PCA:
        """Fit on (n, d) descriptors. `whiten` (AnyLoc's default, as sklearn's PCA(whiten=True))
        divides each component by its standard deviation (ddof 1)."""
        x = np.asarray(descriptors, dtype=np.float64)
        if x.ndim != 2:
            raise FeatureDimensionError(f"PCA needs (n, d) descriptors, got shape {x.shape}")
        n, d = x.shape
        if output_dim > min(n, d):
            raise ConfigError(f"PCA to {output_dim}-D needs at least {output_dim} descriptors and dimensions (have {n} x {d})")
        if whiten and n < WHITEN_MIN_SAMPLES_PER_DIM * output_dim:
            # the smallest components are estimated from too few samples; whitening scales that noise up
            log.warning("whitening a %d-D PCA fitted on only %d descriptors: its smallest components are mostly "
                        "noise and whitening amplifies them (on corridor, 111 images at 64-D: Recall@1 0.59 "
                        "whitened vs 0.84 not); fit on >= %d images or use --no-whiten", output_dim, n,
                        WHITEN_MIN_SAMPLES_PER_DIM * output_dim)
        mean = x.mean(axis=0)
        xc = x - mean
        # Eigen-decomposition of the smaller Gram / covariance matrix, whichever side is smaller.
        if n <= d:
            evals, u = np.linalg.eigh(xc @ xc.T)
            order = np.argsort(evals)[::-1][:output_dim]
            evals, u = np.maximum(evals[order], 0.0), u[:, order]
            comps = (xc.T @ u) / np.sqrt(np.maximum(evals, eps))
            comps = comps.T
        else:
            evals, v = np.linalg.eigh(xc.T @ xc)
            order = np.argsort(evals)[::-1][:output_dim]
            evals, comps = np.maximum(evals[order], 0.0), v[:, order].T
        variance = evals / max(n - 1, 1)
        scale = 1.0 / np.sqrt(variance + eps) if whiten else np.ones(output_dim)
        meta = {"whiten": whiten, "fit_samples": n, "explained_variance": variance.astype(float).tolist()[:16]}
        return cls(mean.astype(np.float32), comps.astype(np.float32), scale.astype(np.float32), meta)

    def transform_tensor(self, x: Any) -> Any:
        """Project a torch (B, d_in) tensor (any device) without leaving torch."""

        if x.shape[-1] != self.input_dim:
            raise FeatureDimensionError(f"PCA expects {self.input_dim}-D descriptors, got {x.shape[-1]}-D")
        cache = getattr(self, "_torch", None)
        if cache is None or cache[0].device != x.device:
            cache = tuple(torch.from_numpy(a).to(x.device) for a in (self.mean, self.components, self.scale))
            self._torch = cache
        mean, comps, scale = cache
        return ((x - mean) @ comps.T) * scale

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.shape[-1] != self.input_dim:
            raise FeatureDimensionError(f"PCA expects {self.input_dim}-D descriptors, got {x.shape[-1]}-D")
        return ((x - self.mean) @ self.components.T) * self.scale

    def save(self, path: str | Path) -> Path:
        meta = {k: v for k, v in self.metadata.items() if k != "path"}
        meta.update(format=FORMAT, input_dim=self.input_dim, output_dim=self.output_dim)
        return save_npz(path, meta, mean=self.mean, components=self.components, scale=self.scale)

    def check_fitted_for(self, binding: dict[str, Any]) -> None:
        """Refuse a PCA fitted on other descriptors (another vocabulary, backbone or aggregation)."""
        fitted = self.metadata.get("fitted_on")
        if not isinstance(fitted, dict):
            if "path" not in self.metadata:  # built in code, not read from a file: nothing to re-fit
                return
            log.warning("PCA file %s does not record the descriptors it was fitted on (made by an older version); "
                        "re-fit it with `anyloc fit-pca` so mixing is detected", self.metadata.get("path", ""))
            return
        diffs = [f"{k}: PCA {fitted.get(k)!r} vs encoder {binding.get(k)!r}"
                 for k in sorted(set(fitted) | set(binding)) if fitted.get(k) != binding.get(k)]
        if diffs:
            raise ConfigError("the PCA was fitted on other descriptors (" + "; ".join(diffs) + "); fit one for this "
                              "encoder and vocabulary with `anyloc fit-pca`")

    @classmethod
    def load(cls, path: str | Path) -> PCA:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"PCA file not found: {path}")
        try:
            meta, a = load_npz(path)
        except Exception as exc:
            raise ConfigError(f"PCA file {path} is unreadable or corrupt: {exc}") from exc
        if meta.get("format") != FORMAT:
            raise ConfigError(f"{path} is not an anyloc_ros PCA file (format {meta.get('format')!r})")
        missing = [k for k in ("mean", "components", "scale") if k not in a]
        if missing:
            raise ConfigError(f"PCA file {path} lacks {missing}; re-create it with `anyloc fit-pca`")
        mean, comps, scale = a["mean"], a["components"], a["scale"]
        for name, arr in (("mean", mean), ("components", comps), ("scale", scale)):
            if arr.dtype.kind not in "fiu":
                raise ConfigError(f"PCA file {path}: {name} is not numeric ({arr.dtype})")
        if comps.ndim != 2 or comps.shape[0] < 1 or comps.shape[1] < 1:
            raise ConfigError(f"PCA file {path}: components must be a non-empty (d_out, d_in) matrix, got {comps.shape}")
        if mean.shape != (comps.shape[1],) or scale.shape != (comps.shape[0],):
            raise ConfigError(f"PCA file {path}: shapes do not agree (mean {mean.shape}, components {comps.shape}, "
                              f"scale {scale.shape})")
        if not all(np.isfinite(x).all() for x in (mean, comps, scale)):
            raise ConfigError(f"PCA file {path} contains NaN or inf values (damaged); re-fit it with `anyloc fit-pca`")
        # a zero direction (or scale) sends every image to the same value there: all zero, every image looks alike
        zero = np.flatnonzero((np.linalg.norm(comps, axis=1) < 1e-6) | (scale == 0))
        if len(zero):
            raise ConfigError(f"PCA file {path} is degenerate: {len(zero)} of its {comps.shape[0]} components "
                              f"(e.g. {zero[:5].tolist()}) are zero, so they map every image to the same value; "
                              "re-fit it with `anyloc fit-pca`")
        meta["path"] = str(path)
        return cls(mean.astype(np.float32), comps.astype(np.float32), scale.astype(np.float32), meta)
