"""Shared helpers of the benchmarks: machine description, timing, result recording."""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "RESULTS.md"
from anyloc_ros.core.threads import single_threaded_numpy_blas  # noqa: E402
from anyloc_ros.testing import VIT_GIANT, VIT_LAYERS, VIT_SIZES, save_random_dinov2  # noqa: E402,F401 (re-exported)

single_threaded_numpy_blas()  # as the nodes and the CLI run

SHARED = Path(os.environ.get("ANYLOC_SHARED_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    import faiss
    import numpy
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"faiss {faiss.__version__}, numpy {numpy.__version__}")


def timeit(fn: Callable[[], object], repeat: int = 10, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def run_recorded(doc: str, title: str, command: str, data: Path, body_of: Callable[[], str]) -> int:
    """A benchmark's command line: computes `body_of()` (it needs `data`, a folder of
    ../shared/data), prints it and records it under `title` unless `--no-record`."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--no-record", action="store_true", help="print only (no RESULTS.md entry)")
    args = parser.parse_args()
    if not data.is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 1
    body = body_of()
    if args.no_record:
        print(body)
    else:
        record(title, command, body)
    return 0


def record(title: str, command: str, body: str) -> None:
    """Print a result section and append it to bench/RESULTS.md."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = f"\n## {title}\n\n- date: {stamp}\n- machine: {machine()}\n- command: `{command}`\n\n{body}\n"
    print(section)
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nAppended by the scripts in bench/ (newest last).\n")
    with RESULTS.open("a") as f:
        f.write(section)
