"""Backbones by name: one registry, weights from a local path checked by sha256.

Each backbone comes with its own input preprocessing, built from stock Keras layers and
placed inside the model, so a saved model takes raw RGB pixels (0-255) and needs no
project code to load or use. Nothing is downloaded: `weights='imagenet'` is never used.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agerange.files import sha256_file


class WeightsError(ValueError):
    """Pretrained weights that are missing or are not the expected file."""


@dataclass(frozen=True)
class Backbone:
    """How to build one backbone and what it expects."""

    name: str
    build: Callable  # (input tensor, weights path or None) -> keras.Model without top
    weights_file: str | None  # default file name inside the weights folder; None: trained from scratch
    sha256: str | None
    preprocessing: str  # human-readable, stored with the model


def _mobilenet_v2(inputs, weights: Path | None):
    import keras

    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_mobilenet")(inputs)
    return keras.applications.MobileNetV2(
        include_top=False, weights=str(weights) if weights else None, input_tensor=scaled
    )


def _bgr_mean_layer(means_bgr: tuple[float, float, float], name: str):
    """RGB -> BGR and mean subtraction as a fixed 1x1 convolution: a stock layer, so it serialises."""
    import keras

    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for output_channel, input_channel in enumerate((2, 1, 0)):
        kernel[0, 0, input_channel, output_channel] = 1.0
    layer = keras.layers.Conv2D(3, 1, name=name, trainable=False)
    layer.build((None, None, None, 3))
    layer.set_weights([kernel, -np.asarray(means_bgr, dtype="float32")])
    return layer


def _vgg16_with(means_bgr: tuple[float, float, float], preprocess_name: str):
    def build(inputs, weights: Path | None):
        import keras

        shifted = _bgr_mean_layer(means_bgr, preprocess_name)(inputs)
        flat = keras.applications.VGG16(include_top=False, weights=None, input_tensor=shifted)
        if weights is not None:
            # Weight files load by layer order, which the preprocessing layer would shift:
            # load into a plain VGG16, then copy layer by layer.
            source = keras.applications.VGG16(
                include_top=False, weights=str(weights), input_shape=tuple(inputs.shape[1:])
            )
            for layer in source.layers:
                if layer.weights:
                    flat.get_layer(layer.name).set_weights(layer.get_weights())
        return flat

    return build


def _small_cnn(inputs, weights: Path | None):
    """About a million parameters: the reference study's baseline, trained from scratch."""
    import keras
    from keras import layers

    x = layers.Rescaling(1 / 255.0, name="preprocess_small_cnn")(inputs)
    for index, filters in enumerate((32, 64, 128, 256, 384)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"cnn{index}_conv")(x)
        x = layers.BatchNormalization(name=f"cnn{index}_bn")(x)
        x = layers.ReLU(name=f"cnn{index}_relu")(x)
        x = layers.MaxPooling2D(name=f"cnn{index}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


IMAGENET_BGR_MEANS = (103.939, 116.779, 123.68)
VGGFACE_BGR_MEANS = (93.5940, 104.7624, 129.1863)

BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            "mobilenet_v2",
            _mobilenet_v2,
            "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
            "fa58f6735ab4c948a7d37a54a86feb7cfba859f35dc84c25e6af19a901ecac4a",
            "RGB 0-255 -> x / 127.5 - 1",
        ),
        Backbone(
            "vgg16",
            _vgg16_with(IMAGENET_BGR_MEANS, "preprocess_vgg16"),
            "vgg16_facemask_notop.weights.h5",
            "cf4671dcdd7ba45336f322bb9432a1df52730fe34999d31c3923c022104a21d9",
            f"RGB 0-255 -> BGR - {IMAGENET_BGR_MEANS} (keras vgg16.preprocess_input)",
        ),
        Backbone(
            "vggface",
            _vgg16_with(VGGFACE_BGR_MEANS, "preprocess_vggface"),
            "rcmalli_vggface_tf_notop_vgg16.h5",
            None,  # not available offline: the user supplies the file and its checksum
            f"RGB 0-255 -> BGR - {VGGFACE_BGR_MEANS} (VGGFace)",
        ),
        Backbone("small_cnn", _small_cnn, None, None, "RGB 0-255 -> x / 255"),
    )
}


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`; a ValueError lists the valid names otherwise."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}' (valid: {', '.join(BACKBONES)})")
    return BACKBONES[name]


def resolve_weights(backbone: Backbone, weights_dir: Path, sha256: str | None = None) -> Path | None:
    """The verified weights file of a backbone, or None for one trained from scratch.

    Args:
        backbone: the registry entry.
        weights_dir: folder holding the weights files (a configured local path).
        sha256: expected checksum; defaults to the registry's (required when it has none).

    Raises:
        WeightsError: one line naming the file and what is wrong with it.
    """
    if backbone.weights_file is None:
        return None
    path = Path(weights_dir) / backbone.weights_file
    if not path.is_file():
        raise WeightsError(
            f"{path}: missing weights for backbone '{backbone.name}' (nothing is downloaded at run "
            "time: put the file there or point train.weights_dir at its folder)"
        )
    expected = sha256 or backbone.sha256
    if expected is None:
        raise WeightsError(f"{path}: no sha256 configured for backbone '{backbone.name}' weights")
    actual = sha256_file(path)
    if actual != expected.lower():
        raise WeightsError(
            f"{path}: wrong checksum for '{backbone.name}' weights: sha256 {actual}, expected {expected}"
        )
    return path


def backbone_layer_names(model, backbone_name: str) -> list[str]:
    """Names of the backbone's own layers inside a classifier, in order (no input or head layers)."""
    names = [layer.name for layer in model.layers]
    first = next(i for i, name in enumerate(names) if name.startswith("preprocess_")) + 1
    last = names.index("features")  # the pooling layer that starts the head
    return names[first:last]
