"""The package stage's variants: an int8 export, the accuracy rule that picks the served one."""

from pathlib import Path

import numpy as np
import pytest

from agerange.labels import AGE_BINS
from agerange.serving import (
    CANDIDATES_FASTEST_FIRST,
    UNMIRRORED,
    VARIANTS_FASTEST_FIRST,
    choose_variant,
    output_fidelity,
)
from tests.conftest import FAIRFACE


def _figures(accuracy: float, within_one: float) -> dict[str, float]:
    return {"accuracy": accuracy, "within_one": within_one}


def test_the_rule_serves_the_fastest_variant_within_the_allowed_loss():
    val = {
        "model float": _figures(0.600, 0.950),
        "model int8": _figures(0.597, 0.946),  # loses 0.3 and 0.4 points
        "student float": _figures(0.596, 0.951),
        "student int8": _figures(0.590, 0.950),  # loses a point of exact accuracy
    }
    assert choose_variant(val, 0.005) == "student float"
    assert choose_variant(val, 0.02) == "student int8"
    assert choose_variant(val, 0.0) == "model float"  # nothing matches it exactly
    assert choose_variant({k: v for k, v in val.items() if k.startswith("model")}, 0.005) == "model int8"
    # losing within-one accuracy alone is enough to be refused
    assert choose_variant({**val, "model int8": _figures(0.61, 0.94)}, 0.005) == "student float"
    assert VARIANTS_FASTEST_FIRST[-1] == CANDIDATES_FASTEST_FIRST[-1] == "model float"


def test_the_rule_also_decides_the_mirror_average_by_the_same_allowance():
    """Each variant measured without the mirror average is a faster candidate of its own: taken
    when it holds within the allowance against the float model with the mirror, and then ahead
    of the same variant with it; a faster variant that holds still comes first."""
    val = {
        "model float": _figures(0.600, 0.950),
        "model float" + UNMIRRORED: _figures(0.598, 0.949),  # loses 0.2 and 0.1 points
        "model int8": _figures(0.590, 0.950),  # loses a point of exact accuracy
        "model int8" + UNMIRRORED: _figures(0.589, 0.950),
    }
    assert choose_variant(val, 0.005) == "model float" + UNMIRRORED
    assert choose_variant({**val, "model float" + UNMIRRORED: _figures(0.594, 0.95)}, 0.005) == "model float"
    assert choose_variant({**val, "model int8": _figures(0.599, 0.95)}, 0.005) == "model int8"
    assert choose_variant(val, 0.02) == "model int8" + UNMIRRORED
    assert set(CANDIDATES_FASTEST_FIRST) == {
        name + suffix for name in VARIANTS_FASTEST_FIRST for suffix in ("", UNMIRRORED)
    }


def test_the_rule_also_holds_each_variant_to_the_labelled_new_photos_when_they_were_measured():
    """An int8 model can hold up on validation chips and fall on real photos: with the new
    photos' figures present, losing more than the allowance there refuses it too."""
    val = {
        "model float": {
            **_figures(0.590, 0.949),
            "new_photos_range_accuracy": 0.456,
            "new_photos_range_within_one": 0.819,
        },
        "model int8": {
            **_figures(0.589, 0.944),
            "new_photos_range_accuracy": 0.400,
            "new_photos_range_within_one": 0.793,
        },
    }
    assert choose_variant(val, 0.005) == "model float"
    assert choose_variant(val, 0.06) == "model int8"
    # without new-photo figures for the reference, only validation counts
    plain = {name: _figures(f["accuracy"], f["within_one"]) for name, f in val.items()}
    assert choose_variant(plain, 0.005) == "model int8"
    # a variant missing a figure the reference has is not taken
    assert choose_variant({**val, "model int8": _figures(0.6, 0.96)}, 0.06) == "model float"


def _ages(*ages: int) -> np.ndarray:
    """Distribution-head outputs with all the mass on one year per row."""
    return np.eye(AGE_BINS, dtype=np.float32)[list(ages)]


