"""`anyloc eval` and `anyloc compare`: Recall@K, precision-recall, timing, plots, JSON.

Descriptors of an image set are cached (key: encoder signature + file names, sizes and
mtimes), so a second run with the same encoder does not recompute them.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import EncoderConfig
from ..core.fileio import load_npz, save_npz
from .datasets import PlaceDataset
from .metrics import KS, best_match_pr, recall_at_k

RESULT_FORMAT = "anyloc_ros.eval/1"


def _cache_key(signature: dict[str, Any], paths: list[Path]) -> str:
    h = hashlib.sha256(json.dumps(signature, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def encode_images(encoder: Any, paths: list[Path], cache_dir: Path | None, desc: str, progress: bool = True,
                  skipped: list[tuple[Path, str]] | None = None) -> tuple[np.ndarray, float, bool]:
    """Descriptors of `paths` (cached); returns (descriptors, ms per image, from_cache).

    With a `skipped` list, images that cannot be read are skipped and reported there (their
    rows are NaN); without it, the first bad image is an error naming the file."""
    from tqdm import tqdm

    from ..core.errors import ImageError
    from ..core.images import load_image

    def load(p: Path) -> np.ndarray | None:
        try:
            return load_image(p)
        except ImageError as exc:
            if skipped is None:
                raise
            skipped.append((p, str(exc)))
            return None

    cache = cache_dir / f"{_cache_key(encoder.signature(), paths)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        meta, arrays = load_npz(cache)
        return arrays["descriptors"], float(meta["encode_ms"]), True
    out = np.empty((len(paths), encoder.dim), np.float32)
    bs = encoder.batch_size
    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for i in range(0, len(paths), bs):
            chunk = paths[i : i + bs]
            images = [load(p) for p in chunk]
            good = [j for j, im in enumerate(images) if im is not None]
            out[i : i + len(chunk)] = np.nan
            if good:
                out[[i + j for j in good]] = encoder.encode([images[j] for j in good])
            bar.update(len(chunk))
    ms = (time.perf_counter() - t0) * 1e3 / len(paths)
    if cache is not None and not skipped:
        save_npz(cache, {"encode_ms": ms, "images": len(paths)}, descriptors=out)
    return out, ms, False


def query_latency_ms(db: np.ndarray, queries: np.ndarray, k: int = 20, n: int = 50) -> float:
    """Median single-query top-k search time on an exact faiss index (what a node does per frame)."""
    import faiss

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db))
    times = []
    for q in queries[: max(1, min(n, len(queries)))]:
        t = time.perf_counter()
        index.search(q[None], min(k, len(db)))
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def evaluate(dataset: PlaceDataset, config: EncoderConfig, output: Path, cache_dir: Path | None = None,
             progress: bool = True, label: str | None = None) -> dict[str, Any]:
    from ..core.encoder import Encoder
    from . import plots

    encoder = Encoder.from_config(config)
    db, db_ms, db_cached = encode_images(encoder, dataset.database, cache_dir, "database", progress)
    q, q_ms, q_cached = encode_images(encoder, dataset.queries, cache_dir, "queries", progress)
    sim = q @ db.T
    recall = recall_at_k(sim, dataset.positives, KS)
    pr = best_match_pr(sim, dataset.positives)
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "label": label or config.preset or encoder.signature()["backbone"],
        "dataset": dataset.name, "dataset_info": dataset.metadata,
        "database_images": len(dataset.database), "query_images": len(dataset.queries),
        **{f"recall@{k}": v for k, v in recall.items()},
        "auc_pr": pr.auc, "recall_at_100p": pr.recall_at_100p,
        "encode_ms": (db_ms * len(db) + q_ms * len(q)) / (len(db) + len(q)),
        "query_ms": query_latency_ms(db, q),
        "dim": int(encoder.dim),
        "descriptors_from_cache": bool(db_cached and q_cached),
        "encoder": encoder.signature(), "encoder_config": config.to_dict(),
        "pr_curve": {"precision": pr.precision.tolist(), "recall": pr.recall.tolist()},
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(result, indent=2))
    plots.recall_curve([result], output / "recall_at_k.png")
    plots.pr_curve([(result["label"], pr.recall, pr.precision)], output / "pr_curve.png")
    plots.similarity_matrix(sim, dataset.positives, output / "similarity.png")
    np.save(output / "similarity.npy", sim)
    return result


def print_table(results: list[dict[str, Any]], names: list[str] | None = None) -> None:
    cols = [f"recall@{k}" for k in KS] + ["auc_pr", "recall_at_100p", "encode_ms", "query_ms", "dim"]
    names = names or [r.get("label", "?") for r in results]
    width = max(12, *(len(n) for n in names))
    print(f"{'':{width}s} " + " ".join(f"{c:>14s}" for c in cols))
    for n, r in zip(names, results, strict=True):
        vals = [f"{r[c]:14.3f}" if isinstance(r.get(c), float) else f"{r.get(c, '-')!s:>14s}" for c in cols]
        print(f"{n:{width}s} " + " ".join(vals))


def load_result(path: str | Path) -> dict[str, Any]:
    from ..core.errors import AnyLocError

    try:
        r = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise AnyLocError(f"cannot read result file {path}: {exc}") from exc
    if not isinstance(r, dict) or r.get("format") != RESULT_FORMAT:
        raise AnyLocError(f"{path} is not an anyloc eval result ({RESULT_FORMAT}): expected a JSON object "
                          "written by `anyloc eval`")
    pr = r.get("pr_curve")
    ok = isinstance(pr, dict) and all(isinstance(pr.get(k), list) and all(isinstance(v, (int, float)) for v in pr[k])
                                      for k in ("recall", "precision")) and len(pr["recall"]) == len(pr["precision"])
    if not ok:
        raise AnyLocError(f"{path} has no valid 'pr_curve' (recall and precision lists of equal length); "
                          "re-run `anyloc eval` to write a complete result")
    return r
