"""Image message conversion against rosbags-image (cv_bridge's encodings, a kept library).

The nodes convert with rosbags-image's own tables and colour conversion (`to_cvtype`,
`convert_color`) and add only what it lacks, so on every encoding rosbags-image converts, an
unpadded valid message gives the identical RGB image either way. What it lacks, and the nodes
need (each case below fails or crashes in rosbags-image): row padding (`step` > width), a
data/size check, the pixel limit, refusing signed encodings, generic nC3/16-bit images, and a
clear error instead of an `assert` on a corrupt CompressedImage."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.image import message_to_cvimage
from sensor_msgs.msg import CompressedImage, Image

from anyloc_ros.core.errors import ImageError
from anyloc_ros.nodes.images import compressed_msg_to_rgb, image_msg_to_rgb

RNG = np.random.default_rng(0)
# encoding -> (channels, dtype) of the raw pixels
ENCODINGS = {"rgb8": (3, np.uint8), "bgr8": (3, np.uint8), "rgba8": (4, np.uint8), "bgra8": (4, np.uint8),
             "mono8": (1, np.uint8), "mono16": (1, np.uint16), "rgb16": (3, np.uint16), "bgr16": (3, np.uint16),
             "rgba16": (4, np.uint16), "bayer_rggb8": (1, np.uint8), "bayer_bggr8": (1, np.uint8),
             "bayer_gbrg8": (1, np.uint8), "bayer_grbg8": (1, np.uint8), "yuv422": (2, np.uint8)}


def image(encoding: str, h: int = 24, w: int = 32, pad: int = 0, bigendian: bool = False) -> Image:
    nchan, dtype = ENCODINGS[encoding]
    px = RNG.integers(0, np.iinfo(dtype).max, (h, w, nchan), dtype=dtype)
    if bigendian:
        px = px.byteswap()
    rows = px.reshape(h, -1).view(np.uint8)
    rows = np.hstack([rows, np.zeros((h, pad), np.uint8)])
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1],
                 data=rows.tobytes())


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_identical_to_rosbags_image_on_every_encoding_it_converts(encoding):
    msg = image(encoding)
    ours = image_msg_to_rgb(msg)
    theirs = message_to_cvimage(msg, "rgb8")
    assert ours.dtype == np.uint8 and ours.shape == (24, 32, 3)
    assert np.array_equal(ours, theirs)


def test_what_rosbags_image_lacks_row_padding_and_byte_order():
    padded = image("rgb8", pad=8)
    unpadded = Image(height=24, width=32, encoding="rgb8", step=96,
                     data=np.frombuffer(bytes(padded.data), np.uint8).reshape(24, 104)[:, :96].tobytes())
    assert np.array_equal(image_msg_to_rgb(padded), image_msg_to_rgb(unpadded))
    # rosbags-image ignores step: the rows come out sheared
    assert not np.array_equal(message_to_cvimage(padded, "rgb8"), image_msg_to_rgb(unpadded))
    big = image("mono16", bigendian=True)
    little = Image(height=24, width=32, encoding="mono16", step=64,
                   data=np.frombuffer(bytes(big.data), ">u2").astype("<u2").tobytes())
    assert np.array_equal(image_msg_to_rgb(big), image_msg_to_rgb(little))


def test_what_rosbags_image_lacks_clear_errors():
    short = image("rgb8")
    short.data = bytes(short.data)[:100]
    with pytest.raises(ImageError, match="expected step"):
        image_msg_to_rgb(short)
    with pytest.raises(ImageError, match="signed-integer"):
        image_msg_to_rgb(Image(height=2, width=2, encoding="8SC1", step=2, data=bytes(4)))
    corrupt = CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg")
    with pytest.raises(AssertionError):  # rosbags-image: a bare assert
        message_to_cvimage(corrupt, "rgb8")
    with pytest.raises(ImageError):
        compressed_msg_to_rgb(corrupt)


def test_compressed_identical_to_rosbags_image():
    rgb = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    msg = CompressedImage(format="png", data=png)
    assert np.array_equal(compressed_msg_to_rgb(msg), message_to_cvimage(msg, "rgb8"))
    assert np.array_equal(compressed_msg_to_rgb(msg), rgb)
