"""The feature-maps command (explain.py) on a real (untrained-head) model and a real face chip.

Code tier: it checks what the command draws and how it fails, not how a trained model behaves.
"""

import json

import pytest

from agerange.cli import main
from agerange.model import build_classifier
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    model = build_classifier("mobilenet_v2", 64, PROJECT_ROOT.parent / "shared" / "weights", 0.0)
    model.save(folder / "model.keras")
    (folder / "model_info.json").write_text(json.dumps({"image_size": 64}))
    return folder


def test_feature_maps_picture_is_written(model_folder, mini_ingested, tmp_path, capsys):
    images, metadata, _ = mini_ingested
    chip = images / metadata["path"].iloc[0]
    out = tmp_path / "maps.png"
    main(["feature-maps", str(chip), "--model", str(model_folder), "--layer", "Conv1", "--out", str(out)])
    assert out.stat().st_size > 5_000
    assert "feature maps of Conv1" in capsys.readouterr().out


def test_unknown_layer_and_corrupt_photo_are_one_line_errors(model_folder, tmp_path, capsys, mini_ingested):
    images, metadata, _ = mini_ingested
    chip = images / metadata["path"].iloc[0]
    with pytest.raises(SystemExit):
        main(["feature-maps", str(chip), "--model", str(model_folder), "--layer", "age_group"])
    assert "layer 'age_group' has no feature maps" in capsys.readouterr().err
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SystemExit):
        main(["feature-maps", str(broken), "--model", str(model_folder), "--layer", "Conv1"])
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "\n" not in error and "object at 0x" not in error
    assert "broken.jpg: not an image or corrupt" in error
