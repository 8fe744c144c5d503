import numpy as np
import pandas as pd
import pytest

from agerange.rebalance import STRATEGIES, _water_fill, distribution, rebalance
from agerange.split import split_table


def _table(n_per_stratum: int = 40, duplicates: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for group in range(10):
        for ethnicity in range(5):
            count = n_per_stratum * (3 if group == 6 else 1) * (2 if ethnicity == 0 else 1)
            for i in range(count):
                rows.append(
                    {
                        "path": f"{group}_{ethnicity}_{i}.jpg",
                        "sha256": f"{group}-{ethnicity}-{i}",
                        "age_group": group,
                        "ethnicity": ethnicity,
                    }
                )
    table = pd.DataFrame(rows)
    if duplicates:
        # Same content under two labels' strata: must still land on one side.
        picks = rng.choice(len(table), size=duplicates, replace=False)
        table.loc[picks, "sha256"] = table.loc[(picks + 1) % len(table), "sha256"].to_numpy()
    return table


def test_split_sizes_follow_the_fractions_in_every_stratum():
    table = split_table(_table(), val_fraction=0.15, test_fraction=0.15, seed=1)
    assert set(table["split"]) == {"train", "val", "test"}
    for _, stratum in table.groupby(["age_group", "ethnicity"]):
        share = stratum["split"].value_counts(normalize=True)
        assert share["test"] == pytest.approx(0.15, abs=0.03)
        assert share["val"] == pytest.approx(0.15, abs=0.03)


def test_a_content_hash_never_lands_on_two_sides():
    table = split_table(_table(duplicates=60), val_fraction=0.2, test_fraction=0.2, seed=3)
    assert (table.groupby("sha256")["split"].nunique() == 1).all()


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    a = split_table(_table(), 0.15, 0.15, seed=5)["split"]
    b = split_table(_table(), 0.15, 0.15, seed=5)["split"]
    c = split_table(_table(), 0.15, 0.15, seed=6)["split"]
    assert a.equals(b) and not a.equals(c)


def test_tiny_strata_keep_a_training_image():
    table = pd.DataFrame(
        [{"path": "a", "sha256": "a", "age_group": 3, "ethnicity": 4}]
        + [{"path": f"b{i}", "sha256": f"b{i}", "age_group": 3, "ethnicity": 2} for i in range(2)]
    )
    table = split_table(table, 0.15, 0.15, seed=0)
    assert (table.loc[table["ethnicity"] == 4, "split"] == "train").all()
    assert (table.loc[table["ethnicity"] == 2, "split"] == "train").any()


def test_bad_fractions_are_rejected():
    with pytest.raises(ValueError, match="val_fraction"):
        split_table(_table(), 0.6, 0.5, seed=0)


def test_undersample_caps_each_group_and_evens_ethnicities():
    train = _table(n_per_stratum=40)
    balanced = rebalance(train, "undersample", max_per_group=150, seed=0)
    assert (balanced["age_group"].value_counts() == 150).all()
    per_ethnicity = balanced[balanced["age_group"] == 6]["ethnicity"].value_counts()
    assert per_ethnicity.max() - per_ethnicity.min() <= 1  # 150 spread evenly over 5
    assert balanced["path"].is_unique and set(balanced["path"]) <= set(train["path"])


def test_undersample_without_cap_uses_the_smallest_group():
    train = _table(n_per_stratum=10)
    balanced = rebalance(train, "undersample", max_per_group=None, seed=0)
    assert set(balanced["age_group"].value_counts()) == {train["age_group"].value_counts().min()}


def test_water_fill_keeps_small_buckets_whole():
    assert _water_fill({"a": 5, "b": 100, "c": 100}, 105) == {"a": 5, "b": 50, "c": 50}
    assert sum(_water_fill({"a": 3, "b": 4, "c": 90}, 50).values()) == 50


def test_oversample_reaches_the_largest_group():
    train = _table(n_per_stratum=10)
    balanced = rebalance(train, "oversample", max_per_group=None, seed=0)
    assert set(balanced["age_group"].value_counts()) == {train["age_group"].value_counts().max()}


def test_class_weight_keeps_rows_and_equalises_group_mass():
    train = _table(n_per_stratum=10)
    weighted = rebalance(train, "class_weight", max_per_group=None, seed=0)
    assert len(weighted) == len(train)
    mass = weighted.groupby("age_group")["weight"].sum()
    assert np.allclose(mass, mass.iloc[0])
    after = distribution(train, weighted, "age_group")["after"]
    assert np.allclose(after, after.iloc[0], atol=0.1)


def test_none_changes_nothing_and_unknown_strategy_lists_the_valid_ones():
    train = _table(n_per_stratum=5)
    assert len(rebalance(train, "none", None, seed=0)) == len(train)
    with pytest.raises(ValueError) as error:
        rebalance(train, "smote", None, seed=0)
    assert all(name in str(error.value) for name in STRATEGIES)
