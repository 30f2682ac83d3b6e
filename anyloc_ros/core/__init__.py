"""anyloc_ros.core: the ROS-free library. Its public API, importable from here so scripts and
notebooks do not depend on where a module lives:

    from anyloc_ros.core import Encoder, EncoderConfig, PlaceDatabase, Mapper, PlaceRecognizer, FrameStep

Rooms (each imports only the ones below it; import-linter checks it, pyproject.toml):

    recognition/  keyframes, loop-closure filter, re-ranking, sequences, verification, relative
                  poses, the per-frame step           (uses the map, never the reverse)
    encoding/     images -> descriptors, patches and local features   (torch, OpenCV, onnxruntime)
    map/          the place map: SQLite store, faiss index, PlaceDatabase  (no torch, no OpenCV)
    config/       every setting, declared once: encoder config, node parameters, the table
    errors, geometry, types, camera, pose_buffer: small shared records

Names are resolved on first use (PEP 562), so importing one of them loads only its room: a
mapping process that imports PlaceDatabase never loads torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    # encoding
    "Encoder": "encoding.encoder", "FrameEncoding": "encoding.encoder", "PatchCompressor": "encoding.patches",
    "Vocabulary": "encoding.vocabulary", "PCA": "encoding.projection",
    # configuration
    "EncoderConfig": "config.encoder", "EncoderSelection": "config.encoder", "PRESETS": "config.encoder",
    "IndexConfig": "config.map", "KeyframeGateConfig": "config.recognition", "LoopClosureConfig": "config.recognition",
    "SequenceConfig": "config.recognition", "VerificationConfig": "config.recognition",
    "NodeParameters": "config.params",
    # the map
    "PlaceDatabase": "map.database",
    # recognition
    "Mapper": "recognition.mapping", "KeyframeGate": "recognition.mapping", "PlaceRecognizer": "recognition.recognizer",
    "RecognitionResult": "recognition.recognizer", "LoopClosureFilter": "recognition.loop_closure",
    "FrameStep": "recognition.step", "StepResult": "recognition.step", "verify": "recognition.verification",
    "RelativePose": "recognition.relative_pose",
    # shared records and errors
    "Pose": "geometry", "Keyframe": "types", "Match": "types", "LocalFeatures": "types", "DescriptorFrame": "types",
    "EncoderSignature": "types", "CameraModel": "camera", "PoseBuffer": "pose_buffer",
    "AnyLocError": "errors", "ConfigError": "errors", "MapError": "errors", "ImageError": "errors",
    "FeatureDimensionError": "errors", "WeightsNotFoundError": "errors", "VocabularyError": "errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
