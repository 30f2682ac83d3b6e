"""Place-recognition datasets: map (database) images, query images and ground truth.

Formats:
* folder: `DB_DIR`, `QUERY_DIR` and a CSV `query_index,matching_ref_indices` (space separated),
  as ../shared/data/corridor and VPR-Bench exports.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import AnyLocError
from ..core.images import list_images


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
            if header and header[0].strip().isdigit():  # no header line
                rows[int(header[0])] = {int(x) for x in header[1].split()}
            for r in reader:
                if r:
                    rows[int(r[0])] = {int(x) for x in r[1].split()} if len(r) > 1 else set()
    except (ValueError, IndexError) as exc:
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
