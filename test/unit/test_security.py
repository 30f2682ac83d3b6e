"""Security hygiene: no unsafe deserialisation, map writes confined to the map directory,
path parameters validated."""

import re

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


def test_map_writes_stay_inside_the_map_directory(tmp_path):
    outside_before = set(tmp_path.rglob("*"))
    m = tmp_path / "maps" / "lab"
    with PlaceDatabase(m, {"backbone": "t", "dim": 8}) as db:
        x = np.eye(8, dtype=np.float32)
        db.add_many(x, list(range(8)))
        db.new_session("b")
        db.add(x[0], 9)
        db.remove([2])
        db.flush()
    created = set(tmp_path.rglob("*")) - outside_before
    assert created and all(p == tmp_path / "maps" or m in (p, *p.parents) for p in created)


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