def test_fidelity_counts_the_answers_a_variant_changes_and_rows_that_stop_being_distributions():
    reference = _ages(30, 30, 5, 70)
    # row 0: 30 -> 34 stays in its group (Adult 25-34) and range (30-39); row 1: 30 -> 24 changes
    # both; row 3 loses 2% of its mass
    variant = _ages(34, 24, 5, 70)
    variant[3] *= 0.98
    figures = output_fidelity(reference, variant, neighbour_weight=0.0)
    assert figures["group_changed"] == 0.25
    assert figures["range_changed"] == 0.25
    assert figures["expected_age_years"] == pytest.approx((4 + 6 + 0 + 70 * 0.02) / 4, abs=1e-4)
    assert figures["lowest_sum"] == pytest.approx(0.98) and figures["highest_sum"] == 1.0
    assert figures["zero_outputs"] == pytest.approx(1 - 1 / AGE_BINS)
    assert figures["largest_output_difference"] == 1.0
    same = output_fidelity(reference, reference.copy(), neighbour_weight=0.5)
    assert same["group_changed"] == same["range_changed"] == same["expected_age_years"] == 0.0
    with pytest.raises(ValueError, match="shapes"):
        output_fidelity(reference, variant[:, :10], 0.0)


@pytest.mark.slow
def test_package_exports_int8_variants_measures_each_and_serves_the_chosen_one(tmp_path):
    """Two small CNNs (model and student, another input size) through the real exports, the
    real predict path on real photos, and the rule; the int8 file reads uint8 pixels and answers
    close to its float export."""
    import json

    import keras

    from agerange.config import load_section
    from agerange.labels import GROUP_NAMES
    from agerange.model import build_classifier
    from agerange.predict import HEAD_FILE, AgePredictor, Classifier
    from agerange.serving import package_fastest
    from tests.conftest import PROJECT_ROOT

    keras.utils.set_random_seed(0)
    models = {}
    for kind, size in (("model", 40), ("student", 32)):
        info = {"backbone": "small_cnn", "image_size": size, "class_names": list(GROUP_NAMES)}
        models[kind] = (build_classifier("small_cnn", size, Path("unused"), dropout=0.1), info)
    photos = sorted(FAIRFACE.glob("*.jpg"))[:12]
    groups = np.arange(len(photos)) % 10
    settings = load_section("package", PROJECT_ROOT / "params.yaml")
    choice = package_fastest(models, tmp_path / "serving", settings, photos[:8], groups[:8], photos[8:])

    assert set(choice["val"]) == set(CANDIDATES_FASTEST_FIRST)
    assert all(m["n"] == 8 for m in choice["val"].values())
    assert choice["chosen"] == choose_variant(choice["val"], settings.max_accuracy_loss)
    served = json.loads((tmp_path / "serving" / "artifacts" / "model_info.json").read_text())
    assert served["variant"]["chosen"] == choice["chosen"]
    assert served["predict"]["flip"] is not choice["chosen"].endswith(UNMIRRORED)
    kind, precision = choice["chosen"].removesuffix(UNMIRRORED).split()
    assert served["precision"] == precision and served["image_size"] == models[kind][1]["image_size"]
    assert AgePredictor.from_directory(tmp_path / "serving").predict_file(photos[0]).faces

    # an allowance every candidate meets serves the fastest, unmirrored, and saves flip off
    import dataclasses

    lenient = dataclasses.replace(settings, max_accuracy_loss=0.99)
    choice = package_fastest(models, tmp_path / "lenient", lenient, photos[:8], groups[:8], photos[8:])
    assert choice["chosen"] == CANDIDATES_FASTEST_FIRST[0] == "student int8" + UNMIRRORED
    unmirrored = AgePredictor.from_directory(tmp_path / "lenient")
    assert unmirrored.flip is False and unmirrored.image_size == 32
    assert (
        json.loads((tmp_path / "lenient" / "artifacts" / "model_info.json").read_text())["predict"]["flip"]
        is False
    )

    # the int8 export of a model with the age distribution head against its float export on the
    # same chips: the output layer runs in float beside the int8 file, so the distribution's
    # tails (about 1/AGE_BINS each) survive instead of rounding to multiples of 1/256
    from agerange.labels import AGE_BINS
    from agerange.serving import export_variant

    model = build_classifier("small_cnn", 40, Path("unused"), dropout=0.1, head="ages")
    info = {**models["model"][1], "head": "ages"}
    export_variant(model, info, tmp_path / "f", settings)
    chips = np.random.default_rng(1).integers(0, 256, (16, 40, 40, 3)).astype(np.uint8)
    export_variant(model, info, tmp_path / "q", settings, calibration=chips)
    assert not (tmp_path / "f" / HEAD_FILE).exists() and (tmp_path / "q" / HEAD_FILE).is_file()
    as_float = Classifier(tmp_path / "f" / "classifier.tflite")
    as_int8 = Classifier(tmp_path / "q" / "classifier.tflite")
    assert (as_float.precision, as_int8.precision) == ("float", "int8")
    assert as_int8.input["dtype"] == np.uint8 and as_int8.input["quantization"] == (1.0, 0)
    float_probs, float_embeddings = as_float(chips, flip=True)
    int8_probs, int8_embeddings = as_int8(chips, flip=True)
    assert int8_probs.shape == float_probs.shape == (16, AGE_BINS)
    assert int8_embeddings.shape == float_embeddings.shape
    np.testing.assert_allclose(int8_probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(int8_probs, float_probs, rtol=0.1)
    # and the served model carries the output layers with the int8 file
    from agerange.serving import save_variant

    save_variant(tmp_path / "q", tmp_path / "served_int8", settings)
    served = AgePredictor.from_directory(tmp_path / "served_int8").classifier
    np.testing.assert_allclose(served(chips, flip=True)[0], int8_probs, atol=1e-6)
    # a damaged or mismatched head file is refused in one line, naming it
    head_file = tmp_path / "q" / HEAD_FILE
    np.savez(head_file, kernels=np.zeros((1, 3, AGE_BINS), np.float32), biases=np.zeros((1, AGE_BINS)))
    with pytest.raises(ValueError, match=rf"{HEAD_FILE}: output layers for 1 x 3 embeddings, but"):
        Classifier(tmp_path / "q" / "classifier.tflite")
    head_file.write_bytes(b"not a numpy archive")
    with pytest.raises(ValueError, match=rf"{HEAD_FILE}: unreadable output layers") as refused:
        Classifier(tmp_path / "q" / "classifier.tflite")
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match="no calibration chips"):
        export_variant(model, info, tmp_path / "e", settings, calibration=chips[:0])


