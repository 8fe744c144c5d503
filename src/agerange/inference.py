"""From model outputs to answers: the one place probabilities become age groups and ages.

A model has one of two heads: the group head outputs the ten age groups' probabilities; the
distribution head outputs a distribution over single years of age (`labels.AGE_BINS`), whose
group, range and interval probabilities are exact sums of its bins. Everything downstream takes
either: training (probe, validation), evaluation, predict, serving, drift and tests call these.
"""

from collections.abc import Callable, Sequence

import numpy as np

from agerange.labels import (
    AGE_BINS,
    AGE_GROUPS,
    BINS_TO_GROUPS,
    GROUP_NAMES,
    MAX_AGE,
    bins_to_ranges,
    group_midpoints,
)

MIDPOINTS = np.asarray(group_midpoints(), dtype=np.float32)
BIN_AGES = np.arange(AGE_BINS, dtype=np.float32)
OLDEST_SENIOR = 81  # a group head's Senior mass is spread over 59-81, whose mean is its midpoint 70
# each group's youngest and oldest year (Senior's reaching the last bin)
GROUP_YEARS = np.array([(lowest, MAX_AGE if last is None else last) for _, lowest, last in AGE_GROUPS])


def is_age_distribution(outputs: np.ndarray) -> bool:
    """Whether model outputs come from the distribution head (one column per year of age)."""
    return np.shape(outputs)[-1] == AGE_BINS


def group_probabilities(outputs: np.ndarray) -> np.ndarray:
    """The ten age groups' probabilities from either head's outputs (N, 10)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    return outputs @ BINS_TO_GROUPS if is_age_distribution(outputs) else outputs


def expected_ages(outputs: np.ndarray) -> np.ndarray:
    """Expected age in years per row: over the years (distribution head) or the group midpoints."""
    outputs = np.asarray(outputs, dtype=np.float32)
    return outputs @ (BIN_AGES if is_age_distribution(outputs) else MIDPOINTS)


def year_probabilities(outputs: np.ndarray) -> np.ndarray:
    """A distribution over single years (N, AGE_BINS) from either head: the distribution head's
    own, or each group's probability spread evenly over its years (an approximation)."""
    outputs = np.asarray(outputs, dtype=np.float32)
    if is_age_distribution(outputs):
        return outputs
    spread = np.zeros((len(GROUP_NAMES), AGE_BINS), dtype=np.float32)
    for index, (_, lowest, highest) in enumerate(AGE_GROUPS):
        last = OLDEST_SENIOR if highest is None else highest
        spread[index, lowest : last + 1] = 1.0 / (last + 1 - lowest)
    return outputs @ spread


def range_probabilities(outputs: np.ndarray, ranges: Sequence[tuple[int, int | None]]) -> np.ndarray:
    """Probabilities of any age-range scheme (e.g. FairFace's 0-2, 3-9, ..., 70+), (N, len(ranges)):
    exact sums for the distribution head, from the even spread for the group head."""
    return year_probabilities(outputs) @ bins_to_ranges(ranges)


