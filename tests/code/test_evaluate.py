"""Evaluation metrics on hand-made predictions, where the right answer is known."""

import numpy as np
import pandas as pd
import pytest

from agerange.evaluate import (
    accuracy_by,
    calibration_table,
    classification_metrics,
    confusion,
    evaluate,
    expected_calibration_error,
    macro_f1,
    off_by_n,
    worst_mistakes,
)
from agerange.inference import decide_groups, decode_probabilities, group_name, predict_probabilities


def _onehot(groups, confidence=1.0):
    probabilities = np.full((len(groups), 10), (1 - confidence) / 9, dtype=np.float32)
    probabilities[np.arange(len(groups)), groups] = confidence
    return probabilities


def test_perfect_predictions():
    groups = np.array([0, 3, 6, 9])
    metrics = classification_metrics(groups, _onehot(groups), ages=np.array([1, 11, 30, 70]))
    assert metrics["accuracy"] == 1.0 and metrics["within_one"] == 1.0 and metrics["macro_f1"] == 1.0
    assert metrics["ece"] == pytest.approx(0.0, abs=1e-6)
    # Expected age of a certain prediction is the group's midpoint.
    assert metrics["mae_years"] == pytest.approx(np.mean([0.5, 0, 0.5, 0]))


def test_off_by_one_counts_as_within_one_but_not_exact():
    groups = np.array([5, 5, 5, 5])
    predicted = np.array([5, 4, 6, 8])
    metrics = classification_metrics(groups, _onehot(predicted), ages=np.full(4, 21))
    assert metrics["accuracy"] == 0.25 and metrics["within_one"] == 0.75
    table = off_by_n(groups, predicted)
    assert table.set_index("groups_off")["images"].loc[[0, 1, 3]].tolist() == [1, 2, 1]


def test_macro_f1_by_hand():
    groups = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 1])
    # class 0: tp 1, fn 1 -> F1 2/3; class 1: tp 2, fp 1 -> F1 4/5
    assert macro_f1(groups, predicted) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_confusion_rows_are_truth_columns_predictions():
    matrix = confusion(np.array([0, 0, 2]), np.array([0, 1, 2]))
    assert matrix[0, 0] == 1 and matrix[0, 1] == 1 and matrix[2, 2] == 1 and matrix.sum() == 3


def test_overconfident_mistakes_have_a_large_calibration_error():
    groups = np.zeros(10, dtype=int)
    confident_wrong = _onehot(np.ones(10, dtype=int), confidence=0.95)
    assert expected_calibration_error(groups, confident_wrong) == pytest.approx(0.95, abs=1e-6)
    table = calibration_table(groups, confident_wrong)
    assert len(table) == 1 and table["accuracy"].iloc[0] == 0.0


def test_accuracy_gap_between_ethnicities():
    table = pd.DataFrame(
        {
            "age": [30] * 4,
            "age_group": [6, 6, 6, 6],
            "ethnicity": pd.array([0, 0, 1, 1], dtype="Int8"),
            "gender": pd.array([0, 1, 0, 1], dtype="Int8"),
            "path": list("abcd"),
        }
    )
    probabilities = _onehot(np.array([6, 6, 6, 2]))
    metrics, tables = evaluate(table, probabilities)
    per = tables["accuracy_by_ethnicity"].set_index("ethnicity")["accuracy"]
    assert per["White"] == 1.0 and per["Black"] == 0.5
    assert metrics["ethnicity_accuracy_gap"] == 0.5
    assert accuracy_by(table, np.array([6, 6, 6, 2]), "gender")["accuracy"].tolist() == [1.0, 0.5]
    worst = worst_mistakes(table, probabilities)
    assert worst["path"].tolist() == ["d"]


def test_expected_age_and_group_names():
    probabilities = np.zeros((1, 10), dtype=np.float32)
    probabilities[0, [6, 7]] = 0.5  # halfway between Adult (29.5) and Mature Adult (39.5)
    group, age = decode_probabilities(probabilities)
    assert group[0] == 6 and age[0] == pytest.approx(34.5)
    assert group_name(0) == "Baby (0-1)" and group_name(9) == "Senior (59+)"


