"""Bad input gets a clear error; the encoder composes backbone, VLAD/GeM and PCA correctly."""

import numpy as np
import pytest

from anyloc_ros.core.config.encoder import EncoderConfig
from anyloc_ros.core.encoding.aggregation import VLAD, GeM
from anyloc_ros.core.encoding.encoder import Encoder
from anyloc_ros.core.encoding.images import as_rgb_uint8, decode_image_bytes, list_images, load_image
from anyloc_ros.core.encoding.projection import PCA
from anyloc_ros.core.encoding.vocabulary import Vocabulary
from anyloc_ros.core.errors import ConfigError, FeatureDimensionError, ImageError, VocabularyError
from anyloc_ros.testing import save_random_dinov2


@pytest.mark.parametrize(
    "image,match",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty image"),
        (np.zeros((8, 8, 2), np.uint8), "expected 1, 3 or 4 channels"),
        (np.zeros((8, 8, 5), np.uint8), "got 5"),
        (np.zeros((8, 8, 3), np.int64), "unsupported image dtype int64"),
        (np.full((8, 8, 3), 2.0, np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.zeros((2, 8, 8, 3), np.uint8), "HxW or HxWxC"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_images_are_refused_clearly(image, match):
    with pytest.raises(ImageError, match=match):
        as_rgb_uint8(image)


def test_image_conversions():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb_uint8(gray).shape == (3, 4, 3)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert as_rgb_uint8(rgba).shape == (3, 4, 3)
    assert as_rgb_uint8(np.ones((2, 2, 3), np.float32)).max() == 255
    assert as_rgb_uint8(np.full((2, 2, 3), 65535, np.uint16)).max() == 255


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(ImageError, match="could not be decoded"):
        decode_image_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageError, match="empty"):
        decode_image_bytes(b"")
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(ImageError, match=str(bad)):
        load_image(bad)
    with pytest.raises(ImageError, match="no images"):
        list_images(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def tiny_encoder_parts(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    save_random_dinov2(d)
    return d


def test_encoder_from_yaml_with_vlad_and_pca(tiny_encoder_parts, tmp_path):
    from anyloc_ros.core.encoding.backbones import Dinov2Backbone

    rng = np.random.default_rng(0)
    bb = Dinov2Backbone(str(tiny_encoder_parts), layer=2, facet="value", max_side=84, device="cpu")
    vocab = Vocabulary(rng.normal(size=(8, 32)).astype(np.float32), dict(bb.signature()))
    vocab.save(tmp_path / "vocab.npz")
    imgs = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(12)]
    vlad = VLAD(vocab.centers)
    raw = vlad.aggregate_batch(bb.extract(imgs).reshape(12, -1, 32))
    PCA.fit(raw, 6, whiten=True).save(tmp_path / "pca.npz")
    (tmp_path / "enc.yaml").write_text(
        f"backbone: {{type: dinov2, model: {tiny_encoder_parts}, layer: 2, facet: value, max_side: 84, device: cpu}}\n"
        "aggregation: {type: vlad, vocabulary: vocab.npz}\n"
        "projection: {pca: pca.npz}\n"
        "batch_size: 5\n"
    )
    enc = Encoder.from_config(tmp_path / "enc.yaml")
    out = enc.encode(imgs)
    assert out.shape == (12, 6) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    pca = PCA.load(tmp_path / "pca.npz")
    expected = pca.transform(raw)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    sig = enc.signature()
    assert sig["vocabulary"] == vocab.content_hash() and sig["dim"] == 6 and sig["layer"] == 2
    # mixed image sizes are batched per size and come back in input order
    mixed = enc.encode([imgs[0], np.zeros((30, 30, 3), np.uint8), imgs[1]])
    np.testing.assert_allclose(mixed[[0, 2]], out[:2], atol=1e-5)


def test_encoder_refuses_mismatched_vocabulary_and_pca(tiny_encoder_parts, tmp_path):
    from anyloc_ros.core.encoding.backbones import Dinov2Backbone

    bb = Dinov2Backbone(str(tiny_encoder_parts), layer=2, device="cpu")
    wrong_dim = Vocabulary(np.ones((8, 64), np.float32))
    with pytest.raises(VocabularyError, match="64-D centres but the backbone gives 32-D"):
        Encoder(bb, VLAD(wrong_dim.centers), vocabulary=wrong_dim)
    other_layer = Vocabulary(np.ones((8, 32), np.float32), dict(bb.signature(), layer=1))
    with pytest.raises(VocabularyError, match="layer: vocabulary 1 vs backbone 2"):
        Encoder(bb, VLAD(other_layer.centers), vocabulary=other_layer)
    with pytest.raises(FeatureDimensionError, match="PCA expects"):
        Encoder(bb, GeM(), pca=PCA.fit(np.random.rand(20, 16), 4))
    with pytest.raises(ConfigError, match="vocabulary is required"):
        Encoder.from_config({"backbone": {"type": "dinov2", "model": str(tiny_encoder_parts), "device": "cpu"}})


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown encoder preset"):
        EncoderConfig.from_dict({"preset": "nope"})
    with pytest.raises(ConfigError, match="facet"):
        EncoderConfig.from_dict({"backbone": {"facet": "values"}})
    with pytest.raises(ConfigError, match="invalid encoder config"):
        EncoderConfig.from_dict({"backbone": {"colour": 1}})
    with pytest.raises(ConfigError, match="out of range"):
        EncoderConfig.from_dict({"preset": "dinov2_vitg14_vlad", "backbone": {"layer": 40}})
    cfg = EncoderConfig.from_dict({"preset": "dinov2_vitg14_vlad"})
    assert (cfg.backbone.model, cfg.backbone.layer, cfg.backbone.facet) == ("vitg14", 31, "value")
    assert cfg.aggregation.type == "vlad" and cfg.aggregation.mode == "hard"


@pytest.mark.parametrize("src,size", [((48, 64), (48, 64)), ((30, 20), (56, 42)), ((196, 294), (28, 42))])
def test_normalisation_matches_its_definition(src, size):
    """References written from the definitions, not with OpenCV: same size = no resampling;
    upsampling = bilinear with half-pixel centres (torch); an integer downscale by 7 = the mean
    of each 7x7 block (area interpolation). OpenCV works on uint8, so one intensity step of
    rounding is allowed."""
    import torch
    import torch.nn.functional as F

    from anyloc_ros.core.encoding.images import IMAGENET_MEAN, IMAGENET_STD, to_normalized_tensor

    img = np.random.default_rng(0).integers(0, 256, (*src, 3), dtype=np.uint8)
    out = to_normalized_tensor([img, img[::-1].copy()], size).numpy()
    assert out.shape == (2, 3, *size) and out.dtype == np.float32
    x = img.astype(np.float64)
    if src == size:
        r, tol = x, 1e-5
    elif size[0] > src[0]:
        t = torch.from_numpy(x).permute(2, 0, 1)[None]
        r = F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        tol = 1.01 / 255 / min(IMAGENET_STD)
    else:
        f = src[0] // size[0]
        r = x.reshape(size[0], f, size[1], f, 3).mean(axis=(1, 3))
        tol = 1.01 / 255 / min(IMAGENET_STD)
    ref = ((r / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)
    np.testing.assert_allclose(out[0], ref, atol=tol)


@pytest.mark.parametrize("mode,size,image,expected", [
    ("aspect", None, (120, 160), (126, 154)),  # 8.6 -> 9 and 11.4 -> 11 patches: no upsampling
    ("aspect", None, (480, 640), (336, 448)),  # long side capped at 448, 0.7 x 480 = 336
    ("aspect", None, (1000, 200), (448, 84)),  # 0.448 x 200 = 89.6 -> 6 patches
    ("anyloc", None, (120, 160), (476, 630)),  # AnyLoc: 480x640 cropped to 34x45 patches
    ("anyloc", None, (1080, 1920), (476, 630)),
    ("anyloc", (320, 320), (480, 640), (308, 308)),
    ("fixed", (224, 224), (480, 640), (224, 224)),
])
def test_resize_policy_input_sizes(mode, size, image, expected):
    from anyloc_ros.core.encoding.images import ResizePolicy

    policy = ResizePolicy(mode, 448, size, 14)
    assert policy.input_size(*image) == expected
    img = np.zeros((*image, 3), np.uint8)
    assert tuple(policy([img]).shape[2:]) == expected


@pytest.mark.parametrize("mode,size,match", [
    ("aspect", (224, 224), "used only by resize 'fixed' or 'anyloc'"),
    ("fixed", None, "needs an image size"),
    ("fixed", (225, 224), "multiples of the patch size"),
    ("anyloc", (10, 640), "at least one patch"),
    ("stretch", None, "resize mode must be one of"),
])
def test_resize_policy_refuses_what_it_cannot_do(mode, size, match):
    from anyloc_ros.core.encoding.images import ResizePolicy

    with pytest.raises(ConfigError, match=match):
        ResizePolicy(mode, 448, size, 14)
