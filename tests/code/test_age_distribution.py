"""The distribution head's arithmetic: targets over single years, and every answer as a sum of them."""

import numpy as np
import pytest

from agerange.config import ConfigError, PackageConfig, TrainConfig, build, load_section
from agerange.inference import (
    MIDPOINTS,
    age_in_group,
    age_interval,
    decode_probabilities,
    expected_ages,
    group_probabilities,
    range_probabilities,
    year_probabilities,
)
from agerange.labels import (
    AGE_BINS,
    BINS_TO_GROUPS,
    age_bin_distribution,
    age_distribution,
    age_to_group,
    bins_to_ranges,
)
from agerange.metrics import FAIRFACE_RANGES
from tests.conftest import PROJECT_ROOT

AGES = np.array([0, 1, 2, 5, 13, 14, 18, 19, 24, 25, 34, 35, 44, 45, 58, 59, 70, 100, 116])


def _random_distributions(rows: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0, 3, (rows, AGE_BINS))
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def test_age_targets_sum_to_one_and_their_group_sums_are_the_group_targets():
    targets = age_bin_distribution(AGES, 0.085)
    assert targets.shape == (len(AGES), AGE_BINS)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    # summed over each group's years, exactly the group head's age-spread targets
    np.testing.assert_allclose(
        targets @ BINS_TO_GROUPS, age_distribution(np.minimum(AGES, 100), 0.085), atol=1e-6
    )
    # the spread grows with age: a 5-year-old's target is narrower than a 70-year-old's
    spread = [(targets[i] > 0.01).sum() for i in (3, 16)]
    assert spread[0] < spread[1]
    assert targets[-1].argmax() == AGE_BINS - 1  # 116 falls in the open last bin


def test_every_age_falls_in_exactly_one_group_bin_and_range():
    assert (BINS_TO_GROUPS.sum(axis=1) == 1).all()
    for age in range(AGE_BINS):
        assert BINS_TO_GROUPS[age].argmax() == age_to_group(age)
    fairface = bins_to_ranges(FAIRFACE_RANGES)
    assert (fairface.sum(axis=1) == 1).all() and fairface[19].argmax() == 2 and fairface[20].argmax() == 3


@pytest.mark.parametrize(
    "ranges, reason",
    [
        ([(1, 9), (10, None)], "starts at 1, expected 0"),
        ([(0, 9), (12, None)], "starts at 12, expected 10"),
        ([(0, 9), (5, None)], "starts at 5, expected 10"),
        ([(0, 9), (10, 60)], "the last must be open"),
        ([(0, 9), (9, 3), (4, None)], "starts at 9, expected 10"),
        ([(0, 69), (70, None), (101, 150)], "70-None: is open, so it must be the last"),
        ([(0, 9), (10, 100), (101, None)], "reaches 100, so it must be the last"),
    ],
)
def test_a_bad_range_scheme_is_refused_naming_the_range(ranges, reason):
    with pytest.raises(ValueError, match=reason):
        bins_to_ranges(ranges)


def test_groups_ranges_and_ages_are_exact_sums_of_the_distribution():
    outputs = _random_distributions(50)
    groups = group_probabilities(outputs)
    np.testing.assert_allclose(groups.sum(axis=1), 1.0, atol=1e-5)
    for group, (low, high) in enumerate([(0, 1), (2, 3), (4, 8), (9, 13), (14, 18)]):
        np.testing.assert_allclose(groups[:, group], outputs[:, low : high + 1].sum(axis=1), atol=1e-6)
    ranges = range_probabilities(outputs, FAIRFACE_RANGES)
    np.testing.assert_allclose(ranges[:, 2], outputs[:, 10:20].sum(axis=1), atol=1e-6)  # 10-19
    np.testing.assert_allclose(ranges[:, 8], outputs[:, 70:].sum(axis=1), atol=1e-6)  # 70+
    np.testing.assert_allclose(expected_ages(outputs), outputs @ np.arange(AGE_BINS), rtol=1e-5)
    decided, _ = decode_probabilities(outputs)
    np.testing.assert_array_equal(decided, groups.argmax(axis=1))


