"""Shared fixtures: isolated DDS, no network, and session-cached real data.

Real-data fixtures read ../shared/data (beside the repository) and skip with a reason when
it is absent. Dense features of the corridor set are computed once per session.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ANYLOC_SHARED_DATA", REPO.parent / "shared" / "data"))
XFEAT_ONNX = SHARED_DATA / "weights" / "xfeat.onnx"
CORRIDOR = SHARED_DATA / "corridor"
TUM_DESK = SHARED_DATA / "tum_fr2_desk"
TUM_RGBD = SHARED_DATA / "tum_fr1_xyz"

# Tests never touch the network: no hub downloads, DDS on loopback in its own domain.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(random.Random(os.getpid()).randint(100, 200)))
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(REPO / "config" / "fastdds_localhost.xml"))
# Node and CLI processes started by tests run this source tree, not an older installed copy.
os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
os.environ["PYTHONUNBUFFERED"] = "1"
# The venv is the ROS 2 environment (what `. .venv/bin/activate` sets; scripts/test.sh does).
_VENV = REPO / ".venv"
if (_VENV / "share" / "ament_index").is_dir() and str(_VENV) not in os.environ.get("AMENT_PREFIX_PATH", ""):
    os.environ["AMENT_PREFIX_PATH"] = os.pathsep.join(filter(None, [str(_VENV), os.environ.get("AMENT_PREFIX_PATH")]))
    os.environ["PATH"] = str(_VENV / "bin") + os.pathsep + os.environ.get("PATH", "")


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (expected ../shared/data beside the repository)")
    return path


def read_corridor_gt() -> list[set[int]]:
    lines = (require(CORRIDOR) / "ground_truth.csv").read_text().strip().splitlines()[1:]
    gt = []
    for line in lines:
        q, refs = line.split(",")
        assert int(q) == len(gt)
        gt.append({int(r) for r in refs.split()})
    return gt


@pytest.fixture(scope="session")
def xfeat_backbone():
    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone

    return OnnxBackbone(require(XFEAT_ONNX), output_name="output", device="cpu")


@pytest.fixture(scope="session")
def corridor_images() -> dict[str, list[np.ndarray]]:
    from anyloc_ros.core.encoding.images import list_images, load_image

    require(CORRIDOR)
    return {s: [load_image(p) for p in list_images(CORRIDOR / s)] for s in ("ref", "query")}


@pytest.fixture(scope="session")
def corridor_gt() -> list[set[int]]:
    return read_corridor_gt()


@pytest.fixture(scope="session")
def corridor_features(xfeat_backbone, corridor_images):
    """XFeat (N, 80, 80, 64) features of the corridor ref and query images, computed once."""
    import torch

    out = {}
    for split, imgs in corridor_images.items():
        out[split] = torch.cat([xfeat_backbone.extract(imgs[i : i + 8]) for i in range(0, len(imgs), 8)])
    return out


@pytest.fixture(scope="session")
def xfeat_encoder(corridor_vocab):
    """The xfeat_vlad preset with the corridor vocabulary: descriptors and keypoints (encode_frame)."""
    from anyloc_ros.core.encoding.encoder import Encoder

    return Encoder.from_config({"preset": "xfeat_vlad", "backbone": {"model_path": str(XFEAT_ONNX), "device": "cpu"},
                                "aggregation": {"vocabulary": str(corridor_vocab)}})


@pytest.fixture(scope="session")
def corridor_vocab(corridor_features, tmp_path_factory, xfeat_backbone):
    """32-cluster vocabulary fitted on the corridor map (ref) features, saved to a file."""
    from anyloc_ros.core.encoding.vocabulary import Vocabulary, fit_vocabulary

    ref = corridor_features["ref"]
    centers, info = fit_vocabulary((f.reshape(-1, f.shape[-1]).numpy() for f in ref), 32, samples_per_image=1000, seed=0)
    vocab = Vocabulary(centers, dict(xfeat_backbone.signature(), **info))
    path = tmp_path_factory.mktemp("vocab") / "corridor_xfeat_k32.npz"
    vocab.save(path)
    return path


@pytest.fixture(scope="session")
def tum_rgbd():
    """TUM fr1/xyz: frames (colour, depth in metres, ground-truth pose), the camera (fr1
    calibration with distortion), the encoder's local features of each frame (512 XFeat
    keypoints with depths, undistorted) and the revisit pairs; computed once."""
    from anyloc_ros.eval.poses import load_tum_rgbd, revisit_pairs, tum_rgbd_local_features

    require(TUM_RGBD)
    frames, camera = load_tum_rgbd(TUM_RGBD)
    return frames, camera, tum_rgbd_local_features(frames, camera, require(XFEAT_ONNX)), revisit_pairs(TUM_RGBD)


@pytest.fixture(scope="session")
def corridor_frames(xfeat_encoder):
    """What the encoder node publishes for each corridor image: descriptor, patches, 512 keypoints
    (computed once per test session)."""
    from anyloc_ros.core.encoding.images import list_images, load_image
    from anyloc_ros.core.encoding.patches import PatchCompressor

    require(CORRIDOR)
    comp = PatchCompressor(64)
    return {s: [xfeat_encoder.encode_frame(load_image(p), comp, keypoints=512) for p in list_images(CORRIDOR / s)]
            for s in ("ref", "query")}
