"""Shared pieces of the launch tests (test_launch_*.py): the package's launch files included
through FindPackageShare, a user's params file, the corridor vocabulary, and a traversal driver.
launch_testing test modules cannot use pytest fixtures, so what they share lives here."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import numpy as np
import yaml
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

from ..conftest import CORRIDOR, REPO, XFEAT_ONNX, read_corridor_gt  # noqa: F401 (re-exported for the launch tests)

N = 30  # corridor frames per traversal
XFEAT_CFG = REPO / "config/encoders/xfeat_vlad.yaml"


def available() -> bool:
    return XFEAT_ONNX.is_file() and CORRIDOR.is_dir()


def package_launch(name: str, **arguments: str) -> IncludeLaunchDescription:
    path = PathJoinSubstitution([FindPackageShare("anyloc_ros"), "launch", name])
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(path), launch_arguments=arguments.items())


@functools.cache
def corridor() -> dict:
    from anyloc_ros.core.encoding.images import list_images, load_image

    return {s: [load_image(p) for p in list_images(CORRIDOR / s)[:N]] for s in ("ref", "query")}


@functools.cache
def vocabulary() -> Path:
    """A 32-cluster XFeat vocabulary of the first N corridor map images (cached per test run)."""
    import torch

    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone
    from anyloc_ros.core.encoding.vocabulary import Vocabulary, fit_vocabulary

    bb = OnnxBackbone(XFEAT_ONNX, output_name="output", device="cpu")
    feats = torch.cat([bb.extract(corridor()["ref"][i:i + 8]) for i in range(0, N, 8)])
    centers, info = fit_vocabulary((f.reshape(-1, f.shape[-1]).numpy() for f in feats), 32, samples_per_image=1000,
                                   seed=0)
    path = Path(tempfile.mkdtemp(prefix="anyloc_launch_vocab_")) / "corridor_k32.npz"
    Vocabulary(centers, dict(bb.signature(), **info)).save(path)
    return path


def user_params(tmp: Path, **sections: dict) -> Path:
    """A user's params file. Its `/**: map_path` and `anyloc_pipeline: mode` must lose against
    the launch arguments."""
    p = {"/**": {"map_path": str(tmp / "not_this_map"), "pose_source": "odom"},
         "anyloc_pipeline": {"mode": "localization"},
         "encoder_node": {"encoder_config": str(XFEAT_CFG), "vocabulary": str(vocabulary()), "device": "cpu",
                          "queue_size": 20, "qos_reliable": True},
         "recognition_node": {"exclude_current_session": True}}
    for k, v in sections.items():
        p.setdefault(k, {}).update(v)
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in p.items()}))
    return path


def recall(matches: list, t0: int) -> float:
    gt = read_corridor_gt()
    hits = [(m.keyframe_ids[0] - 1) in gt[m.query_stamp.sec - t0] for m in matches if m.keyframe_ids]
    return float(np.mean(hits)) if hits else 0.0


def map_then_recognise(test, map_path: Path, composed: bool) -> None:
    """Map N corridor images, then the query traversal as a new session: keyframes are
    acknowledged, matches hit the ground truth, loop closures point at the first session."""
    from anyloc_ros.msg import Keyframe, LoopClosure, PlaceMatch
    from anyloc_ros.srv import GetMapInfo, NewSession
    from nav_msgs.msg import Odometry
    from sensor_msgs.msg import Image

    from anyloc_ros.tools.ros_driver import DriverNode, publish_traversal

    images, gt = corridor(), read_corridor_gt()
    t = DriverNode()
    try:
        for msg_type, topic in ((PlaceMatch, "place_matches"), (LoopClosure, "loop_closures"),
                                (Keyframe, "keyframes")):
            t.watch(msg_type, topic, 1000)
        ip = t.node.create_publisher(Image, "/camera/image_raw", 10)
        op = t.node.create_publisher(Odometry, "/odom", 100)
        t.wait_matched(ip, 1, 120)
        t.wait_matched(op, 2, 120)
        if not composed:
            t.wait_graph("descriptors", 1, 2)
        publish_traversal(t, ip, op, images["ref"], 100, [(i, 0.0) for i in range(N)], 0)
        test.assertTrue(t.call(NewSession, "new_session", NewSession.Request(session_id="second")).success)
        publish_traversal(t, ip, op, images["query"], 500, [(i, 0.3) for i in range(N)], N)
        keyframes = t.wait_for("keyframes", 2 * N, 10)
        test.assertEqual(len(keyframes), 2 * N)
        test.assertTrue(all(k.pose_valid and k.header.frame_id == "odom" for k in keyframes))  # the poses' frame
        info = t.call(GetMapInfo, "get_map_info", GetMapInfo.Request())
        test.assertEqual((info.keyframes, info.sessions, Path(info.map_path)), (2 * N, 2, map_path))
        q = [m for m in t.received["place_matches"] if m.query_stamp.sec >= 500]
        test.assertEqual(len(q), N)
        test.assertGreaterEqual(recall(q, 500), 0.8)
        loops = [lc for lc in t.received["loop_closures"] if lc.query_stamp.sec >= 500]
        test.assertTrue(loops)
        test.assertTrue(all(lc.match_session != "second" for lc in loops))  # exclude_current_session
        test.assertGreaterEqual(np.mean([(lc.match_id - 1) in gt[lc.query_stamp.sec - 500] for lc in loops]), 0.9)
    finally:
        t.close()


def build_saved_map(tmp: Path) -> Path:
    """The corridor map traversal (N keyframes, 1 m apart) built offline by the core's Mapper,
    the keyframe rule the mapping node runs; saved where a localization launch will read it."""
    from anyloc_ros.core.config.encoder import EncoderSelection
    from anyloc_ros.core.config.recognition import KeyframeGateConfig
    from anyloc_ros.core.encoding.encoder import Encoder
    from anyloc_ros.core.encoding.patches import PatchCompressor
    from anyloc_ros.core.geometry import Pose
    from anyloc_ros.core.map.database import PlaceDatabase
    from anyloc_ros.core.recognition.mapping import Mapper

    enc = Encoder.from_config(EncoderSelection(encoder_config=str(XFEAT_CFG), vocabulary=str(vocabulary()),
                                               device="cpu").build())
    comp = PatchCompressor(enc.backbone.feature_dim)
    with PlaceDatabase(tmp / "map", enc.signature()) as db:
        mapper = Mapper(db, KeyframeGateConfig())
        mapper.new_session("corridor")
        for i, im in enumerate(corridor()["ref"]):
            d, f = enc.encode_with_features([im])
            mapper.offer(d[0], (100 + i) * 1_000_000_000, "camera", Pose(float(i), 0.0, 0.0), comp(f[0]))
    return tmp / "map"
