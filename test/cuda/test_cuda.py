"""The CUDA lane: the encoder, VLAD, ONNX and faiss on a GPU (marked `cuda`; skipped, with the
reason, where torch sees no CUDA device).

    python -m pytest -q -m cuda test/test_cuda.py      # on a CUDA machine (../shared/GPU.md)

DINOv2 weights are random (built with transformers and loaded through the package's own
path): they time and compute like trained ones, but say nothing about trained activations
(fp16 overflow is guarded in code and tested below with a model made to overflow).
"""

import os

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from anyloc_ros.core.encoding.aggregation import VLAD, GeM
from anyloc_ros.core.encoding.backbones import Dinov2Backbone
from anyloc_ros.core.encoding.encoder import Encoder
from anyloc_ros.core.encoding.images import list_images, load_image
from anyloc_ros.core.encoding.patches import PatchCompressor
from anyloc_ros.core.encoding.projection import PCA
from anyloc_ros.core.errors import FeatureDimensionError

from ..conftest import SHARED_DATA, XFEAT_ONNX

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch (CPU-only machine)"),
]


class DeviceToHostBytes(TorchDispatchMode):
    """Counts the bytes every torch op copies from a CUDA tensor into host memory."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.copies: list[tuple[tuple[int, ...], str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        src = dst = None
        if func is torch.ops.aten._to_copy.default:
            src, dst = args[0], out
        elif func is torch.ops.aten.copy_.default:
            dst, src = args[0], args[1]
        elif func is torch.ops.aten._local_scalar_dense.default:  # .item()
            src, dst = args[0], torch.empty(0)
        if isinstance(src, torch.Tensor) and src.is_cuda and isinstance(dst, torch.Tensor) and not dst.is_cuda:
            self.bytes += src.numel() * src.element_size()
            self.copies.append((tuple(src.shape), str(src.dtype)))
        return out


@pytest.fixture(scope="module")
def vit_s(tmp_path_factory):
    """A ViT-S/14-sized DINOv2 (4 of its 12 blocks, to keep the CPU reference quick)."""
    from transformers import Dinov2Config, Dinov2Model

    d = tmp_path_factory.mktemp("vits14_random")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536,
                             patch_size=14, image_size=518)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def frames():
    rgb = SHARED_DATA / "tum_fr2_desk" / "rgb"
    if rgb.is_dir():
        return [load_image(p) for p in list_images(rgb)[:8]]
    rng = np.random.default_rng(0)  # the shared data did not travel: smooth random images
    return [np.clip(rng.normal(128, 40, (480, 640, 3)), 0, 255).astype(np.uint8) for _ in range(8)]


def _parts(dim: int, k: int = 32, out: int = 256):
    rng = np.random.default_rng(0)
    vlad = VLAD(rng.normal(size=(k, dim)).astype(np.float32))
    comps, _ = np.linalg.qr(rng.normal(size=(k * dim, out)))
    return vlad, PCA(np.zeros(k * dim, np.float32), comps.T.astype(np.float32), np.ones(out, np.float32))


def _encoder(model_dir, device, precision, **kw) -> Encoder:
    vlad, pca = _parts(384)
    bb = Dinov2Backbone(str(model_dir), layer=3, facet="value", resize="anyloc", device=device, precision=precision,
                        **kw)
    return Encoder(bb, vlad, pca, batch_size=4)


@pytest.mark.parametrize("precision, min_cosine", [("float32", 0.99999), ("float16", 0.999), ("bfloat16", 0.99)])
def test_cuda_encoder_matches_cpu_float32(vit_s, frames, precision, min_cosine):
    """End to end on the GPU (uint8 upload, preprocessing, network, VLAD, PCA there) against the
    CPU float32 host path; AnyLoc's resize is identical on both paths, so the bounds are the
    precision's. float32 runs with TF32 off (the default)."""
    ref = _encoder(vit_s, "cpu", "float32").encode(frames)
    enc = _encoder(vit_s, "cuda", precision)
    assert enc.backbone.preprocess_on_device and enc.backbone.dtype == getattr(torch, precision)
    got = enc.encode(frames)
    cos = np.sum(ref * got, axis=1)
    assert cos.min() >= min_cosine, cos


