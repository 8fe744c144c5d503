"""From model outputs to answers: the one place probabilities become age groups and ages.

Training (probe, validation), evaluation, predict, serving, drift and tests all call these.
"""

import numpy as np

from agerange.labels import GROUP_NAMES, group_midpoints

MIDPOINTS = np.asarray(group_midpoints(), dtype=np.float32)


def decide_groups(probabilities: np.ndarray, neighbour_weight: float = 0.0) -> np.ndarray:
    """The age group to answer, per row: the argmax of p(g) + neighbour_weight * (p(g-1) + p(g+1)).

    0 answers the most likely group (best for exact accuracy). 0.5 answers the group with the
    highest expected (exact + within-one) / 2: p(g) + (p(g-1) + p(g) + p(g+1)), halved, is
    p(g) + 0.5 * (p(g-1) + p(g+1)). 1 maximises within-one alone.
    """
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if not neighbour_weight:
        return probabilities.argmax(axis=1)
    padded = np.pad(probabilities, ((0, 0), (1, 1)))
    scores = probabilities + neighbour_weight * (padded[:, :-2] + padded[:, 2:])
    return scores.argmax(axis=1)


def decode_probabilities(
    probabilities: np.ndarray, neighbour_weight: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Age-group index (`decide_groups`) and expected age in years, per row of probabilities."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    return decide_groups(probabilities, neighbour_weight), probabilities @ MIDPOINTS


def group_name(index: int) -> str:
    """Display name of an age group, with its range, e.g. 'Adult (25-34)'."""
    from agerange.labels import AGE_GROUPS

    name, lowest, highest = AGE_GROUPS[index]
    return f"{name} ({lowest}-{highest})" if highest is not None else f"{name} ({lowest}+)"


def predict_probabilities(forward, chips: np.ndarray, batch_size: int = 128, flip: bool = True) -> np.ndarray:
    """Group probabilities for uint8 chips (N, S, S, 3), averaged with the mirrored chip when `flip`.

    Args:
        forward: a callable from a float32 batch to probabilities (a Keras model, a compiled
            function or an ONNX session wrapper).
        chips: face chips as produced by `preprocess.chip_pixels`.
        batch_size: chips per forward call.
        flip: test-time augmentation with the horizontal mirror (faces are near-symmetric).
    """
    outputs = []
    for start in range(0, len(chips), batch_size):
        batch = chips[start : start + batch_size].astype(np.float32)
        probabilities = np.asarray(forward(batch), dtype=np.float32)
        if flip:
            probabilities = (probabilities + np.asarray(forward(batch[:, :, ::-1]), dtype=np.float32)) / 2
        outputs.append(probabilities)
    return np.concatenate(outputs) if outputs else np.zeros((0, len(GROUP_NAMES)), dtype=np.float32)