def test_every_variant_is_measured_on_one_preparation_of_the_photos_as_predict_would_measure_it(
    tmp_path, monkeypatch
):
    """The package stage decodes, detects and aligns the photos once per chip size, not once per
    variant and mirror setting, and each variant's figures are those of its own predict path."""
    import shutil

    import keras
    import pandas as pd

    from agerange.config import load_section
    from agerange.drift import new_photo_accuracy
    from agerange.labels import GROUP_NAMES
    from agerange.model import build_classifier
    from agerange.predict import AgePredictor, predict_path_metrics
    from agerange.serving import export_variant, measure_variants
    from tests.conftest import PROJECT_ROOT

    keras.utils.set_random_seed(3)
    settings = load_section("package", PROJECT_ROOT / "params.yaml")
    folders = {}
    for name, size in (("wide float", 40), ("wide again", 40), ("narrow float", 32)):
        info = {"backbone": "small_cnn", "image_size": size, "class_names": list(GROUP_NAMES), "head": "ages"}
        model = build_classifier("small_cnn", size, Path("unused"), dropout=0.1, head="ages")
        export_variant(model, info, tmp_path / name.replace(" ", "_"), settings)
        folders[name] = tmp_path / name.replace(" ", "_")
    photos = sorted(FAIRFACE.glob("*.jpg"))
    val_photos = photos[:6]
    # labelled with the first variant's own answers, so its figures are 1 where a face was found
    # and the other variants' are their agreement with it: figures that tell variants apart
    first = AgePredictor.from_directory(folders["wide float"]).predict_many(val_photos)
    groups = np.array([result.faces[0].group_index if result.faces else 0 for result in first])
    new_photos = tmp_path / "new"
    new_photos.mkdir()
    labels = pd.read_csv(FAIRFACE / "labels.csv").sort_values("filename").iloc[6:11]
    for name in labels["filename"]:
        shutil.copy(FAIRFACE / name, new_photos / name)
    labels.to_csv(new_photos / "labels.csv", index=False)

    prepared = []
    prepare = AgePredictor.prepare
    monkeypatch.setattr(
        AgePredictor, "prepare", lambda self, *a, **k: prepared.append(1) or prepare(self, *a, **k)
    )
    measured = measure_variants(folders, val_photos, groups, new_photos, unmirrored=True)
    # two chip sizes, each cutting the 6 validation and 5 new photos once, for six measurements
    assert len(measured) == 6 and len(prepared) == 2 * (6 + 5)
    assert measured["wide float"]["accuracy"] == measured["wide float"]["faces_found"] > 0

    for name, folder in folders.items():
        for suffix, overrides in (("", {}), (UNMIRRORED, {"flip": False})):
            predictor = AgePredictor.from_directory(folder, **overrides)
            expected = predict_path_metrics(predictor, val_photos, groups)
            ranges = new_photo_accuracy(predictor, new_photos)
            expected |= {f"new_photos_{key}": ranges[key] for key in ("range_accuracy", "range_within_one")}
            assert measured[name + suffix] == expected, name + suffix
    # photo by photo: a preparation made by another predictor of the same chip size gives each
    # predictor exactly the answers of its own predict path, mirror setting included
    shared = AgePredictor.from_directory(folders["wide again"]).prepare_many(val_photos, keep_images=False)
    assert all(photo.image is None and photo.width > 0 for photo in shared)  # only the chips are kept
    for overrides in ({}, {"flip": False}):
        predictor = AgePredictor.from_directory(folders["wide float"], **overrides)
        own = predictor.predict_many(val_photos)
        via_shared = predictor.predict_prepared(shared)
        assert [(r.width, r.height) for r in own] == [(r.width, r.height) for r in via_shared]
        own_faces = [face.probabilities for result in own for face in result.faces]
        assert own_faces and own_faces == [
            face.probabilities for result in via_shared for face in result.faces
        ]
    with pytest.raises(ValueError, match="6 photos but 2 names"):
        predictor.prepare_many(val_photos, ["a", "b"])


