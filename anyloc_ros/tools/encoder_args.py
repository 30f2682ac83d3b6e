"""The encoder options every `anyloc` sub-command shares (the CLI face of core EncoderSelection)."""

from __future__ import annotations

import argparse

from ..core.config.encoder import PRESETS, EncoderConfig, EncoderSelection


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="encoder config YAML (see config/encoders/)")
    g.add_argument("--preset", default=EncoderSelection.encoder_preset, choices=sorted(PRESETS),
                   help="named encoder preset")
    p.add_argument("--device", help="override backbone.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--vocabulary", help="override aggregation.vocabulary (VLAD vocabulary file)")
    p.add_argument("--pca", help="override projection.pca (PCA file from `anyloc fit-pca`)")
    p.add_argument("--local-features-model", help="XFeat ONNX weights for keypoints beside the backbone "
                   "(verified loop closures with DINOv2); overrides local_features.model_path")


def encoder_selection(args: argparse.Namespace) -> EncoderSelection:
    """The same record the encoder node builds from its parameters (unset options keep its defaults)."""
    given = {"encoder_config": getattr(args, "config", None), "encoder_preset": getattr(args, "preset", None),
             "vocabulary": getattr(args, "vocabulary", None), "pca": getattr(args, "pca", None),
             "device": getattr(args, "device", None),
             "local_features_model": getattr(args, "local_features_model", None)}
    return EncoderSelection(**{k: v for k, v in given.items() if v})


def encoder_config(args: argparse.Namespace) -> EncoderConfig:
    return encoder_selection(args).build()
