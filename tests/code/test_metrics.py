"""The one metrics module, on hand-made answers where the right figure is known."""

import numpy as np
import pytest

from agerange.metrics import (
    NO_ANSWER,
    exact_accuracy,
    fairface_ranges,
    group_distance,
    mae_years,
    range_accuracy,
    range_within_one,
    within_one,
)


def test_exact_and_within_one_count_neighbours_and_missing_answers():
    truth = np.array([5, 5, 5, 5, 0], dtype=np.int8)  # parquet may hand back narrow integers
    predicted = np.array([5, 4, 6, 8, NO_ANSWER])
    assert exact_accuracy(predicted, truth) == 0.2
    assert within_one(predicted, truth) == 0.6  # a missing answer is not within one of group 0
    assert group_distance(predicted, truth).dtype == np.int64


def test_unsigned_groups_do_not_wrap_around():
    truth = np.array([3], dtype=np.uint8)
    assert within_one(np.array([4], dtype=np.uint8), truth) == 1.0
    assert within_one(np.array([2], dtype=np.uint8), truth) == 1.0  # 2 - 3 must not wrap to 255


def test_mae_is_taken_in_the_precision_of_the_expected_ages():
    expected = np.array([29.5, 10.0, 70.25], dtype=np.float32)
    ages = np.array([30, 11, 70])
    assert mae_years(expected, ages) == pytest.approx((0.5 + 1 + 0.25) / 3)
    assert mae_years(expected, ages) == float(np.abs(expected - ages.astype(np.float32)).mean())


def test_range_accuracy_counts_a_missing_age_as_wrong_and_refuses_a_missing_label():
    predicted = np.array([25.0, 44.0, 71.0, np.nan])
    truth = np.array([20, 30, 70, 3])
    assert fairface_ranges(predicted).tolist() == [3, 5, 8, NO_ANSWER]
    assert range_accuracy(predicted, truth) == 0.5
    assert range_within_one(predicted, truth) == 0.75
    with pytest.raises(ValueError, match="true ages"):
        range_accuracy(predicted, np.array([20, 30, np.nan, 3]))


def test_the_interval_of_a_share_is_wilsons():
    from agerange.metrics import proportion_interval

    # by hand: 122 of 270, and the textbook 0 of 10 (upper bound 0.2775)
    low, high = proportion_interval(122 / 270, 270)
    assert (low, high) == pytest.approx((0.3936, 0.5115), abs=1e-4)
    assert proportion_interval(0.0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert proportion_interval(1.0, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    # it narrows as the photos grow, and no photos says nothing
    assert proportion_interval(0.5, 2700)[1] - proportion_interval(0.5, 2700)[0] < high - low
    assert proportion_interval(0.5, 0) == (0.0, 1.0)
