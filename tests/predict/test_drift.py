"""Drift reports on real photos: a UTKFace slice against UTKFace shows no drift, FairFace does."""

import pandas as pd
import pytest

from agerange.drift import FEATURES, describe_photos, drift_report, homogeneity_p_value, range_accuracy
from agerange.metrics import fairface_range
from agerange.predict import AgePredictor
from tests.conftest import FAIRFACE


def test_fairface_ranges_and_range_accuracy():
    assert [fairface_range(age) for age in (0, 2, 2.6, 3, 9.4, 10, 69, 70, 95)] == [0, 0, 0, 1, 1, 2, 7, 8, 8]
    described = pd.DataFrame(
        {"photo": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "expected_age": [25.0, 44.0, 71.0, float("nan")]}
    )
    labels = pd.DataFrame({"filename": ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], "age_min": [20, 30, 70, 3]})
    accuracy = range_accuracy(described, labels)
    assert accuracy["range_accuracy"] == pytest.approx(2 / 3)
    assert accuracy["range_within_one"] == 1.0
    assert accuracy["range_accuracy_all_photos"] == 0.5 and accuracy["photos_with_face"] == 3


def test_range_accuracy_judges_the_chosen_range_even_when_the_labels_name_theirs():
    """FairFace's labels.csv has an `age_range` column of its own: the answer judged is still the
    range the predictor chose from its range probabilities, not the range of its expected age."""
    described = pd.DataFrame(
        {"photo": ["a.jpg", "b.jpg"], "expected_age": [25.0, 44.0], "age_range": ["30-39", "40-49"]}
    )
    labels = pd.DataFrame(
        {
            "filename": ["a.jpg", "b.jpg"],
            "age_range": ["30-39", "30-39"],
            "age_min": [30, 30],
            "gender": ["x", "y"],
        }
    )
    accuracy = range_accuracy(described, labels)
    # a.jpg: chosen 30-39 is right (its expected age 25 would be 20-29); b.jpg: 40-49 is one off
    assert accuracy["range_accuracy"] == 0.5 and accuracy["range_within_one"] == 1.0


@pytest.mark.filterwarnings("error")
def test_photos_without_a_face_have_no_chosen_range_and_are_not_judged_right():
    """A photo with no face has neither a chosen range nor an expected age: it is answered
    wrong among all photos and left out of the answered ones, without a pandas warning."""
    described = pd.DataFrame(
        {"photo": ["a.jpg", "b.jpg"], "expected_age": [float("nan"), float("nan")], "age_range": [None, None]}
    )
    labels = pd.DataFrame({"filename": ["a.jpg", "b.jpg"], "age_min": [0, 30]})
    accuracy = range_accuracy(described, labels)
    assert accuracy["range_accuracy_all_photos"] == 0.0 and accuracy["photos_with_face"] == 0
    described.loc[1, ["expected_age", "age_range"]] = [33.0, "30-39"]
    accuracy = range_accuracy(described, labels)
    assert accuracy["range_accuracy"] == 1.0 and accuracy["range_accuracy_all_photos"] == 0.5


def test_category_test_compares_two_samples_not_one_against_exact_frequencies():
    """One 'no face' photo among 200, where the reference of 350 had none, is no evidence of drift
    (Evidently's `chisquare` gives p = 0 there); a real shift of the mix still is."""
    reference = pd.Series(["Adult"] * 350)
    assert homogeneity_p_value(reference, pd.Series(["Adult"] * 199 + ["no face"])) > 0.5
    assert homogeneity_p_value(reference, reference) == 1.0
    shifted = homogeneity_p_value(
        pd.Series(["Adult", "Adult", "Senior"] * 100), pd.Series(["Adult", "Senior", "Senior"] * 100)
    )
    assert shifted < 1e-6


