import numpy as np
import pytest

from agerange.labels import (
    AGE_GROUPS,
    GROUP_NAMES,
    LabelError,
    age_distribution,
    age_to_group,
    group_midpoints,
    parse_imdb_wiki_name,
    parse_label,
    parse_utkface_name,
)

# Every malformed name in UTKFace-mini.tar, with the defect the message must name.
MALFORMED_MINI_NAMES = {
    "24_0_1_20170116220224657 .jpg.chip.jpg": "whitespace",
    "39_1_20170116174525125.jpg.chip.jpg": "3 fields",
    "55_0_0_20170116232725357jpg.chip.jpg": "does not end in '.jpg.chip.jpg'",
    "61_1_20170109142408075.jpg.chip.jpg": "3 fields",
    "61_1_20170109150557335.jpg.chip.jpg": "3 fields",
}


def test_utkface_name_gives_age_gender_and_ethnicity():
    label = parse_utkface_name("26_1_3_20170117154736394.jpg.chip.jpg")
    assert (label.age, label.gender, label.ethnicity, label.source) == (26, 1, 3, "utkface")


@pytest.mark.parametrize("date", ["2017011022340900", "20170116184651548", "201701161846515488"])
def test_utkface_dates_of_any_observed_length_parse(date):
    assert parse_utkface_name(f"14_0_0_{date}.jpg.chip.jpg").age == 14


@pytest.mark.parametrize(("name", "defect"), MALFORMED_MINI_NAMES.items())
def test_every_malformed_mini_name_is_rejected_with_its_defect(name, defect):
    with pytest.raises(LabelError) as error:
        parse_label(name)
    message = str(error.value)
    assert name in message and defect in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["26_2_3_20170117154736394.jpg.chip.jpg", "26_1_5_2017011715.jpg.chip.jpg"])
def test_out_of_range_codes_are_rejected(name):
    with pytest.raises(LabelError, match="out of its range"):
        parse_utkface_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "26_1_3_20170117154736394.jpg.chip.jpg\n",  # a trailing newline (a name read from a list)
        "\uff12\uff16_1_3_20170117154736394.jpg.chip.jpg",  # full-width digits
        "nm0000100_rm1001569280_1955-1-6_2011.jpg\n",
    ],
)
def test_a_name_must_match_whole_and_in_ascii_digits(name):
    with pytest.raises(LabelError):
        parse_label(name)


def test_imdb_wiki_age_is_photo_year_minus_birth_year():
    label = parse_label("nm0000100_rm1001569280_1955-1-6_2011.jpg")
    assert (label.age, label.gender, label.ethnicity, label.source) == (56, None, None, "imdb_wiki")
    assert parse_imdb_wiki_name("nm0000001_rm124825600_1899-05-10_1968.jpg").age == 69
    assert parse_imdb_wiki_name("nm0000001_rm124825600_1956-2-29_1990.jpg").age == 34  # a leap day


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("nm0000100_rm1001569280_1955-13-6_2011.jpg", "not a date"),
        ("nm0000100_rm1001569280_1955-2-31_2011.jpg", "not a date"),
        ("nm0000100_rm1001569280_1955-2-29_2011.jpg", "not a date"),  # not a leap year
        ("nm0000100_rm1001569280_1955-0-6_2011.jpg", "not a date"),
        ("nm0000100_rm1001569280_2015-1-6_2011.jpg", "before birth year"),
        ("nm0000100_1955-1-6_2011.jpg", "not an IMDB-WIKI name"),
        ("README.md", "unrecognised name"),
    ],
)
def test_bad_imdb_wiki_and_other_names_are_rejected(name, reason):
    with pytest.raises(LabelError, match=reason):
        parse_label(name)


@pytest.mark.parametrize(
    ("age", "group"),
    [
        (0, "Baby"), (1, "Baby"), (2, "Toddler"), (3, "Toddler"), (4, "Child"), (8, "Child"),
        (9, "Adolescent"), (13, "Adolescent"), (14, "Teenager"), (18, "Teenager"),
        (19, "Young Adult"), (24, "Young Adult"), (25, "Adult"), (34, "Adult"),
        (35, "Mature Adult"), (44, "Mature Adult"), (45, "Middle Age"), (58, "Middle Age"),
        (59, "Senior"), (116, "Senior"),
    ],
)  # fmt: skip
def test_group_edges(age, group):
    assert GROUP_NAMES[age_to_group(age)] == group


def test_fractional_ages_round_to_the_nearest_year():
    assert GROUP_NAMES[age_to_group(18.4)] == "Teenager"
    assert GROUP_NAMES[age_to_group(18.6)] == "Young Adult"


def test_negative_age_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        age_to_group(-1)


def test_groups_are_contiguous_and_midpoints_fall_inside_their_group():
    for (_, _, highest), (_, lowest, _) in zip(AGE_GROUPS, AGE_GROUPS[1:], strict=False):
        assert lowest == highest + 1
    for index, midpoint in enumerate(group_midpoints()):
        assert age_to_group(midpoint) == index


def test_age_distribution_peaks_on_the_true_group_and_leans_towards_the_nearer_edge():
    ages = np.arange(1, 117)
    targets = age_distribution(ages, 0.085)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-6)
    assert list(targets.argmax(axis=1)) == [age_to_group(age) for age in ages]
    teenager, adult = 4, 6
    at_19, at_24 = targets[19 - 1], targets[24 - 1]
    assert at_24[adult] > 0.3 and at_24[teenager] < 0.01  # the top of Young Adult leans up
    assert at_19[teenager] > 0.3 and at_19[adult] < 0.01  # its bottom leans down
    assert targets[30 - 1][adult] > targets[25 - 1][adult]  # mid-group ages are surer
    # A narrow spread is the plain one-hot label.
    np.testing.assert_allclose(age_distribution(ages, 1e-4), np.eye(10)[targets.argmax(axis=1)], atol=1e-6)
