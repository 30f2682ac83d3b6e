"""Place-recognition datasets: map (database) images, query images and ground truth.

Formats:
* folder: `DB_DIR`, `QUERY_DIR` and a CSV `query_index,matching_ref_indices` (space separated),
  as ../shared/data/corridor and VPR-Bench exports.
"""

from __future__ import annotations

import csv
import importlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.encoding.images import list_images
from ..core.errors import AnyLocError


class DatasetError(AnyLocError, ValueError):
    """A dataset is missing, empty, or its ground truth does not match its images."""


@dataclass
class PlaceDataset:
    name: str
    database: list[Path]
    queries: list[Path]
    positives: list[set[int]]  # per query: database indices that count as a correct match
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.positives) != len(self.queries):
            raise DatasetError(f"ground truth has {len(self.positives)} entries for {len(self.queries)} query images")
        bad = [i for i, p in enumerate(self.positives) for j in p if not 0 <= j < len(self.database)]
        if bad:
            raise DatasetError(f"ground truth of query {bad[0]} refers to a database index outside "
                               f"0..{len(self.database) - 1}")


def read_positives_csv(path: str | Path, n_queries: int | None = None) -> list[set[int]]:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ground-truth file not found: {path}")
    rows: dict[int, set[int]] = {}
    try:
        with path.open() as f:
            reader = csv.reader(f)
            header = next(reader, None)
            numbered = bool(header) and header[0].strip().isdigit()  # the header line is optional
            lines = ([header] if numbered else []) + list(reader)
            for ln, r in enumerate(lines, start=1 if numbered or not header else 2):
                if not r:
                    continue
                q = int(r[0])
                if q in rows:  # silently keeping one of two rows would change the score
                    raise DatasetError(f"{path}:{ln}: query {q} appears twice in the ground truth")
                rows[q] = {int(x) for x in r[1].split()} if len(r) > 1 else set()
    except (ValueError, IndexError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path} is not a 'query_index,matching_ref_indices' CSV: {exc}") from exc
    n = n_queries if n_queries is not None else (max(rows) + 1 if rows else 0)
    if set(rows) != set(range(n)):
        raise DatasetError(f"{path} has ground truth for {len(rows)} queries, expected indices 0..{n - 1}")
    return [rows[i] for i in range(n)]


def load_folder_dataset(database: str | Path, queries: str | Path, ground_truth: str | Path) -> PlaceDataset:
    db, q = list_images(database), list_images(queries)
    positives = read_positives_csv(ground_truth, len(q))
    return PlaceDataset(Path(database).parent.name or "dataset", db, q, positives,
                        {"format": "folder+csv", "database": str(database), "queries": str(queries),
                         "ground_truth": str(ground_truth)})


