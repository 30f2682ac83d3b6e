"""Property-based tests: image-message decoding and opening damaged map directories never
fail in any way other than the documented errors."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyloc_ros.core.database import PlaceDatabase
from anyloc_ros.core.errors import ImageError, MapError
from anyloc_ros.core.images import decode_image_bytes
from anyloc_ros.nodes.conversions import image_msg_to_rgb

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "8UC3", "8UC1", "rgb16", "bayer_rggb8",
             "yuv422", "nv12", "32FC1", "", "RGB8", "jpeg", "bgr8; garbage"]


@settings(max_examples=300, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS) | st.text(max_size=12),
    height=st.integers(0, 70),
    width=st.integers(0, 70),
    step_extra=st.integers(-8, 16),
    data=st.binary(max_size=70 * 70 * 8),
    bigendian=st.integers(0, 1),
)
def test_image_messages_decode_or_raise_image_error(encoding, height, width, step_extra, data, bigendian):
    msg = SimpleNamespace(encoding=encoding, height=height, width=width, step=max(0, width * 3 + step_extra),
                          data=data, is_bigendian=bigendian)
    try:
        rgb = image_msg_to_rgb(msg)
    except ImageError:
        return
    assert rgb.dtype == np.uint8 and rgb.shape == (height, width, 3)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_compressed_bytes_decode_or_raise_image_error(data):
    try:
        rgb = decode_image_bytes(data)
    except ImageError:
        return
    assert rgb.ndim == 3 and rgb.shape[2] == 3


def test_valid_messages_decode_to_the_right_pixels():
    rgb = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    padded = np.zeros((5, 7 * 3 + 4), np.uint8)
    padded[:, :21] = rgb[:, :, ::-1].reshape(5, 21)  # bgr8 with 4 bytes of row padding
    msg = SimpleNamespace(encoding="bgr8", height=5, width=7, step=25, data=padded.tobytes(), is_bigendian=0)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)
    mono16 = (np.arange(35).reshape(5, 7) * 1000).astype(">u2")  # big-endian on the wire
    msg = SimpleNamespace(encoding="mono16", height=5, width=7, step=14, data=mono16.tobytes(), is_bigendian=1)
    out = image_msg_to_rgb(msg)
    np.testing.assert_array_equal(out[:, :, 0], (mono16.astype(np.float64) * 255 / 65535).astype(np.uint8))


@pytest.fixture(scope="module")
def pristine_map(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    x = np.random.default_rng(0).normal(size=(40, 16)).astype(np.float32)
    with PlaceDatabase(d, {"backbone": "t", "dim": 16}) as db:
        db.add_many(x, list(range(40)))
    return d, x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["map.sqlite", "index.faiss", "index.json"]),
       mode=st.sampled_from(["truncate", "flip", "zero", "delete"]), where=st.floats(0, 1), seed=st.integers(0, 10**6))
def test_damaged_map_opens_consistently_or_raises_map_error(pristine_map, tmp_path_factory, target, mode, where, seed):
    import shutil

    src, x = pristine_map
    d = tmp_path_factory.mktemp("damaged")
    shutil.copytree(src, d, dirs_exist_ok=True)
    f = d / target
    data = bytearray(f.read_bytes())
    cut = int(where * len(data))
    if mode == "truncate":
        data = data[:cut]
    elif mode == "flip" and data:
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, len(data), 8):
            data[i] ^= 0xFF
    elif mode == "zero":
        data = bytearray(len(data))
    if mode == "delete":
        f.unlink()
    else:
        f.write_bytes(bytes(data))
    try:
        db = PlaceDatabase(d, {"backbone": "t", "dim": 16})
    except MapError as exc:
        assert target == "map.sqlite" and str(d) in str(exc)
        return
    # opened: whatever survived is searchable without error
    ids = set(db.ids().tolist())
    db.search(x[:3], 5)
    db.keyframes()
    if target != "map.sqlite":  # index damage is detected (checksum) and the index rebuilt from SQLite
        assert ids == set(range(1, 41))
        for kid in (1, 17, 40):
            got = db.search(x[kid - 1], 1)[0]
            assert got[0].keyframe_id == kid and got[0].score == pytest.approx(1.0, abs=1e-4)
    db.close()
