"""Dense backbones: the right DINOv2 tensor is taken, ONNX export matches, errors are clear.

DINOv2 weights cannot be downloaded here, so a tiny randomly initialised model is saved with
`save_pretrained` to a temporary directory and loaded through the same path as real weights.
"""

import numpy as np
import pytest
import torch

from anyloc_ros.core.encoding.backbones import Dinov2Backbone
from anyloc_ros.core.encoding.images import IMAGENET_MEAN, IMAGENET_STD, to_normalized_tensor
from anyloc_ros.core.encoding.onnx_backbone import OnnxBackbone, export_dinov2_onnx
from anyloc_ros.core.errors import ConfigError, WeightsNotFoundError
from anyloc_ros.testing import save_random_dinov2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_dinov2")
    save_random_dinov2(d)
    return d


def _proj(block, facet: str):
    """The block's query/key/value Linear, whatever this transformers version calls it
    (`attention.q_proj` in 5.23, `attention.attention.query` in 5.17)."""
    names = {"query": ("q_proj", "attention.query"), "key": ("k_proj", "attention.key"),
             "value": ("v_proj", "attention.value")}[facet]
    return next(m for name, m in block.named_modules() if name.endswith(names))


def _image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _reference_hidden(model, pixels):
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("layer", [1, 3])
def test_value_facet_is_layernormed_input_times_value_projection(tiny_dir, layer):
    from transformers import AutoModel

    bb = Dinov2Backbone(str(tiny_dir), layer=layer, facet="value", max_side=126, device="cpu", precision="float32")
    img = _image(90, 130)  # non-square: 9 x 6 patches of 14 px after resizing to max side 126
    assert bb.target_size(90, 130) == (84, 126)
    feats = bb.extract([img])
    assert feats.shape == (1, 6, 9, 32) and feats.dtype == torch.float32

    ref_model = AutoModel.from_pretrained(tiny_dir, local_files_only=True).eval()
    pixels = to_normalized_tensor([img], (84, 126), IMAGENET_MEAN, IMAGENET_STD)
    hidden = _reference_hidden(ref_model, pixels)
    block = ref_model.encoder.layer[layer]
    with torch.no_grad():
        expected = _proj(block, "value")(block.norm1(hidden[layer]))[:, 1:, :].reshape(1, 6, 9, 32)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    # and it is not the key facet or the token itself
    assert not torch.allclose(feats, _proj(block, "key")(block.norm1(hidden[layer]))[:, 1:].reshape(1, 6, 9, 32))


def test_token_and_query_key_facets(tiny_dir):
    from transformers import AutoModel

    ref_model = AutoModel.from_pretrained(tiny_dir, local_files_only=True).eval()
    img = _image(70, 42, seed=1)
    pixels = to_normalized_tensor([img], (70, 42), IMAGENET_MEAN, IMAGENET_STD)
    hidden = _reference_hidden(ref_model, pixels)
    tok = Dinov2Backbone(str(tiny_dir), layer=2, facet="token", max_side=70, device="cpu", precision="float32").extract([img])
    torch.testing.assert_close(tok, hidden[3][:, 1:].reshape(1, 5, 3, 32), atol=1e-5, rtol=1e-5)
    block = ref_model.encoder.layer[0]
    for facet, proj in (("query", _proj(block, "query")), ("key", _proj(block, "key"))):
        got = Dinov2Backbone(str(tiny_dir), layer=0, facet=facet, max_side=70, device="cpu", precision="float32").extract([img])
        with torch.no_grad():
            torch.testing.assert_close(got, proj(block.norm1(hidden[0]))[:, 1:].reshape(1, 5, 3, 32), atol=1e-5, rtol=1e-5)


def test_registers_are_dropped(tmp_path):
    from transformers import AutoModel

    save_random_dinov2(tmp_path, registers=4)
    bb = Dinov2Backbone(str(tmp_path), layer=1, facet="value", max_side=56, device="cpu", precision="float32")
    img = _image(56, 56)
    feats = bb.extract([img])
    assert feats.shape == (1, 4, 4, 32)
    model = AutoModel.from_pretrained(tmp_path, local_files_only=True).eval()
    hidden = _reference_hidden(model, to_normalized_tensor([img], (56, 56)))
    block = model.encoder.layer[1]
    with torch.no_grad():
        expected = _proj(block, "value")(block.norm1(hidden[1]))[:, 1 + 4 :].reshape(1, 4, 4, 32)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)


