"""Split: train / validation / test, stratified by age group x ethnicity, leak-free.

Rows that share a content hash always land on the same side, so no face is trained on
and then tested on. The split happens before any rebalancing.
"""

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def split_table(
    metadata: pd.DataFrame,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> pd.DataFrame:
    """The metadata table with a `split` column ('train', 'val' or 'test').

    Within each age group x ethnicity stratum, distinct content hashes are shuffled with
    `seed` and cut at the requested fractions (largest-remainder rounding, so small strata
    still contribute to validation and test where they can).
    """
    if not 0 < val_fraction + test_fraction < 1:
        raise ValueError(
            f"val_fraction + test_fraction must be in (0, 1), got {val_fraction + test_fraction}"
        )
    rng = np.random.default_rng(seed)
    ethnicity = metadata["ethnicity"].astype("Int64").fillna(-1)
    stratum = metadata["age_group"].astype("int64").astype(str) + "/" + ethnicity.astype(str)
    side_of_hash: dict[str, str] = {}
    # Strata in sorted order and hashes sorted inside each: the result depends on the seed only.
    for _, hashes in metadata.assign(stratum=stratum).groupby("stratum", sort=True)["sha256"]:
        unique = np.array(sorted(set(hashes)))
        rng.shuffle(unique)
        n_test, n_val = _sizes(len(unique), test_fraction, val_fraction)
        for index, sha in enumerate(unique):
            side_of_hash.setdefault(
                sha, "test" if index < n_test else "val" if index < n_test + n_val else "train"
            )
    return metadata.assign(split=metadata["sha256"].map(side_of_hash).astype("string"))


def _sizes(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """Test and validation sizes for a stratum of n items (round half up, train keeps the rest)."""
    n_test = int(np.floor(n * test_fraction + 0.5))
    n_val = int(np.floor(n * val_fraction + 0.5))
    if n_test + n_val >= n:  # a stratum of one or two images: keep at least one for training
        n_val = max(0, min(n_val, n - n_test - 1))
        n_test = max(0, min(n_test, n - 1))
    return n_test, n_val


def split_counts(table: pd.DataFrame) -> dict:
    """Images per split and per age group within it."""
    return {
        side: {
            "images": int((table["split"] == side).sum()),
            "per_group": {
                int(k): int(v)
                for k, v in table.loc[table["split"] == side, "age_group"].value_counts().sort_index().items()
            },
        }
        for side in SPLITS
    }
