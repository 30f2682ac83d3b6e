"""Crash-safe file writing: write aside, fsync, rename, fsync the directory.

A reader sees either the old file or the complete new one, never a half-written file,
even if the process is killed or the power fails in the middle of a save.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_npz(path: str | Path, metadata: dict[str, Any], **arrays: np.ndarray) -> Path:
    """Atomically save arrays plus a JSON metadata record to an .npz file (no pickle)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:
            np.savez(f, __metadata__=np.array(json.dumps(metadata, sort_keys=True)), **arrays)
    return path


def load_npz(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Load an .npz written by `save_npz`; raises ValueError/OSError on damaged files."""
    with np.load(Path(path), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("__metadata__"))) if "__metadata__" in arrays else {}
    return meta, arrays