@pytest.mark.slow
def test_drift_report_flags_fairface_framing_but_not_a_utkface_slice(packaged_model, mini_ingested, tmp_path):
    images, metadata, _ = mini_ingested
    predictor = AgePredictor.from_directory(packaged_model)
    shuffled = metadata["path"].sample(frac=1, random_state=1).tolist()
    reference = describe_photos(predictor, [images / p for p in shuffled[:250]], shuffled[:250])
    control = describe_photos(predictor, [images / p for p in shuffled[250:400]], shuffled[250:400])
    fairface = sorted(FAIRFACE.glob("*.jpg"))[:80]
    new = describe_photos(predictor, fairface, [p.name for p in fairface])
    assert set(FEATURES) <= set(new.columns) and any(c.startswith("emb_") for c in new.columns)

    clean = drift_report(reference, control)
    assert clean["drifted"] == [], clean["drifted"]
    drifted = drift_report(reference, new, html=tmp_path / "drift.html")
    assert drifted["drift"]
    # wide margins and several faces: the framing features must be flagged
    assert {"face_box_fraction", "width", "height"} <= set(drifted["drifted"])
    assert drifted["columns"]["face_box_fraction"]["p_value"] < drifted["level_per_column"]
    assert (tmp_path / "drift.html").stat().st_size > 10_000


def test_new_photo_accuracy_measures_a_labelled_folder_through_the_predict_path(packaged_model, tmp_path):
    import shutil

    from agerange.drift import new_photo_accuracy

    labels = pd.read_csv(FAIRFACE / "labels.csv").head(6)
    for name in labels["filename"]:
        shutil.copy(FAIRFACE / name, tmp_path / name)
    predictor = AgePredictor.from_directory(packaged_model)
    assert new_photo_accuracy(predictor, tmp_path) == {}  # no labels.csv: nothing to measure
    labels.to_csv(tmp_path / "labels.csv", index=False)
    found = new_photo_accuracy(predictor, tmp_path)
    assert found["labelled_photos"] == 6 and found["photos_with_face"] >= 5
    assert 0 <= found["range_accuracy"] <= found["range_within_one"] <= 1


