"""Suspected label errors: planted wrong labels are found, honest ones are left alone."""

import numpy as np
import pandas as pd

from agerange.label_noise import contact_sheet, out_of_fold_probabilities, suspected_label_errors
from agerange.rebalance import without_suspected_errors


def _faces_with_planted_errors(rows_per_group: int = 60, planted: int = 24, seed: int = 0):
    """Features that separate the ten groups (with noise), and labels of which `planted` are moved
    three or more groups away (an adult labelled a baby)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(10), rows_per_group)
    centres = rng.normal(0, 1, (10, 32))
    features = centres[groups] + rng.normal(0, 0.6, (len(groups), 32))
    labels = groups.copy()
    wrong = rng.choice(len(groups), planted, replace=False)
    labels[wrong] = (groups[wrong] + rng.integers(3, 8, planted)) % 10
    labels[wrong] = np.where(
        np.abs(labels[wrong] - groups[wrong]) < 3, (groups[wrong] + 5) % 10, labels[wrong]
    )
    table = pd.DataFrame(
        {"path": [f"{i}.jpg" for i in range(len(groups))], "age": labels * 7, "age_group": labels}
    )
    return features, table, set(wrong.tolist())


def test_planted_far_label_errors_are_found_and_few_honest_labels_are_flagged():
    features, table, wrong = _faces_with_planted_errors()
    probabilities = out_of_fold_probabilities(features, table["age_group"].to_numpy(), folds=5, seed=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    issues = suspected_label_errors(table, probabilities, min_group_distance=2)
    found = {int(path.split(".")[0]) for path in issues["path"]}
    # most planted errors are found (cleanlab's default pruning is conservative: it flags as many
    # per pair of groups as the noise it estimates there)
    assert len(found & wrong) >= 0.6 * len(wrong)
    assert len(found - wrong) <= 5  # and few honest labels are accused
    assert (issues["group_distance"] >= 2).all()
    assert issues["label_probability"].is_monotonic_increasing  # most doubtful first


def test_a_neighbouring_group_is_not_reported_and_clean_labels_give_nothing():
    features, table, _ = _faces_with_planted_errors(planted=0)
    # move a few labels to the adjacent group only: honest ambiguity, below the distance
    table.loc[[0, 70, 140], "age_group"] += 1
    probabilities = out_of_fold_probabilities(features, table["age_group"].to_numpy(), folds=5, seed=0)
    assert suspected_label_errors(table, probabilities, min_group_distance=2).empty


def test_the_left_out_images_leave_training_only(tmp_path):
    from PIL import Image

    train = pd.DataFrame({"path": ["a.jpg", "b.jpg", "c.jpg"], "age": [1, 30, 2], "age_group": [0, 6, 1]})
    kept = without_suspected_errors(train, pd.DataFrame({"path": ["b.jpg"]}))
    assert kept["path"].tolist() == ["a.jpg", "c.jpg"]
    assert without_suspected_errors(train, pd.DataFrame({"path": []})).equals(train)
    # the contact sheet draws the suspects' pictures
    for name in train["path"]:
        Image.new("RGB", (40, 40), (90, 60, 30)).save(tmp_path / name)
    issues = train.assign(suggested_group=[6, 0, 6], label_probability=0.1, group_distance=[6, 6, 5])
    contact_sheet(issues, tmp_path, tmp_path / "sheet.png")
    assert Image.open(tmp_path / "sheet.png").size[0] > 200


def test_a_training_split_smaller_than_the_principal_components_still_gets_probabilities():
    """150 rows in 5 folds: each fold fits on 120, fewer than the 128 components asked for."""
    from agerange.label_noise import out_of_fold_probabilities

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 15)
    features = rng.normal(size=(150, 200)) + groups[:, None]
    probabilities = out_of_fold_probabilities(features, groups, folds=5, seed=0)
    assert probabilities.shape == (150, 10) and np.allclose(probabilities.sum(axis=1), 1)
