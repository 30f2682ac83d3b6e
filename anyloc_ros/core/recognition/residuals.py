"""The noise behind residuals that RANSAC kept (relative_pose.py's covariance uses it)."""

from __future__ import annotations

import math

import numpy as np


# Inliers are the correspondences whose residual is below the RANSAC threshold τ. Two effects
# follow, both derived for Gaussian errors of standard deviation σ per axis, cut at τ (q = τ²/2σ²
# in 2-D, b = τ/σ in 1-D):
#  * the kept residuals are smaller than the noise: E[r² | r < τ] = 2σ² c / P (2-D) or σ² c / P (1-D),
#    with P = P(r < τ) and c = 1 − e⁻q (1 + q) (2-D) or P − 2bφ(b) (1-D);
#  * the estimate from kept points only (a hard-redescending M-estimator) is noisier than a
#    least-squares fit on all of them: its covariance is σ² (Σ_kept (c/P) JᵀJ)⁻¹, not σ² (Σ JᵀJ)⁻¹
#    (sandwich formula; at τ = 2σ in 2-D the difference is a factor 1.46 in variance).
def truncation(sigma: np.ndarray | float, threshold: float, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """(P, c) above for per-axis noise `sigma` (array or scalar) and the cut `threshold`."""
    s = np.maximum(np.asarray(sigma, np.float64), 1e-300)
    if dims == 2:
        q = np.minimum(threshold * threshold / (2 * s * s), 700.0)
        P = -np.expm1(-q)
        return P, P - q * np.exp(-q)
    b = threshold / s
    P = np.vectorize(math.erf)(b / math.sqrt(2))
    return P, P - 2 * b * np.exp(-b * b / 2) / math.sqrt(2 * math.pi)


def noise_scale(r2: np.ndarray, extra: np.ndarray, threshold: float, dims: int, params: int) -> float:
    """σ of the keypoints' noise per axis from kept residuals: Σ r² = Σ E[r² | r < τ] over points
    whose variance per axis is σ² + extra_i (e.g. depth noise seen in the image), with the fit's
    `params` parameters taken out of the residuals' degrees of freedom. Bisection in σ."""
    r2 = np.asarray(r2, np.float64)
    extra = np.asarray(extra, np.float64)
    m = len(r2)
    target = float(np.sum(r2)) * (dims * m) / max(dims * m - params, 1)

    def expected(sig: float) -> float:
        s2 = sig * sig + extra
        P, c = truncation(np.sqrt(s2), threshold, dims)
        return float(np.sum(dims * s2 * c / np.maximum(P, 1e-300)))

    lo, hi = threshold * 1e-4, threshold * 10
    if expected(hi) <= target:
        return hi
    if expected(lo) >= target:
        return lo
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if expected(mid) < target else (lo, mid)
    return math.sqrt(lo * hi)