def test_tf32_is_off_for_float32_unless_asked(vit_s, frames):
    """PyTorch's default lets cuDNN run the patch-embedding convolution in TF32; `tf32: false`
    (the default) gives CPU-equal features (3e-6 measured on an H100 vs 8e-4 with TF32)."""
    px = Dinov2Backbone(str(vit_s), layer=3, resize="anyloc", device="cpu", precision="float32").preprocess(frames[:2])
    cpu = Dinov2Backbone(str(vit_s), layer=3, resize="anyloc", device="cpu", precision="float32").forward(px)
    ieee = Dinov2Backbone(str(vit_s), layer=3, resize="anyloc", device="cuda", precision="float32").forward(px)
    tf32 = Dinov2Backbone(str(vit_s), layer=3, resize="anyloc", device="cuda", precision="float32",
                          tf32=True).forward(px)
    scale = cpu.abs().max()
    assert (ieee - cpu).abs().max() / scale < 1e-4
    assert (tf32 - cpu).abs().max() > (ieee - cpu).abs().max()


def test_gpu_vlad_equals_cpu_vlad():
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(4, 1530, 384)).astype(np.float32))
    vlad = VLAD(rng.normal(size=(32, 384)).astype(np.float32))
    cpu = vlad.aggregate_batch_tensor(feats)
    gpu = vlad.aggregate_batch_tensor(feats.cuda())
    assert gpu.is_cuda
    assert (vlad.assign(feats) == vlad.assign(feats.cuda()).cpu()).float().mean() > 0.999
    cos = torch.nn.functional.cosine_similarity(cpu, gpu.cpu(), dim=1)
    assert cos.min() > 0.9999
    torch.testing.assert_close(GeM().aggregate_batch_tensor(feats.cuda()).cpu(), GeM().aggregate_batch_tensor(feats),
                               atol=1e-5, rtol=1e-4)


def test_no_feature_map_comes_back_to_the_host(vit_s, frames):
    """Only descriptors (and compact patches, when asked) are copied from the GPU: counted on
    every torch op while encoding 4 frames at 476x630 (a 34x45x384 feature map each)."""
    enc = _encoder(vit_s, "cuda", "float16")
    enc.encode(frames[:4])  # warm-up
    with DeviceToHostBytes() as d2h:
        descs = enc.encode(frames[:4])
    assert d2h.bytes == descs.nbytes == enc.timings.host_bytes, d2h.copies
    comp = PatchCompressor(384, dim=64, grid=16)
    with DeviceToHostBytes() as d2h:
        frame = enc.encode_frame(frames[0], comp)
    assert d2h.bytes <= frame.descriptor.nbytes + frame.patches.nbytes, d2h.copies  # patches leave as float16
    assert frame.patches.shape == (16 * 16, 64)
    feature_map = 34 * 45 * 384 * 2
    assert d2h.bytes < feature_map / 10


def test_fp16_overflow_is_reported_with_the_setting_to_change(vit_s, frames):
    """Trained ViT-G/14 has activations beyond float16's range; a model scaled to overflow the
    same way gives a clear error naming bfloat16, and runs in bfloat16."""
    enc = _encoder(vit_s, "cuda", "float16")
    with torch.no_grad():
        enc.backbone.extractor.blocks[0].mlp.fc2.weight.mul_(3e5)  # activations up to ~2e5, beyond fp16's 65504
    with pytest.raises(FeatureDimensionError, match="float16 overflow.*bfloat16"):
        enc.encode(frames[:1])
    enc16 = _encoder(vit_s, "cuda", "bfloat16")
    with torch.no_grad():
        enc16.backbone.extractor.blocks[0].mlp.fc2.weight.mul_(3e5)
    assert np.isfinite(enc16.encode(frames[:1])).all()


def test_reduce_overhead_compile_matches_eager(vit_s, frames):
    """`compile: reduce-overhead` (torch.compile with CUDA graphs) gives the eager descriptors."""
    eager = _encoder(vit_s, "cuda", "float16")
    graphs = _encoder(vit_s, "cuda", "float16", compile="reduce-overhead")
    for _ in range(3):  # compile, record, replay
        got = graphs.encode(frames[:1])
    assert np.sum(got * eager.encode(frames[:1])) > 0.999



def lane_skip(reason: str) -> None:
    """On a GPU machine the CUDA lane runs whole: a missing GPU build (faiss-gpu, onnxruntime-gpu,
    which `bash scripts/setup.sh` installs where it finds a GPU) or missing data fails, it does not
    skip. ANYLOC_CUDA_ALLOW_SKIPS=1 allows it where they cannot be installed (a lent GPU without
    network: ../shared/GPU.md)."""
    if os.environ.get("ANYLOC_CUDA_ALLOW_SKIPS", "") not in ("", "0"):
        pytest.skip(reason)
    pytest.fail(f"{reason}: on a GPU machine the CUDA lane runs whole (bash scripts/setup.sh installs the GPU "
                "builds; ANYLOC_CUDA_ALLOW_SKIPS=1 lets it skip)")

