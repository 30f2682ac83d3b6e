"""Encoder overhead: full `encode` (JPEG decode, resize, normalise, backbone, facet, VLAD, PCA)
against the bare backbone forward on the same input, plus FLOPs vs this machine's matmul
throughput, and fp32 vs bf16 on CPU.

    .venv/bin/python bench/encoder_overhead.py                      # this CPU
    .venv/bin/python bench/encoder_overhead.py --local-features     # what XFeat keypoints add per frame
    python3 bench/encoder_overhead.py --device cuda [--compile reduce-overhead]   # a CUDA GPU (both tables)

DINOv2 ViT-S/14, ViT-B/14 (and on CUDA ViT-G/14) use randomly initialised weights (timing does
not depend on the values), saved with save_pretrained and loaded through the product's loading
path.

On CUDA: bare = the network alone (`Dinov2Backbone.features`) on pixels already on the GPU;
encode = `Encoder.encode` from decoded uint8 RGB frames (upload, preprocessing, network, VLAD
with 32 clusters, PCA to 512-D, descriptors back to the host), at batch 1 and 16 and inputs
224x224, 322x322 and 640x480 (AnyLoc's resize: 476x630). Target (#10): encode / bare <= 1.15 at
batch 16 and <= 1.3 at batch 1.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from _common import SHARED, VIT_GIANT, VIT_LAYERS, VIT_SIZES, record, save_random_dinov2, table, timeit  # noqa: I001

from anyloc_ros.core.encoding.aggregation import VLAD
from anyloc_ros.core.encoding.backbones import Dinov2Backbone
from anyloc_ros.core.encoding.encoder import Encoder
from anyloc_ros.core.encoding.images import decode_image_bytes
from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone
from anyloc_ros.core.encoding.projection import PCA

# input name -> (backbone resize, image size, camera frame size)
INPUTS = {"224x224": ("fixed", (224, 224), (480, 640)), "322x322": ("fixed", (322, 322), (480, 640)),
          "640x480": ("anyloc", (480, 640), (480, 640))}


def jpeg_640x480() -> bytes:
    paths = sorted((SHARED / "tum_fr2_desk" / "rgb").glob("*.png"))
    img = cv2.imread(str(paths[0])) if paths else np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


def matmul_gflops(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    ms = timeit(lambda: a @ b, repeat=10)
    return 2 * n**3 / (ms / 1e3) / 1e9


def vit_gflops(d: int, mlp: int, tokens: int, blocks: int, patch: int = 14) -> float:
    """Blocks 0..layer-1 in full, plus the value projection of the last one, plus patch embedding."""
    per_block = 2 * tokens * (4 * d * d + 2 * d * mlp) + 4 * tokens * tokens * d
    return (per_block * blocks + 2 * tokens * d * d + 2 * tokens * 3 * patch * patch * d) / 1e9


def encoder_for(backbone, dim: int) -> Encoder:
    rng = np.random.default_rng(0)
    vlad = VLAD(rng.normal(size=(32, dim)).astype(np.float32))
    comps, _ = np.linalg.qr(rng.normal(size=(32 * dim, 512)))
    pca = PCA(np.zeros(32 * dim, np.float32), comps.T.astype(np.float32), np.ones(512, np.float32))
    return Encoder(backbone, vlad, pca, batch_size=8)


def measure(name: str, encoder: Encoder, jpeg: bytes, rows: list, flops: float | None, peak: float) -> None:
    bb = encoder.backbone
    best = None
    for batch in (1, 2, 4, 8):
        payload = [jpeg] * batch
        pixels = bb.preprocess([decode_image_bytes(j) for j in payload])
        reps = 8 if batch < 4 else 4
        bare = timeit(lambda: bb.forward(pixels), repeat=reps) / batch
        full = timeit(lambda: encoder.encode([decode_image_bytes(j) for j in payload], batch_size=batch),
                      repeat=reps) / batch
        row = [name, tuple(pixels.shape[-2:]), batch, f"{bare:.1f}", f"{full:.1f}", f"{100 * (full / bare - 1):.1f}%"]
        if flops is not None:
            row += [f"{flops:.2f}", f"{flops / (bare / 1e3):.0f}", f"{100 * flops / (bare / 1e3) / peak:.0f}%"]
        else:
            row += ["-", "-", "-"]
        rows.append(row)
        if best is None or full < best[1]:
            best = (batch, full)
    rows.append([name, "", f"best batch {best[0]}", "", f"{best[1]:.1f}", "", "", "", ""])


def main(record_result: bool = True) -> None:
    jpeg = jpeg_640x480()
    peak32, peak16 = matmul_gflops(torch.float32), matmul_gflops(torch.bfloat16)
    rows: list = []
    bf16_rows: list = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VIT_SIZES.items():
            path = f"{tmp}/{name.replace('/', '')}"
            save_random_dinov2(path, **kw)
            for side in (224, 448):
                bb = Dinov2Backbone(path, layer=9, facet="value", image_size=(side, side), resize="fixed", device="cpu",
                                    precision="float32")
                tokens = 1 + (side // 14) ** 2
                flops = vit_gflops(kw["hidden_size"], kw["intermediate_size"], tokens, 9)
                measure(f"DINOv2 {name} L9 value", encoder_for(bb, kw["hidden_size"]), jpeg, rows, flops, peak32)
                px = bb.preprocess([decode_image_bytes(jpeg)])
                t32 = timeit(lambda bb=bb, px=px: bb.forward(px), repeat=8)
                bb16 = Dinov2Backbone(path, layer=9, facet="value", image_size=(side, side), resize="fixed", device="cpu",
                                      precision="bfloat16")
                t16 = timeit(lambda bb16=bb16, px=px: bb16.forward(px), repeat=8)
                d32, d16 = bb.forward(px), bb16.forward(px)
                cos = torch.nn.functional.cosine_similarity(d32.flatten(0, 2), d16.flatten(0, 2)).mean().item()
                bf16_rows.append([f"{name} {side}x{side}", f"{t32:.1f}", f"{t16:.1f}", f"{t32 / t16:.2f}x", f"{cos:.4f}"])
    xfeat = SHARED / "weights" / "xfeat.onnx"
    if xfeat.is_file():
        bb = OnnxBackbone(xfeat, output_name="output", device="cpu")
        measure("XFeat ONNX", encoder_for(bb, 64), jpeg, rows, None, peak32)
    body = table(["backbone", "input", "batch", "bare forward ms/img", "full encode ms/img", "overhead",
                  "GFLOP/img", "achieved GFLOP/s", "of matmul peak"], rows)
    body += (f"\n\nMatmul throughput on this machine (2048x2048, torch): fp32 {peak32:.0f} GFLOP/s, "
             f"bf16 {peak16:.0f} GFLOP/s. Full encode = JPEG decode (640x480) + resize + normalise + backbone + "
             "value facet + hard VLAD (32 clusters) + PCA to 512-D; bare = backbone forward on the already "
             "preprocessed tensor. Target: overhead <= 10%.\n\n")
    body += "fp32 vs bf16 (bare forward, batch 1; cosine similarity of the features to fp32):\n\n"
    body += table(["model", "fp32 ms", "bf16 ms", "speed-up", "feature cosine"], bf16_rows)
    if record_result:
        record("Encoder overhead vs bare backbone", "python bench/encoder_overhead.py", body)
    else:
        print(body)


def device_timer(device: torch.device):
    """Median milliseconds of fn() on `device` (CUDA: synchronised before and after each run)."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(fn, repeat: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)
    return run