def test_batch_and_layer_defaults(tiny_dir):
    bb = Dinov2Backbone(str(tiny_dir), layer=-1, facet="value", image_size=(28, 42), resize="fixed", device="cpu", precision="float32")
    assert bb.layer == 3 and len(bb.extractor.blocks) == 4
    imgs = [_image(50, 60, s) for s in range(3)]
    batch = bb.extract(imgs)
    assert batch.shape == (3, 2, 3, 32)
    torch.testing.assert_close(batch[1:2], bb.extract(imgs[1:2]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="out of range"):
        Dinov2Backbone(str(tiny_dir), layer=4, device="cpu", precision="float32")
    with pytest.raises(ConfigError, match="facet"):
        Dinov2Backbone(str(tiny_dir), facet="keys", device="cpu", precision="float32")


def test_missing_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="hf download facebook/dinov2"):
        Dinov2Backbone(str(tmp_path / "no-such-model"), device="cpu", precision="float32")
    # a hub id that is not cached, with the hub offline (conftest sets HF_HUB_OFFLINE=1)
    with pytest.raises(WeightsNotFoundError, match="could not be loaded"):
        Dinov2Backbone("vits14", device="cpu", precision="float32")
    with pytest.raises(WeightsNotFoundError, match="ONNX model not found"):
        OnnxBackbone(tmp_path / "missing.onnx")


def test_a_hub_id_reaches_for_the_network_only_when_asked(tmp_path, monkeypatch):
    """An offline robot is answered from its cache at once (the hub client's retries took ~25 s);
    `backbone.download: true` asks the hub, unless HF_HUB_OFFLINE says there is none."""
    from transformers import AutoModel

    asked = []

    def from_pretrained(path, local_files_only=False, **kwargs):
        asked.append((path, local_files_only))
        raise OSError("not cached")

    monkeypatch.setattr(AutoModel, "from_pretrained", from_pretrained)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(WeightsNotFoundError, match="not in the Hugging Face cache.*backbone.download: true"):
        Dinov2Backbone("vits14", device="cpu", precision="float32")
    with pytest.raises(WeightsNotFoundError, match="OSError: not cached"):
        Dinov2Backbone("vits14", device="cpu", precision="float32", download=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError):
        Dinov2Backbone("vits14", device="cpu", precision="float32", download=True)
    with pytest.raises(WeightsNotFoundError):
        Dinov2Backbone(str(tmp_path), device="cpu", precision="float32", download=True)  # a directory: no hub
    assert asked == [("facebook/dinov2-small", True), ("facebook/dinov2-small", False),
                     ("facebook/dinov2-small", True), (str(tmp_path), True)]


def test_export_onnx_matches_torch_for_other_sizes(tiny_dir, tmp_path):
    bb = Dinov2Backbone(str(tiny_dir), layer=2, facet="value", max_side=98, device="cpu", precision="float32")
    path = export_dinov2_onnx(bb, tmp_path / "tiny.onnx", 42, 56)
    onnx_bb = OnnxBackbone(path, output_layout="nhwc", mean=IMAGENET_MEAN, std=IMAGENET_STD,
                           max_side=98, patch_size=14, device="cpu")
    assert onnx_bb.signature() == bb.signature()  # vocabularies/maps work with either path
    img = _image(60, 100, seed=3)  # dynamic input: 56 x 98 here, not the export size
    torch.testing.assert_close(onnx_bb.extract([img, img]), bb.extract([img, img]), atol=1e-4, rtol=1e-4)


def test_export_onnx_of_the_anyloc_sizing_keeps_the_hub_position_rule(tiny_dir, tmp_path):
    """The `anyloc` sizing resizes position embeddings as torch.hub's DINOv2 did (scale factors,
    baked for its one input size); the exported graph gives the same features."""
    bb = Dinov2Backbone(str(tiny_dir), layer=2, resize="anyloc", device="cpu", precision="float32")
    path = export_dinov2_onnx(bb, tmp_path / "anyloc.onnx", 476, 630)
    onnx_bb = OnnxBackbone(path, output_layout="nhwc", mean=IMAGENET_MEAN, std=IMAGENET_STD, resize="anyloc",
                           patch_size=14, device="cpu")
    assert onnx_bb.signature() == bb.signature()
    img = _image(480, 640, seed=4)
    torch.testing.assert_close(onnx_bb.extract([img]), bb.extract([img]), atol=1e-4, rtol=1e-4)