def test_the_group_head_keeps_its_midpoint_ages_and_spreads_groups_evenly_over_years():
    groups = np.random.default_rng(1).dirichlet(np.ones(10), 20).astype(np.float32)
    years = year_probabilities(groups)
    np.testing.assert_allclose(years @ BINS_TO_GROUPS, groups, atol=1e-6)  # no mass changes group
    np.testing.assert_allclose(years @ np.arange(AGE_BINS), groups @ MIDPOINTS, rtol=1e-4)
    np.testing.assert_allclose(expected_ages(groups), groups @ MIDPOINTS)


def test_the_answer_is_coherent_an_age_inside_the_group_and_an_interval_around_the_truth():
    targets = age_bin_distribution(np.array([3, 30, 70]), 0.05)
    interval = age_interval(targets, 0.8)
    assert (interval[:, 0] <= [3, 30, 70]).all() and (interval[:, 1] >= [3, 30, 70]).all()
    assert (interval[:, 1] - interval[:, 0])[0] < (interval[:, 1] - interval[:, 0])[2]  # wider when older
    # the FairFace case: most mass around 40, but the rule answers Senior: the age is a Senior's
    bimodal = 0.69 * age_bin_distribution(np.array([40]), 0.05) + 0.31 * age_bin_distribution(
        np.array([66]), 0.05
    )
    assert 59 <= age_in_group(bimodal, np.array([9]))[0] <= 75
    assert 35 <= age_in_group(bimodal, np.array([7]))[0] <= 44
    # a group the model gives almost nothing (1e-12 a year) still answers an age inside it
    nearly_empty = np.full((1, AGE_BINS), 1e-12)
    nearly_empty[0, 30] = 1.0
    assert age_in_group(nearly_empty, np.array([9]))[0] >= 59
    outputs = _random_distributions(30, seed=2)
    groups = group_probabilities(outputs).argmax(axis=1)
    assert all(
        age_to_group(age) == group for age, group in zip(age_in_group(outputs, groups), groups, strict=True)
    )


def test_settings_refuse_an_unknown_head_and_a_bad_range_scheme():
    train = load_section("train", PROJECT_ROOT / "params.yaml")
    values = {field: getattr(train, field) for field in train.__dataclass_fields__}
    with pytest.raises(ConfigError, match="train.head: 'bins' is not a head"):
        build(TrainConfig, {**values, "head": "bins"}, "params.yaml: train")
    with pytest.raises(ConfigError, match="age_sigma: must be > 0"):
        build(TrainConfig, {**values, "head": "ages", "age_sigma": 0.0}, "params.yaml: train")
    with pytest.raises(ConfigError, match="package.ranges: age range 0-9: .*10-60|the last must be open"):
        build(PackageConfig, {"ranges": [[0, 9], [10, 60]]}, "params.yaml: package")
    with pytest.raises(ConfigError, match=r"each range is \[lowest, highest\]"):
        build(PackageConfig, {"ranges": [[0, 9, 3]]}, "params.yaml: package")
    assert build(PackageConfig, {"ranges": [[0, 17], [18, None]]}, "p").range_list() == [(0, 17), (18, None)]


def test_the_answered_age_is_the_distributions_median_moved_into_the_answered_group():
    """The median is the single age with the smallest expected absolute error; inside the
    answered group it stays as it is, outside it moves to the group's nearest year."""
    years = np.zeros((1, AGE_BINS), np.float32)
    years[0, [25, 34, 50]] = [0.4, 0.2, 0.4]  # cumulative: 0.4 at 25, 0.6 at 34: the median is 34
    assert age_in_group(years, np.array([6]))[0] == 34  # Adult (25-34); its own median would say 25
    assert age_in_group(years, np.array([8]))[0] == 45  # Middle Age (45-58): its youngest year
    assert age_in_group(years, np.array([5]))[0] == 24  # Young Adult (19-24): its oldest year
    assert age_in_group(years, np.array([9]))[0] == 59  # Senior (59+)
    # over every true age the model's distribution allows, no other age answers closer on average
    expected_error = [float(years[0] @ np.abs(np.arange(AGE_BINS) - answer)) for answer in range(AGE_BINS)]
    assert int(np.argmin(expected_error)) == 34
