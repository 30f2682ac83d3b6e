"""AnyLoc's pipeline vs the project's named options: what each departure costs or gains.

    .venv/bin/python bench/fidelity.py

1. PCA whitening (AnyLoc's default) vs plain PCA, on real features: XFeat + 32-cluster VLAD on
   the corridor set, PCA fitted on the 111 map descriptors (as `anyloc fit-pca` would), three
   vocabulary seeds.
2. Vocabulary centres: the means of the assigned unit vectors (AnyLoc's cosine k-means keeps
   those; `anyloc build-vocab` too) vs the same centres scaled to unit length.
3. Image sizing: AnyLoc's resize (480x640, crop to whole patches) vs the aspect-kept option
   (long side <= 448, never upsampled): input size, patches and encode time per image for
   random-weight DINOv2 ViT-S/14 and ViT-B/14 (layer 9; time does not depend on the weights)
   on the corridor's 160x120 and TUM's 640x480 frames. Recall cannot be measured here (no DINOv2
   weights offline).
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from _common import SHARED, VIT_SIZES, record, save_random_dinov2, table, timeit  # noqa: I001


def recall(sim: np.ndarray, gt: list[set[int]], k: int) -> float:
    top = np.argsort(-sim, axis=1)[:, :k]
    return float(np.mean([bool(set(top[q]) & gt[q]) for q in range(len(gt))]))


def corridor_rows() -> tuple[list[list[object]], list[list[object]]]:
    from anyloc_ros.core.encoding.aggregation import VLAD
    from anyloc_ros.core.encoding.images import list_images, load_image
    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone
    from anyloc_ros.core.encoding.projection import PCA
    from anyloc_ros.core.encoding.vocabulary import fit_vocabulary
    from anyloc_ros.eval.datasets import read_positives_csv

    corridor = SHARED / "corridor"
    bb = OnnxBackbone(SHARED / "weights" / "xfeat.onnx", output_name="output", device="cpu")
    feats = {}
    for split in ("ref", "query"):
        imgs = [load_image(p) for p in list_images(corridor / split)]
        feats[split] = torch.cat([bb.extract(imgs[i:i + 8]) for i in range(0, len(imgs), 8)]).flatten(1, 2)
    gt = read_positives_csv(corridor / "ground_truth.csv", len(feats["query"]))
    results: dict[tuple[int, bool], list[tuple[float, float]]] = {}
    centre_rows: dict[str, list[float]] = {}
    for seed in (0, 1, 2):
        centers, _ = fit_vocabulary((f.numpy() for f in feats["ref"]), 32, samples_per_image=1000, seed=seed)
        vlad = VLAD(centers)  # build-vocab's centres: means of the assigned unit vectors, as AnyLoc's
        unit = VLAD(centers / np.linalg.norm(centers, axis=1, keepdims=True))
        for name, vocab in (("unit vectors", unit), ("means of unit vectors (AnyLoc, build-vocab)", vlad)):
            a, b = (np.asarray(vocab.aggregate_batch(feats[s])) for s in ("ref", "query"))
            centre_rows.setdefault(name, []).append(recall(b @ a.T, gt, 1))
            if vocab is vlad:
                centre_rows.setdefault("mean centre norm", []).append(float(np.linalg.norm(centers, axis=1).mean()))
        db, q = (np.asarray(vlad.aggregate_batch(feats[s])) for s in ("ref", "query"))
        results.setdefault((db.shape[1], False), []).append((recall(q @ db.T, gt, 1), recall(q @ db.T, gt, 5)))
        for dim in (16, 32, 64, 100):
            for whiten in (True, False):
                pca = PCA.fit(db, dim, whiten=whiten)
                a, b = pca.transform(db), pca.transform(q)
                a /= np.linalg.norm(a, axis=1, keepdims=True)
                b /= np.linalg.norm(b, axis=1, keepdims=True)
                results.setdefault((dim, whiten), []).append((recall(b @ a.T, gt, 1), recall(b @ a.T, gt, 5)))
    rows = []
    for (dim, whiten), rs in results.items():
        r1, r5 = np.array(rs).T
        label = "none (full VLAD)" if dim == db.shape[1] else ("whitened (AnyLoc)" if whiten else "plain (--no-whiten)")
        rows.append([dim, label, f"{r1.mean():.3f} ({r1.min():.3f}-{r1.max():.3f})", f"{r5.mean():.3f}"])
    return rows, [[k, " / ".join(f"{v:.3f}" for v in vs)] for k, vs in centre_rows.items()]


def resize_rows() -> list[list[object]]:
    from anyloc_ros.core.encoding.backbones import Dinov2Backbone
    from anyloc_ros.core.encoding.images import load_image

    frames = {"corridor 160x120": load_image(sorted((SHARED / "corridor" / "query").glob("*.jpg"))[0]),
              "TUM 640x480": load_image(sorted((SHARED / "tum_fr2_desk" / "rgb").glob("*.png"))[0])}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in VIT_SIZES.items():
            path = f"{tmp}/{name.replace('/', '')}"
            save_random_dinov2(path, **kw)
            for frame, img in frames.items():
                times = {}
                for resize in ("anyloc", "aspect"):
                    bb = Dinov2Backbone(path, layer=9, facet="value", resize=resize, device="cpu", precision="float32")
                    h, w = bb.target_size(*img.shape[:2])
                    times[resize] = timeit(lambda bb=bb: bb.extract([img]), repeat=5, warmup=1)
                    rows.append([name, frame, bb.preprocessing(), f"{h}x{w}", (h // 14) * (w // 14),
                                 times[resize], f"{times[resize] / times['anyloc']:.2f}"])
    return rows


def main() -> None:
    body = ("### PCA whitening on corridor (XFeat + VLAD-32, PCA fitted on the 111 map descriptors, "
            "3 vocabulary seeds: mean (min-max))\n\n")
    pca_rows, centre_rows = corridor_rows()
    body += table(["PCA dim", "PCA", "Recall@1", "Recall@5"], pca_rows)
    body += ("\n\nWhitening divides each component by its standard deviation; fitted on 111 descriptors the "
             "small components are noise and whitening amplifies them. AnyLoc fits on thousands of map images. "
             "`anyloc fit-pca` whitens by default (AnyLoc) and warns below 10 descriptors per output dimension.\n\n")
    body += "### Vocabulary centres on corridor (no PCA; Recall@1 for seeds 0 / 1 / 2)\n\n"
    body += table(["centres", "value"], centre_rows) + "\n\n"
    body += "### Image sizing: AnyLoc's resize vs aspect-kept (random-weight DINOv2, layer 9, fp32, batch 1)\n\n"
    body += table(["model", "frame", "preprocess", "input", "patches", "ms/image", "vs anyloc"], resize_rows())
    record("AnyLoc fidelity: PCA whitening, vocabulary centres, image sizing", "python bench/fidelity.py", body)


if __name__ == "__main__":
    main()