def device_table(device: str, sizes: dict, inputs: list[str], batches: list[int], precision: str, repeat: int,
                 compile_mode: str = "none") -> list:
    """Rows (model, input, batch, bare ms/img, encode ms/img, ratio, peak MiB) for `device`."""
    dev = torch.device(device)
    timer = device_timer(dev)
    frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg_640x480(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in sizes.items():
            path = f"{tmp}/{name.replace('/', '')}"
            save_random_dinov2(path, **kw)
            for inp in inputs:
                resize, size, cam = INPUTS[inp]
                modes = ["none"] + ([compile_mode] if compile_mode != "none" else [])
                for mode in modes:
                    bb = Dinov2Backbone(path, layer=VIT_LAYERS[name], facet="value", resize=resize, image_size=size,
                                        device=device, precision=precision, compile=mode)
                    enc = encoder_for(bb, kw["hidden_size"])
                    for batch in batches if mode == "none" else [1]:
                        frames = [frame if frame.shape[:2] == cam else cv2.resize(frame, cam[::-1])] * batch
                        pixels = bb.preprocess(frames)
                        if dev.type == "cuda":
                            torch.cuda.reset_peak_memory_stats(dev)
                        bare = timer(lambda bb=bb, px=pixels: bb.features(px), repeat) / batch
                        full = timer(lambda enc=enc, fr=frames, b=batch: enc.encode(fr, batch_size=b), repeat) / batch
                        peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else float("nan")
                        label = name if mode == "none" else f"{name} compile={mode}"
                        rows.append([label, f"{inp} ({tuple(pixels.shape[-2:])[0]}x{tuple(pixels.shape[-2:])[1]})",
                                     batch, f"{bare:.2f}", f"{full:.2f}", f"{full / bare:.2f}", f"{peak:.0f}"])
                        print(rows[-1], flush=True)
                    del enc, bb
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
    return rows


KP_HEADERS = ["encoder", "frame ms (no keypoints)", "frame ms (512 keypoints)", "added ms", "keypoint stage ms", "added"]


def local_feature_rows(device: str, sizes: dict, repeat: int) -> list:
    """What local features add to one camera frame (640x480, `Encoder.encode_frame` with 512
    keypoints vs none): XFeat's ONNX network beside DINOv2 (`local_features: xfeat`), and XFeat's
    own heads when it is the backbone (`xfeat_vlad`)."""
    xfeat = SHARED / "weights" / "xfeat.onnx"
    if not xfeat.is_file():
        return []
    from anyloc_ros.core.config.encoder import LocalFeatureConfig

    timer = device_timer(torch.device(device))
    frame = cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg_640x480(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    rows = []

    def row(label: str, enc: Encoder) -> None:
        plain = timer(lambda: enc.encode_frame(frame), repeat)
        with_kp = timer(lambda: enc.encode_frame(frame, keypoints=512), repeat)
        enc.encode_frame(frame, keypoints=512)
        kp = enc.timings.extra.get("keypoints", 0.0) * 1e3
        rows.append([label, f"{plain:.1f}", f"{with_kp:.1f}", f"{with_kp - plain:+.1f}", f"{kp:.1f}",
                     f"{100 * (with_kp / plain - 1):.0f}%"])
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in sizes.items():
            path = f"{tmp}/{name.replace('/', '')}"
            save_random_dinov2(path, **kw)
            bb = Dinov2Backbone(path, layer=VIT_LAYERS[name], facet="value", resize="aspect", max_side=448,
                                device=device)
            enc = encoder_for(bb, kw["hidden_size"])
            local = LocalFeatureConfig(type="xfeat", model_path=str(xfeat))
            row(f"DINOv2 {name} (aspect 448) + XFeat beside", Encoder(enc.backbone, enc.aggregator, enc.pca,
                                                                      batch_size=1, local=local))
    bb = OnnxBackbone(xfeat, output_name="output", device=device)
    row("XFeat backbone, its own heads", encoder_for(bb, 64))
    return rows


def model_sizes(args: argparse.Namespace) -> dict:
    """The DINOv2 sizes a run times: S and B (G too on CUDA or with --giant), filtered by --sizes."""
    sizes = dict(VIT_SIZES)
    if args.device.startswith("cuda") or args.giant:
        sizes.update(VIT_GIANT)
    if args.sizes:
        sizes = {k: v for k, v in sizes.items() if any(s in k for s in args.sizes)}
    return sizes


def record_or_print(args: argparse.Namespace, title: str, body: str) -> None:
    if args.record:
        record(title, "python3 bench/encoder_overhead.py " + " ".join(args.argv), body)
    else:
        print(body)


def main_local_features(args: argparse.Namespace) -> None:
    rows = local_feature_rows(args.device, model_sizes(args), args.repeat)
    body = table(KP_HEADERS, rows)
    body += (f"\n\nDevice {args.device}; one 640x480 frame per call (`Encoder.encode_frame`: uint8 RGB in, "
             "descriptor + keypoints out), median of the runs after warm-up. 'keypoint stage' is the encoder's "
             "timing of its keypoints: XFeat's network plus the selection from its heads where it runs beside the "
             "backbone (onnxruntime with idle threads that do not spin, so the torch backbone on the same cores is "
             "not slowed: with spinning the ViT-S row added 56 ms), the selection alone (cell-level, "
             "core/encoding/local_features.py) where XFeat is the backbone.")
    record_or_print(args, f"Local features (XFeat keypoints) per frame on {args.device}", body)


def main_device(args: argparse.Namespace) -> None:
    sizes = model_sizes(args)
    rows = device_table(args.device, sizes, args.inputs, args.batches, args.precision, args.repeat, args.compile)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            driver = "unknown"
        where = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), driver {driver}, torch {torch.__version__} "
                 f"(CUDA {torch.version.cuda})")
    else:
        where = f"{args.device} (dry run of the GPU table)"
    body = table(["model", "input (network)", "batch", "bare ms/img", "encode ms/img", "encode / bare",
                  "peak GPU MiB"], rows)
    kp_rows = local_feature_rows(args.device, {k: v for k, v in sizes.items() if "G" in k} or sizes, args.repeat)
    if kp_rows:
        body += "\n\nLocal features per 640x480 frame (512 XFeat keypoints vs none):\n\n" + table(KP_HEADERS, kp_rows)
    body += (f"\n\nDevice: {where}; precision {args.precision}; median of {args.repeat} runs after warm-up. "
             "bare = network alone on GPU-resident pixels; encode = Encoder.encode from uint8 RGB frames "
             "(upload, preprocessing, network, VLAD 32 clusters, PCA 512-D, descriptors back). Peak memory is "
             "torch's max allocated during both. Target: encode / bare <= 1.15 at batch 16, <= 1.3 at batch 1.")
    record_or_print(args, f"Encoder overhead on {args.device}", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (the CPU table, as before) or cuda[:N]")
    parser.add_argument("--device-table", action="store_true", help="the GPU table's layout on --device cpu (dry run)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--sizes", nargs="*", help="substrings of the model names to run (e.g. S B G)")
    parser.add_argument("--giant", action="store_true", help="include ViT-G/14 on the CPU too")
    parser.add_argument("--inputs", nargs="*", default=list(INPUTS), choices=list(INPUTS))
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 16])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--compile", default="none", help="also time batch 1 with this backbone.compile mode")
    parser.add_argument("--no-record", dest="record", action="store_false", help="print only (no RESULTS.md entry)")
    parser.add_argument("--local-features", action="store_true",
                        help="only the cost of local features (XFeat keypoints) per frame, on --device")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    t = time.perf_counter()
    if args.local_features:
        main_local_features(args)
    elif args.device.startswith("cuda") or args.device_table:
        main_device(args)
    else:
        main(args.record)
    print(f"took {time.perf_counter() - t:.0f} s")
