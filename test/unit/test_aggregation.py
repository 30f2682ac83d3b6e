"""VLAD and GeM against independent, definition-level references."""

import math

import numpy as np
import pytest
import torch

from anyloc_ros.core.encoding.aggregation import VLAD, GeM
from anyloc_ros.core.errors import FeatureDimensionError, VocabularyError


def _l2(v, axis=-1):
    n = np.linalg.norm(v, axis=axis, keepdims=True)
    return np.where(n > 0, v / np.maximum(n, 1e-300), v)


def reference_hard_vlad(x, c, intra_norm=True):
    """AnyLoc's definition, written as plainly as possible (loops, float64)."""
    x = _l2(np.asarray(x, np.float64))
    c = np.asarray(c, np.float64)
    c_hat = _l2(c)
    k, d = c.shape
    v = np.zeros((k, d))
    for xi in x:
        j = int(np.argmax(c_hat @ xi))
        v[j] += xi - c[j]
    if intra_norm:
        v = _l2(v)
    return _l2(v.reshape(-1))


def reference_soft_vlad(x, c, t=1.0, intra_norm=True):
    x = _l2(np.asarray(x, np.float64))
    c = np.asarray(c, np.float64)
    k, d = c.shape
    v = np.zeros((k, d))
    for xi in x:
        s = (_l2(c) @ xi) / t
        w = np.exp(s - s.max())
        w /= w.sum()
        for j in range(k):
            v[j] += w[j] * (xi - c[j])
    if intra_norm:
        v = _l2(v)
    return _l2(v.reshape(-1))


@pytest.mark.parametrize("n,d,k", [(500, 64, 32), (37, 16, 8), (3, 8, 16)])
def test_hard_vlad_matches_definition(n, d, k):
    rng = np.random.default_rng(n + d + k)
    x = rng.normal(size=(n, d)).astype(np.float32)
    c = rng.normal(size=(k, d)).astype(np.float32)
    got = VLAD(c).aggregate(x)
    assert got.shape == (k * d,) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference_hard_vlad(x, c), atol=1e-5)


def test_hard_vlad_empty_clusters_stay_zero():
    rng = np.random.default_rng(0)
    c = rng.normal(size=(8, 16)).astype(np.float32)
    # All descriptors close to centre 2: every other block must be exactly zero.
    x = c[2] + 0.01 * rng.normal(size=(50, 16)).astype(np.float32)
    v = VLAD(c).aggregate(x).reshape(8, 16)
    assert np.count_nonzero(np.abs(v).sum(1)) == 1 and np.abs(v[2]).sum() > 0
    np.testing.assert_allclose(np.linalg.norm(v), 1.0, atol=1e-6)


def test_hard_vlad_without_intra_norm():
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(200, 32)), rng.normal(size=(16, 32))
    got = VLAD(c, intra_norm=False).aggregate(x.astype(np.float32))
    np.testing.assert_allclose(got, reference_hard_vlad(x, c, intra_norm=False), atol=1e-5)


@pytest.mark.parametrize("t", [1.0, 0.1])
def test_soft_vlad_matches_netvlad_definition(t):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 24)).astype(np.float32)
    c = rng.normal(size=(10, 24)).astype(np.float32)
    got = VLAD(c, mode="soft", soft_temperature=t).aggregate(x)
    np.testing.assert_allclose(got, reference_soft_vlad(x, c, t), atol=1e-5)


def test_soft_vlad_at_low_temperature_approaches_hard():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    c = rng.normal(size=(8, 16)).astype(np.float32)
    soft = VLAD(c, mode="soft", soft_temperature=1e-4).aggregate(x)
    np.testing.assert_allclose(soft, VLAD(c).aggregate(x), atol=1e-4)


def test_batch_equals_single_and_accepts_torch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(5, 100, 32)).astype(np.float32)
    c = rng.normal(size=(32, 32)).astype(np.float32)
    vlad = VLAD(c)
    batch = vlad.aggregate_batch(torch.from_numpy(x))
    assert batch.shape == (5, 32 * 32)
    for i in range(5):
        np.testing.assert_allclose(batch[i], vlad.aggregate(x[i]), atol=1e-6)
    # (h, w, D) grids are flattened
    np.testing.assert_allclose(vlad.aggregate(x[0].reshape(10, 10, 32)), batch[0], atol=1e-6)


def test_vlad_dimension_mismatch_is_a_clear_error():
    vlad = VLAD(np.ones((32, 64), np.float32))
    with pytest.raises(FeatureDimensionError, match="dimension 128 but the VLAD vocabulary has dimension 64"):
        vlad.aggregate(np.ones((10, 128), np.float32))
    with pytest.raises(VocabularyError):
        VLAD(np.full((4, 8), np.nan, np.float32))


def _gem_anyloc_reference(patches: np.ndarray) -> np.ndarray:
    """AnyLoc's GeM (p = 3) from its definition, written independently: every patch divided by
    its Euclidean length, the cubes of each dimension averaged over patches, then the real
    (signed) cube root (np.cbrt)."""
    n, d = patches.shape
    out = np.zeros(d)
    for j in range(d):
        total = 0.0
        for i in range(n):
            length = math.sqrt(sum(float(v) * float(v) for v in patches[i]))
            total += (float(patches[i, j]) / length) ** 3
        out[j] = np.cbrt(total / n)
    return out


def test_gem_anyloc_variant_matches_its_definition():
    x = np.random.default_rng(5).normal(size=(40, 12)).astype(np.float32)  # negatives included
    ref = _gem_anyloc_reference(x)
    assert (ref < 0).any()  # the signed root matters
    np.testing.assert_allclose(GeM(3.0, normalize=False).aggregate(x), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(GeM(3.0).aggregate(x), ref / np.linalg.norm(ref), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("p", [1.0, 3.0, 7.5])
def test_gem_positive_variant_matches_its_definition(p):
    """Radenovic et al.'s GeM on non-negative (ReLU) features: (1/N sum_i x_i^p)^(1/p) per dimension."""
    x = np.abs(np.random.default_rng(5).normal(size=(60, 10))) + 0.01
    ref = np.array([(sum(v ** p for v in x[:, j]) / len(x)) ** (1 / p) for j in range(x.shape[1])])
    got = GeM(p, normalize=False, mode="positive").aggregate(x.astype(np.float32))
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    assert (GeM(p, normalize=False, mode="positive").aggregate(-x.astype(np.float32)) > 0).all()  # negatives dropped


def test_gem_limits_average_and_max():
    x = np.abs(np.random.default_rng(6).normal(size=(50, 8))).astype(np.float32) + 0.1
    np.testing.assert_allclose(GeM(1.0, normalize=False, mode="positive").aggregate(x), x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(GeM(200.0, normalize=False, mode="positive").aggregate(x), x.max(0), rtol=0.03)
