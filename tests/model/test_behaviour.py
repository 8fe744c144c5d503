"""Behaviour of a model trained on the mini set (Made-With-ML's model tier): invariance to a
mirror image and to a small brightness change, and clear cases (babies, seniors) answered right.

The model is the project's classifier (`build_classifier`: pretrained MobileNetV2, frozen) with
its head trained on the mini set's train split, plain and mirrored chips, as phase 1 of training
does; it is built here rather than through `agerange.training` so these tests ask nothing of the
training code (its own smoke test is `test_training.py`). It answers about a third of the
held-out faces exactly, so the thresholds below leave room for a weak but sane model, and each
check is written so that it fails for a model without that behaviour (see the tests of the checks
at the end). The invariances come mostly from the pretrained backbone: an untrained head on it
passes them too, and fails the clear cases. Predictions use `flip=False`: test-time flip
averaging would make the mirror test true by construction.
"""

import numpy as np
import pytest

from agerange.inference import predict_probabilities
from agerange.labels import GROUP_NAMES
from tests.conftest import PROJECT_ROOT

WEIGHTS = PROJECT_ROOT.parent / "shared" / "weights"
SIZE = 160  # the chip size params.yaml trains at; smaller sizes give the backbone unstable features
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mini_model(mini_ingested):
    """(model, held-out rows, their chips): a head trained on the mini train split, in about a minute."""
    import keras

    from agerange.model import build_classifier
    from agerange.preprocess import load_chips
    from agerange.split import split_table

    images, metadata, _ = mini_ingested
    table = split_table(metadata, 0.15, 0.15, seed=0)
    train, held = table[table["split"] == "train"], table[table["split"] != "train"].reset_index(drop=True)
    chips = load_chips([images / path for path in train["path"]], SIZE, workers=1)
    keras.utils.set_random_seed(0)
    model = build_classifier("mobilenet_v2", SIZE, WEIGHTS, dropout=0.1)
    # the backbone is frozen: its pooled features are computed once and only the head is fitted
    pooled = keras.Model(model.input, model.get_layer("features").output)
    features = pooled.predict(np.concatenate([chips, chips[:, :, ::-1]]).astype(np.float32), verbose=0)
    head = keras.Sequential(
        [keras.Input(features.shape[1:]), model.get_layer("head_dropout"), model.get_layer("age_group")]
    )
    head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    head.fit(features, np.tile(train["age_group"].to_numpy(), 2), epochs=15, batch_size=64, verbose=0)
    return model, held, load_chips([images / path for path in held["path"]], SIZE, workers=1)


def probabilities(forward, chips: np.ndarray) -> np.ndarray:
    return predict_probabilities(forward, np.ascontiguousarray(chips), flip=False)


def answers_vary(forward, chips: np.ndarray) -> bool:
    """Whether the model tells faces apart at all: a constant model is trivially invariant."""
    answers = probabilities(forward, chips).argmax(axis=1)
    return len(set(answers.tolist())) >= 4 and float(np.mean(answers != np.roll(answers, 1))) >= 0.5


def mirror_agreement(forward, chips: np.ndarray) -> tuple[float, float]:
    """Share of faces whose mirror image gets the same group, and how far the mirror moves the
    probabilities relative to another face (median total variation distance, mirror / other face)."""
    plain, mirrored = probabilities(forward, chips), probabilities(forward, chips[:, :, ::-1])
    same = float(np.mean(plain.argmax(axis=1) == mirrored.argmax(axis=1)))
    moved = np.median(0.5 * np.abs(plain - mirrored).sum(axis=1))
    other_face = np.median(0.5 * np.abs(plain - np.roll(plain, 1, axis=0)).sum(axis=1))
    return same, float(moved / other_face)


def brightness_agreement(forward, chips: np.ndarray, factor: float) -> float:
    """Share of faces whose group stays the same when every pixel is scaled by `factor`."""
    changed = np.clip(np.rint(chips.astype(np.float32) * factor), 0, 255).astype(np.uint8)
    return float(
        np.mean(probabilities(forward, chips).argmax(1) == probabilities(forward, changed).argmax(1))
    )


def clear_case_accuracy(forward, rows, chips: np.ndarray) -> tuple[float, int]:
    """Exact accuracy on babies aged 1 and seniors aged 70 or more, and how many there are."""
    clear = ((rows["age"] == 1) | (rows["age"] >= 70)).to_numpy()
    answers = probabilities(forward, chips[clear]).argmax(axis=1)
    return float(np.mean(answers == rows["age_group"].to_numpy()[clear])), int(clear.sum())


def test_the_model_tells_faces_apart(mini_model):
    """The invariance tests below mean something only for a model whose answers vary."""
    model, _, chips = mini_model
    assert answers_vary(model, chips)


def test_a_mirrored_face_gets_the_same_group(mini_model):
    model, _, chips = mini_model
    same, moved = mirror_agreement(model, chips)
    assert same >= 0.65, same  # about 0.75 here; 0.36 for a model that sees one half of the face
    assert moved <= 0.5, moved  # a mirror moves the probabilities far less than another face does


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_a_ten_percent_brightness_change_keeps_most_answers(mini_model, factor):
    model, _, chips = mini_model
    # about 0.86-0.95 here; a 50% change keeps only about 0.6, so the bar is not out of reach
    assert brightness_agreement(model, chips, factor) >= 0.75


def test_clear_cases_babies_and_seniors_are_mostly_right(mini_model):
    model, rows, chips = mini_model
    accuracy, count = clear_case_accuracy(model, rows, chips)
    assert count >= 20  # held-out babies aged 1 and seniors 70+ of the mini set
    assert accuracy >= 0.5, accuracy  # about 0.7 here; chance is 0.1 and an untrained head gets 0.23


def test_the_checks_fail_for_models_without_the_behaviour(mini_model):
    """A constant model fails the precondition; one that looks at the left half of the face only
    (an asymmetric crop) fails the mirror test; an untrained head fails the clear cases."""
    import keras

    from agerange.model import build_classifier

    model, rows, chips = mini_model

    def constant(batch):
        return np.tile(np.eye(len(GROUP_NAMES), dtype=np.float32)[6], (len(batch), 1))

    def left_half(batch):
        half = np.repeat(batch[:, :, : SIZE // 2], 2, axis=2)  # the left half stretched to full width
        return model(half)

    assert not answers_vary(constant, chips)
    same, moved = mirror_agreement(left_half, chips)
    assert same < 0.65 or moved > 0.5, (same, moved)
    keras.utils.set_random_seed(0)
    untrained = build_classifier("mobilenet_v2", SIZE, WEIGHTS, dropout=0.1)
    assert clear_case_accuracy(untrained, rows, chips)[0] < 0.5
