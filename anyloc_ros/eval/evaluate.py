"""`anyloc eval` and `anyloc compare`: Recall@K, precision-recall, timing, plots, JSON.

The queries run through the recognition pipeline the nodes run (core.recognition.
PlaceRecognizer over a map of the database images, built from the nodes' parameters): once
single-frame (re-ranking as configured) and once with sequence matching, the queries taken
as one traversal in file order; plain descriptor retrieval is reported beside them.
Descriptors and compact patches of an image set are cached (key: encoder signature, patch
settings, file names, sizes and mtimes), so a second run does not recompute them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from ..core.config.encoder import EncoderConfig
from ..core.config.nodes import EncoderNodeSettings
from ..core.config.recognition import LoopClosureConfig, SequenceConfig
from ..core.encoding.encoder import Encoder
from ..core.encoding.images import load_image
from ..core.encoding.patches import PatchCompressor
from ..core.errors import AnyLocError, ImageError
from ..core.fileio import load_npz, save_npz
from ..core.map.database import PlaceDatabase
from ..core.recognition.recognizer import PlaceRecognizer
from . import plots
from .datasets import PlaceDataset
from .metrics import KS, PRCurve, best_match_pr_of, ranked, recall_from_ranking

RESULT_FORMAT = "anyloc_ros.eval/1"


def _cache_key(signature: dict[str, Any], paths: list[Path]) -> str:
    h = hashlib.sha256(json.dumps(signature, sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def encode_images(encoder: Any, paths: list[Path], cache_dir: Path | None, desc: str, progress: bool = True,
                  skipped: list[tuple[Path, str]] | None = None, compress: Any = None
                  ) -> tuple[np.ndarray, float, bool, list[np.ndarray | None] | None]:
    """Descriptors of `paths` (cached); returns (descriptors, ms per image, from_cache, patches):
    the compact patches of each image (as the encoder node makes them) when `compress` is given,
    else None.

    With a `skipped` list, images that cannot be read are skipped and reported there (their
    rows are NaN); without it, the first bad image is an error naming the file."""


    def load(p: Path) -> np.ndarray | None:
        try:
            return load_image(p)
        except ImageError as exc:
            if skipped is None:
                raise
            skipped.append((p, str(exc)))
            return None

    key = dict(encoder.signature(), patches=compress.signature() if compress is not None else None)
    cache = cache_dir / f"{_cache_key(key, paths)}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        meta, arrays = load_npz(cache)
        cached = list(arrays["patches"]) if compress is not None else None
        return arrays["descriptors"], float(meta["encode_ms"]), True, cached
    out = np.empty((len(paths), encoder.dim), np.float32)
    patches: list[np.ndarray | None] = [None] * len(paths)
    bs = encoder.batch_size
    t0 = time.perf_counter()
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for i in range(0, len(paths), bs):
            chunk = paths[i : i + bs]
            images = [load(p) for p in chunk]
            good = [j for j, im in enumerate(images) if im is not None]
            out[i : i + len(chunk)] = np.nan
            if good and compress is None:
                out[[i + j for j in good]] = encoder.encode([images[j] for j in good])
            for j in good if compress is not None else ():  # one frame at a time, as the encoder node
                enc = encoder.encode_frame(images[j], compress)
                out[i + j], patches[i + j] = enc.descriptor, enc.patches
            bar.update(len(chunk))
    ms = (time.perf_counter() - t0) * 1e3 / len(paths)
    if cache is not None and not skipped:
        extra = {"patches": np.stack(patches)} if compress is not None else {}
        save_npz(cache, {"encode_ms": ms, "images": len(paths)}, descriptors=out, **extra)
    return out, ms, False, patches if compress is not None else None


def query_latency_ms(db: np.ndarray, queries: np.ndarray, k: int = 20, n: int = 50) -> float:
    """Median single-query top-k search time on an exact faiss index (what a node does per frame)."""

    index = faiss.IndexFlatIP(db.shape[1])
    index.add(np.ascontiguousarray(db))
    times = []
    for q in queries[: max(1, min(n, len(queries)))]:
        t = time.perf_counter()
        index.search(q[None], min(k, len(db)))
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


@dataclass
class EvalSettings:
    """What the recognition node runs, from its parameters (`NodeParameters.from_file`)."""

    loop: LoopClosureConfig = field(default_factory=LoopClosureConfig)
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    encoder: EncoderNodeSettings = field(default_factory=EncoderNodeSettings)  # its patches (re-ranking)


def run_pipeline(db: np.ndarray, db_patches: list[np.ndarray | None] | None, q: np.ndarray,
                 q_patches: list[np.ndarray | None] | None, sim: np.ndarray, settings: EvalSettings,
                 sequence: bool, workdir: Path, signature: dict[str, Any]) -> dict[str, Any]:
    """Queries (one traversal, file order) through PlaceRecognizer over a map of the database.

    Returns the ranking (database indices, best first: the pipeline's top-k, then the rest by
    similarity, as deep as Recall@K reads), each query's best score (what a threshold would be
    put on) and latencies."""


    step = 100_000_000  # 10 Hz: map and queries are traversals
    path = workdir / "map"
    shutil.rmtree(path, ignore_errors=True)
    pdb = PlaceDatabase(path, signature)
    try:
        ids = pdb.add_many(db, [i * step for i in range(len(db))], patches=db_patches)
        index_of = {kid: i for i, kid in enumerate(ids)}
        seq = dataclasses.replace(settings.sequence, enable=sequence)
        rec = PlaceRecognizer(pdb, settings.loop, seq)
        depth = min(max(KS), len(db))  # the ranks Recall@K reads
        by_similarity = ranked(sim, depth + settings.loop.top_k)  # enough to fill in after the top-k
        ranking = np.empty((len(q), depth), np.int64)
        best, ms = np.zeros(len(q)), []
        start = (len(db) + 10) * step
        for i in range(len(q)):
            t = time.perf_counter()
            res = rec.query(q[i], start + i * step, patches=q_patches[i] if q_patches is not None else None)
            ms.append((time.perf_counter() - t) * 1e3)
            top = [index_of[m.keyframe_id] for m in res.matches][:depth]
            taken = set(top)
            ranking[i] = (top + [int(j) for j in by_similarity[i] if int(j) not in taken])[:depth]
            m = res.matches[0] if res.matches else None
            best[i] = -np.inf if m is None else m.ranking_score
    finally:
        pdb.close()
    return {"ranking": ranking, "best": best, "query_ms": float(np.median(ms))}


def _scores(ranking: np.ndarray, best: np.ndarray, positives: list[set[int]]) -> tuple[dict[str, Any], PRCurve]:
    recall = recall_from_ranking(ranking, positives, KS)
    pr = best_match_pr_of(ranking[:, 0], best, positives)
    return {**{f"recall@{k}": v for k, v in recall.items()}, "auc_pr": pr.auc, "recall_at_100p": pr.recall_at_100p}, pr


def evaluate(dataset: PlaceDataset, config: EncoderConfig, output: Path, cache_dir: Path | None = None,
             progress: bool = True, label: str | None = None, settings: EvalSettings | None = None
             ) -> dict[str, Any]:

    settings = settings or EvalSettings()
    encoder = Encoder.from_config(config)
    compress = PatchCompressor.of(settings.encoder, encoder.backbone.feature_dim) if settings.loop.rerank else None
    db, db_ms, db_cached, db_patches = encode_images(encoder, dataset.database, cache_dir, "database", progress,
                                                     compress=compress)
    q, q_ms, q_cached, q_patches = encode_images(encoder, dataset.queries, cache_dir, "queries", progress,
                                                 compress=compress)
    sim = q @ db.T
    output.mkdir(parents=True, exist_ok=True)
    retrieval, retrieval_pr = _scores(ranked(sim, max(KS)), sim.max(axis=1), dataset.positives)
    retrieval["query_ms"] = query_latency_ms(db, q)
    pipelines = {"retrieval": retrieval}
    curves = [("retrieval", retrieval_pr)]
    for name, seq in (("single", False), ("sequence", True)):
        run = run_pipeline(db, db_patches, q, q_patches, sim, settings, seq, output, encoder.signature())
        pipelines[name], pr = _scores(run["ranking"], run["best"], dataset.positives)
        pipelines[name]["query_ms"] = run["query_ms"]
        curves.append((name, pr))
    single_pr = curves[1][1]
    result: dict[str, Any] = {
        "format": RESULT_FORMAT,
        "label": label or config.preset or encoder.signature()["backbone"],
        "dataset": dataset.name, "dataset_info": dataset.metadata,
        "database_images": len(dataset.database), "query_images": len(dataset.queries),
        **pipelines["single"],  # what the recognition node ships: the headline numbers
        "pipelines": pipelines,
        "pipeline_settings": {"loop": dataclasses.asdict(settings.loop), "sequence": dataclasses.asdict(settings.sequence),
                              "patches": compress is not None},
        "encode_ms": (db_ms * len(db) + q_ms * len(q)) / (len(db) + len(q)),
        "dim": int(encoder.dim),
        "descriptors_from_cache": bool(db_cached and q_cached),
        "encoder": encoder.signature(), "encoder_config": config.to_dict(),
        "pr_curve": {"precision": single_pr.precision.tolist(), "recall": single_pr.recall.tolist()},
    }
    (output / "results.json").write_text(json.dumps(result, indent=2))
    plots.recall_curve([dict(pipelines[n], label=f"{result['label']} {n}") for n in pipelines],
                       output / "recall_at_k.png")
    plots.pr_curve([(n, pr.recall, pr.precision) for n, pr in curves], output / "pr_curve.png")
    plots.similarity_matrix(sim, dataset.positives, output / "similarity.png")
    np.save(output / "similarity.npy", sim)
    return result


def print_table(results: list[dict[str, Any]], names: list[str] | None = None) -> None:
    """One row per result, or per pipeline (retrieval / single / sequence) of results that have them."""
    cols = [f"recall@{k}" for k in KS] + ["auc_pr", "recall_at_100p", "query_ms"]
    names = names or [r.get("label", "?") for r in results]
    rows = []
    for n, r in zip(names, results, strict=True):
        pipelines = r.get("pipelines")
        rows += [(f"{n} {p}", v) for p, v in pipelines.items()] if isinstance(pipelines, dict) else [(n, r)]
    width = max(12, *(len(n) for n, _ in rows))
    print(f"{'':{width}s} " + " ".join(f"{c:>14s}" for c in cols))
    for n, r in rows:
        vals = [f"{r[c]:14.3f}" if isinstance(r.get(c), float) else f"{r.get(c, '-')!s:>14s}" for c in cols]
        print(f"{n:{width}s} " + " ".join(vals))


def load_result(path: str | Path) -> dict[str, Any]:

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
