"""The `anyloc` CLI as a user runs it (real processes, real corridor images)."""

import subprocess
import sys

import numpy as np
import pytest

from .conftest import CORRIDOR, REPO, XFEAT_ONNX, require

XFEAT_CFG = REPO / "config" / "encoders" / "xfeat_vlad.yaml"


def anyloc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anyloc_ros.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.realdata
def test_build_vocab_then_encode(tmp_path):
    require(XFEAT_ONNX)
    vocab = tmp_path / "v.npz"
    r = anyloc("build-vocab", "--config", str(XFEAT_CFG), "--images", str(CORRIDOR / "ref"),
               "--clusters", "16", "--max-images", "24", "--output", str(vocab), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "vocabulary: 16 x 64 from 24 images" in r.stdout
    assert "vocabulary features" in r.stderr  # progress bar
    out = tmp_path / "q.npz"
    r = anyloc("encode", "--config", str(XFEAT_CFG), "--vocabulary", str(vocab), "--images",
               str(CORRIDOR / "query"), "--output", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    from anyloc_ros.core.fileio import load_npz

    meta, arrays = load_npz(out)
    assert arrays["descriptors"].shape == (111, 16 * 64)
    np.testing.assert_allclose(np.linalg.norm(arrays["descriptors"], axis=1), 1.0, atol=1e-5)
    assert meta["encoder"]["feature_dim"] == 64 and len(meta["images"]) == 111


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = anyloc("build-vocab", "--preset", "xfeat_vlad", "--images", str(empty), "--output", str(tmp_path / "v.npz"))
    assert r.returncode == 2
    assert "error:" in r.stderr and "Traceback" not in r.stderr
    r = anyloc("encode", "--config", str(XFEAT_CFG), "--images", str(empty), "--output", str(tmp_path / "x.npz"))
    assert r.returncode == 2 and "vocabulary is required" in r.stderr
    r = anyloc("encode", "--preset", "dinov2_vits14_gem", "--images", str(empty), "--output", str(tmp_path / "x.npz"))
    assert r.returncode == 2 and "hf download" in r.stderr and "Traceback" not in r.stderr
