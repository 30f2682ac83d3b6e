"""Per-query cost of sequence matching on large maps: PlaceRecognizer.query with sequence
matching off and on, in one run, on 10k and 100k keyframes.

    .venv/bin/python bench/sequence.py [--sizes 10000 100000] [--dim 512]

The map is a synthetic traversal (unit descriptors, neighbours alike); the queries re-traverse
a stretch of it with noise, so the sequence lines are the real ones. Both indexes the map uses
are measured: flat (exact) and IVF (the configured default for large maps).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc

import numpy as np
from _common import record, table  # noqa: I001


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def per_query_ms(db, sequence: bool, queries: np.ndarray, stamp0: int) -> float:
    from anyloc_ros.core.config.recognition import LoopClosureConfig, SequenceConfig
    from anyloc_ros.core.recognition.recognizer import PlaceRecognizer

    rec = PlaceRecognizer(db, LoopClosureConfig(rerank=False), SequenceConfig(enable=sequence))
    times = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        rec.query(q, stamp0 + i * 100_000_000)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[10:])  # after the first sequence length


def main() -> None:
    from anyloc_ros.core.config.map import IndexConfig
    from anyloc_ros.core.map.database import PlaceDatabase
    from anyloc_ros.core.map.traversals import Traversals

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        rng = np.random.default_rng(0)
        r = rng.normal(size=(n + 1, args.dim)).astype(np.float32)
        places = unit(r[1:] + 0.5 * r[:-1])
        queries = unit(places[n // 2:n // 2 + 200] + 0.1 * rng.normal(size=(200, args.dim)).astype(np.float32))
        for index in ("flat", "ivf"):
            with tempfile.TemporaryDirectory() as tmp:
                db = PlaceDatabase(tmp, {"backbone": "synthetic", "dim": args.dim}, index=IndexConfig(type=index),
                                   durable=False)
                for s in range(0, n, 10_000):
                    db.add_many(places[s:s + 10_000], [(s + i) * 100_000_000 for i in range(min(10_000, n - s))])
                db.reindex()
                t = time.perf_counter()
                db.traversal_keys([1])  # the traversal order, built from the map on first use
                built_ms = (time.perf_counter() - t) * 1e3
                tracemalloc.start()  # its memory: built again, traced (tracing slows it: not timed)
                held = Traversals()
                held.add(db.store.traversal_rows())
                built_mb = tracemalloc.get_traced_memory()[0] / 2**20
                tracemalloc.stop()
                del held
                stamp0 = (n + 10) * 100_000_000
                off = per_query_ms(db, False, queries, stamp0)
                on = per_query_ms(db, True, queries, stamp0)
                rows.append([f"{n:,}", index, off, on, on - off, built_ms, built_mb])
                db.close()
    body = table(["keyframes", "index", "single-frame ms", "sequence ms", "sequence adds ms",
                  "traversal order built ms", "its memory MiB"], rows)
    body += ("\n\nMedian per query over 190 queries (after the first 10), `PlaceRecognizer.query` with "
             "top_k 10, sequence length 10, 5 velocities, re-ranking off; the sequence step's work depends on "
             "those settings, not on the map (it reaches the map twice: the traversal keys of the last L frames' "
             "top-k, and the keyframes at the candidate lines' keys, in memory: core/map/traversals.py). The "
             "traversal order is built once per open map, on its first search (then kept in step with writes).")
    record("Sequence matching: per-query cost on large maps", "python bench/sequence.py", body)


if __name__ == "__main__":
    main()