def age_quantiles(outputs: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """Quantiles of each row's age distribution, whole years (N, len(quantiles)): for each, the
    youngest age at which the cumulative probability reaches it."""
    cumulative = np.cumsum(year_probabilities(outputs), axis=1)
    wanted = np.asarray(quantiles, dtype=np.float32)
    # a little slack: float32 sums of a full distribution may end just below 1
    found = cumulative[:, :, None] >= wanted[None, None, :] * cumulative[:, -1:, None] - 1e-6
    return np.minimum(found.argmax(axis=1), MAX_AGE)


def age_interval(outputs: np.ndarray, coverage: float = 0.8) -> np.ndarray:
    """The central `coverage` interval of each row's age distribution, whole years (N, 2)."""
    return age_quantiles(outputs, [(1 - coverage) / 2, (1 + coverage) / 2])


def age_in_group(outputs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The age predict answers beside the group, per row: the median of the age distribution (the
    estimate with the smallest expected absolute error), moved to the group's nearest year when
    it lies outside the answered group, so a face answered 'Senior' never gets an age of 40.
    (The median within the group, used before, answered further from the truth: README, New photos.)"""
    median = age_quantiles(outputs, [0.5])[:, 0]
    lowest, highest = GROUP_YEARS[np.asarray(groups, dtype=np.int64)].T
    return np.clip(median, lowest, highest)


def range_name(lowest: int, highest: int | None) -> str:
    """How an age range reads: '20-29', '70+'."""
    return f"{lowest}-{highest}" if highest is not None else f"{lowest}+"


def decide_groups(probabilities: np.ndarray, neighbour_weight: float = 0.0) -> np.ndarray:
    """The age group to answer, per row: the argmax of p(g) + neighbour_weight * (p(g-1) + p(g+1)).

    0 answers the most likely group (best for exact accuracy). 0.5 answers the group with the
    highest expected (exact + within-one) / 2: p(g) + (p(g-1) + p(g) + p(g+1)), halved, is
    p(g) + 0.5 * (p(g-1) + p(g+1)). 1 maximises within-one alone.
    """
    return _decision_scores(probabilities, neighbour_weight).argmax(axis=1)


def _decision_scores(probabilities: np.ndarray, neighbour_weight: float) -> np.ndarray:
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if not neighbour_weight:
        return probabilities
    padded = np.pad(probabilities, ((0, 0), (1, 1)))
    return probabilities + neighbour_weight * (padded[:, :-2] + padded[:, 2:])


def decision_margin(outputs: np.ndarray, neighbour_weight: float = 0.0) -> np.ndarray:
    """How sure the answer is, per row of either head's outputs: the answered age group's
    decision score (`decide_groups`) minus the runner-up's; 0 is a tie."""
    scores = _decision_scores(group_probabilities(outputs), neighbour_weight)
    runner_up, best = np.partition(scores, -2, axis=1)[:, -2:].T
    return best - runner_up


def mirror_average(
    outputs: np.ndarray,
    mirrored_outputs: Callable[[np.ndarray], np.ndarray],
    flip_margin: float | None = None,
    neighbour_weight: float = 0.0,
) -> np.ndarray:
    """`outputs` averaged with those of the mirrored chips (test-time augmentation), for every
    row, or with `flip_margin` only for rows whose `decision_margin` is below it: a face the
    model is sure of keeps its answer without paying for a second pass.

    Args:
        outputs: the chips' outputs (N, K).
        mirrored_outputs: from row indices to the outputs of those chips mirrored.
        flip_margin: None mirrors every row; 0 none.
        neighbour_weight: the decision rule the margin is measured in.
    """
    outputs = np.asarray(outputs, dtype=np.float32)
    if flip_margin is None:
        rows = np.arange(len(outputs))
    else:
        rows = np.flatnonzero(decision_margin(outputs, neighbour_weight) < flip_margin)
    if not len(rows):
        return outputs
    averaged = outputs.copy()
    averaged[rows] = (outputs[rows] + np.asarray(mirrored_outputs(rows), dtype=np.float32)) / 2
    return averaged


def decode_probabilities(
    probabilities: np.ndarray, neighbour_weight: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Age-group index (`decide_groups`) and expected age in years, per row of either head's outputs."""
    return decide_groups(group_probabilities(probabilities), neighbour_weight), expected_ages(probabilities)


def group_name(index: int) -> str:
    """Display name of an age group, with its range, e.g. 'Adult (25-34)'."""
    name, lowest, highest = AGE_GROUPS[index]
    return f"{name} ({range_name(lowest, highest)})"


def predict_probabilities(
    forward,
    chips: np.ndarray,
    batch_size: int = 128,
    flip: bool = True,
    flip_margin: float | None = None,
    neighbour_weight: float = 0.0,
) -> np.ndarray:
    """Model outputs for uint8 chips (N, S, S, 3), averaged with the mirrored chip when `flip`.

    Args:
        forward: a callable from a float32 batch to outputs (group or age probabilities): a
            Keras model, a compiled function or an ONNX session wrapper.
        chips: face chips as produced by `preprocess.chip_pixels`.
        batch_size: chips per forward call.
        flip: test-time augmentation with the horizontal mirror (faces are near-symmetric).
        flip_margin, neighbour_weight: mirror only the chips whose answer is less sure than
            this (`mirror_average`); None mirrors every chip.
    """
    outputs = []
    for start in range(0, len(chips), batch_size):
        batch = chips[start : start + batch_size].astype(np.float32)
        probabilities = np.asarray(forward(batch), dtype=np.float32)
        if flip:
            mirrored = lambda rows, batch=batch: forward(batch[rows, :, ::-1])  # noqa: E731
            probabilities = mirror_average(probabilities, mirrored, flip_margin, neighbour_weight)
        outputs.append(probabilities)
    return np.concatenate(outputs) if outputs else np.zeros((0, len(GROUP_NAMES)), dtype=np.float32)