def _described(rows: int, seed: int, faces: int, shift: float = 0.0, width: int = 32) -> pd.DataFrame:
    """A `describe_photos`-shaped table: drift features, the answer, and embeddings for the first
    `faces` rows (the others had no face: no embedding, as describe_photos leaves them)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    table = pd.DataFrame({"photo": [f"p{seed}_{i}.jpg" for i in range(rows)]})
    for column in FEATURES:
        table[column] = rng.normal(size=rows)
    table["predicted_group"] = rng.choice(["Adult", "Senior"], rows)
    if faces:
        embeddings = rng.normal(size=(rows, width)) + shift
        embeddings[faces:] = np.nan
        table = pd.concat(
            [table, pd.DataFrame(embeddings, columns=[f"emb_{i}" for i in range(width)])], axis=1
        )
    return table


def test_a_set_without_any_face_gets_a_report_and_embeddings_are_judged_on_faces_only(tmp_path):
    """No face in any new photo is the strongest drift there is, not a crash; and photos without
    a face must not dilute the embedding test of the faces that are there."""
    reference = _described(300, seed=0, faces=300)
    faceless = _described(100, seed=1, faces=0)
    # 40 faces whose embeddings moved, among 160 photos without one
    page = tmp_path / "new_photos_vs_training.html"
    few_faces = drift_report(reference, _described(200, seed=2, faces=40, shift=1.5), html=page)
    assert page.with_name("new_photos_vs_training_embeddings.html").is_file()
    report = drift_report(reference, faceless, html=page)
    assert report["embedding"]["skipped"].startswith("fewer than 10 faces")
    assert not page.with_name("new_photos_vs_training_embeddings.html").exists()  # no stale page
    assert "penultimate" in few_faces["drifted"] and few_faces["embedding"]["score"] > 0.9
    unmoved = drift_report(reference, _described(200, seed=3, faces=40))
    assert "penultimate" not in unmoved["drifted"]


def test_the_embedding_threshold_holds_the_stated_false_alarm_rate_for_small_folders():
    """Held-out scores that know nothing of the sets exceed `chance_auc` at the stated rate; a
    fixed 0.6 is exceeded far more often than the stated rate with 15 new photos held out."""
    import numpy as np
    from scipy.stats import rankdata

    from agerange.drift import chance_auc

    rng = np.random.default_rng(0)
    current, reference, level = 15, 500, 0.05
    scores = rng.random((4000, current + reference))
    ranks = rankdata(scores, axis=1)[:, :current].sum(axis=1)
    aucs = (ranks - current * (current + 1) / 2) / (current * reference)  # Mann-Whitney
    threshold = chance_auc(current, reference, level)
    assert 0.035 < (aucs > threshold).mean() < 0.065
    # the per-column level the drift stage uses (Bonferroni over the features and the answer):
    # 0.33%; a fixed 0.6 gives about 9%
    columns = len(FEATURES) + 1
    assert (aucs > chance_auc(current, reference, 0.05 / columns)).mean() < 0.01 < 0.05 < (aucs > 0.6).mean()
    # the report uses the larger of drift.embedding_auc and this, and says which
    reference_set, small = _described(300, seed=0, faces=300), _described(30, seed=4, faces=30)
    verdict = drift_report(reference_set, small)["embedding"]
    assert verdict["threshold"] == chance_auc(15, 150, 0.05 / columns) > 0.6


def test_new_photo_accuracy_by_condition_covers_every_photo_and_finds_the_failing_condition(tmp_path):
    """Labelled new photos with a face, sliced by each drift feature: every one in one bin of each,
    and a model that fails on turned heads (low eye spacing) has that bin named first, also by the
    drift summary; photos with no face, with no label or with no age are left out, not failed."""
    import numpy as np

    from agerange.drift import drift_summary, range_accuracy_by_condition, summary_line
    from agerange.metrics import weakest_conditions

    table = _described(80, seed=5, faces=0)
    rng = np.random.default_rng(5)
    table["eye_spacing"] = rng.uniform(0.05, 0.45, 80)
    truth_ages = rng.choice([5, 15, 25, 35, 45, 55, 65, 75], 80).astype(float)
    turned = table["eye_spacing"] < table["eye_spacing"].quantile(0.25)
    answered = np.where(turned, 25, truth_ages)  # every turned head answered 20-29
    table["expected_age"] = answered.astype(float)
    table["age_range"] = [None] * 80
    no_face = np.arange(80) >= 76  # the last four photos: no face found, no answer
    table.loc[no_face, "expected_age"] = np.nan
    table.loc[no_face, ["face_box_fraction", "detector_score", "eye_spacing"]] = 0.0
    truth_ages[[74, 78]] = np.nan  # two labels without an age (one of a photo with a face)
    labels = pd.DataFrame({"filename": table["photo"], "age_min": truth_ages})

    by_condition = range_accuracy_by_condition(table, labels)
    for condition, rows in by_condition.groupby("condition"):
        assert rows["images"].sum() == 75, condition  # 80 less 4 without a face, less 1 without an age
    worst = weakest_conditions(by_condition)
    assert worst[0].startswith("eye_spacing ")
    first = by_condition[(by_condition["condition"] == "eye_spacing") & (by_condition["bin"] == "1 of 4")]
    assert first["accuracy"].item() < 0.3

    # the stage's summary: the same table and verdict, and none of it when no label matches
    photos = tmp_path / "photos"
    photos.mkdir()
    labels.to_csv(photos / "labels.csv", index=False)
    tables = {"reference": _described(300, seed=0, faces=300), "control": _described(100, seed=6, faces=100)}
    settings = type("Drift", (), {"model": "m", "alpha": 0.05, "embedding_auc": 0.6})()
    summary = drift_summary({**tables, "new_photos": table}, photos, tmp_path / "reports", settings)
    assert summary["weakest_conditions"] == worst
    assert summary_line(summary).endswith("; it falls most for " + "; ".join(worst))
    assert (tmp_path / "reports" / "new_photos_accuracy_by_condition.csv").is_file()
    pd.DataFrame({"filename": ["elsewhere.jpg"], "age_min": [30]}).to_csv(photos / "labels.csv", index=False)
    summary = drift_summary({**tables, "new_photos": table}, photos, tmp_path / "reports", settings)
    assert summary["accuracy"] == {} and "weakest_conditions" not in summary
    assert not (tmp_path / "reports" / "new_photos_accuracy_by_condition.csv").exists()
