"""The one parameter table (core/config/params.py): the nodes declare exactly it, offline tools build
the same objects from the same params file, and the README and config/anyloc.yaml agree with it."""

from __future__ import annotations

import re

import pytest
import yaml

from anyloc_ros.core.config.params import (
    NODE_PARAMETERS,
    NodeParameters,
    markdown_table,
    node_specs,
    params_file_text,
    read_params_file,
)
from anyloc_ros.core.config.settings import ParamSpec
from anyloc_ros.core.errors import ConfigError
from anyloc_ros.testing import save_random_dinov2

from ..conftest import REPO


def _other_value(spec: ParamSpec):
    """A valid value different from the default (so a parameter the node ignored is caught)."""
    d = spec.default
    if isinstance(d, bool):
        return not d
    if spec.choices:
        return next(c for c in spec.choices if c != d)
    if isinstance(d, int):
        return d + 1 if spec.max is None or d + 1 <= spec.max else d - 1
    if isinstance(d, float):
        lo, hi = spec.min if spec.min is not None else d - 1, spec.max if spec.max is not None else d + 1
        return round(lo + 0.37 * (hi - lo), 3) if round(lo + 0.37 * (hi - lo), 3) != d else (lo + hi) / 3
    if isinstance(d, list):  # lens distortion coefficients
        return [0.1, -0.2, 0.001, 0.002, 0.05]
    return d + "_x" if d else "x"


def test_every_parameter_is_described_with_a_valid_default():
    for node in NODE_PARAMETERS:
        specs = node_specs(node)
        names = [s.name for s in specs]
        assert len(names) == len(set(names)), node
        for s in specs:
            assert s.description and s.check(s.default)[1] is None, s.name


def test_readme_table_is_the_generated_one():
    text = (REPO / "README.md").read_text()
    block = re.search(r"<!-- parameters:begin -->\n(.*?)\n<!-- parameters:end -->", text, re.S)
    assert block, "README lost its parameter table markers"
    assert block.group(1) == markdown_table(), "README parameter table is stale: paste `anyloc params`"


