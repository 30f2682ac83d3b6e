"""Image-message decoding (property-based) and opening damaged map directories (exhaustive over
positions) never fail in any way other than the documented errors."""

import os
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyloc_ros.core.encoding.images import decode_image_bytes
from anyloc_ros.core.errors import ImageError
from anyloc_ros.nodes.images import image_msg_to_rgb

from .._map_damage import MAP_FILES, damages, make_map, sweep

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


@pytest.mark.parametrize("target", MAP_FILES)
def test_every_damage_to_a_map_file_opens_consistently_or_raises_map_error(tmp_path, target):
    """Exhaustive over positions (`_map_damage.damages`): a damaged map either opens and answers
    (index damage is detected by checksum and the index rebuilt from SQLite, losing nothing) or
    raises a MapError naming the damaged file; never another exception. The cases are shared
    between processes, one per core."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor

    make_map(tmp_path / "pristine")
    workers = max(1, min(4, len(os.sched_getaffinity(0))))
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # thousands of fsyncs: RAM when there is one
    with tempfile.TemporaryDirectory(dir=shm) as work, \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(sweep, str(tmp_path / "pristine"), f"{work}/w{i}", target, i, workers)
                for i in range(workers)]
        results = [j.result() for j in jobs]
    cases = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    failures = [f for r in results for f in r[2]]
    print(f"{target}: {cases} damages, {refused} refused with MapError, {cases - refused - len(failures)} opened")
    assert cases == sum(1 for _ in damages(target, len((tmp_path / "pristine" / target).read_bytes())))
    assert not failures, f"{len(failures)} of {cases} damages to {target} misbehaved; first: " + "; ".join(failures[:5])
    if target == "map.sqlite":
        assert refused > 100  # the sweep reaches the damage SQLite detects, not only harmless bytes
