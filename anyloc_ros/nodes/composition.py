"""anyloc_pipeline: encoder, mapping and recognition nodes in one process and one executor.

For robots that should not serialise images between processes: camera images arrive once
(over DDS from the driver), are encoded here, and each descriptor is handed to the
recognition node (query first) and the mapping node (keyframe second) by a direct call.
The three nodes keep their names, so the same params file configures both deployments.

    anyloc_pipeline --ros-args --params-file config/anyloc.yaml -p mode:=localization
"""

from __future__ import annotations

from typing import Any

import rclpy

from ..core.config.nodes import PipelineSettings
from ..core.types import DescriptorFrame
from .encoder_node import EncoderNode
from .mapping_node import MappingNode
from .parameters import declare
from .recognition_node import RecognitionNode
from .spin import run_node


def build(mode: str = "full") -> list[Any]:
    """The nodes of one pipeline; `mode` is full (map + recognise), mapping or localization."""

    nodes: list[Any] = []
    recognition = RecognitionNode(subscribe_descriptors=False) if mode in ("full", "localization") else None
    mapping: MappingNode | None = None

    def on_frame(frame: DescriptorFrame) -> None:
        if recognition is not None:
            recognition.handle_frame(frame)
        if mapping is not None:
            mapping.handle_frame(frame)

    encoder = EncoderNode(on_frame=on_frame)
    nodes.append(encoder)
    if mode in ("full", "mapping"):
        mapping = MappingNode(encoder_signature=encoder.signature, subscribe_descriptors=False)
        nodes.append(mapping)
    if recognition is not None:
        nodes.append(recognition)
    return nodes


def _pipeline() -> list[Any]:


    mode_node = rclpy.create_node("anyloc_pipeline")
    try:
        mode = declare(mode_node, "anyloc_pipeline").get(PipelineSettings).mode
    except Exception:
        mode_node.destroy_node()
        raise
    return [mode_node, *build(mode)]


def main(args: list[str] | None = None) -> int:

    return run_node(_pipeline, args)


if __name__ == "__main__":
    raise SystemExit(main())
