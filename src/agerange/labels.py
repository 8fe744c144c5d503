"""Labels: parse them from file names and map ages to the ten age groups.

This module is the only place the age-group edges live. Everything else (ingest,
rebalance, training, evaluation, predict, drift) calls `age_to_group`.
"""

import datetime
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# (name, lowest age, highest age); the last group is open-ended.
AGE_GROUPS: tuple[tuple[str, int, int | None], ...] = (
    ("Baby", 0, 1),
    ("Toddler", 2, 3),
    ("Child", 4, 8),
    ("Adolescent", 9, 13),
    ("Teenager", 14, 18),
    ("Young Adult", 19, 24),
    ("Adult", 25, 34),
    ("Mature Adult", 35, 44),
    ("Middle Age", 45, 58),
    ("Senior", 59, None),
)
GROUP_NAMES: tuple[str, ...] = tuple(name for name, _, _ in AGE_GROUPS)
ETHNICITIES: tuple[str, ...] = ("White", "Black", "Asian", "Indian", "Others")
GENDERS: tuple[str, ...] = ("Male", "Female")

# the distribution head: one bin per year of age 0..MAX_AGE, the last holding every older age
MAX_AGE = 100
AGE_BINS = MAX_AGE + 1

# Both names are matched whole, ASCII digits only (no trailing newline, no full-width digits).
# UTKFace: [age]_[gender]_[race]_[date&time].jpg.chip.jpg (the date has 16-18 digits in practice)
_UTKFACE = re.compile(
    r"(?P<age>\d{1,3})_(?P<gender>[01])_(?P<race>[0-4])_(?P<date>\d{8,20})\.jpg\.chip\.jpg", re.ASCII
)
# IMDB-WIKI: nm[id]_rm[id]_[birth YYYY-M-D]_[photo year].jpg (month and day may be unpadded)
_IMDB_WIKI = re.compile(
    r"nm\d+_rm\d+_(?P<birth>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})_(?P<taken>\d{4})\.jpg", re.ASCII
)


class LabelError(ValueError):
    """A file name from which no label can be read."""


@dataclass(frozen=True)
class Label:
    """What a file name tells about the face in it."""

    age: int
    gender: int | None  # index into GENDERS; None when the source does not say
    ethnicity: int | None  # index into ETHNICITIES; None when the source does not say
    source: str  # "utkface" or "imdb_wiki"


def age_to_group(age: float) -> int:
    """Index of the age group (0 = Baby ... 9 = Senior) that `age` in years falls in.

    Fractional ages (an expected age from a model) round to the nearest year first.
    """
    years = math.floor(age + 0.5)  # half up, unlike round(), so 18.5 is 19
    if years < 0:
        raise ValueError(f"age {age} is negative")
    for index, (_, _, highest) in enumerate(AGE_GROUPS):
        if highest is None or years <= highest:
            return index
    raise AssertionError("unreachable: the last group is open-ended")


def group_midpoints(senior_age: float = 70.0) -> tuple[float, ...]:
    """A representative age per group, used to turn group probabilities into an expected age."""
    return tuple(
        (lowest + highest) / 2 if highest is not None else senior_age for _, lowest, highest in AGE_GROUPS
    )


def age_distribution(ages: np.ndarray, sigma: float) -> np.ndarray:
    """Probability of each age group for faces of known age, as soft training targets.

    A normal distribution around each face's age on a log(1 + age) scale (a year matters
    more at 5 than at 50; the groups widen with age the same way), integrated over each
    group's ages. A 24-year-old's target leans towards 'Adult 25-34', a 19-year-old's towards
    'Teenager': unlike smoothing every label the same way, the target says where in its group
    a face lies. Ages are whole years; a group's edges are half-way between its ages and the next.

    Returns:
        float32 (N, 10), rows summing to 1.
    """
    return _spread_over(ages, [lowest for _, lowest, _ in AGE_GROUPS], sigma)


def age_bin_distribution(ages: np.ndarray, sigma: float) -> np.ndarray:
    """`age_distribution` over single years 0, 1, ..., MAX_AGE (the last bin holds every older age):
    the targets of the distribution head. The spread grows with age (log scale), so a 70-year-old's
    target covers about +-6 years and a 5-year-old's about +-0.5 at sigma 0.085.

    Returns:
        float32 (N, AGE_BINS), rows summing to 1.
    """
    return _spread_over(np.minimum(np.asarray(ages, float), MAX_AGE), list(range(AGE_BINS)), sigma)