# ----------------------------------------------------------------------------- VPR-Bench
class _NumpyOnlyUnpickler:
    """Unpickle only what a numpy object array of integer arrays needs (no arbitrary code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "int")}

    @classmethod
    def loads(cls, data: bytes):

        allowed = cls.ALLOWED

        class Restricted(pickle.Unpickler):
            def find_class(self, module: str, name: str):
                if (module, name) not in allowed:
                    raise DatasetError(f"refusing to unpickle {module}.{name} from a ground-truth file")
                return getattr(importlib.import_module(module), name)

        return Restricted(io.BytesIO(data)).load()


def read_vprbench_npy(path: str | Path, n_queries: int | None = None) -> list[set[int]]:
    """VPR-Bench `ground_truth_new.npy`: rows of [query_index, [reference indices]], an object
    array. Loaded with a restricted unpickler (numpy arrays and ints only), never plain pickle."""

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ground-truth file not found: {path}")
    raw = path.read_bytes()
    try:
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError:  # object array: pickled payload after the .npy header
            import io

            f = io.BytesIO(raw)
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            read_header(f, max_header_size=100_000)  # skip the header: the rest is the pickle
            arr = _NumpyOnlyUnpickler.loads(f.read())
    except DatasetError:
        raise
    except Exception as exc:  # truncated or damaged: EOFError, UnpicklingError, ValueError ...
        raise DatasetError(f"{path} is not a readable .npy file (truncated or damaged?): {type(exc).__name__}: "
                           f"{exc}") from exc
    rows: dict[int, set[int]] = {}
    try:
        for r in arr:
            q = int(r[0])
            if q in rows:
                raise DatasetError(f"{path}: query {q} appears twice in the ground truth")
            rows[q] = {int(x) for x in np.atleast_1d(r[1])}
    except (TypeError, IndexError, ValueError) as exc:
        raise DatasetError(f"{path} is not a VPR-Bench ground truth ([query, [refs]] rows): {exc}") from exc
    n = n_queries if n_queries is not None else len(rows)
    if set(rows) != set(range(n)):
        raise DatasetError(f"{path} has ground truth for {len(rows)} queries, expected indices 0..{n - 1}")
    return [rows[i] for i in range(n)]


# ----------------------------------------------------------------------------- VG format
def utm_from_name(path: Path) -> tuple[float, float]:
    """`@UTM_east@UTM_north@...@.jpg` (VPR-methods-evaluation / AnyLoc's VG format)."""
    parts = path.name.split("@")
    try:
        return float(parts[1]), float(parts[2])
    except (IndexError, ValueError) as exc:
        raise DatasetError(f"{path.name} is not a VG-format name (@UTM_east@UTM_north@...@.jpg)") from exc


def positives_within(db_xy, q_xy, radius: float, q_dir=None, db_dir=None, max_angle_deg=None) -> list[set[int]]:
    """Database indices within `radius` (and optionally `max_angle_deg` of heading) per query."""

    db_xy, q_xy = np.asarray(db_xy, float), np.asarray(q_xy, float)
    out = []
    for s in range(0, len(q_xy), 1024):
        d = np.linalg.norm(q_xy[s : s + 1024, None, :] - db_xy[None, :, :], axis=2)
        ok = d <= radius
        if max_angle_deg is not None:
            ang = np.degrees(np.arccos(np.clip(np.abs(q_dir[s : s + 1024] @ db_dir.T), -1, 1))) * 2
            ok &= ang <= max_angle_deg
        out.extend({int(j) for j in np.nonzero(row)[0]} for row in ok)
    return out


def load_vg_dataset(database: str | Path, queries: str | Path, radius: float = 25.0) -> PlaceDataset:
    db, q = list_images(database), list_images(queries)
    positives = positives_within([utm_from_name(p) for p in db], [utm_from_name(p) for p in q], radius)
    return PlaceDataset(Path(database).parent.name or "vg", db, q, positives,
                        {"format": "vg", "radius_m": radius, "database": str(database), "queries": str(queries)})


# ----------------------------------------------------------------------------- TUM trajectories
def read_tum_trajectory(path: str | Path):
    """TUM format `timestamp tx ty tz qx qy qz qw` -> (stamps (n,), poses (n, 7)), sorted by time."""

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"trajectory file not found: {path}")
    rows = []
    for ln, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        vals = line.replace(",", " ").split()
        if len(vals) != 8:
            raise DatasetError(f"{path}:{ln}: expected 'timestamp tx ty tz qx qy qz qw', got {len(vals)} values")
        rows.append([float(v) for v in vals])
    if not rows:
        raise DatasetError(f"{path} has no poses")
    a = np.array(rows)
    a = a[np.argsort(a[:, 0])]
    return a[:, 0], a[:, 1:]


def image_stamp(path: Path) -> float:
    try:
        return float(path.stem)
    except ValueError as exc:
        raise DatasetError(f"{path.name}: sequence images must be named by their timestamp (e.g. 1311868169.16.png)") \
            from exc


def poses_at(image_paths: list[Path], trajectory: str | Path, max_dt: float = 0.05):
    """Pose of each image (nearest trajectory sample in time, within max_dt seconds)."""

    stamps, poses = read_tum_trajectory(trajectory)
    out = []
    for p in image_paths:
        t = image_stamp(p)
        i = int(np.clip(np.searchsorted(stamps, t), 1, len(stamps) - 1))
        j = i if abs(stamps[i] - t) < abs(stamps[i - 1] - t) else i - 1
        if abs(stamps[j] - t) > max_dt:
            raise DatasetError(f"no pose within {max_dt} s of image {p.name} in {trajectory}")
        out.append(poses[j])
    return np.array(out)


def load_tum_dataset(database: str | Path, database_trajectory: str | Path, queries: str | Path,
                     query_trajectory: str | Path, radius: float = 1.0, max_angle_deg: float = 30.0) -> PlaceDataset:

    db, q = list_images(database), list_images(queries)
    dbp, qp = poses_at(db, database_trajectory), poses_at(q, query_trajectory)

    def heading(p):
        return p[:, 3:7] / np.linalg.norm(p[:, 3:7], axis=1, keepdims=True)

    positives = positives_within(dbp[:, :3], qp[:, :3], radius, heading(qp), heading(dbp), max_angle_deg)
    return PlaceDataset(Path(database).name, db, q, positives,
                        {"format": "tum", "radius_m": radius, "max_angle_deg": max_angle_deg})
