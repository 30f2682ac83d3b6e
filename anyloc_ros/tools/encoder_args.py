"""The encoder options every `anyloc` sub-command shares (the CLI face of core EncoderSelection)."""

from __future__ import annotations

import argparse

from ..core.config import PRESETS, EncoderConfig, EncoderSelection


def add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", help="encoder config YAML (see config/encoders/)")
    g.add_argument("--preset", default="dinov2_vitg14_vlad", choices=sorted(PRESETS), help="named encoder preset")
    p.add_argument("--device", help="override backbone.device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--vocabulary", help="override aggregation.vocabulary (VLAD vocabulary file)")
    p.add_argument("--pca", help="override projection.pca (PCA file from `anyloc fit-pca`)")


def encoder_selection(args: argparse.Namespace) -> EncoderSelection:
    """The same record the encoder node builds from its parameters."""
    return EncoderSelection(encoder_config=getattr(args, "config", None) or "",
                            encoder_preset=getattr(args, "preset", None) or "dinov2_vitg14_vlad",
                            vocabulary=getattr(args, "vocabulary", None) or "", pca=getattr(args, "pca", None) or "",
                            device=getattr(args, "device", None) or "")


def encoder_config(args: argparse.Namespace) -> EncoderConfig:
    return encoder_selection(args).build()
