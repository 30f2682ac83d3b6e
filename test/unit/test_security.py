"""Security hygiene: no unsafe deserialisation, map writes confined to the map directory,
path parameters validated."""

import contextlib
import os
import re
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from anyloc_ros.core.map.database import PlaceDatabase

from ..conftest import REPO


def test_no_unsafe_deserialisation_in_the_package():
    offenders = []
    for path in (REPO / "anyloc_ros").rglob("*.py"):
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in m.group(1):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
        if re.search(r"allow_pickle\s*=\s*True", text):
            offenders.append(f"{path.name}: allow_pickle=True")
        if re.search(r"\bpickle\.loads?\(", text):
            offenders.append(f"{path.name}: plain pickle.load")
    assert offenders == []


_WRITES: list[tuple[str, str]] | None = None  # (event, path) while a test records
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {"os.mkdir", "os.remove", "os.rmdir", "os.truncate", "os.chmod", "os.symlink", "os.link",
                "os.utime", "os.chown"}


def _audit(event: str, args: tuple) -> None:
    if _WRITES is None:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, (str, bytes, os.PathLike)) and (
                (isinstance(mode, str) and any(c in mode for c in "wax+"))
                or (isinstance(flags, int) and flags & _WRITE_FLAGS)):
            _WRITES.append((event, os.fsdecode(path)))
    elif event in ("os.rename", "os.replace"):
        _WRITES.extend([(event, os.fsdecode(args[0])), (event, os.fsdecode(args[1]))])
    elif event == "sqlite3.connect":
        target = os.fsdecode(args[0])
        if target.startswith("file:"):  # a URI: read-only ones write nothing
            target, _, query = target[5:].partition("?")
            if "mode=ro" in query or "immutable=1" in query:
                return
            target = urllib.parse.unquote(target)
        _WRITES.append((event, target))
    elif event in _PATH_EVENTS and isinstance(args[0], (str, bytes, os.PathLike)):
        _WRITES.append((event, os.fsdecode(args[0])))


sys.addaudithook(_audit)  # hooks cannot be removed: this one records only inside `recorded_writes`


@contextlib.contextmanager
def recorded_writes():
    """Every file-system write Python makes (opens for writing, renames, mkdir, removals,
    SQLite connections) inside the block, anywhere on the machine: /tmp, $HOME, the cwd too."""
    global _WRITES
    _WRITES = []
    try:
        yield _WRITES
    finally:
        _WRITES = None


def test_map_writes_stay_inside_the_map_directory(tmp_path):
    m = tmp_path / "maps" / "lab"
    with recorded_writes() as writes:
        with PlaceDatabase(m, {"backbone": "t", "dim": 8}) as db:
            x = np.eye(8, dtype=np.float32)
            db.add_many(x, list(range(8)), thumbnails=[b"jpg"] * 8)
            db.new_session("b")
            db.add(x[0], 9)
            db.remove([2])
            db.reindex()
            db.flush()
        with PlaceDatabase(m, follower=True) as follower:  # a follower writes nothing at all
            follower.search(x[:2], 3)
            follower.refresh()
    assert len(writes) > 5  # the hook sees the map's own writes (lock, temporaries, renames, SQLite)
    outside = [(e, p) for e, p in writes if not (Path(p).resolve() == m.parent.resolve() or
                                                  m.resolve() in (Path(p).resolve(), *Path(p).resolve().parents))]
    assert outside == []  # only the map directory (and creating its parent)
    with recorded_writes() as writes, PlaceDatabase(m, follower=True) as follower:
        follower.search(x[:2], 3)
    assert writes == []  # a follower opens read-only and writes nothing


def test_node_path_parameters_are_validated(tmp_path):
    from anyloc_ros.nodes.parameters import ParameterError, validate_map_path

    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(ParameterError, match="exists and is not a directory"):
        validate_map_path("n", str(f))
    with pytest.raises(ParameterError, match="must be set"):
        validate_map_path("n", "")
    with pytest.raises(ParameterError, match="NUL"):
        validate_map_path("n", "maps/\x00x")
    assert validate_map_path("n", str(tmp_path / "new" / "map")) == str(tmp_path / "new" / "map")
