"""The encoder's device path and precision policy, as far as a CPU can check them.

The GPU-resident path (uint8 upload, preprocessing, network, VLAD/GeM, PCA and compact patches
on the device, only descriptors back) is the same code on any torch device: here it runs on
the CPU with `preprocess="device"` against the host path. test_cuda.py runs it on a GPU.
"""

import numpy as np
import pytest
import torch

from anyloc_ros.core.config.encoder import EncoderConfig
from anyloc_ros.core.encoding import backbones
from anyloc_ros.core.encoding.aggregation import VLAD, GeM
from anyloc_ros.core.encoding.backbones import Dinov2Backbone, fp32_math, nonfinite_hint, resolve_dtype
from anyloc_ros.core.encoding.encoder import Encoder
from anyloc_ros.core.encoding.images import ResizePolicy, list_images, load_image
from anyloc_ros.core.encoding.onnx_backbone import export_dinov2_onnx
from anyloc_ros.core.encoding.patches import PatchCompressor
from anyloc_ros.core.encoding.projection import PCA
from anyloc_ros.core.errors import ConfigError, FeatureDimensionError
from anyloc_ros.testing import TINY, save_random_dinov2

from ..conftest import SHARED_DATA

TUM_RGB = SHARED_DATA / "tum_fr2_desk" / "rgb"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_dinov2_device")
    save_random_dinov2(d, **dict(TINY, num_hidden_layers=3))
    return d


@pytest.fixture(scope="module")
def frames():
    """Real 640x480 camera frames (TUM fr2/desk)."""
    if not TUM_RGB.is_dir():
        pytest.skip(f"{TUM_RGB} not found (../shared/data)")
    return [load_image(p) for p in list_images(TUM_RGB)[:6]]


