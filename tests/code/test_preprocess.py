"""Decoding photos: every mode to 8-bit RGB, turned upright once."""

import io

import numpy as np
from PIL import Image

from agerange.preprocess import read_image, upright


def _png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, "TIFF" if image.mode == "F" else "PNG")
    return stream.getvalue()


def test_sixteen_bit_and_float_greys_are_scaled_not_clipped_white():
    grey = np.linspace(0, 255, 64 * 64).reshape(64, 64)
    for image in (
        Image.fromarray((grey * 257).astype(np.uint16)),  # 16-bit PNG
        Image.fromarray((grey * 257).astype(np.float32), "F"),  # float, 0-65535
        Image.fromarray((grey / 255).astype(np.float32), "F"),  # float, 0-1
    ):
        decoded = np.asarray(read_image(_png(image), "grey"), dtype=np.float64)
        assert decoded.shape == (64, 64, 3) and abs(decoded.mean() - grey.mean()) < 1.0, image.mode


def test_a_turned_photo_no_longer_says_it_needs_turning():
    exif = Image.Exif()
    exif[0x0112] = 6
    stream = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(stream, "JPEG", exif=exif)
    turned = upright(Image.open(io.BytesIO(stream.getvalue())))
    assert turned.size == (20, 40)
    assert upright(turned).size == (20, 40)  # turned once, however often it is asked
