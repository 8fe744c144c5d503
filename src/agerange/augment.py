"""Real-photo conditions for training: the same face as a phone, a webcam or a scan would give it.

UTKFace chips are clean, evenly lit and sharp; photos people point `agerange predict` at are not
(the drift report flags brightness, contrast, blur, colour, saturation and face size on FairFace).
`degrade` turns a chip into one such version: a head turned aside, colour cast,
brightness and contrast, greyscale, blur, JPEG compression, down-then-up scaling, a small
rotation, shift and scale, and a mirror.
Each variant of an image is seeded by its path, so every training, ensemble member and sweep trial
sees the same variants, and their frozen-part features can be computed once and cached.
"""

import io
import zlib

import numpy as np
from PIL import Image, ImageFilter


def variant_rng(path: str, variant: int) -> np.random.Generator:
    """The random source of one variant of one image: the same in every process and run."""
    return np.random.default_rng([zlib.crc32(path.encode()), variant])


def degrade(chip: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """One real-photo version of an RGB chip (uint8, H x W x 3); `strength` in [0, 1] scales every
    change (0: the chip itself, possibly mirrored)."""
    size = chip.shape[0]
    image = Image.fromarray(chip)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < strength:
        # UTKFace faces look at the camera; in people's photos a quarter of the heads are turned
        # (bench/turned_heads.py), and those faces are answered worst
        image = Image.fromarray(turn_head(np.asarray(image), rng.uniform(15, 60) * rng.choice([-1, 1])))
    # geometry: the few-degree turns, shifts and scale changes of another camera and detector
    angle = np.deg2rad(rng.uniform(-12, 12) * strength)
    scale = 1 + rng.uniform(-0.12, 0.12) * strength
    shift = rng.uniform(-0.06, 0.06, 2) * strength * size
    # one affine map (output pixel -> input pixel), black outside the chip like `faces.align_face`
    cos, sin, centre = np.cos(angle) / scale, np.sin(angle) / scale, size / 2
    coefficients = (
        cos, sin, centre - cos * centre - sin * centre - shift[0],
        -sin, cos, centre + sin * centre - cos * centre - shift[1],
    )  # fmt: skip
    image = image.transform((size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    if rng.random() < 0.35 * strength:  # a small face in a photo: detail lost, then upscaled
        small = max(16, int(size * rng.uniform(0.25, 0.7)))
        image = image.resize((small, small), Image.Resampling.BILINEAR).resize(
            (size, size), Image.Resampling.BILINEAR
        )
    if rng.random() < 0.3 * strength:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    pixels = np.asarray(image, dtype=np.float32)
    pixels = _colour(pixels, rng, strength)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    if rng.random() < 0.5 * strength:  # compression of a shared or downloaded photo
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.uniform(25, 85)))
        image = Image.open(buffer).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def turn_head(chip: np.ndarray, degrees: float) -> np.ndarray:
    """The chip's head turned sideways by `degrees` (positive: the image's right side away),
    modelling the head as a vertical cylinder of radius 0.65 half chip widths around the chip's
    centre line: the near side widens, the far side narrows and its edge is hidden, and what
    lies outside the head (hair, background) is stretched (near side) or shown as it was (far
    side). A column remap: one gather. (Up and down turns left visible seams: not modelled.)"""
    size, radius, turn = chip.shape[1], 0.65, np.deg2rad(abs(degrees))
    out = (np.arange(size) + 0.5) / size * 2 - 1  # output columns, chip half-width 1, near side first
    near_edge = -radius * np.cos(turn)  # where the near side of the cylinder now ends
    source = np.where(
        out < near_edge,
        -1 + (out + 1) * (1 - radius) / (1 - radius * np.cos(turn)),  # outside the head: stretched
        np.where(out <= radius, radius * np.sin(np.arcsin(np.clip(out / radius, -1, 1)) - turn), out),
    )
    columns = np.clip((source + 1) / 2 * size - 0.5, 0, size - 1)
    if degrees < 0:  # the other side away: the same map mirrored
        columns = (size - 1) - columns[::-1]
    left = np.floor(columns).astype(int)
    right, weight = np.minimum(left + 1, size - 1), (columns - left)[None, :, None]
    turned = chip[:, left] * (1 - weight) + chip[:, right].astype(np.float32) * weight
    return np.round(turned).astype(np.uint8)


def _colour(pixels: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, a colour cast (white balance) and sometimes greyscale."""
    if rng.random() < 0.12 * strength:
        grey = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        pixels = np.repeat(grey[..., None], 3, axis=2)
    mean = pixels.mean()
    contrast = np.exp(rng.uniform(-0.4, 0.4) * strength)
    brightness = np.exp(rng.uniform(-0.5, 0.4) * strength)
    cast = np.exp(rng.uniform(-0.15, 0.15, 3) * strength).astype(np.float32)
    return ((pixels - mean) * contrast + mean) * brightness * cast


def degraded(chips: np.ndarray, paths: list[str], variant: int, strength: float) -> np.ndarray:
    """Variant number `variant` of each chip (`paths` name them, and seed their randomness)."""
    return np.stack(
        [degrade(chip, variant_rng(path, variant), strength) for chip, path in zip(chips, paths, strict=True)]
    )
