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


# Randomly initialised DINOv2 models (time and memory do not depend on the weights): ViT-S/B
# (used at layer 9 of 12) and ViT-G/14 as AnyLoc uses it (SwiGLU MLP, layer 31 of 40).
VIT_SIZES = {"ViT-S/14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
             "ViT-B/14": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
VIT_GIANT = {"ViT-G/14": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True,
                              mlp_ratio=4)}
VIT_LAYERS = {"ViT-S/14": 9, "ViT-B/14": 9, "ViT-G/14": 31}


def save_random_dinov2(directory: str | Path, name: str, config: dict) -> str:
    """A DINOv2 of `config` with random weights (seed 0), saved with save_pretrained under
    `directory`: a path the product loads like a downloaded checkpoint."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    path = f"{directory}/{name.replace('/', '')}"
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(patch_size=14, image_size=518, **config)).save_pretrained(path)
    return path
