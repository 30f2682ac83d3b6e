"""Field hardening of inputs: clocks that jump, decompression bombs, files that are not what they
claim (encoder YAML, vocabularies, PCA, ONNX models, ground truth, results), bad bag frames."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from anyloc_ros.core.config.recognition import KeyframeGateConfig, LoopClosureConfig
from anyloc_ros.core.errors import ConfigError, FeatureDimensionError, ImageError
from anyloc_ros.core.geometry import Pose
from anyloc_ros.core.recognition.loop_closure import LoopClosureFilter
from anyloc_ros.core.recognition.mapping import KeyframeGate
from anyloc_ros.testing import save_random_dinov2

from ..conftest import REPO


def anyloc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "anyloc_ros.tools.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(r: subprocess.CompletedProcess, command: str, *words: str) -> None:
    """Exit 2 and exactly one error line, the last thing on stderr; anything before it is a log
    record (`LEVEL logger: message`), never a traceback or a library's multi-line warning."""
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"anyloc {command}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr
    others = [line for line in lines[:-1] if not re.match(r"^(DEBUG|INFO|WARNING|ERROR) [\w.]+: ", line)]
    assert others == [], r.stderr
    for w in words:
        assert w in errors[0], r.stderr


# ----------------------------------------------------------------------------- clocks
@pytest.mark.parametrize("bad_stamp_s", [2_145_916_800.0, -1000.0], ids=["one-frame-in-2038", "clock-back-1000s"])
def test_keyframing_survives_clock_jumps(bad_stamp_s):
    gate = KeyframeGate(KeyframeGateConfig(min_distance_m=0.5))
    t0 = 1_700_000_000.0
    stamps = [t0 + i for i in range(10)]
    if bad_stamp_s > 0:
        stamps.insert(5, bad_stamp_s)  # one frame from a bad clock
    else:
        stamps = stamps[:5] + [t0 + bad_stamp_s + i for i in range(5)]  # the clock jumps back and stays
    added = []
    for i, s in enumerate(stamps):
        pose = Pose(float(i), 0, 0)  # moving 1 m per frame: every frame should be a keyframe
        ns = int(s * 1e9)
        if gate.check(ns, pose):
            gate.accept(ns, pose)
            added.append(i)
    assert added == list(range(len(stamps)))
    assert gate.clock_jumps == 1 and "clock jumped back" in gate.last_clock_jump


def test_keyframing_without_poses_resumes_after_the_clock_jumps_back():
    gate = KeyframeGate(KeyframeGateConfig(no_pose_interval_s=1.0))
    added = 0
    for s in [1000.0 + i for i in range(5)] + [10.0 + i for i in range(6)]:
        if gate.check(int(s * 1e9)):
            gate.accept(int(s * 1e9))
            added += 1
    assert added == 10  # 5 before; after the jump the interval restarts from the jumping frame: 5 more
    assert gate.clock_jumps == 1


def test_loop_filter_recent_window_is_not_pinned_by_a_future_stamp():
    f = LoopClosureFilter(LoopClosureConfig(exclude_recent_count=3, exclude_recent_s=10.0))
    f.observe_keyframe(1, int(2.1e18), "s")  # 2036
    for i in range(2, 200):
        f.observe_keyframe(i, int((1000 + i) * 1e9), "s")
    assert len(f._recent) < 20  # bounded: the future keyframe no longer blocks the window
    from anyloc_ros.core.recognition.loop_closure import Query

    excluded = f.excluded_ids(Query(0, int(1200 * 1e9), "s"))
    assert 1 not in excluded and {199, 198, 197} <= excluded


# ----------------------------------------------------------------------------- images
def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1) * 64)  # a few rows: the rest would decompress to gigabytes
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    """Refused from the header alone: the decoder is never called (it raises here if it is)."""
    import cv2

    from anyloc_ros.core.encoding.images import decode_image_bytes, load_image, set_max_image_pixels

    real_decode, calls = cv2.imdecode, []

    def decoder(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the decoder was called on an image refused by its header")

    small = png_declaring(4, 4)
    assert decode_image_bytes(small).shape == (4, 4, 3)  # the header check passes a small image to the decoder
    monkeypatch.setattr(cv2, "imdecode", decoder)
    bomb = png_declaring(20000, 20000)
    with pytest.raises(ImageError, match="declares .*pixels.*max_image_pixels"):
        decode_image_bytes(bomb)
    with pytest.raises(ImageError, match="declares 9000x9000 pixels"):
        decode_image_bytes(png_declaring(9000, 9000))
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageError, match="max_image_pixels"):
        load_image(tmp_path / "bomb.png")
    set_max_image_pixels(10)
    try:
        with pytest.raises(ImageError, match="over the limit of 10"):
            decode_image_bytes(small)
    finally:
        set_max_image_pixels(50_000_000)
    assert calls == []
    monkeypatch.setattr(cv2, "imdecode", real_decode)


