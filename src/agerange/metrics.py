"""How right the answers are: exact and within-one accuracy, MAE in years, FairFace range accuracy.

The one place these are computed: training (probe and ensemble validation accuracy), the
evaluation report, the predict-path report and the drift stage's FairFace check all call them,
so the figures they print mean the same thing; the evaluation's and the new photos' accuracy
by image condition too (`accuracy_by_condition`). Arrays and tables, no model.

A missing answer (a photo where no face was found) is given as `NO_ANSWER`: it is neither
right nor within one of anything, as it would be for a user.
"""

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

NO_ANSWER = -100  # any index this far from every group never counts as right or within one
NO_FACE = "no face found"  # the condition bin of images where the condition could not be measured

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


def accuracy_by_condition(
    table: pd.DataFrame, predicted: np.ndarray, truth: np.ndarray, conditions: Sequence[str], bins: int = 4
) -> pd.DataFrame:
    """Exact and within-one accuracy per quantile bin of each condition (a column of `table`,
    one row per image), with the drop from the accuracy over all rows: which conditions the model
    fails in. Every row is in one bin of each: rows where a condition could not be measured (NaN:
    no face found) form a bin of their own. Groups or ranges: any indices `exact_accuracy` takes.
    No rows: an empty table (with its columns)."""
    columns = ["condition", "bin", "low", "high", "images", "accuracy", "within_one", "drop"]
    if not len(truth):
        return pd.DataFrame(columns=columns)
    overall = exact_accuracy(predicted, truth)
    rows = []
    for condition in (c for c in conditions if c in table):
        values = table[condition].to_numpy(np.float64)
        measured = ~np.isnan(values)
        binned = np.full(len(values), -1)
        count = min(bins, int(measured.sum()))  # fewer measured images than bins: one bin each
        if count:
            ranks = pd.Series(values[measured]).rank(method="first")
            binned[measured] = pd.qcut(ranks, count, labels=False).to_numpy()
        parts = [(f"{index + 1} of {count}", binned == index) for index in range(count)]
        for name, part in [*parts, (NO_FACE, binned == -1)]:
            if not part.any():
                continue
            accuracy = exact_accuracy(predicted[part], truth[part])
            known = values[part][~np.isnan(values[part])]
            rows.append({
                "condition": condition, "bin": name, "low": float(known.min()) if len(known) else np.nan,
                "high": float(known.max()) if len(known) else np.nan, "images": int(part.sum()),
                "accuracy": accuracy, "within_one": within_one(predicted[part], truth[part]),
                "drop": overall - accuracy,
            })  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def weakest_conditions(by_condition: pd.DataFrame, count: int = 3) -> list[str]:
    """The condition bins where accuracy falls most below the overall figure, as short phrases."""
    worst = by_condition.sort_values("drop", ascending=False).head(count)
    return [
        f"{row.condition} {bin_span(row.low, row.high)}: {row.accuracy:.1%} exact ({row.drop:.1%} below, "
        f"{row.images} images)"
        for row in worst.itertuples()
    ]


def bin_span(low: float, high: float) -> str:
    """A condition bin's span for labels, e.g. "0.12-0.35", or NO_FACE."""
    return NO_FACE if np.isnan(low) else f"{low:.3g}-{high:.3g}"