def test_int8_export_keeps_the_layers_it_serves_worst_in_float(tmp_path, monkeypatch):
    """`package.int8_float_layers`: the int8 export computes that many layers in float, the ones
    with the largest quantization error on the calibration chips, names them in the model's
    info, still reads uint8 pixels, and answers closer to the float export than all-int8."""
    import dataclasses
    import json

    import keras

    from agerange.config import PackageConfig
    from agerange.model import build_classifier, member_embeddings
    from agerange.predict import Classifier
    from agerange.serving import export_variant, layers_in_float, least_quantizable_layers

    keras.utils.set_random_seed(0)
    model = build_classifier("small_cnn", 40, Path("unused"), dropout=0.1, head="ages")
    info = {"backbone": "small_cnn", "image_size": 40, "head": "ages"}
    chips = np.random.default_rng(1).integers(0, 256, (32, 40, 40, 3)).astype(np.uint8)
    outputs = {}
    for kept in (0, 2):
        settings = dataclasses.replace(PackageConfig(), int8_float_layers=kept)
        export_variant(model, info, tmp_path / f"kept{kept}", settings, calibration=chips)
        model_file = tmp_path / f"kept{kept}" / "classifier.tflite"
        assert len(layers_in_float(model_file)) == kept
        classifier = Classifier(model_file)
        assert classifier.input["dtype"] == np.uint8 and classifier.input["quantization"] == (1.0, 0)
        outputs[kept] = classifier(chips, flip=False)[1]  # the members' embeddings
    recorded = json.loads((tmp_path / "kept2" / "model_info.json").read_text())["layers_in_float"]
    worst = least_quantizable_layers(member_embeddings(model)[0], chips, 2)
    assert sorted(recorded) == sorted(name.split(";")[0] for name in worst)
    assert "layers_in_float" not in json.loads((tmp_path / "kept0" / "model_info.json").read_text())
    export_variant(model, info, tmp_path / "float", PackageConfig())
    reference = Classifier(tmp_path / "float" / "classifier.tflite")(chips, flip=False)[1]
    errors = {kept: float(np.abs(found - reference).mean()) for kept, found in outputs.items()}
    assert errors[2] < errors[0]
    # TFLite skips a layer name it does not know without a word; the export does not
    import agerange.serving

    monkeypatch.setattr(agerange.serving, "_worst_layers", lambda *args: ["no/such/layer"])
    settings = dataclasses.replace(PackageConfig(), int8_float_layers=1)
    with pytest.raises(ValueError, match=r"classifier\.tflite: 0 of 1 layers left in float"):
        export_variant(model, info, tmp_path / "unknown", settings, calibration=chips)
    assert not (tmp_path / "unknown" / "classifier.tflite").exists()