def test_compressed_image_message_bomb_and_signed_encodings_are_refused():
    from anyloc_ros.nodes.images import compressed_msg_to_rgb, image_msg_to_rgb

    with pytest.raises(ImageError, match="declares"):
        compressed_msg_to_rgb(SimpleNamespace(data=png_declaring(30000, 30000), format="png"))
    msg = SimpleNamespace(encoding="8SC1", height=2, width=2, step=2, data=bytes([0, 127, 128, 255]), is_bigendian=0)
    with pytest.raises(ImageError, match="signed-integer image encoding '8SC1'"):
        image_msg_to_rgb(msg)


# ----------------------------------------------------------------------------- encoder files
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_random_dinov2(d)
    return d


BAD_YAML = {
    "max_side_word": "backbone: {max_side: big}",
    "image_size_int": "backbone: {image_size: 5}",
    "batch_size_word": "batch_size: many",
    "list_for_string": "backbone: {model: [a, b]}",
    "section_list": "backbone: [1, 2]",
    "layer_float": "backbone: {layer: 2.5}",
    "mean_strings": "backbone: {mean: [a, b, c]}",
    "p_string": "aggregation: {type: gem, p: high}",
    "not_mapping": "- just\n- a list",
    "bad_yaml": "backbone: {max_side: [",
    "unknown_key": "backbone: {colour: red}",
    "top_level_number": "42",
    "resize_unknown": "backbone: {resize: stretch}",
    "resize_fixed_without_size": "backbone: {resize: fixed}",
    "image_size_with_aspect": "backbone: {resize: aspect, image_size: [224, 224]}",
}


@pytest.mark.parametrize("name", sorted(BAD_YAML))
def test_malformed_encoder_yaml_is_one_line_error(tmp_path, name):
    from anyloc_ros.core.config.encoder import EncoderConfig

    f = tmp_path / "enc.yaml"
    f.write_text(BAD_YAML[name])
    with pytest.raises(ConfigError, match=str(f)):
        EncoderConfig.from_yaml(f)


def test_cli_reports_bad_files_in_one_line(tmp_path, tiny_model):
    (tmp_path / "imgs").mkdir()
    import cv2

    cv2.imwrite(str(tmp_path / "imgs" / "a.png"), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "bin.yaml").write_bytes(bytes(range(256)) * 4)
    r = anyloc("encode", "--config", str(tmp_path / "bin.yaml"), "--images", str(tmp_path / "imgs"),
               "--output", str(tmp_path / "o.npz"))
    assert_one_line_error(r, "encode", "bin.yaml")
    (tmp_path / "e.yaml").write_text("backbone: {max_side: big}")
    r = anyloc("encode", "--config", str(tmp_path / "e.yaml"), "--images", str(tmp_path / "imgs"),
               "--output", str(tmp_path / "o.npz"))
    assert_one_line_error(r, "encode", "backbone.max_side must be an integer")
    # vocabulary with string centres / wrong metadata types
    from anyloc_ros.core.fileio import save_npz

    save_npz(tmp_path / "v1.npz", {"format": "anyloc_ros.vocabulary/1"}, centers=np.array([["a", "b"]]))
    save_npz(tmp_path / "v2.npz", {"format": "anyloc_ros.vocabulary/1", "layer": [1]}, centers=np.ones((4, 32)))
    (tmp_path / "d.yaml").write_text(f"backbone: {{type: dinov2, model: {tiny_model}, layer: 2, device: cpu}}\n"
                                     "aggregation: {type: vlad}\n")
    for v, words in (("v1.npz", "must be numbers"), ("v2.npz", "metadata of the wrong type")):
        r = anyloc("encode", "--config", str(tmp_path / "d.yaml"), "--vocabulary", str(tmp_path / v),
                   "--images", str(tmp_path / "imgs"), "--output", str(tmp_path / "o.npz"))
        assert_one_line_error(r, "encode", words)
    # compare on things that are not results
    (tmp_path / "list.json").write_text("[1, 2]")
    from anyloc_ros.eval.evaluate import RESULT_FORMAT

    (tmp_path / "nopr.json").write_text(f'{{"format": "{RESULT_FORMAT}", "label": "x"}}')
    for f in ("list.json", "nopr.json"):
        assert_one_line_error(anyloc("compare", str(tmp_path / f)), "compare", f)