@pytest.mark.parametrize("params_file", sorted((REPO / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_params_files_are_valid_for_every_node(params_file):
    sections = read_params_file(params_file)  # unknown names are refused
    assert set(sections) <= {"/**", *NODE_PARAMETERS}
    for node in NODE_PARAMETERS:
        NodeParameters.from_file(params_file, node)  # every value within its type and range


def test_shipped_params_file_is_the_generated_one_and_every_default_once():
    """config/anyloc.yaml is generated from the table (`anyloc params --file`): every parameter at
    its default, so no value there can drift from the code; loading it changes nothing."""
    assert (REPO / "config" / "anyloc.yaml").read_text() == params_file_text(), \
        "config/anyloc.yaml is stale: regenerate it with `anyloc params --file > config/anyloc.yaml`"
    for node in NODE_PARAMETERS:
        loaded = NodeParameters.from_file(REPO / "config" / "anyloc.yaml", node)
        assert loaded.values == NodeParameters(node).values


def test_params_file_errors_are_clear(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text(yaml.safe_dump({"mapping_node": {"ros__parameters": {"keyframe.min_distanse_m": 1.0}}}))
    with pytest.raises(ConfigError, match="unknown parameters.*min_distanse_m"):
        read_params_file(bad)
    bad.write_text(yaml.safe_dump({"mapping_node": {"ros__parameters": {"keyframe": {"min_distance_m": -1.0}}}}))
    with pytest.raises(ConfigError, match="keyframe.min_distance_m: -1.0 is outside"):
        NodeParameters.from_file(bad, "mapping_node")


def test_nodes_and_offline_tools_build_the_same_objects_from_one_params_file(tmp_path):
    """Every parameter set to a non-default value in one params file: the real nodes (rclpy,
    `--params-file`) and NodeParameters.from_file (what `anyloc replay --offline` uses) build
    equal settings objects for every group."""
    import rclpy

    from anyloc_ros.nodes.encoder_node import EncoderNode
    from anyloc_ros.nodes.mapping_node import MappingNode
    from anyloc_ros.nodes.recognition_node import RecognitionNode

    model = tmp_path / "model"
    save_random_dinov2(model)
    enc_cfg = tmp_path / "enc.yaml"
    enc_cfg.write_text(yaml.safe_dump({"backbone": {"type": "dinov2", "model": str(model), "layer": 2,
                                                    "max_side": 56}, "aggregation": {"type": "gem"}}))
    sections: dict[str, dict] = {}
    for node in ("encoder_node", "mapping_node", "recognition_node"):
        sections[node] = {s.name: _other_value(s) for s in node_specs(node)}
    sections["encoder_node"].update(encoder_config=str(enc_cfg), vocabulary="", pca="", device="cpu",
                                    encoder_preset="dinov2_vits14_gem", local_features_model="")
    for node in ("mapping_node", "recognition_node"):
        sections[node].update({"map_path": str(tmp_path / "map"), "index.use_gpu": "false", "session": "s1",
                               "index.type": "flat"} if node == "mapping_node" else
                              {"map_path": str(tmp_path / "map"), "index.use_gpu": "false", "index.type": "flat"})
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in sections.items()}))

    ctx = rclpy.Context()
    rclpy.init(args=["--ros-args", "--params-file", str(params_file)], context=ctx)
    nodes = []
    try:
        nodes = [EncoderNode(context=ctx), MappingNode(context=ctx), RecognitionNode(context=ctx)]
        for n in nodes:
            kind = n.get_name()
            offline = NodeParameters.from_file(params_file, kind)
            assert n.params.values == offline.values
            for group in NODE_PARAMETERS[kind]:
                built = n.params.get(group)
                assert built == offline.get(group), (kind, group.__name__)
            # left at their defaults on purpose (no files, exact search)
            kept = {"vocabulary", "pca", "index.type", "local_features_model"}
            unvaried = [s.name for s in node_specs(kind) if n.params.values[s.name] == s.default and s.name not in kept]
            assert not unvaried, f"{kind}: parameters the test did not vary: {unvaried}"
        # and the objects the nodes actually run with are those
        enc, mapping, rec = nodes
        assert mapping.gate_config == NodeParameters.from_file(params_file, "mapping_node").get(
            type(mapping.gate_config))
        assert rec.loop_config == NodeParameters.from_file(params_file, "recognition_node").get(type(rec.loop_config))
        assert enc.compressor is None and sections["encoder_node"]["publish_patches"] is False
        assert str(enc.encoder.backbone.device) == "cpu" and mapping.map_path == rec.map_path == str(tmp_path / "map")
    finally:
        for n in nodes:
            n.close()
            n.destroy_node()
        rclpy.shutdown(context=ctx)


def test_intrinsics_from_parameters_else_camera_info_scaled_to_the_image():
    """The encoder node and offline replay share this rule: camera.fx/fy/cx/cy (with
    camera.distortion) win; else the camera_info's K and distortion, K scaled when the image is
    not the size it was calibrated at; an uncalibrated camera_info (zeros, NaN) or an unknown
    distortion model gives nothing."""
    import numpy as np

    from anyloc_ros.core.camera import CameraModel
    from anyloc_ros.core.config.nodes import CameraSettings
    from anyloc_ros.core.errors import ConfigError

    k = [520.9, 0, 325.1, 0, 521.0, 249.7, 0, 0, 1]
    d = [0.26, -0.95, -0.005, 0.003, 1.16]
    info = CameraModel.from_camera_info(k, d, "plumb_bob", 640, 480)
    unset = CameraSettings()
    np.testing.assert_allclose(unset.camera_for(480, 640, info).K, np.reshape(k, (3, 3)))
    half = unset.camera_for(240, 320, info)  # a driver's half-size stream: K scaled, distortion kept
    np.testing.assert_allclose(half.K[[0, 0, 1, 1], [0, 2, 1, 2]], [260.45, 162.55, 260.5, 124.85])
    np.testing.assert_allclose(half.distortion, d)
    assert unset.camera_for(480, 640, None) is None
    given = CameraSettings(fx=100.0, fy=100.0, cx=50.0, cy=40.0, distortion=[0.1, 0.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(given.camera_for(480, 640, info).K, given.camera_matrix())
    np.testing.assert_allclose(given.camera_for(480, 640, info).distortion, [0.1, 0, 0, 0, 0])
    for bad in ([0.0] * 9, [float("nan")] + k[1:], k[:8]):
        assert CameraModel.from_camera_info(bad, d, "plumb_bob", 640, 480) is None
    assert CameraModel.from_camera_info(k, [0.1, 0.2], "plumb_bob", 640, 480) is None  # 2 coefficients: none
    assert CameraModel.from_camera_info(k, d, "a_model_we_do_not_know", 640, 480) is None
    assert CameraModel.from_camera_info(k, [], "", 640, 480).distorted is False  # rectified: passes through
    with pytest.raises(ConfigError, match="distortion"):
        CameraSettings(fx=100.0, fy=100.0, distortion=[0.1, 0.2, 0.3]).validate()
