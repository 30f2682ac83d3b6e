"""Aggregation of dense patch features into one global place descriptor.

`VLAD` follows AnyLoc (Keetha et al., 2023): each patch descriptor is L2-normalised and
assigned to the vocabulary centre of highest cosine similarity; per cluster the residuals
(x̂ − c_k) are summed, each cluster block is intra-normalised (empty clusters stay zero),
and the concatenation of the K blocks is L2-normalised. With N descriptors of dimension D
and K clusters the result has K·D dimensions.

The implementation is vectorised: the per-cluster sums are one scatter-add
(`index_add_`) for hard assignment or one matrix product for soft assignment, and the
residual sum is rewritten as Σ_i x̂_i − n_k·c_k, so the N×K×D residual tensor of the AnyLoc
reference code is never built and there is no Python loop over clusters.

`GeM` is generalised-mean pooling, the vocabulary-free option.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FeatureDimensionError, VocabularyError

ArrayLike = np.ndarray | torch.Tensor


def _as_tensor(features: ArrayLike) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(features)) if not isinstance(features, torch.Tensor) else features
    if not torch.is_floating_point(t):
        raise FeatureDimensionError(f"features must be floating point, got {t.dtype}")
    return t.float()


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class VLAD:
    """Vector of Locally Aggregated Descriptors over a fixed vocabulary of K centres.

    Args:
        centers: (K, D) cluster centres (e.g. from spherical k-means). Assignment uses
            cosine similarity to the centres; residuals are taken to the centres as given.
        mode: "hard" (AnyLoc's choice, best in the paper) or "soft" (NetVLAD-style: block k
            sums softmax(cos / T)_ik · (x̂_i − c_k) over descriptors i).
        soft_temperature: softmax temperature T of soft assignment (weights softmax(cos / T):
            smaller T is closer to hard assignment). This follows NetVLAD (Arandjelovic et al.),
            where each block holds its own cluster's weighted residuals. AnyLoc's code differs
            on purpose not followed here: its soft mode adds every cluster's weighted residuals
            into each block, and its T multiplies the similarities (an inverse temperature).
        intra_norm: L2-normalise each cluster block before the final normalisation.
    """

    def __init__(
        self,
        centers: ArrayLike,
        mode: Literal["hard", "soft"] = "hard",
        soft_temperature: float = 1.0,
        intra_norm: bool = True,
    ) -> None:
        c = _as_tensor(centers).detach().cpu()
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise VocabularyError(f"VLAD centres must be a (K, D) matrix, got shape {tuple(c.shape)}")
        if not torch.isfinite(c).all():
            raise VocabularyError("VLAD centres contain NaN or inf")
        if mode not in ("hard", "soft"):
            raise ValueError(f"VLAD mode must be 'hard' or 'soft', got {mode!r}")
        if soft_temperature <= 0:
            raise ValueError(f"soft_temperature must be > 0, got {soft_temperature}")
        self.mode = mode
        self.soft_temperature = float(soft_temperature)
        self.intra_norm = bool(intra_norm)
        self._centers = c.contiguous()
        self._device_cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def num_clusters(self) -> int:
        return int(self._centers.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self._centers.shape[1])

    @property
    def dim(self) -> int:
        """Dimension of the output descriptor (K·D)."""
        return self.num_clusters * self.feature_dim

    @property
    def centers(self) -> np.ndarray:
        return self._centers.numpy()

    def _centers_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._device_cache:
            c = self._centers.to(device)
            self._device_cache[device] = (c, F.normalize(c, dim=1))
        return self._device_cache[device]

    def _check(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.feature_dim:
            raise FeatureDimensionError(
                f"features have dimension {x.shape[-1]} but the VLAD vocabulary has dimension "
                f"{self.feature_dim} ({self.num_clusters} clusters): the vocabulary was built for "
                "another backbone/layer/facet; build one for this backbone with `anyloc build-vocab`"
            )
        if x.shape[1] == 0:
            raise FeatureDimensionError("cannot aggregate an empty set of features")

    def assign(self, features: ArrayLike) -> torch.Tensor:
        """Hard cluster index of each descriptor: (..., N, D) -> (..., N) int64."""
        x = _as_tensor(features)
        _, c_hat = self._centers_on(x.device)
        return (F.normalize(x, dim=-1) @ c_hat.T).argmax(dim=-1)

    def aggregate_batch_tensor(self, features: ArrayLike) -> torch.Tensor:
        """(B, N, D) features (numpy or torch, any device) -> (B, K·D) float32 torch tensor."""
        x = _as_tensor(features)
        if x.ndim != 3:
            raise FeatureDimensionError(f"expected (B, N, D) features, got shape {tuple(x.shape)}")
        self._check(x)
        b, n, d = x.shape
        k = self.num_clusters
        c, c_hat = self._centers_on(x.device)
        x = F.normalize(x, dim=-1)
        sims = x @ c_hat.T  # (B, N, K) cosine similarities
        if self.mode == "hard":
            labels = sims.argmax(dim=-1)
            flat = (labels + torch.arange(b, device=x.device).unsqueeze(1) * k).reshape(-1)
            sums = torch.zeros(b * k, d, device=x.device, dtype=x.dtype)
            sums.index_add_(0, flat, x.reshape(-1, d))
            # counts by a scatter-add too: bincount waits for the GPU (it reads the largest label back)
            counts = torch.zeros(b * k, device=x.device, dtype=x.dtype).index_add_(
                0, flat, torch.ones(flat.shape[0], device=x.device, dtype=x.dtype))
            vlad = sums.view(b, k, d) - counts.view(b, k, 1) * c.unsqueeze(0)
        else:
            weights = torch.softmax(sims / self.soft_temperature, dim=-1)  # (B, N, K)
            vlad = weights.transpose(1, 2) @ x - weights.sum(dim=1).unsqueeze(-1) * c.unsqueeze(0)
        if self.intra_norm:
            vlad = F.normalize(vlad, dim=-1)  # zero blocks (empty clusters) stay zero
        return F.normalize(vlad.reshape(b, k * d), dim=-1)

    def aggregate_batch(self, features: ArrayLike) -> np.ndarray:
        """(B, N, D) -> (B, K·D) float32 numpy, each row L2-normalised."""
        return _to_numpy(self.aggregate_batch_tensor(features))

    def aggregate(self, features: ArrayLike) -> np.ndarray:
        """(N, D) (or (h, w, D)) features of one image -> (K·D,) float32 numpy."""
        x = _as_tensor(features)
        if x.ndim < 2:
            raise FeatureDimensionError(f"expected (N, D) features, got shape {tuple(x.shape)}")
        return self.aggregate_batch(x.reshape(1, -1, x.shape[-1]))[0]


class GeM:
    """Generalised-mean pooling per feature dimension, in two named variants:

    * "anyloc" (AnyLoc's code, the default): each patch feature is L2-normalised, x^p is
      averaged over the patches and the signed p-th root taken, sign(m) |m|^(1/p); negative
      feature values take part.
    * "positive" (the classic GeM of Radenovic et al. on ReLU features): values are clamped at
      `eps` (negatives dropped), no per-patch normalisation, (mean max(x, eps)^p)^(1/p).

    p = 1 is average pooling, p -> inf approaches max pooling; AnyLoc uses p = 3. The result is
    L2-normalised unless `normalize=False`.
    """

    MODES = ("anyloc", "positive")

    def __init__(self, p: float = 3.0, eps: float = 1e-6, normalize: bool = True, mode: str = "anyloc") -> None:
        if p <= 0:
            raise ValueError(f"GeM p must be > 0, got {p}")
        if mode not in self.MODES:
            raise ValueError(f"GeM mode must be one of {self.MODES}, got {mode!r}")
        self.p = float(p)
        self.eps = float(eps)
        self.normalize = normalize
        self.mode = mode
        self.feature_dim: int | None = None  # any dimension is accepted

    def aggregate_batch_tensor(self, features: ArrayLike) -> torch.Tensor:
        x = _as_tensor(features)
        if x.ndim != 3 or x.shape[1] == 0:
            raise FeatureDimensionError(f"expected non-empty (B, N, D) features, got shape {tuple(x.shape)}")
        if self.mode == "anyloc":
            m = F.normalize(x, dim=-1).pow(self.p).mean(dim=1)  # unit patches: |x| <= 1, no overflow
            pooled = m.sign() * m.abs().pow(1.0 / self.p)
        else:
            x = x.clamp(min=self.eps)
            # Factor out the per-dimension maximum so x^p cannot overflow float32 for large p.
            peak = x.amax(dim=1, keepdim=True)
            pooled = (x / peak).pow(self.p).mean(dim=1).pow(1.0 / self.p) * peak.squeeze(1)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def name(self) -> str:
        """As recorded in encoder signatures ("gem-p3" stays the positive variant's, as before)."""
        return f"gem-p{self.p:g}" if self.mode == "positive" else f"gem-{self.mode}-p{self.p:g}"

    def aggregate_batch(self, features: ArrayLike) -> np.ndarray:
        return _to_numpy(self.aggregate_batch_tensor(features))

    def aggregate(self, features: ArrayLike) -> np.ndarray:
        x = _as_tensor(features)
        return self.aggregate_batch(x.reshape(1, -1, x.shape[-1]))[0]

    def output_dim(self, feature_dim: int) -> int:
        return feature_dim
