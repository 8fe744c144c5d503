"""Backbone registry and weights loading: names, checksums, missing files, the VGGFace path."""

import h5py
import numpy as np
import pytest

from agerange.backbones import BACKBONES, WeightsError, get_backbone, resolve_weights
from agerange.files import sha256_file
from tests.conftest import PROJECT_ROOT

WEIGHTS = PROJECT_ROOT.parent / "shared" / "weights"


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        get_backbone("resnet50")
    assert "resnet50" in str(error.value)
    assert all(name in str(error.value) for name in BACKBONES)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="missing weights for backbone 'mobilenet_v2'"):
        resolve_weights(get_backbone("mobilenet_v2"), tmp_path)


def test_wrong_checksum_is_refused(tmp_path):
    entry = get_backbone("mobilenet_v2")
    (tmp_path / entry.weights_file).write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match="wrong checksum"):
        resolve_weights(entry, tmp_path)


def test_vggface_needs_a_configured_checksum(tmp_path):
    entry = get_backbone("vggface")
    (tmp_path / entry.weights_file).write_bytes(b"x")
    with pytest.raises(WeightsError, match="no sha256 configured"):
        resolve_weights(entry, tmp_path)


def test_shipped_weights_verify():
    assert resolve_weights(get_backbone("mobilenet_v2"), WEIGHTS).is_file()
    assert resolve_weights(get_backbone("vgg16"), WEIGHTS).is_file()
    assert resolve_weights(get_backbone("small_cnn"), WEIGHTS) is None


def _write_rcmalli_style_h5(path, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """A legacy Keras HDF5 weights file shaped like rcmalli's VGGFace no-top file (conv1_1 ... conv5_3)."""
    rng = np.random.default_rng(seed)
    blocks = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    layers, channels = {}, 3
    for block, (filters, convs) in enumerate(blocks, start=1):
        for conv in range(1, convs + 1):
            layers[f"conv{block}_{conv}"] = [
                rng.normal(0, 0.01, (3, 3, channels, filters)).astype("float32"),
                rng.normal(0, 0.01, (filters,)).astype("float32"),
            ]
            channels = filters
        layers[f"pool{block}"] = []
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [name.encode() for name in ["input_1", *layers]]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.2.4"
        file.create_group("input_1").attrs["weight_names"] = []
        for name, weights in layers.items():
            group = file.create_group(name)
            names = [f"{name}/kernel:0", f"{name}/bias:0"] if weights else []
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, value in zip(names, weights, strict=True):
                group.create_dataset(weight_name, data=value)
    return layers


def test_vggface_loads_a_file_of_the_rcmalli_structure(tmp_path):
    from agerange.model import build_classifier

    entry = get_backbone("vggface")
    expected = _write_rcmalli_style_h5(tmp_path / entry.weights_file)
    model = build_classifier(
        "vggface", 48, tmp_path, 0.0, weights_sha256=sha256_file(tmp_path / entry.weights_file)
    )
    loaded = model.get_layer("block5_conv3").get_weights()
    np.testing.assert_allclose(loaded[0], expected["conv5_3"][0])
    np.testing.assert_allclose(model.get_layer("block1_conv1").get_weights()[1], expected["conv1_1"][1])
    # VGGFace preprocessing is inside the model: RGB -> BGR minus the VGGFace means.
    shift = model.get_layer("preprocess_vggface")
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")
    np.testing.assert_allclose(shift(pixel)[0, 0, 0], [30 - 93.5940, 20 - 104.7624, 10 - 129.1863], rtol=1e-5)