def test_onnx_backbone_on_the_cuda_provider():
    import onnxruntime as ort

    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        lane_skip("onnxruntime has no CUDA provider here (onnxruntime-gpu not installed)")
    if not XFEAT_ONNX.is_file():
        lane_skip(f"{XFEAT_ONNX} not found")
    gpu = OnnxBackbone(XFEAT_ONNX, output_name="output", device="cuda")
    assert gpu.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    cpu = OnnxBackbone(XFEAT_ONNX, output_name="output", device="cpu")
    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    torch.testing.assert_close(gpu.extract([img]), cpu.extract([img]), atol=1e-3, rtol=1e-3)


def test_xfeat_local_features_beside_dinov2_on_the_gpu(vit_s, frames):
    """DINOv2 on the GPU with XFeat's ONNX network beside it (its CUDA provider where
    onnxruntime-gpu is installed, else the CPU): the same keypoints as the CPU encoder's, with
    depths and the camera applied, and only descriptors and keypoints come back."""
    from anyloc_ros.core.camera import CameraModel
    from anyloc_ros.core.config.encoder import LocalFeatureConfig

    if not XFEAT_ONNX.is_file():
        lane_skip(f"{XFEAT_ONNX} not found")
    local = LocalFeatureConfig(type="xfeat", model_path=str(XFEAT_ONNX))
    vlad, pca = _parts(384)
    encoders = {d: Encoder(Dinov2Backbone(str(vit_s), layer=3, resize="anyloc", device=d, precision="float32"), vlad,
                           pca, batch_size=1, local=local) for d in ("cpu", "cuda")}
    cam = CameraModel(np.array([[520.9, 0, 325.1], [0, 521.0, 249.7], [0, 0, 1]]), np.zeros(5))
    depth = np.full(frames[0].shape[:2], 1.5, np.float32)
    cpu, gpu = (encoders[d].encode_frame(frames[0], keypoints=512, camera=cam, depth=depth) for d in ("cpu", "cuda"))
    assert encoders["cuda"].provides_keypoints and len(gpu.local.keypoints) == 512
    assert float(cpu.descriptor @ gpu.descriptor) > 0.99999
    np.testing.assert_allclose(gpu.local.keypoints, cpu.local.keypoints, atol=0.5)
    np.testing.assert_allclose(gpu.local.depths, 1.5)
    print(f"keypoint stage on cuda: {encoders['cuda'].timings.extra['keypoints'] * 1e3:.1f} ms "
          f"({encoders['cuda']._xfeat.network.providers[0]})")


def test_faiss_gpu_index_matches_cpu(tmp_path):
    """The map's GPU replica with faiss-gpu (test_database.py checks its bookkeeping everywhere)."""
    from anyloc_ros.core.config.map import IndexConfig
    from anyloc_ros.core.map import index as map_index
    from anyloc_ros.core.map.database import PlaceDatabase

    if map_index.gpu_count() == 0:
        lane_skip("faiss sees no GPU (faiss-cpu installed)")
    sig = {"backbone": "test", "dim": 64}
    x = np.random.default_rng(0).normal(size=(500, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    for kind in ("flat", "ivf"):
        dbs = [PlaceDatabase(tmp_path / f"{kind}-{gpu}", sig, index=IndexConfig(type=kind, use_gpu=gpu, nlist=8,
                                                                                 nprobe=8, ivf_min_train=300))
               for gpu in ("true", "false")]
        for db in dbs:
            db.add_many(x, stamps_ns=list(range(500)))
        assert dbs[0]._index.on_gpu and not dbs[1]._index.on_gpu
        for kw in ({}, {"exclude_ids": range(450, 501)}, {"max_id": 200}):
            got, want = (db.search(x[::50] + 0.01, k=5, **kw) for db in dbs)
            assert [[m.keyframe_id for m in r] for r in got] == [[m.keyframe_id for m in r] for r in want]
        for db in dbs:
            db.remove(range(1, 100))
        got, want = (db.search(x[::50], k=3) for db in dbs)
        assert [[m.keyframe_id for m in r] for r in got] == [[m.keyframe_id for m in r] for r in want]
        for db in dbs:
            db.close()
