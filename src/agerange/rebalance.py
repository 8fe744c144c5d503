"""Rebalance the training split: age groups (and ethnicities inside them) made more even.

Only the training split is rebalanced; validation and test keep the real distribution.
"""

from pathlib import Path

import numpy as np
import pandas as pd

from agerange.labels import ETHNICITIES, GROUP_NAMES

STRATEGIES = ("undersample", "oversample", "class_weight", "none")


def without_suspected_errors(train: pd.DataFrame, drop: pd.DataFrame) -> pd.DataFrame:
    """The training rows minus those whose path is in `drop` (the label check's list)."""
    return train[~train["path"].isin(set(drop["path"]))]


def rebalance(train: pd.DataFrame, strategy: str, max_per_group: int | None, seed: int) -> pd.DataFrame:
    """The training rows after rebalancing, with a `weight` column for the loss.

    Args:
        train: training rows (with `age_group` and `ethnicity`).
        strategy: 'undersample' caps each age group at `max_per_group` images (the smallest
            group's size when None), taking ethnicities inside a group as evenly as the data
            allows (the reference study's method); 'oversample' repeats images of small groups
            up to the largest group's size (or `max_per_group`); 'class_weight' keeps every row
            and weights it by the inverse frequency of its age group; 'none' changes nothing.
        max_per_group: the cap or target per age group, None for the default described above.
        seed: random seed for the sampling.
    """
    rng = np.random.default_rng(seed)
    counts = train["age_group"].value_counts()
    if strategy == "undersample":
        cap = int(max_per_group or counts.min())
        parts = [_even_sample(group, cap, rng) for _, group in train.groupby("age_group", sort=True)]
        result = pd.concat(parts).assign(weight=1.0)
    elif strategy == "oversample":
        target = int(max_per_group or counts.max())
        parts = []
        for _, group in train.groupby("age_group", sort=True):
            extra = max(0, target - len(group))
            parts.append(group)
            if extra:
                parts.append(group.iloc[rng.integers(0, len(group), size=extra)])
        result = pd.concat(parts).assign(weight=1.0)
    elif strategy == "class_weight":
        weights = len(train) / (len(counts) * counts)
        result = train.assign(weight=train["age_group"].map(weights).astype(float))
    elif strategy == "none":
        result = train.assign(weight=1.0)
    else:
        raise ValueError(f"unknown rebalance strategy '{strategy}' (valid: {', '.join(STRATEGIES)})")
    return result.sort_values("path", kind="stable").reset_index(drop=True)


def _even_sample(group: pd.DataFrame, cap: int, rng: np.random.Generator) -> pd.DataFrame:
    """At most `cap` rows, ethnicities as even as possible (water-filling: small ones kept whole)."""
    if len(group) <= cap:
        return group
    by_ethnicity = {key: rows for key, rows in group.groupby(group["ethnicity"].fillna(-1), sort=True)}
    quota = _water_fill({key: len(rows) for key, rows in by_ethnicity.items()}, cap)
    return pd.concat(
        rows.iloc[np.sort(rng.choice(len(rows), size=quota[key], replace=False))]
        for key, rows in by_ethnicity.items()
    )


def _water_fill(sizes: dict, total: int) -> dict:
    """Split `total` across buckets as evenly as possible without exceeding any bucket's size."""
    quota = {}
    remaining, left = total, len(sizes)
    for key, size in sorted(sizes.items(), key=lambda item: item[1]):
        share = remaining // left + (1 if remaining % left else 0)
        quota[key] = min(size, share)
        remaining -= quota[key]
        left -= 1
    return quota


def distribution(before: pd.DataFrame, after: pd.DataFrame, column: str) -> pd.DataFrame:
    """Counts per age group or ethnicity before and after (weights count as images for 'after')."""
    names = GROUP_NAMES if column == "age_group" else ETHNICITIES
    keys = before[column].astype("Int64")
    counted_before = keys.value_counts()
    counted_after = after.groupby(after[column].astype("Int64"))["weight"].sum()
    index = range(len(names))
    return pd.DataFrame(
        {
            column: list(index),
            "name": list(names),
            "before": [int(counted_before.get(i, 0)) for i in index],
            "after": [round(float(counted_after.get(i, 0)), 1) for i in index],
        }
    )


def plot_distributions(tables: dict[str, pd.DataFrame], path: Path) -> None:
    """Side-by-side bar charts of counts before and after, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")  # no display here; chosen at call time, not on import
    import matplotlib.pyplot as plt

    from agerange.files import write_png

    figure, axes = plt.subplots(1, len(tables), figsize=(6 * len(tables), 4.5), squeeze=False)
    for axis, (title, table) in zip(axes[0], tables.items(), strict=True):
        positions = np.arange(len(table))
        axis.bar(positions - 0.2, table["before"], width=0.4, label="before")
        axis.bar(positions + 0.2, table["after"], width=0.4, label="after")
        axis.set_xticks(positions, table["name"], rotation=45, ha="right")
        axis.set_title(title)
        axis.set_ylabel("training images (weighted)")
        axis.legend()
    figure.tight_layout()
    write_png(figure, path)