def test_vlad_vocabulary_and_pca_bound_together(tmp_path, tiny_model):
    from anyloc_ros.core.encoding.aggregation import VLAD
    from anyloc_ros.core.encoding.backbones import Dinov2Backbone
    from anyloc_ros.core.encoding.encoder import Encoder
    from anyloc_ros.core.encoding.projection import PCA
    from anyloc_ros.core.encoding.vocabulary import Vocabulary

    rng = np.random.default_rng(0)
    bb = Dinov2Backbone(str(tiny_model), layer=2, max_side=56, device="cpu")
    va = Vocabulary(rng.normal(size=(4, 32)).astype(np.float32), dict(bb.signature()))
    vb = Vocabulary(rng.normal(size=(4, 32)).astype(np.float32), dict(bb.signature()))
    enc_a = Encoder(bb, VLAD(va.centers), vocabulary=va)
    imgs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(10)]
    pca = PCA.fit(enc_a.encode(imgs), 4)
    pca.metadata["fitted_on"] = enc_a.pca_binding()
    pca.save(tmp_path / "pca.npz")
    loaded = PCA.load(tmp_path / "pca.npz")
    Encoder(bb, VLAD(va.centers), pca=loaded, vocabulary=va)  # its own vocabulary: fine
    with pytest.raises(ConfigError, match="PCA was fitted on other descriptors .*vocabulary"):
        Encoder(bb, VLAD(vb.centers), pca=loaded, vocabulary=vb)


@pytest.mark.parametrize("damage", ["missing", "nan", "shape", "empty", "strings", "json_list", "zero", "zero_scale"])
def test_malformed_pca_files_are_config_errors(tmp_path, damage):
    from anyloc_ros.core.encoding.projection import FORMAT, PCA
    from anyloc_ros.core.fileio import save_npz

    a = {"mean": np.zeros(8, np.float32), "components": np.eye(4, 8, dtype=np.float32), "scale": np.ones(4, np.float32)}
    meta = {"format": FORMAT}
    if damage == "missing":
        del a["scale"]
    elif damage == "nan":
        a["components"][0, 0] = np.nan
    elif damage == "shape":
        a["scale"] = np.ones(3, np.float32)
    elif damage == "empty":
        a["components"] = np.zeros((0, 8), np.float32)
        a["scale"] = np.ones(0, np.float32)
    elif damage == "strings":
        a["mean"] = np.array(["x"] * 8)
    elif damage == "zero":  # every image would get the same descriptor
        a["components"] = np.zeros((4, 8), np.float32)
    elif damage == "zero_scale":
        a["scale"][2] = 0.0
    path = tmp_path / "p.npz"
    save_npz(path, meta, **a)
    if damage == "json_list":
        np.savez(path, __metadata__=np.array("[1, 2]"), **a)
    with pytest.raises(ConfigError, match="PCA file"):
        PCA.load(path)


