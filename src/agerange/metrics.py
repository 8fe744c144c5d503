"""How right the answers are: exact and within-one accuracy, MAE in years, FairFace range accuracy.

The one place these are computed: training (probe and ensemble validation accuracy), the
evaluation report, the predict-path report and the drift stage's FairFace check all call them,
so the figures they print mean the same thing. Pure numpy, no model.

A missing answer (a photo where no face was found) is given as `NO_ANSWER`: it is neither
right nor within one of anything, as it would be for a user.
"""

import math

import numpy as np

NO_ANSWER = -100  # any index this far from every group never counts as right or within one

# FairFace labels are annotators' age ranges; the last one is open-ended
FAIRFACE_RANGES = [(0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, None)]


def group_distance(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """How many groups (or ranges) each answer is from the truth, as int64."""
    return np.abs(np.asarray(predicted, dtype=np.int64) - np.asarray(truth, dtype=np.int64))


def exact_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of answers equal to the truth (group or range indices)."""
    return float((group_distance(predicted, truth) == 0).mean())


def within_one(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Share of answers at most one group (or range) from the truth."""
    return float((group_distance(predicted, truth) <= 1).mean())


def mae_years(estimated_ages: np.ndarray, true_ages: np.ndarray) -> float:
    """Mean absolute error of estimated ages (expected or answered) against true ages, in years.

    The true ages are taken as float32, the precision of the model's expected ages, and the
    mean is taken in that precision (as every report before this module did).
    """
    return float(np.abs(np.asarray(estimated_ages) - np.asarray(true_ages, dtype=np.float32)).mean())


def proportion_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy `share` measured on `n` photos:
    where the accuracy on more photos of the same kind would lie. On a few hundred photos it is
    about 12 points wide, so a point or two between models there is noise."""
    if n <= 0:
        return (0.0, 1.0)
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def fairface_range(age: float) -> int:
    """Index of the FairFace age range (0-2, 3-9, 10-19, ..., 70+) holding an age in years.

    Ages are real numbers here (expected ages): 2.6 is still in 0-2, 9.4 in 3-9.
    """
    for index, (_, highest) in enumerate(FAIRFACE_RANGES):
        if highest is None or age < highest + 1:
            return index
    return len(FAIRFACE_RANGES) - 1


def fairface_ranges(ages: np.ndarray) -> np.ndarray:
    """`fairface_range` of each age; a missing age (NaN: no face found) gives `NO_ANSWER`."""
    return np.array(
        [NO_ANSWER if math.isnan(age) else fairface_range(age) for age in np.asarray(ages, dtype=np.float64)],
        dtype=np.int64,
    )


def range_accuracy(predicted_ages: np.ndarray, true_ages: np.ndarray) -> float:
    """Exact accuracy at FairFace's range level; a missing predicted age (NaN) counts as wrong."""
    return exact_accuracy(fairface_ranges(predicted_ages), _true_ranges(true_ages))


def range_within_one(predicted_ages: np.ndarray, true_ages: np.ndarray) -> float:
    """Share of predicted ages at most one FairFace range from the truth; NaN counts as wrong."""
    return within_one(fairface_ranges(predicted_ages), _true_ranges(true_ages))


def _true_ranges(true_ages: np.ndarray) -> np.ndarray:
    # a missing label would map to NO_ANSWER and count a missing prediction as right
    if np.isnan(np.asarray(true_ages, dtype=np.float64)).any():
        raise ValueError("true ages must all be known (a label has no age)")
    return fairface_ranges(true_ages)