def _spread_over(ages: np.ndarray, lowest_ages: list[int], sigma: float) -> np.ndarray:
    """A normal on log(1 + age) around each age, integrated between consecutive lowest ages
    (the first bin open below, the last open above)."""
    edges = [math.log1p(lowest - 0.5) if lowest > 0 else -math.inf for lowest in lowest_ages]
    z = (np.asarray([*edges, math.inf])[None, :] - np.log1p(np.asarray(ages, float))[:, None]) / sigma
    below = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))  # normal CDF at each edge
    return np.diff(below, axis=1).astype(np.float32)


def bins_to_ranges(ranges: Sequence[tuple[int, int | None]]) -> np.ndarray:
    """0/1 matrix (AGE_BINS, len(ranges)) summing single-year bins into age ranges.

    `ranges` are (lowest, highest) whole years, in order, covering 0 to MAX_AGE without gaps or
    overlaps; the last may be open (highest None). Raises ValueError naming the first bad range.
    """
    matrix = np.zeros((AGE_BINS, len(ranges)), dtype=np.float32)
    expected_lowest = 0
    for index, (lowest, highest) in enumerate(ranges):
        if lowest != expected_lowest:
            raise ValueError(
                f"age range {lowest}-{highest}: starts at {lowest}, expected {expected_lowest} "
                "(ranges must start at 0 and follow each other without gaps or overlaps)"
            )
        if highest is not None and highest < lowest:
            raise ValueError(f"age range {lowest}-{highest}: ends before it starts")
        last = MAX_AGE if highest is None or index == len(ranges) - 1 else highest
        if (highest is None or highest >= MAX_AGE) and index < len(ranges) - 1:
            reach = "is open" if highest is None else f"reaches {MAX_AGE}"
            raise ValueError(f"age range {lowest}-{highest}: {reach}, so it must be the last")
        matrix[lowest : min(last, MAX_AGE) + 1, index] = 1.0
        expected_lowest = (highest + 1) if highest is not None else AGE_BINS
    if expected_lowest <= MAX_AGE:
        raise ValueError(f"age ranges end at {expected_lowest - 1}: the last must be open (e.g. [70, null])")
    return matrix


GROUP_RANGES: tuple[tuple[int, int | None], ...] = tuple(
    (lowest, highest) for _, lowest, highest in AGE_GROUPS
)
BINS_TO_GROUPS = bins_to_ranges(GROUP_RANGES)


def parse_utkface_name(name: str) -> Label:
    """Label from a UTKFace file name such as `26_1_3_20170117154736394.jpg.chip.jpg`."""
    match = _UTKFACE.fullmatch(name)
    if match is None:
        raise LabelError(f"{name}: unparsable UTKFace name: {_utkface_defect(name)}")
    return Label(
        age=int(match["age"]),
        gender=int(match["gender"]),
        ethnicity=int(match["race"]),
        source="utkface",
    )


def _utkface_defect(name: str) -> str:
    """What is wrong with a name that does not match the UTKFace pattern (for the error message)."""
    expected = "expected age_gender_race_datetime.jpg.chip.jpg"
    if any(character.isspace() for character in name):
        return f"contains whitespace ({expected})"
    if not name.endswith(".jpg.chip.jpg"):
        return f"does not end in '.jpg.chip.jpg' ({expected})"
    fields = name.removesuffix(".jpg.chip.jpg").split("_")
    if len(fields) != 4:
        return f"{len(fields)} fields separated by '_' instead of 4 ({expected})"
    return f"a field is out of its range: gender 0-1, race 0-4, digits only ({expected})"


def parse_imdb_wiki_name(name: str) -> Label:
    """Label from an IMDB-WIKI file name: age = photo year - birth year."""
    match = _IMDB_WIKI.fullmatch(name)
    if match is None:
        raise LabelError(f"{name}: not an IMDB-WIKI name (expected nm.._rm.._YYYY-MM-DD_YYYY.jpg)")
    try:  # a calendar date: 1955-2-31 is not one, 1956-2-29 is
        datetime.date(int(match["birth"]), int(match["month"]), int(match["day"]))
    except ValueError:
        raise LabelError(
            f"{name}: birth date {match['birth']}-{match['month']}-{match['day']} is not a date"
        ) from None
    age = int(match["taken"]) - int(match["birth"])
    if age < 0:
        raise LabelError(f"{name}: photo year {match['taken']} is before birth year {match['birth']}")
    return Label(age=age, gender=None, ethnicity=None, source="imdb_wiki")


def parse_label(name: str) -> Label:
    """Label from a file name of either supported source.

    Raises:
        LabelError: with a one-line message naming the file and why it does not parse.
    """
    if name.startswith("nm"):
        return parse_imdb_wiki_name(name)
    if name[:1].isdigit():
        return parse_utkface_name(name)
    raise LabelError(
        f"{name}: unrecognised name (expected UTKFace age_gender_race_datetime.jpg.chip.jpg "
        "or IMDB-WIKI nm.._rm.._YYYY-MM-DD_YYYY.jpg)"
    )