def _onnx_model(path, kind: str):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 3, "h", "w"])
    if kind == "rank2":
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", None])
        nodes = [helper.make_node("Flatten", ["x"], ["y"])]
    else:  # NaN everywhere: 0 * inf
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 3, "h", "w"])
        inf = helper.make_tensor("inf", TensorProto.FLOAT, [1], [float("inf")])
        nodes = [helper.make_node("Constant", [], ["c"], value=inf), helper.make_node("Mul", ["x", "c"], ["t"]),
                 helper.make_node("Sub", ["t", "t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))


def test_onnx_models_of_the_wrong_shape_or_with_nan_output_are_refused(tmp_path):
    from anyloc_ros.core.encoding.aggregation import GeM
    from anyloc_ros.core.encoding.encoder import Encoder
    from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone

    _onnx_model(tmp_path / "r2.onnx", "rank2")
    with pytest.raises(ConfigError, match="rank"):
        OnnxBackbone(tmp_path / "r2.onnx", device="cpu")
    _onnx_model(tmp_path / "nan.onnx", "nan")
    bb = OnnxBackbone(tmp_path / "nan.onnx", device="cpu", patch_size=1)
    with pytest.raises(FeatureDimensionError, match="NaN/inf descriptors"):
        Encoder(bb, GeM()).encode(np.full((8, 8, 3), 128, np.uint8))
    (tmp_path / "nan.json").write_text("{not json")
    with pytest.raises(ConfigError, match="sidecar"):
        OnnxBackbone(tmp_path / "nan.onnx", device="cpu", patch_size=1)
    (tmp_path / "nan.json").write_text('{"signature": "oops"}')
    with pytest.raises(ConfigError, match="malformed 'signature'"):
        OnnxBackbone(tmp_path / "nan.onnx", device="cpu", patch_size=1)


# ----------------------------------------------------------------------------- ground truth
def test_duplicated_or_truncated_ground_truth_is_a_clear_error(tmp_path):
    from anyloc_ros.eval.datasets import DatasetError, read_positives_csv, read_vprbench_npy

    (tmp_path / "gt.csv").write_text("query_index,matching_ref_indices\n0,1 2\n1,3\n1,4\n")
    with pytest.raises(DatasetError, match="query 1 appears twice"):
        read_positives_csv(tmp_path / "gt.csv")
    rows = np.empty(3, dtype=object)
    for i in range(3):
        rows[i] = [i, np.array([i, i + 1])]
    np.save(tmp_path / "gt.npy", rows, allow_pickle=True)
    assert read_vprbench_npy(tmp_path / "gt.npy")[2] == {2, 3}
    data = (tmp_path / "gt.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) - 40])
    with pytest.raises(DatasetError, match="truncated or damaged"):
        read_vprbench_npy(tmp_path / "cut.npy")


# ----------------------------------------------------------------------------- replay and nodes
def test_offline_replay_skips_and_counts_bad_frames_like_the_nodes(tmp_path, tiny_model):
    import cv2
    import yaml

    from anyloc_ros.tools.bags import BagMessage
    from anyloc_ros.tools.replay import replay_offline

    def stamp(i):
        return SimpleNamespace(sec=1000 + i, nanosec=0)

    def image(i, data):
        hdr = SimpleNamespace(stamp=stamp(i), frame_id="cam")
        return BagMessage("/cam", "sensor_msgs/msg/CompressedImage", i, b"", SimpleNamespace(header=hdr, data=data,
                                                                                          format="jpeg"))

    def odom(i, qw):
        p = SimpleNamespace(position=SimpleNamespace(x=float(i), y=0.0, z=0.0),
                            orientation=SimpleNamespace(x=0.0, y=0.0, z=0.0, w=qw))
        msg = SimpleNamespace(header=SimpleNamespace(stamp=stamp(i)), pose=SimpleNamespace(pose=p))
        return BagMessage("/odom", "nav_msgs/msg/Odometry", i, b"", msg)

    rng = np.random.default_rng(0)
    good = cv2.imencode(".jpg", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))[1].tobytes()
    msgs = []
    for i in range(8):
        msgs.append(odom(i, 1.0 if i != 3 else 7.0))  # one non-unit quaternion
        msgs.append(image(i, good if i != 5 else b"\xff\xd8 corrupt"))  # one corrupt JPEG
    enc = tmp_path / "enc.yaml"
    enc.write_text(yaml.safe_dump({"backbone": {"type": "dinov2", "model": str(tiny_model), "layer": 2,
                                                "max_side": 56, "device": "cpu"}, "aggregation": {"type": "gem"}}))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"encoder_node": {"ros__parameters": {"encoder_config": str(enc), "patch_dim": 4,
                                                                           "patch_grid": 16}}}))
    res = replay_offline(msgs, params, tmp_path / "map", False)
    assert res.skipped == {"poses": 1, "images": 1}
    assert len(res.frames) == 7


def test_descriptor_without_encoder_id_is_refused_by_a_map_of_another_encoder():
    from anyloc_ros.msg import PlaceDescriptor

    from anyloc_ros.core.types import EncoderSignature
    from anyloc_ros.nodes.descriptor_msg import EncoderGate, accept_descriptor
    from anyloc_ros.nodes.diagnostics import RateStats

    class Node:
        def get_name(self):
            return "n"

        def get_logger(self):
            return SimpleNamespace(error=lambda m: None)

    stats = RateStats()
    gate = EncoderGate()
    gate.map_signature = EncoderSignature(backbone="b", dim=2)
    msg = PlaceDescriptor(descriptor=[1.0, 0.0], encoder_id="")
    assert accept_descriptor(Node(), msg, stats, gate) is None and stats.counts["frames_rejected"] == 1
    msg.encoder_id = gate.map_id
    assert accept_descriptor(Node(), msg, stats, gate) is not None


