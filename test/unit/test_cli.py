"""The `anyloc` CLI as a user runs it (real processes, real corridor images)."""

import subprocess
import sys

import numpy as np
import pytest

from ..conftest import CORRIDOR, REPO, XFEAT_ONNX, require

XFEAT_CFG = REPO / "config" / "encoders" / "xfeat_vlad.yaml"


def anyloc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


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
    # a PCA whose components are all zero would make every image look the same: refused, one line
    from anyloc_ros.core.encoding.projection import FORMAT
    from anyloc_ros.core.fileio import save_npz

    from .test_field_inputs import assert_one_line_error

    save_npz(tmp_path / "zero_pca.npz", {"format": FORMAT}, mean=np.zeros(16 * 64, np.float32),
             components=np.zeros((8, 16 * 64), np.float32), scale=np.ones(8, np.float32))
    r = anyloc("encode", "--config", str(XFEAT_CFG), "--vocabulary", str(vocab), "--pca", str(tmp_path / "zero_pca.npz"),
               "--images", str(CORRIDOR / "query"), "--output", str(tmp_path / "z.npz"), "--quiet")
    assert_one_line_error(r, "encode", "degenerate", "8 of its 8 components")
    assert not (tmp_path / "z.npz").exists()


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    from .test_field_inputs import assert_one_line_error

    empty = tmp_path / "empty"
    empty.mkdir()
    r = anyloc("build-vocab", "--preset", "xfeat_vlad", "--images", str(empty), "--output", str(tmp_path / "v.npz"))
    assert_one_line_error(r, "build-vocab")
    r = anyloc("encode", "--config", str(XFEAT_CFG), "--images", str(empty), "--output", str(tmp_path / "x.npz"))
    assert_one_line_error(r, "encode", "vocabulary is required")
    r = anyloc("encode", "--preset", "dinov2_vits14_gem", "--images", str(empty), "--output", str(tmp_path / "x.npz"))
    assert_one_line_error(r, "encode", "hf download")


def test_export_onnx_command_roundtrip(tmp_path):
    """`anyloc export-onnx` on a DINOv2 config (tiny random model in a local directory)."""
    import torch

    from anyloc_ros.core.encoding.backbones import Dinov2Backbone
    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone
    from anyloc_ros.testing import save_random_dinov2

    save_random_dinov2(tmp_path / "tiny")
    (tmp_path / "enc.yaml").write_text("backbone: {type: dinov2, model: tiny, layer: 2, facet: value, max_side: 70}\n"
                                       "aggregation: {type: gem}\n")
    r = anyloc("export-onnx", "--config", str(tmp_path / "enc.yaml"), "--output", str(tmp_path / "x.onnx"),
               "--height", "56", "--width", "70")
    assert r.returncode == 0, r.stderr
    assert "layer 2 facet value" in r.stdout and (tmp_path / "x.json").is_file()
    onnx_bb = OnnxBackbone(tmp_path / "x.onnx", output_layout="nhwc", mean=(0.485, 0.456, 0.406),
                           std=(0.229, 0.224, 0.225), max_side=70, device="cpu")
    ref = Dinov2Backbone(str(tmp_path / "tiny"), layer=2, facet="value", max_side=70, device="cpu",
                         precision="float32")  # what export-onnx exports
    img = np.random.default_rng(0).integers(0, 255, (42, 70, 3), dtype=np.uint8)
    torch.testing.assert_close(onnx_bb.extract([img]), ref.extract([img]), atol=1e-4, rtol=1e-4)
    bad = anyloc("export-onnx", "--config", str(tmp_path / "enc.yaml"), "--output", str(tmp_path / "y.onnx"),
                 "--height", "50", "--width", "70")
    assert bad.returncode == 2 and "multiples of the patch size 14" in bad.stderr


@pytest.mark.parametrize("argv,option,what", [
    (["replay", "bag", "--rate", "0"], "--rate", "positive number"),
    (["replay", "bag", "--loop-radius", "nan"], "--loop-radius", "positive number"),
    (["replay", "bag", "--loop-min-gap", "-1"], "--loop-min-gap", "non-negative number"),
    (["make-bag", "--images", "x", "--output", "y", "--fps", "inf"], "--fps", "positive number"),
    (["make-bag", "--images", "x", "--output", "y", "--depth-scale", "-5000"], "--depth-scale", "positive number"),
    (["build-vocab", "--images", "x", "--output", "y", "--clusters", "0"], "--clusters", "positive integer"),
    (["build-vocab", "--images", "x", "--output", "y", "--max-images", "-3"], "--max-images", "non-negative integer"),
    (["eval", "--radius", "-25"], "--radius", "positive number"),
    (["--max-image-pixels", "1.5", "encode"], "--max-image-pixels", "positive integer"),
])
def test_numbers_out_of_range_are_refused_by_name_before_anything_runs(argv, option, what, capsys):
    """A rate of 0 divided by zero mid-replay, a negative gap or radius made precision/recall
    meaningless, --clusters 0 reached k-means: each is now an argparse error naming the option."""
    from anyloc_ros.tools.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {option}: must be a {what}" in err, err
    ok = build_parser().parse_args(["replay", "bag", "--rate", "0.5", "--loop-min-gap", "0"])
    assert (ok.rate, ok.loop_min_gap, ok.loop_radius) == (0.5, 0.0, 0.5)