def test_neighbour_weight_answers_the_group_between_likely_neighbours():
    # most likely: Baby (0.4); but Toddler has 0.35 itself and 0.65 beside it
    probabilities = np.array([[0.4, 0.35, 0.25, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    assert decide_groups(probabilities).tolist() == [0]
    assert decide_groups(probabilities, 0.5).tolist() == [1]
    # a confident answer stays put, and the edge groups have one neighbour only
    assert decide_groups(_onehot([9], 0.7), 0.5).tolist() == [9]
    assert decide_groups(_onehot([0], 0.7), 0.5).tolist() == [0]


def test_neighbour_weight_half_maximises_the_mean_of_exact_and_within_one():
    # drawing the truth from calibrated probabilities, no other answer scores better on average
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.full(10, 0.3), size=4000).astype(np.float32)
    truth = np.array([rng.choice(10, p=row / row.sum()) for row in probabilities])
    ages = np.full(len(truth), 30)

    def score(weight):
        metrics = classification_metrics(truth, probabilities, ages, neighbour_weight=weight)
        return (metrics["accuracy"] + metrics["within_one"]) / 2

    assert score(0.5) > score(0.0) and score(0.5) > score(1.0)
    table = pd.DataFrame({"age": ages, "age_group": truth, "ethnicity": 0, "gender": 0})
    metrics, _ = evaluate(table, probabilities, neighbour_weight=0.5)
    assert metrics["argmax_accuracy"] == classification_metrics(truth, probabilities, ages)["accuracy"]
    assert metrics["within_one"] > metrics["argmax_within_one"]


def test_flip_averaging_calls_the_model_on_the_mirror():
    chips = np.zeros((2, 4, 4, 3), dtype=np.uint8)
    chips[:, :, 0, :] = 255  # bright left column: the mirror has it on the right

    def forward(batch):
        left_bright = batch[:, :, 0, 0].mean(axis=1) > 100
        return np.where(left_bright[:, None], _onehot([0])[0], _onehot([9])[0])

    averaged = predict_probabilities(forward, chips, flip=True)
    assert averaged[0, 0] == pytest.approx(0.5) and averaged[0, 9] == pytest.approx(0.5)
    assert predict_probabilities(forward, chips, flip=False)[0, 0] == pytest.approx(1.0)


def test_the_mirror_is_averaged_in_only_where_the_answer_is_less_sure_than_the_margin():
    from agerange.inference import decision_margin, mirror_average
    from agerange.labels import AGE_BINS

    outputs = np.zeros((3, 10), np.float32)
    outputs[0, :2] = 0.9, 0.1  # sure either way
    outputs[1, :2] = 0.5, 0.45  # nearly a tie either way
    outputs[2, :4] = 0.3, 0.35, 0.3, 0.05  # a near tie that the neighbour rule makes clear
    assert decision_margin(outputs) == pytest.approx([0.8, 0.05, 0.05], abs=1e-6)
    # weight 0.5: row 0 scores 0.95, 0.55; row 1 0.725, 0.7; row 2 0.475, 0.65, 0.5, 0.2
    assert decision_margin(outputs, 0.5) == pytest.approx([0.4, 0.025, 0.15], abs=1e-6)
    ages = np.zeros((1, AGE_BINS), np.float32)
    ages[0, 30] = 1.0  # a distribution head's answer is measured on its groups
    assert decision_margin(ages) == pytest.approx([1.0], abs=1e-6)

    asked = []

    def mirrored(rows):
        asked.append(rows.tolist())
        return np.full((len(rows), 10), 0.1, np.float32)

    averaged = mirror_average(outputs, mirrored, flip_margin=0.1)
    assert asked == [[1, 2]]
    np.testing.assert_array_equal(averaged[0], outputs[0])
    np.testing.assert_allclose(averaged[1:], (outputs[1:] + 0.1) / 2)
    mirror_average(outputs, mirrored, flip_margin=0.1, neighbour_weight=0.5)
    assert asked[-1] == [1]  # the margin is measured in the decision rule's scores
    mirror_average(outputs, mirrored, flip_margin=None)
    assert asked[-1] == [0, 1, 2]
    asked.clear()
    np.testing.assert_array_equal(mirror_average(outputs, mirrored, flip_margin=0.0), outputs)
    assert asked == []  # nothing is less sure than a margin of 0: no second pass at all


def test_condition_slices_cover_every_image_and_find_where_accuracy_falls():
    from agerange.evaluate import IMAGE_CONDITIONS, accuracy_by_group_and_ethnicity
    from agerange.metrics import NO_FACE, accuracy_by_condition, weakest_conditions

    rng = np.random.default_rng(0)
    count = 400
    table = pd.DataFrame({
        "age_group": rng.integers(0, 10, count), "ethnicity": rng.integers(0, 5, count),
        "blur": rng.uniform(10, 500, count), "brightness": rng.uniform(0.1, 0.9, count),
        "contrast": np.full(count, 0.2), "saturation": rng.uniform(0, 1, count),
    })  # fmt: skip
    # right everywhere except on the blurriest quarter, where it is always wrong
    blurry = table["blur"] < table["blur"].quantile(0.25)
    predicted = np.where(blurry, (table["age_group"] + 3) % 10, table["age_group"])
    by_condition = accuracy_by_condition(table, predicted, table["age_group"].to_numpy(), IMAGE_CONDITIONS)
    for condition in IMAGE_CONDITIONS:  # each condition's bins hold every image exactly once (ties too)
        assert by_condition.loc[by_condition["condition"] == condition, "images"].sum() == count
    worst = by_condition.sort_values("drop", ascending=False).iloc[0]
    assert worst["condition"] == "blur" and worst["bin"] == "1 of 4" and worst["accuracy"] == 0.0
    assert weakest_conditions(by_condition, 1)[0].startswith("blur ")
    # a slice with fewer measured images than bins: each measured one is a bin of its own, and
    # only the unmeasured ones are filed as "no face found"
    few = pd.DataFrame({"age_group": np.zeros(12, int), "face_size": [0.5, 0.6] + [np.nan] * 10})
    few_slices = accuracy_by_condition(few, np.zeros(12, int), np.zeros(12, int), conditions=("face_size",))
    assert few_slices["bin"].tolist() == ["1 of 2", "2 of 2", NO_FACE]
    assert few_slices["images"].tolist() == [1, 1, 10]
    cells = accuracy_by_group_and_ethnicity(table, predicted)
    assert cells["images"].sum() == count and set(cells.columns) == {
        "age_group",
        "ethnicity",
        "accuracy",
        "images",
    }


def test_the_summary_says_no_gap_when_there_are_no_ethnicity_labels(tmp_path):
    from agerange.evaluate import summary_line

    test = {
        "n": 10, "accuracy": 0.5, "within_one": 0.9, "mae_years": 5.0, "answer_mae_years": 4.9,
        "macro_f1": 0.4, "ece": 0.03,
    }  # fmt: skip
    results = {"val": {"accuracy": 0.55}, "test": test}
    assert "ethnicity gap n/a (no ethnicity labels)" in summary_line(results, tmp_path)
    results["test"] = {**test, "ethnicity_accuracy_gap": 0.0412}
    assert "ethnicity gap 0.041 " in summary_line(results, tmp_path)


def test_the_gap_by_chance_is_what_equal_accuracy_shows_on_groups_of_these_sizes():
    from agerange.evaluate import gap_by_chance

    # two groups of 1,000 at 50%: the gap is |a difference of two binomial shares|, whose
    # standard deviation is sqrt(2 * 0.25 / 1000); the median of its absolute value is 0.674 of that
    gaps = gap_by_chance(np.array([1000, 1000]), 0.5)
    assert np.median(gaps) == pytest.approx(0.674 * np.sqrt(0.5 / 1000), rel=0.1)
    # smaller groups, larger gaps by chance; a model always right (or wrong) shows none
    assert np.median(gap_by_chance(np.array([100, 100]), 0.5)) > 2 * np.median(gaps)
    assert gap_by_chance(np.array([50, 20]), 1.0).max() == 0.0
    # groups without images, or an accuracy outside 0-1, are refused by name
    for sizes, accuracy in (([10, 0], 0.5), ([], 0.5), ([10, 10], float("nan"))):
        with pytest.raises(ValueError, match="gap_by_chance"):
            gap_by_chance(np.array(sizes, dtype=np.int64), accuracy)
    # seeded: the same figures every run
    assert np.array_equal(gap_by_chance(np.array([300, 200]), 0.6), gap_by_chance(np.array([300, 200]), 0.6))


def test_evaluate_says_whether_a_gap_is_more_than_chance():
    rng = np.random.default_rng(0)
    ethnicity = np.repeat([0, 1], 400)
    groups = np.full(800, 6)

    def figures(right_share_by_ethnicity):
        right = rng.random(800) < np.asarray(right_share_by_ethnicity)[ethnicity]
        table = pd.DataFrame({
            "age": 30, "age_group": groups, "ethnicity": pd.array(ethnicity, dtype="Int8"),
            "gender": pd.array(np.tile([0, 1], 400), dtype="Int8"), "path": [str(i) for i in range(800)],
        })  # fmt: skip
        return evaluate(table, _onehot(np.where(right, 6, 2)))[0]

    unfair = figures([0.8, 0.4])
    # no draw of 10,000 reaches it: the p-value is as small as that many draws can show, not 0
    assert unfair["ethnicity_accuracy_gap"] > 0.3 and unfair["ethnicity_gap_p_value"] == 1 / 10_001
    # 400 a side at about 60%: sampling alone gives a gap of a few points
    assert 0.01 < unfair["ethnicity_gap_by_chance"] < 0.05
    fair = figures([0.6, 0.6])
    assert fair["ethnicity_gap_p_value"] > 0.05
    assert {"gender_gap_by_chance", "gender_gap_p_value"} <= set(fair)


def test_the_error_of_the_answered_age_is_measured_beside_the_expected_ages():
    from agerange.labels import AGE_BINS

    years = np.zeros((1, AGE_BINS), np.float32)
    years[0, [25, 34, 50]] = [0.4, 0.2, 0.4]  # answered Adult (0.6): the median, 34; expected 36.8
    metrics = classification_metrics(np.array([6]), years, ages=np.array([34]))
    assert metrics["answer_mae_years"] == 0.0 and metrics["mae_years"] == pytest.approx(2.8, abs=1e-4)
