"""Vocabulary building (bounded memory), files, AnyLoc import; PCA."""

import numpy as np
import pytest
import torch

from anyloc_ros.core.encoding.projection import PCA
from anyloc_ros.core.encoding.vocabulary import PatchReservoir, Vocabulary, fit_vocabulary, spherical_kmeans
from anyloc_ros.core.errors import VocabularyError


def test_reservoir_is_bounded_and_uniform():
    r = PatchReservoir(capacity=1000, dim=1, seed=0)
    for start in range(0, 100_000, 500):
        r.add(np.arange(start, start + 500, dtype=np.float32)[:, None])
    assert r.samples.shape == (1000, 1) and r.seen == 100_000
    # uniform over the whole stream: mean index close to the middle, every decile represented
    vals = r.samples[:, 0]
    assert abs(vals.mean() - 50_000) < 3_000
    assert len(np.unique((vals // 10_000).astype(int))) == 10


def test_spherical_kmeans_recovers_clusters():
    rng = np.random.default_rng(0)
    true = rng.normal(size=(4, 16))
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    x = np.concatenate([t + 0.05 * rng.normal(size=(300, 16)) for t in true]).astype(np.float32)
    c = spherical_kmeans(x, 4, seed=0)
    c_hat = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert (c_hat @ true.T).max(axis=0).min() > 0.99  # every true centre found
    # AnyLoc's centres: the mean of the unit vectors assigned (by cosine) to each cluster
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels = (u @ c_hat.T).argmax(axis=1)
    for k in range(4):
        np.testing.assert_allclose(c[k], u[labels == k].mean(axis=0), atol=1e-5)
    assert (np.linalg.norm(c, axis=1) < 1.0).all()
    with pytest.raises(VocabularyError, match="at least 32"):
        spherical_kmeans(x[:10], 32)


def test_fit_vocabulary_streams_with_subsampling():
    rng = np.random.default_rng(1)
    stream = (rng.normal(size=(5000, 8)).astype(np.float32) for _ in range(20))
    centers, info = fit_vocabulary(stream, 8, samples_per_image=200, max_samples=1500)
    assert centers.shape == (8, 8)
    assert info["images"] == 20 and info["samples"] == 1500


def test_save_load_roundtrip_and_compatibility(tmp_path):
    sig = {"backbone": "dinov2", "model": "m", "layer": 31, "facet": "value", "feature_dim": 4}
    v = Vocabulary(np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32), dict(sig, images=7))
    v.save(tmp_path / "v.npz")
    w = Vocabulary.load(tmp_path / "v.npz")
    np.testing.assert_array_equal(v.centers, w.centers)
    assert w.metadata["images"] == 7 and w.content_hash() == v.content_hash()
    w.check_compatible(sig)
    with pytest.raises(VocabularyError, match="facet: vocabulary 'value' vs backbone 'key'"):
        w.check_compatible(dict(sig, facet="key"))
    with pytest.raises(VocabularyError, match="4-D centres but the backbone gives 8-D"):
        w.check_compatible(dict(sig, feature_dim=8))


def test_corrupt_or_foreign_vocabulary_files(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(VocabularyError, match="bad.npz is unreadable or corrupt"):
        Vocabulary.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(VocabularyError, match="not an anyloc_ros vocabulary"):
        Vocabulary.load(tmp_path / "other.npz")
    with pytest.raises(VocabularyError, match="not found"):
        Vocabulary.load(tmp_path / "missing.npz")


def test_anyloc_c_centers_pt_is_accepted_without_pickle(tmp_path):
    c = torch.randn(32, 1536)
    torch.save(c, tmp_path / "c_centers.pt")
    with pytest.raises(VocabularyError, match="declare them.*vocabulary_layer"):
        Vocabulary.load(tmp_path / "c_centers.pt")  # which features it clusters is not in the file
    v = Vocabulary.load(tmp_path / "c_centers.pt", layer=31, facet="value")
    assert v.centers.shape == (32, 1536)
    np.testing.assert_array_equal(v.centers, c.numpy())
    v.check_compatible({"backbone": "dinov2", "layer": 31, "facet": "value", "feature_dim": 1536})
    for other in ({"layer": 30, "facet": "value"}, {"layer": 31, "facet": "key"}):  # 1536-D too, other features
        with pytest.raises(VocabularyError, match="built for other features"):
            v.check_compatible({"backbone": "dinov2", **other, "feature_dim": 1536})
    # a pickled arbitrary object is refused by weights_only loading
    torch.save({"c_centers": c, "evil": object()}, tmp_path / "evil.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(VocabularyError, match="cannot read AnyLoc vocabulary"):
        Vocabulary.load(tmp_path / "evil.pt", layer=31, facet="value")


@pytest.mark.parametrize("n,d", [(50, 300), (400, 20)])
def test_pca_matches_numpy_svd(n, d, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, d)) * np.linspace(5, 0.1, d)
    pca = PCA.fit(x, 10, whiten=False)
    xc = x - x.mean(0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ref = xc @ vt[:10].T
    got = pca.transform(x.astype(np.float32))
    np.testing.assert_allclose(np.abs(got), np.abs(ref), rtol=1e-3, atol=1e-3)  # sign per component is free
    white = PCA.fit(x, 10, whiten=True).transform(x.astype(np.float32))
    np.testing.assert_allclose(white.var(axis=0, ddof=1), 1.0, rtol=1e-3)
    pca.save(tmp_path / "p.npz")
    np.testing.assert_array_equal(PCA.load(tmp_path / "p.npz").transform(x[:3]), pca.transform(x[:3]))
