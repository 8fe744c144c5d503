"""Face detection and alignment on real photos: UTKFace-mini chips and FairFace new photos."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agerange.config import PackageConfig
from agerange.faces import (
    CHIP_FACE,
    PROFILE_EYE_SPACING,
    DetectorError,
    Face,
    FaceDetector,
    align_face,
    chip_frame,
    face_anchor,
    realign_chips,
    select_faces,
)
from agerange.preprocess import read_image
from tests.conftest import FAIRFACE


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    settings = PackageConfig()  # the default package settings
    return FaceDetector(settings.detector, settings.min_detector_score)


@pytest.fixture(scope="module")
def mini_chips(mini_ingested) -> list[Image.Image]:
    images, metadata, _ = mini_ingested
    return [read_image(images / path) for path in metadata["path"].sample(120, random_state=0)]


def test_every_face_in_a_group_photo_is_found_inside_the_photo(detector):
    image = read_image(FAIRFACE / "fairface_0001.jpg")  # three people, one in the centre
    faces = detector(image)
    assert len(faces) == 3
    for face in faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= image.width and 0 <= y0 < y1 <= image.height
        assert 0.6 <= face.score <= 1
        (left_x, _), (right_x, _) = face.eyes
        assert x0 < left_x < right_x < x1


def test_a_photo_without_a_face_gives_no_face(detector):
    assert detector(Image.new("RGB", (300, 200), (120, 130, 140))) == []


def test_small_faces_are_skipped_with_the_reason(detector):
    faces = detector(read_image(FAIRFACE / "fairface_0001.jpg"))
    usable, skipped = select_faces(faces, min_face_pixels=100)
    assert [f.width >= 100 for f in usable] == [True] * len(usable) and skipped
    assert all("too small" in s.reason and "minimum 100" in s.reason for s in skipped)
    assert usable == sorted(usable, key=lambda f: -f.width)


def test_chip_frame_constants_match_the_training_chips(detector, mini_chips):
    """CHIP_FACE were measured on 1,500 training chips; the mini set must agree."""
    measured = chip_frame(mini_chips, detector)
    for key, value in CHIP_FACE.items():
        assert measured[key] == pytest.approx(value, abs=1.0 if key == "angle" else 0.03), key


def test_aligning_a_training_chip_gives_back_that_chip(detector, mini_chips):
    """Inference crops new photos the way training chips are cropped: realigning a chip moves it
    less than a 10-pixel shift would."""
    aligned_error, shifted_error = [], []
    for chip in mini_chips[:60]:
        faces = detector.find_faces(chip)
        if not faces:
            continue
        original = np.asarray(chip, dtype=np.float32)
        aligned = np.asarray(align_face(chip, faces[0]), dtype=np.float32)
        aligned_error.append(np.abs(aligned - original)[20:180, 20:180].mean())
        shifted_error.append(np.abs(np.roll(original, 10, axis=0) - original)[20:180, 20:180].mean())
    assert len(aligned_error) >= 50
    assert np.median(aligned_error) < np.median(shifted_error)


def test_tight_face_crops_missed_by_the_detector_are_found_inside_a_border(detector, mini_chips):
    missed = [chip for chip in mini_chips if not detector(chip)]
    assert missed, "the mini set has chips that BlazeFace misses without a border"
    found = [chip for chip in missed if detector.find_faces(chip)]
    assert len(found) >= 0.8 * len(missed)
    for chip in found:
        for face in detector.find_faces(chip):
            x0, y0, x1, y1 = face.box
            assert 0 <= x0 < x1 <= chip.width and 0 <= y0 < y1 <= chip.height  # in the chip's own pixels
    assert detector.find_faces(Image.new("RGB", (200, 200), (128, 128, 128))) == []

    # a big tight crop is shrunk before the bordered look; the face comes back in its own pixels
    chip = next(chip for chip in mini_chips if detector.find_faces(chip))
    small_face = max(detector.find_faces(chip), key=lambda f: f.width)
    big_face = max(detector.find_faces(chip.resize((1600, 1600))), key=lambda f: f.width)
    np.testing.assert_allclose(np.asarray(big_face.box) / 8, small_face.box, atol=6)
    assert big_face.size / 8 == pytest.approx(small_face.size, rel=0.05)
    np.testing.assert_allclose(np.asarray(big_face.centre) / 8, small_face.centre, atol=6)
    np.testing.assert_allclose(np.asarray(big_face.eyes) / 8, small_face.eyes, atol=6)


def test_realigned_training_chips_are_the_chips_predict_would_cut(detector, mini_chips):
    chips = np.stack([np.asarray(chip.resize((96, 96))) for chip in mini_chips[:40]])
    realigned, recut = realign_chips(chips, detector)
    assert realigned.shape == chips.shape and realigned.dtype == np.uint8
    assert recut >= 36  # nearly every chip has its face found (with the retry border)
    changed = np.abs(realigned.astype(np.float32) - chips).mean(axis=(1, 2, 3))
    assert (changed > 0).sum() == recut  # the chips without a face are kept as they were
    # the same face re-cut, a few pixels off: closer to its chip than a 10% shift, far from other faces
    centre = (slice(None), slice(10, 86), slice(10, 86))
    error = np.abs(realigned.astype(np.float32) - chips)[centre].mean(axis=(1, 2, 3))
    shifted = np.abs(np.roll(chips, 10, axis=1).astype(np.float32) - chips)[centre].mean(axis=(1, 2, 3))
    other = np.abs(np.roll(chips, 1, axis=0).astype(np.float32) - chips)[centre].mean(axis=(1, 2, 3))
    assert np.median(error) < np.median(shifted) < np.median(other)


def test_alignment_levels_the_eyes_of_a_tilted_face(detector):
    image = read_image(FAIRFACE / "fairface_0002.jpg").rotate(25, resample=Image.Resampling.BILINEAR)
    face = max(detector(image), key=lambda f: f.width)
    (_, tilted_left), (_, tilted_right) = face.eyes
    assert abs(tilted_left - tilted_right) > 15
    chip = align_face(image, face)
    (left_x, left_y), (right_x, right_y) = max(detector(chip), key=lambda f: f.width).eyes
    assert abs(left_y - right_y) < 0.1 * (right_x - left_x)


def test_the_anchor_slides_from_the_eye_centre_to_the_box_centre_as_the_head_turns():
    """A face whose eyes sit 0.42 of its box apart is anchored on its eye centre; at 0.30 or less
    (a head in profile: both eyes on one side of the box) on its box centre; in between, between."""

    def face(spacing: float) -> Face:  # a 100-pixel box centred at (150, 150), eyes left of centre
        eyes = ((110.0, 130.0), (110.0 + 100 * spacing, 130.0))
        return Face((100.0, 100.0, 200.0, 200.0), 0.9, eyes, 100.0, (150.0, 150.0))

    eyes_anchor = (CHIP_FACE["center_x"], CHIP_FACE["center_y"])
    box_anchor = (CHIP_FACE["box_x"], CHIP_FACE["box_y"])
    assert face(0.42).eye_spacing == pytest.approx(0.42)
    assert face_anchor(face(0.42)) == ((110.0 + 21.0, 130.0), eyes_anchor)
    assert face_anchor(face(0.40)) == ((110.0 + 20.0, 130.0), eyes_anchor)
    for spacing in (0.30, 0.2, 0.0):
        assert face_anchor(face(spacing)) == ((150.0, 150.0), box_anchor)
    (x, y), (u, v) = face_anchor(face(0.35))  # halfway: the eye centre is at x = 127.5
    assert (x, y) == (pytest.approx((127.5 + 150) / 2), pytest.approx(140.0))
    assert (u, v) == (
        pytest.approx(sum(p[0] for p in (eyes_anchor, box_anchor)) / 2),
        pytest.approx(sum(p[1] for p in (eyes_anchor, box_anchor)) / 2),
    )


def test_a_turned_head_is_cut_with_its_face_where_the_training_chips_have_theirs(detector, monkeypatch):
    """On FairFace photos of heads turned towards a profile, the chip puts the face's box where
    training chips have it (the detector, run again on the chip, agrees), where the eye-centred
    cut it replaces put the face off to one side."""
    import agerange.faces

    turned = []
    for path in sorted(FAIRFACE.glob("*.jpg")):
        faces = detector.find_faces(read_image(path))
        if faces and faces[0].eye_spacing < PROFILE_EYE_SPACING:
            turned.append((read_image(path), faces[0]))
    assert len(turned) >= 10
    target = np.array([CHIP_FACE["box_x"], CHIP_FACE["box_y"]]) * 200

    def box_offsets() -> list[float]:
        offsets = []
        for image, face in turned:
            if found := detector.find_faces(align_face(image, face)):
                offsets.append(float(np.hypot(*(np.array(found[0].centre) - target))))
        assert len(offsets) >= 0.8 * len(turned)
        return offsets

    now = box_offsets()
    monkeypatch.setattr(agerange.faces, "FRONTAL_EYE_SPACING", 0.0)  # every face anchored on its eyes
    monkeypatch.setattr(agerange.faces, "PROFILE_EYE_SPACING", -1.0)
    before = box_offsets()
    assert np.median(now) < 0.05 * 200 < np.median(before)


def _aligned_from_the_whole_photo(image: Image.Image, face, size: int = 200) -> np.ndarray:
    """align_face's chip computed the plain way: the whole photo reduced, then turned and cut."""
    import math

    from agerange.faces import CHIP_FACE, face_anchor

    (left_x, left_y), (right_x, right_y) = face.eyes
    angle = math.atan2(right_y - left_y, right_x - left_x) - math.radians(CHIP_FACE["angle"])
    step = max(face.size, 1.0) / (CHIP_FACE["size"] * size)
    (centre_x, centre_y), (anchor_u, anchor_v) = face_anchor(face)
    factor = max(1, int(step))
    image, step, centre_x, centre_y = (
        image.reduce(factor),
        step / factor,
        centre_x / factor,
        centre_y / factor,
    )
    cos, sin = math.cos(angle) * step, math.sin(angle) * step
    u0, v0 = anchor_u * size, anchor_v * size
    coefficients = (cos, -sin, centre_x - cos * u0 + sin * v0, sin, cos, centre_y - sin * u0 - cos * v0)
    return np.asarray(
        image.transform((size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)
    )


@pytest.mark.parametrize("scale", [1, 7])  # a FairFace photo, and the same at a phone photo's size
def test_aligning_reduces_only_the_face_and_gives_the_same_pixels_as_the_whole_photo(detector, scale):
    photos = [read_image(path) for path in sorted(FAIRFACE.glob("*.jpg"))[:8]]
    checked = 0
    for photo in photos:
        photo = photo.resize((photo.width * scale, photo.height * scale), Image.Resampling.BILINEAR)
        for face in detector.find_faces(photo):
            np.testing.assert_array_equal(
                np.asarray(align_face(photo, face)), _aligned_from_the_whole_photo(photo, face)
            )
            checked += 1
    assert checked >= len(photos)


def test_unknown_detector_and_wrong_model_file_are_one_line_errors(tmp_path: Path):
    with pytest.raises(
        DetectorError, match="unknown face detector 'yolo' \\(valid: blazeface_full, blazeface_short\\)"
    ):
        FaceDetector("yolo", 0.6)
    from agerange.faces import packaged_detector_path

    with pytest.raises(DetectorError, match="unknown face detector 'yolo'"):
        packaged_detector_path("yolo")
    with pytest.raises(DetectorError, match="face detector model file missing"):
        FaceDetector("blazeface_short", 0.6, model_path=tmp_path / "absent.tflite")

    damaged = tmp_path / "face_detection_short_range.tflite"
    shutil.copy(packaged_detector_path("blazeface_short"), damaged)
    damaged.write_bytes(damaged.read_bytes()[:-1] + b"\0")
    with pytest.raises(DetectorError, match="wrong checksum"):
        FaceDetector("blazeface_short", 0.6, model_path=damaged)


def test_detector_conditions_measure_size_roll_score_and_eye_spacing_and_slice_every_chip(mini_chips):
    import pandas as pd

    from agerange.evaluate import DETECTOR_CONDITIONS, LOWEST_DETECTOR_SCORE, detector_conditions
    from agerange.metrics import NO_FACE, accuracy_by_condition

    detector = FaceDetector(PackageConfig().detector, LOWEST_DETECTOR_SCORE)
    chips = mini_chips[:12]
    tilted = [chip.rotate(20, resample=Image.BILINEAR) for chip in chips]  # counter-clockwise, 20 degrees
    small = []
    for chip in chips:  # the same face at half the size, in the middle of a grey chip
        canvas = Image.new("RGB", chip.size, (110, 110, 110))
        canvas.paste(chip.resize((chip.width // 2, chip.height // 2)), (chip.width // 4, chip.height // 4))
        small.append(canvas)
    blank = [Image.new("RGB", (200, 200), (120, 130, 140))]
    measured = detector_conditions([*chips, *tilted, *small, *blank], detector)

    plain, turned, smaller, nothing = measured[:12], measured[12:24], measured[24:36], measured[36:]
    assert plain["face_size"].median() == pytest.approx(CHIP_FACE["size"], abs=0.08)
    assert plain["head_roll"].median() < 5 and turned["head_roll"].median() == pytest.approx(20, abs=5)
    assert smaller["face_size"].median() == pytest.approx(plain["face_size"].median() / 2, rel=0.15)
    assert (plain["detector_score"] > 0.6).mean() > 0.8
    assert nothing["detector_score"].tolist() == [0.0] and nothing["face_size"].isna().all()
    # the eye spacing of faces looking at the camera, the same when the head only rolls
    assert plain["eye_spacing"].median() == pytest.approx(0.42, abs=0.03)
    assert turned["eye_spacing"].median() == pytest.approx(plain["eye_spacing"].median(), abs=0.03)

    # the slices hold every chip once per condition; the chip without a face is a bin of its own
    table = pd.concat([pd.DataFrame({"age_group": np.arange(len(measured)) % 10}), measured], axis=1)
    by_condition = accuracy_by_condition(
        table, table["age_group"].to_numpy(), table["age_group"].to_numpy(), DETECTOR_CONDITIONS
    )
    for condition in ("face_size", "head_roll", "detector_score", "eye_spacing"):
        rows = by_condition[by_condition["condition"] == condition]
        assert rows["images"].sum() == len(measured)
    no_face = by_condition.loc[by_condition["bin"] == NO_FACE, "condition"]
    assert no_face.tolist() == ["face_size", "head_roll", "eye_spacing"]
