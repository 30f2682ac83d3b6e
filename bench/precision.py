"""Does bfloat16 on a CPU with native bf16 (AVX512-BF16 / AMX) cost place-recognition accuracy?

Corridor (111 map images, 111 queries, +-2 frames ground truth), hard VLAD with 32 clusters
fitted once on the map's float32 features (as a deployed vocabulary is), Recall@1/5 and the
encode time per image, float32 against bfloat16 in one run:

* XFeat, the one trained dense network available offline, run in torch (its ONNX graph
  converted with onnx2torch: `pip install --no-deps --target /tmp/o2t onnx2torch` and
  `PYTHONPATH=/tmp/o2t`; it is not a dependency of the package);
* DINOv2 ViT-S/14 and ViT-B/14 through the product's `Dinov2Backbone`, with random weights
  (no trained weights can be had here): they say whether the pipeline tolerates bf16, not
  what trained DINOv2 features do.

    PYTHONPATH=/tmp/o2t .venv/bin/python bench/precision.py

`precision: auto` picks bfloat16 on such CPUs on these numbers (backbones.resolve_dtype).
"""

from __future__ import annotations

import sys
import tempfile
import time
import types

import numpy as np
import torch
from _common import SHARED, VIT_SIZES, record, save_random_dinov2, table  # noqa: I001

from anyloc_ros.core.encoding.aggregation import VLAD
from anyloc_ros.core.encoding.backbones import Dinov2Backbone, cpu_has_native_bf16
from anyloc_ros.core.encoding.encoder import Encoder
from anyloc_ros.core.encoding.images import ResizePolicy, as_rgb_uint8, list_images, load_image
from anyloc_ros.core.encoding.vocabulary import fit_vocabulary
from anyloc_ros.eval.datasets import read_positives_csv
from anyloc_ros.eval.metrics import recall_at_k

CORRIDOR = SHARED / "corridor"


def load_xfeat_torch():
    """XFeat's ONNX graph as a torch module, or None when onnx2torch is not importable."""
    if "torchvision" not in sys.modules:  # onnx2torch imports torchvision ops XFeat does not use
        ops = types.ModuleType("torchvision.ops")
        for name in ("roi_align", "nms", "batched_nms"):
            setattr(ops, name, None)
        tv = types.ModuleType("torchvision")
        tv.ops = ops
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        import onnx2torch
    except ImportError:
        return None
    return onnx2torch.convert(str(SHARED / "weights" / "xfeat.onnx")).eval()


class TorchXFeat:
    """XFeat in torch, as a DenseBackbone (the xfeat_vlad preset's preprocessing: 640x640, [0, 1])."""

    kind = "xfeat-torch"
    feature_dim = 64

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype) -> None:
        self.net, self.dtype = net.to(dtype), dtype
        self.resize = ResizePolicy("fixed", size=(640, 640), patch_size=1)

    def preprocess(self, images):
        return self.resize([as_rgb_uint8(im) for im in images], (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))

    @torch.inference_mode()
    def features(self, pixels):
        x = pixels.to(self.dtype)  # the exported graph takes one image at a time
        return torch.cat([self.net(x[i:i + 1])[0] for i in range(len(x))]).permute(0, 2, 3, 1)

    def forward(self, pixels):
        return self.features(pixels).float()

    def extract(self, images):
        return self.forward(self.preprocess(images))

    def signature(self):
        return {"backbone": self.kind}

    def preprocessing(self):
        return self.resize.name


def evaluate(make_backbone, images, gt) -> list:
    """Recall@1/5 and ms/image, float32 vs bfloat16, one vocabulary fitted on float32 map features."""
    bb32 = make_backbone(torch.float32)
    ref32 = torch.cat([bb32.extract(images["ref"][i:i + 8]) for i in range(0, len(images["ref"]), 8)])
    centers, _ = fit_vocabulary((f.reshape(-1, f.shape[-1]).numpy() for f in ref32), 32, samples_per_image=1000,
                                seed=0)
    rows, descs = [], {}
    for dtype in (torch.float32, torch.bfloat16):
        enc = Encoder(make_backbone(dtype) if dtype != torch.float32 else bb32, VLAD(centers), batch_size=8)
        enc.encode(images["query"][:8])  # warm-up
        t = time.perf_counter()
        db, q = enc.encode(images["ref"]), enc.encode(images["query"])
        ms = (time.perf_counter() - t) * 1e3 / (len(images["ref"]) + len(images["query"]))
        r = recall_at_k(q @ db.T, gt, ks=(1, 5))
        descs[dtype] = q
        rows.append([str(dtype).replace("torch.", ""), f"{r[1]:.3f}", f"{r[5]:.3f}", f"{ms:.1f}"])
    cos = float(np.mean(np.sum(descs[torch.float32] * descs[torch.bfloat16], axis=1)))
    rows[1].append(f"{cos:.4f}")
    rows[0].append("1")
    return rows


def main() -> None:
    images = {s: [load_image(p) for p in list_images(CORRIDOR / s)] for s in ("ref", "query")}
    gt = read_positives_csv(CORRIDOR / "ground_truth.csv", len(images["query"]))
    rows = []
    xfeat = load_xfeat_torch()
    if xfeat is None:
        print("onnx2torch not importable: XFeat rows skipped (see the module docstring)")
    else:
        rows += [["XFeat (trained), 640x640", *r] for r in evaluate(lambda d: TorchXFeat(xfeat, d), images, gt)]
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VIT_SIZES.items():
            path = f"{tmp}/{name.replace('/', '')}"
            save_random_dinov2(path, **kw)

            def make(dtype, path=path):
                return Dinov2Backbone(path, layer=9, facet="value", max_side=448, device="cpu",
                                      precision=str(dtype).replace("torch.", ""))
            rows += [[f"DINOv2 {name} L9 value (random weights), 126x168", *r] for r in evaluate(make, images, gt)]
    body = table(["backbone", "precision", "Recall@1", "Recall@5", "encode ms/img", "query descriptor cosine to fp32"],
                 rows)
    body += (f"\n\nNative bf16 on this CPU (oneDNN): {cpu_has_native_bf16()}. Corridor: 111 map images, 111 queries; "
             "VLAD (hard, 32 clusters) fitted on the map's float32 features and used for both precisions.")
    record("float32 vs bfloat16 on the CPU: corridor recall", "PYTHONPATH=/tmp/o2t .venv/bin/python bench/precision.py",
           body)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"took {time.perf_counter() - t0:.0f} s")
