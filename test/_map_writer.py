"""Child process for the crash tests: adds keyframes to a map forever. Before each add it
announces the descriptor index it is about to add ("+ i"), after `add` returned it acknowledges
the keyframe id ("kid i"). The parent kills it with SIGKILL at a random point."""

import sys

import numpy as np

from anyloc_ros.core.config.map import IndexConfig
from anyloc_ros.core.geometry import Pose
from anyloc_ros.core.map.database import PlaceDatabase


def descriptor(i: int, dim: int) -> np.ndarray:
    v = np.random.default_rng(i).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def main() -> None:
    path, index_type, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dim = 64
    db = PlaceDatabase(path, {"backbone": "test", "dim": dim}, index=IndexConfig(type=index_type, save_every=7,
                                                                                 ivf_min_train=100, nlist=8))
    i = start
    while True:
        print(f"+ {i}", flush=True)
        kid = db.add(descriptor(i, dim), stamp_ns=i * 1_000_000, frame_id="cam", pose=Pose(i, 0, 0), patches=None)
        print(f"{kid} {i}", flush=True)
        i += 1


if __name__ == "__main__":
    main()