def test_precision_policy(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_dtype("auto", cuda) == torch.float16
    monkeypatch.setattr(backbones, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == torch.bfloat16  # measured: bench/precision.py
    monkeypatch.setattr(backbones, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("float16", cpu) == torch.float32  # fp16 on a CPU: slow and poorly supported
    assert resolve_dtype("bfloat16", cuda) == torch.bfloat16
    with pytest.raises(ConfigError, match="precision must be one of"):
        resolve_dtype("fp8", cpu)
    for field, bad in (("precision", "half"), ("compile", "fast"), ("preprocess", "gpu")):
        with pytest.raises(ConfigError, match=f"backbone.{field} must be one of"):
            EncoderConfig.from_dict({"preset": "dinov2_vits14_gem", "backbone": {field: bad}})


def test_device_names(monkeypatch, caplog):
    """auto / cpu / cuda:N: an absent GPU falls back to the CPU with a warning; a GPU index the
    machine does not have (cuda:1 on a one-GPU robot) is a clear configuration error."""
    from anyloc_ros.core.encoding.backbones import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with caplog.at_level("WARNING"):
        assert resolve_device("cuda:0") == torch.device("cpu")
    assert "CUDA is not available" in caplog.text
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"'cuda:1': this machine has 1 CUDA device\(s\) \(cuda:0 to cuda:0\)"):
        resolve_device("cuda:1")


def test_onnx_backbone_runs_on_the_gpu_it_is_given(monkeypatch):
    """device cuda:1 puts onnxruntime's GPU providers on ordinal 1 (they default to 0); a device
    name that is not one is refused before the model is loaded."""
    import onnxruntime as ort

    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone

    from ..conftest import XFEAT_ONNX, require

    require(XFEAT_ONNX)
    asked = []
    real_session = ort.InferenceSession

    def session(path, sess_options=None, providers=()):
        asked.append(list(providers))
        return real_session(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    for device, ordinal in (("cuda:1", 1), ("cuda", 0), ("auto", 0)):
        OnnxBackbone(XFEAT_ONNX, device=device)
        assert asked[-1] == [("CUDAExecutionProvider", {"device_id": ordinal}), "CPUExecutionProvider"]
    OnnxBackbone(XFEAT_ONNX, device="cpu")
    assert asked[-1] == ["CPUExecutionProvider"]
    for bad in ("gpu", "mps"):
        with pytest.raises(ConfigError, match=repr(bad)):
            OnnxBackbone(XFEAT_ONNX, device=bad)


def test_fp32_math_switches_tf32_for_one_forward_and_restores_it():
    """float32 on CUDA: true fp32 unless tf32 is allowed; the process-wide switches come back."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    with fp32_math(torch.device("cuda"), allow_tf32=False):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with fp32_math(torch.device("cuda"), allow_tf32=True):
        assert (conv.fp32_precision, matmul.fp32_precision) == ("tf32", "tf32")
    with pytest.raises(RuntimeError), fp32_math(torch.device("cuda"), allow_tf32=False):
        raise RuntimeError("a failing forward")
    assert (conv.fp32_precision, matmul.fp32_precision) == before
    with fp32_math(torch.device("cpu"), allow_tf32=False):  # nothing to switch on a CPU
        assert (conv.fp32_precision, matmul.fp32_precision) == before


@pytest.mark.parametrize("policy", [ResizePolicy("aspect", 448), ResizePolicy("fixed", size=(322, 322)),
                                    ResizePolicy("anyloc"), ResizePolicy("aspect", 1000)])
def test_device_preprocessing_matches_the_host_path(frames, policy):
    """Resize + crop + normalise in torch after a uint8 upload ~ OpenCV on the host: AnyLoc's
    resize equal to float precision, antialiased downscaling within ~1 grey level on average."""
    host = policy(frames[:2])
    dev = policy.on_device(frames[:2], torch.device("cpu"))
    assert dev.shape == host.shape and dev.dtype == torch.float32
    err = (dev - host).abs() * 0.226 * 255  # back to grey levels (ImageNet std ~0.226)
    if policy.mode == "anyloc":  # bilinear without antialiasing on both sides
        assert err.max() < 1e-2
    else:  # antialiased bilinear vs INTER_AREA (which has odd spots where one side grows: 480x640 -> 476x644)
        assert err.mean() < 1.0 and torch.quantile(err.flatten()[::7], 0.99) < 20
    half = policy.on_device(frames[:2], torch.device("cpu"), dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_device_path_encoder_equals_host_path_and_brings_back_only_descriptors(tiny, frames):
    """The device-resident path on the CPU: same descriptors as the host path (AnyLoc resize:
    identical preprocessing), and what comes back is the descriptors and compact patches only."""
    rng = np.random.default_rng(0)
    vlad = VLAD(rng.normal(size=(8, 32)).astype(np.float32))
    comps, _ = np.linalg.qr(rng.normal(size=(8 * 32, 16)))
    pca = PCA(np.zeros(8 * 32, np.float32), comps.T.astype(np.float32), np.ones(16, np.float32))
    kw = dict(layer=2, resize="anyloc", device="cpu", precision="float32")
    host = Encoder(Dinov2Backbone(str(tiny), preprocess="host", **kw), vlad, pca)
    dev = Encoder(Dinov2Backbone(str(tiny), preprocess="device", **kw), vlad, pca)
    assert not host.backbone.preprocess_on_device and dev.backbone.preprocess_on_device
    a, b = host.encode(frames), dev.encode(frames)
    np.testing.assert_allclose(a, b, atol=2e-5)
    assert dev.timings.host_bytes == a.nbytes  # 6 x 16 float32: no feature map
    comp = PatchCompressor(32, dim=8, grid=4)
    enc = dev.encode_frame(frames[0], comp)
    assert enc.patches.shape == (16, 8) and enc.patches.dtype == np.float16
    assert dev.timings.host_bytes == 16 * 4 + enc.patches.nbytes
    np.testing.assert_allclose(enc.patches, host.encode_frame(frames[0], comp).patches, atol=2e-3)
    _, feats = dev.encode_with_features(frames[:2])  # asked for: the (h, w, D) maps come back too
    assert dev.timings.host_bytes == 2 * 16 * 4 + 2 * 34 * 45 * 32 * 4 and feats[0].dtype == torch.float32


def test_aspect_resize_on_the_device_keeps_retrieval(tiny, frames):
    """With a downscale the two filters differ slightly; descriptors stay nearly the same (GeM)."""
    kw = dict(layer=2, max_side=224, device="cpu", precision="float32")
    host = Encoder(Dinov2Backbone(str(tiny), preprocess="host", **kw), GeM()).encode(frames)
    dev = Encoder(Dinov2Backbone(str(tiny), preprocess="device", **kw), GeM()).encode(frames)
    cos = np.sum(host * dev, axis=1)
    assert cos.min() > 0.99  # measured 0.993-0.9999 with this tiny random model
    assert (np.argmax(dev @ host.T, axis=1) == np.arange(len(frames))).all()


def test_bfloat16_on_the_cpu_stays_close_to_float32(tiny, frames):
    kw = dict(layer=2, max_side=224, device="cpu")
    f32 = Encoder(Dinov2Backbone(str(tiny), precision="float32", **kw), GeM())
    b16 = Encoder(Dinov2Backbone(str(tiny), precision="bfloat16", **kw), GeM())
    assert b16.signature()["precision"] == "bfloat16"
    cos = np.sum(f32.encode(frames) * b16.encode(frames), axis=1)
    assert cos.min() > 0.99


def test_nonfinite_features_say_which_setting_to_change(tiny, frames):
    bb = Dinov2Backbone(str(tiny), layer=2, max_side=112, device="cpu", precision="float32")
    with torch.no_grad():
        bb.extractor.blocks[0].mlp.fc1.weight[0, 0] = float("inf")  # a damaged model
    with pytest.raises(FeatureDimensionError, match="NaN/inf descriptors from torch.float32 features: the model"):
        Encoder(bb, GeM()).encode(frames[:1])
    assert "bfloat16" in nonfinite_hint(torch.float16)


def test_export_needs_float32_weights(tiny, tmp_path):
    bb = Dinov2Backbone(str(tiny), layer=2, device="cpu", precision="bfloat16")
    with pytest.raises(ConfigError, match="export from a float32 backbone"):
        export_dinov2_onnx(bb, tmp_path / "x.onnx", 56, 56)
    assert not (tmp_path / "x.onnx").exists()


def test_compiled_backbone_gives_the_same_features(tiny, frames):
    """`compile: default` (torch.compile; on CUDA `reduce-overhead` adds CUDA graphs): same
    features as eager, compiled once per input size (about 30 s here)."""
    kw = dict(layer=2, max_side=70, device="cpu", precision="float32")
    eager = Dinov2Backbone(str(tiny), **kw)
    compiled = Dinov2Backbone(str(tiny), compile="default", **kw)
    assert compiled.compile_mode == "default" and compiled._network is not compiled.extractor
    for im in (frames[0], frames[1]):
        torch.testing.assert_close(compiled.extract([im]), eager.extract([im]), atol=1e-5, rtol=1e-5)
