"""Random-weight DINOv2 models for tests and benchmarks: built with transformers and saved with
`save_pretrained`, so the product loads them through its own path like a downloaded checkpoint.
Their time and memory are a trained model's; their activations say nothing about trained ones.

    save_random_dinov2(tmp / "tiny")                     # a tiny test model (32-D, 4 blocks)
    save_random_dinov2(tmp / "vits14", **VIT_SIZES["ViT-S/14"])   # benchmark sizes below
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, image_size=56)
# ViT-S/B (used at layer 9 of 12) and ViT-G/14 as AnyLoc uses it (SwiGLU MLP, layer 31 of 40)
VIT_SIZES = {"ViT-S/14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
             "ViT-B/14": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)}
VIT_GIANT = {"ViT-G/14": dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, use_swiglu_ffn=True,
                              mlp_ratio=4)}
VIT_LAYERS = {"ViT-S/14": 9, "ViT-B/14": 9, "ViT-G/14": 31}


def save_random_dinov2(path: str | Path, registers: int = 0, seed: int = 0, **config: Any) -> torch.nn.Module:
    """A DINOv2 with random weights (seeded) saved at `path`: the tiny test model, or the sizes
    `config` gives (transformers' Dinov2Config fields; patch 14, image 518 unless given).
    Returns the model in eval mode."""
    kw = dict(TINY) if not config else {"image_size": 518, **config}
    kw.setdefault("patch_size", 14)
    torch.manual_seed(seed)
    if registers:
        model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kw))
    else:
        model = Dinov2Model(Dinov2Config(**kw))
    model.save_pretrained(str(path))
    return model.eval()
