"""Image preparation shared by training and inference: decode, orient, convert, resize.

Normalisation is not here: it is a layer inside each model (see backbones.py), so a saved
model takes the uint8 RGB chips this module produces.
"""

import io
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 50_000_000  # larger photos are refused rather than decoded (decompression bombs)
_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")


class ImageError(ValueError):
    """An input that is not a usable photo; the message names it and says why."""


def read_image(source: Path | bytes, name: str | None = None) -> Image.Image:
    """Decode a photo to RGB with its EXIF orientation applied.

    Greyscale, CMYK, palette and alpha images are converted to RGB (alpha over black).

    Raises:
        ImageError: one line naming the file and the reason in words (`decode_failure`).
    """
    label = name or (str(source) if isinstance(source, Path) else "image")
    data = None
    try:
        data = source.read_bytes() if isinstance(source, Path) else source
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            megapixels = image.width * image.height / 1e6
            raise ImageError(
                f"{label}: image too large ({megapixels:.0f} MP, limit {MAX_PIXELS / 1e6:.0f} MP)"
            )
        image.load()
        image = upright(image)
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"{label}: {decode_failure(error, data)}") from error
    return to_rgb(image)


def decode_failure(error: BaseException, data: bytes | None = None) -> str:
    """Why a file could not be read or decoded, in words, for a one-line message after its name.

    PIL's own messages name the in-memory buffer (`<_io.BytesIO object at 0x...>`), not the file,
    so they are replaced by a reason a user can act on; `data`, when known, tells an empty file.
    """
    text = _OBJECT_REPR.sub("", str(error)).strip()
    if isinstance(error, Image.DecompressionBombError):
        return f"image too large ({text})"
    if isinstance(error, UnidentifiedImageError):
        if data is not None and not data:
            return "empty file (0 bytes)"
        return "not an image or corrupt (the bytes are not a format PIL can read)"
    if isinstance(error, OSError) and error.errno is not None:
        return f"cannot read the file ({error.strerror or text})"
    if "truncated" in text.lower():
        return "truncated (the file ends before the image data does)"
    return f"corrupt ({text})" if text else "corrupt"


# EXIF orientation (tag 0x0112) -> the transpose that turns the pixels upright
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def upright(image: Image.Image) -> Image.Image:
    """The pixels turned as the EXIF orientation says (the photo as a viewer shows it).

    Only the orientation tag is read: `ImageOps.exif_transpose` also rewrites the rest of the
    EXIF block and fails on a malformed one, which would cost a readable photo its answer.
    """
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # an EXIF block too damaged to read: the pixels as stored
        return image
    if orientation not in _UPRIGHT:
        return image
    turned = image.transpose(_UPRIGHT[orientation])
    turned.info.pop("exif", None)  # its orientation tag no longer holds: nothing may turn it twice
    return turned


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB version of any PIL mode; transparent pixels become black; 16-bit and float greys are
    scaled to 8 bits (a plain conversion clips them, and a 16-bit photo turns white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        top = values.max(initial=0)
        if image.mode == "F" and top <= 1:
            values = values * 255  # a float image in [0, 1]
        elif image.mode.startswith("I;16") or top > 255:
            values = values / 257  # 0-65535 -> 0-255
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def chip_pixels(image: Image.Image, size: int) -> np.ndarray:
    """A face chip as the model input: uint8 RGB, size x size."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.uint8)


def _load_chip(job: tuple[Path, int]) -> np.ndarray:
    path, size = job
    return chip_pixels(read_image(path), size)  # exactly what inference does with a chip


def load_chips(paths: Sequence[Path], size: int, workers: int = 0) -> np.ndarray:
    """Decode many face chips in parallel into one uint8 array (N, size, size, 3)."""
    workers = workers or os.cpu_count() or 1
    jobs = [(Path(path), size) for path in paths]
    if workers == 1 or len(jobs) < 256:
        chips = [_load_chip(job) for job in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chips = list(pool.map(_load_chip, jobs, chunksize=max(32, len(jobs) // (workers * 8))))
    return np.stack(chips) if chips else np.zeros((0, size, size, 3), dtype=np.uint8)
