"""What training reads: decoded splits, their soft targets, and tf.data pipelines over them."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agerange.labels import AGE_BINS, GROUP_NAMES, age_bin_distribution, age_distribution
from agerange.preprocess import load_chips


@dataclass
class SplitData:
    """Decoded chips and labels of one split."""

    chips: np.ndarray  # uint8 (N, S, S, 3)
    groups: np.ndarray  # int (N,)
    weights: np.ndarray  # float (N,), loss weight per row
    table: pd.DataFrame = field(repr=False)


@dataclass
class TrainData:
    """The splits one training reads: train, validation (model choice) and an optional probe set
    predicted after every epoch (a fixed sample of test images, for the curves only)."""

    train: SplitData
    val: SplitData
    probe: SplitData | None = None


def load_split(table: pd.DataFrame, images_dir: Path, image_size: int, workers: int = 0) -> SplitData:
    """Decode the chips of a table's rows (each distinct file once) with their labels."""
    paths = table["path"].tolist()
    distinct = sorted(set(paths))
    chips = load_chips([images_dir / path for path in distinct], image_size, workers)
    position = {path: index for index, path in enumerate(distinct)}
    order = np.fromiter((position[path] for path in paths), dtype=np.int64, count=len(paths))
    weights = table["weight"].to_numpy(np.float32) if "weight" in table else np.ones(len(table), np.float32)
    return SplitData(
        chips[order], table["age_group"].to_numpy(np.int64), weights, table.reset_index(drop=True)
    )


def stage_data(
    splits: pd.DataFrame, train_rows: pd.DataFrame, images_dir: Path, image_size: int, seed: int
) -> TrainData:
    """What a training stage reads: its training rows, the validation split, and the probe rows of
    the test split (`probe_rows` with `seed`), decoded at `image_size`."""
    rows = {"train": train_rows, "val": splits[splits["split"] == "val"],
            "probe": probe_rows(splits[splits["split"] == "test"], seed=seed)}  # fmt: skip
    return TrainData(**{name: load_split(table, images_dir, image_size) for name, table in rows.items()})


def probe_rows(table: pd.DataFrame, size: int = 100, seed: int = 0) -> pd.DataFrame:
    """A fixed sample of rows, the same for every run with the same data and seed."""
    return table.sort_values("path").sample(n=min(size, len(table)), random_state=seed)


def soft_labels(groups: np.ndarray, neighbour_smoothing: float) -> np.ndarray:
    """Targets that move `neighbour_smoothing` of the mass to the adjacent age groups.

    Age groups are ordered: calling a 30-year-old 'Young Adult' is a smaller error than
    'Senior'. Unlike uniform label smoothing, this teaches the model that ordering.
    """
    n = len(GROUP_NAMES)
    kernel = np.zeros((n, n), dtype=np.float32)
    for group in range(n):
        neighbours = [g for g in (group - 1, group + 1) if 0 <= g < n]
        kernel[group, group] = 1.0 - neighbour_smoothing
        for neighbour in neighbours:
            kernel[group, neighbour] = neighbour_smoothing / len(neighbours)
    return kernel[groups]


def training_targets(
    split: SplitData, neighbour_smoothing: float, age_sigma: float, head: str = "groups"
) -> np.ndarray:
    """Soft targets of a split's rows: for the `ages` head a distribution over years around each
    face's age (`labels.age_bin_distribution`); for the group head, from each face's own age when
    `age_sigma` > 0 (`labels.age_distribution`), otherwise its group with `neighbour_smoothing`."""
    if head == "ages":
        return age_bin_distribution(split.table["age"].to_numpy(np.float64), age_sigma)
    if age_sigma > 0:
        return age_distribution(split.table["age"].to_numpy(np.float64), age_sigma)
    return soft_labels(split.groups, neighbour_smoothing)


def validation_targets(split: SplitData, head: str) -> np.ndarray | None:
    """Hard targets of validation rows, which validation accuracy and the soup's choice read:
    None (one-hot groups, `make_dataset`'s default) for the group head, one-hot years of age for
    the `ages` head (summed into groups, each is its face's own group)."""
    if head != "ages":
        return None
    years = np.minimum(split.table["age"].to_numpy(np.int64), AGE_BINS - 1)
    return np.eye(AGE_BINS, dtype=np.float32)[years]


def make_dataset(variants, groups, weights, batch_size, shuffle, seed, targets=None):
    """tf.data pipeline over in-memory arrays: shuffle, pick a variant per row, batch, prefetch.

    `variants` is one array, or a list of same-shaped arrays holding versions of each row (the
    chip's features, its mirror's, its re-cut's...): each epoch shows every row once, as one of
    its versions picked at random. `targets` are soft labels per row (default: one-hot groups).
    """
    import tensorflow as tf

    variants = variants if isinstance(variants, list) else [variants]
    targets = soft_labels(groups, 0.0) if targets is None else targets
    data = tf.data.Dataset.from_tensor_slices((tuple(variants), targets, weights))
    if shuffle:
        data = data.shuffle(len(groups), seed=seed, reshuffle_each_iteration=True)
    rng = tf.random.Generator.from_seed(seed)

    def pick(versions, labels, row_weights):
        if len(versions) == 1:
            return versions[0], labels, row_weights
        choice = rng.uniform((), minval=0, maxval=len(versions), dtype=tf.int32)
        return tf.stack(versions)[choice], labels, row_weights

    # one element at a time: parallel calls would draw from `rng` in a racy order, and the same
    # seed would pick different versions from one run to the next (training not reproducible)
    return without_autotuning(data.map(pick).batch(batch_size).prefetch(tf.data.AUTOTUNE))


def array_batches(array: np.ndarray, batch_size: int):
    """An in-memory array as a tf.data pipeline of batches in order, without autotuning: what
    Keras's `predict` makes of an array (the same batches, so the same outputs), minus the idle
    wait `without_autotuning` removes."""
    import tensorflow as tf

    return without_autotuning(tf.data.Dataset.from_tensor_slices(array).batch(batch_size))


def without_autotuning(data):
    """`data` with tf.data's autotuning off. With it on (TensorFlow 2.21 on this 2-core CPU), each
    time Keras let go of an iterator, as it does at every epoch's start and at the end of every
    `evaluate` and `predict`, both cores often stood idle for up to 30 s: a third of a fine-tuning
    epoch (`bench/idle_between_epochs.py`). What it tunes matters little here: the arrays are in
    memory and `pick` runs one element at a time."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return data.with_options(options)