def test_with_the_student_off_the_distil_stage_says_so_and_package_weighs_the_model_alone(tmp_path):
    """`distil.enabled: false`: the stage replaces a previous student with a note saying why
    (no teacher or data read), and the package stage's loader skips that folder; a folder the
    stage never wrote is still refused, naming the stage to run."""
    import json
    import subprocess
    import sys

    import yaml

    from agerange.labels import GROUP_NAMES
    from agerange.model import build_classifier, skipped_reason
    from agerange.serving import load_models
    from tests.conftest import PROJECT_ROOT

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["distil"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    student, checkpoints = tmp_path / "student", tmp_path / "checkpoints"
    student.mkdir()
    (student / "model.keras").write_bytes(b"a previous student")
    (checkpoints / "epochs").mkdir(parents=True)
    arguments = {name: tmp_path / "absent" for name in ("teacher", "splits", "train", "images", "config")}
    arguments.update(out=student, metrics=tmp_path / "distil.json", checkpoints=checkpoints)
    command = [sys.executable, str(PROJECT_ROOT / "pipelines" / "distil.py")]
    command += [part for name, path in arguments.items() for part in (f"--{name}", str(path))]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines() == [
        "distil: no student trained (distil.enabled is false in params.yaml); "
        "the package stage weighs the trained model only."
    ]
    assert sorted(path.name for path in student.iterdir()) == ["skipped.json"]
    assert (checkpoints / "epochs").is_dir()  # kept: a later run with the student on resumes
    assert json.loads((tmp_path / "distil.json").read_text()) == {
        "skipped": "distil.enabled is false in params.yaml"
    }
    assert skipped_reason(student) == "distil.enabled is false in params.yaml"

    model_folder = tmp_path / "model"
    model_folder.mkdir()
    build_classifier("small_cnn", 32, Path("unused"), dropout=0.1).save(model_folder / "model.keras")
    info = {"backbone": "small_cnn", "image_size": 32, "class_names": list(GROUP_NAMES)}
    (model_folder / "model_info.json").write_text(json.dumps(info))
    models, notes = load_models({"model": (model_folder, "train"), "student": (student, "distil")})
    assert list(models) == ["model"] and models["model"][1] == info
    assert notes == [f"{student}: no student (distil.enabled is false in params.yaml)"]
    assert skipped_reason(model_folder) is None

    never_run = tmp_path / "never_run"
    never_run.mkdir()
    with pytest.raises(ValueError, match=r"never_run: no model.keras \(run `dvc repro distil` first\)"):
        load_models({"model": (model_folder, "train"), "student": (never_run, "distil")})
    (never_run / "skipped.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"skipped.json: unreadable note of a skipped model"):
        load_models({"model": (model_folder, "train"), "student": (never_run, "distil")})
