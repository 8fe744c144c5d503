"""Feature maps: what a convolution layer responds to in one photo (the reference study's picture)."""

from pathlib import Path

import numpy as np


def conv_layer_names(model) -> list[str]:
    """Names of the layers whose output is a 4-D activation map (height, width, channels)."""
    return [layer.name for layer in model.layers if len(getattr(layer, "output", np.empty(0)).shape) == 4]


def feature_maps(model, chip: np.ndarray, layer: str) -> np.ndarray:
    """Activations (height, width, channels) of `layer` for one uint8 chip (S, S, 3).

    Raises:
        ValueError: naming the layer and listing valid ones when it has no spatial output.
    """
    import keras

    valid = conv_layer_names(model)
    if layer not in valid:
        raise ValueError(
            f"layer '{layer}' has no feature maps (valid: {', '.join(valid[:8])}, ... {len(valid)} in all)"
        )
    probe = keras.Model(model.input, model.get_layer(layer).output)
    return np.asarray(probe(chip[None].astype(np.float32)))[0]


def plot_feature_maps(chip: np.ndarray, maps: np.ndarray, layer: str, path: Path, count: int = 32) -> Path:
    """The photo beside the `count` most active channels of a layer, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agerange.files import write_png

    strongest = np.argsort(maps.reshape(-1, maps.shape[-1]).mean(axis=0))[::-1][:count]
    columns = 8
    rows = int(np.ceil(len(strongest) / columns)) + 1
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.6), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    axes[0, 0].imshow(chip)
    axes[0, 0].set_title("photo", fontsize=8)
    for axis, channel in zip(axes.flat[columns:], strongest, strict=False):
        axis.imshow(maps[..., channel], cmap="viridis")
        axis.set_title(f"#{channel}", fontsize=7)
    figure.suptitle(
        f"Feature maps of layer {layer} ({maps.shape[0]}x{maps.shape[1]}, {maps.shape[2]} channels)"
    )
    figure.tight_layout()
    return write_png(figure, path)
