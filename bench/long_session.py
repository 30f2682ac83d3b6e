"""Long session: 20,000 keyframes through the mapping path (keyframe gate -> PlaceDatabase.add,
durable, with pose and thumbnail, index saved every 1,000), measuring resident memory and add
latency as the map grows; then the cost of the row checksums: the same durable adds (512-D
descriptor, 24x24x64 patches, 512 keypoints, a thumbnail: a real keyframe's size) with checksums
and with the checksum function stubbed out, in alternating blocks of one run.

    .venv/bin/python bench/long_session.py [--keyframes 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import record, table  # noqa: I001

from anyloc_ros.core.config.recognition import KeyframeGateConfig, LoopClosureConfig
from anyloc_ros.core.geometry import Pose
from anyloc_ros.core.map.database import PlaceDatabase
from anyloc_ros.core.recognition.mapping import Mapper
from anyloc_ros.core.recognition.recognizer import PlaceRecognizer
from anyloc_ros.core.recognition.step import FrameStep
from anyloc_ros.core.types import DescriptorFrame


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keyframes", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    thumb = bytes(rng.integers(0, 255, 5_000, dtype=np.uint8))  # a ~5 KB JPEG thumbnail's worth
    rows = []
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        db = PlaceDatabase(tmp, {"backbone": "bench", "dim": args.dim}, session="long")
        rec = PlaceRecognizer(db, LoopClosureConfig())
        mapper = Mapper(db, KeyframeGateConfig(min_distance_m=0.5))
        step = FrameStep(rec, mapper)  # what the pipeline does for every frame
        start_rss = rss_mib()
        bucket: list[float] = []
        query_ms: list[float] = []
        n = 0
        t_all = time.perf_counter()
        while n < args.keyframes:
            stamp = (n + 1) * 100_000_000
            pose = Pose(0.6 * n, 0, 0)
            d = rng.normal(size=args.dim).astype(np.float32)
            d /= np.linalg.norm(d)
            out = step(DescriptorFrame(stamp, "camera", n, d, thumbnail=thumb), pose)
            query_ms.append(out.ms["recognise"])
            if out.keyframe_id is not None:
                bucket.append(out.ms["map"])
                n += 1
            if bucket and n % 2000 == 0 and len(bucket) == 2000:
                rows.append([f"{n:,}", f"{statistics.median(bucket):.2f}", f"{np.percentile(bucket, 99):.2f}",
                             f"{statistics.median(query_ms[-2000:]):.2f}", f"{rss_mib() - start_rss:.1f}",
                             f"{n * args.dim * 4 / 2**20:.1f}"])
                bucket = []
        total = time.perf_counter() - t_all
        growth = rss_mib() - start_rss
        db_size = sum(p.stat().st_size for p in Path(tmp).iterdir()) / 2**20
        db.close()
    body = table(["keyframes", "add ms (median)", "add ms (p99)", "query ms (median)", "RSS growth MiB",
                  "index size MiB (n x dim x 4)"], rows)
    body += (f"\n\n{args.keyframes:,} keyframes of {args.dim}-D in {total:.0f} s, every add durable (fsync, WAL) "
             f"and the index written every 1,000 adds. RSS grew {growth:.1f} MiB = "
             f"{growth * 2**20 / args.keyframes:,.0f} bytes per keyframe (the flat index alone is "
             f"{args.dim * 4:,} bytes per keyframe); map on disk {db_size:.0f} MiB. Target: memory grows only by the "
             "map's own in-RAM size, and add latency stays flat.")
    body += "\n\n" + checksum_cost(rng)
    record("Long session: 20k keyframes through the mapping path",
           f"python bench/long_session.py --keyframes {args.keyframes}", body)


def checksum_cost(rng: np.random.Generator, blocks: int = 10, per_block: int = 200) -> str:
    """Median durable `add` ms with row checksums vs without (rows.row_checksum stubbed), alternating."""
    import anyloc_ros.core.map.rows as rows
    from anyloc_ros.core.types import LocalFeatures

    real = rows.row_checksum
    local = LocalFeatures(rng.random((512, 2), np.float32) * 640, rng.random((512, 64)).astype(np.float16),
                          np.ones(512, np.float32), (480, 640), depths=np.ones(512, np.float32))
    patches = rng.random((576, 64)).astype(np.float16)
    thumb = bytes(rng.integers(0, 255, 5_000, dtype=np.uint8))
    times: dict[str, list[float]] = {"with checksums": [], "without": []}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        db = PlaceDatabase(tmp, {"backbone": "bench", "dim": 512}, session="ab")
        try:
            for b in range(2 * blocks):
                mode = "with checksums" if b % 2 == 0 else "without"
                rows.row_checksum = real if mode == "with checksums" else (lambda values: 0)
                for _ in range(per_block):
                    d = rng.normal(size=512).astype(np.float32)
                    t = time.perf_counter()
                    db.add(d, len(db) + 1, pose=Pose(0, 0, 0), patches=patches, thumbnail=thumb, local=local)
                    times[mode].append((time.perf_counter() - t) * 1e3)
        finally:
            rows.row_checksum = real
            db.close()
    a, b = (statistics.median(v) for v in times.values())
    return (f"Row checksums (xxh3-64 of each keyframe's content, written in the same transaction), same run, "
            f"{blocks} alternating blocks of {per_block} durable adds of a real keyframe's size (~160 KB): median "
            f"add {a:.3f} ms with checksums vs {b:.3f} ms without ({a - b:+.3f} ms, {100 * (a - b) / b:+.1f}%).")


if __name__ == "__main__":
    main()
