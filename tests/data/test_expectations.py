"""The Great Expectations suite: passes on the real mini data, fails on broken tables."""

import pandas as pd
import pytest

from agerange.validate import CRITICAL, WARNING, check_metadata, summarize

SETTINGS = dict(
    min_age=1, max_age=116, image_size=200, min_per_group=50,
    min_brightness=0.08, max_brightness=0.92, min_blur=30.0, mostly=0.95,
)  # fmt: skip


def _failed(table: pd.DataFrame, **overrides) -> dict[tuple[str, str | None], str]:
    outcomes = check_metadata(table, **{**SETTINGS, **overrides})
    return {(o.expectation, o.column): o.severity for o in outcomes if not o.success}


def test_suite_passes_on_the_mini_set(mini_ingested, tmp_path):
    _, metadata, _ = mini_ingested
    outcomes = check_metadata(metadata, **SETTINGS, docs_dir=tmp_path / "docs")
    summary = summarize(outcomes)
    assert summary["success"] and summary["critical_failures"] == 0, summary["failed"]
    assert summary["expectations"] >= 20
    assert (tmp_path / "docs" / "index.html").is_file()


def test_out_of_range_age_and_duplicate_hash_are_critical(mini_ingested):
    _, metadata, _ = mini_ingested
    broken = metadata.copy()
    broken.loc[0, "age"] = 200
    broken.loc[1, "sha256"] = broken.loc[2, "sha256"]
    failed = _failed(broken)
    assert failed[("expect_column_values_to_be_between", "age")] == CRITICAL
    assert failed[("expect_column_values_to_be_unique", "sha256")] == CRITICAL


def test_missing_group_wrong_size_and_schema_are_critical(mini_ingested):
    _, metadata, _ = mini_ingested
    broken = metadata[metadata["age_group"] != 3].copy()
    broken.loc[broken.index[0], "width"] = 199
    broken = broken.assign(extra=1)
    failed = _failed(broken)
    assert failed[("expect_column_distinct_values_to_equal_set", "age_group")] == CRITICAL
    assert ("expect_column_values_to_be_between", "images") not in failed  # every present group is big
    assert failed[("expect_column_values_to_be_between", "width")] == CRITICAL
    assert failed[("expect_table_columns_to_match_set", None)] == CRITICAL


def test_a_group_below_the_minimum_count_is_critical(mini_ingested):
    _, metadata, _ = mini_ingested
    small = pd.concat([metadata[metadata["age_group"] != 3], metadata[metadata["age_group"] == 3][:10]])
    failed = _failed(small)
    assert failed == {("expect_column_values_to_be_between", "images"): CRITICAL}


def test_too_many_blurry_images_only_warn(mini_ingested):
    _, metadata, _ = mini_ingested
    blurry = metadata.assign(blur=metadata["blur"].where(metadata.index % 5 != 0, 1.0))
    failed = _failed(blurry)
    assert failed == {("expect_column_values_to_be_between", "blur"): WARNING}
    assert summarize(check_metadata(blurry, **SETTINGS))["success"]


def test_a_few_blurry_images_are_tolerated(mini_ingested):
    _, metadata, _ = mini_ingested
    few = metadata.assign(blur=metadata["blur"].where(metadata.index % 50 != 0, 1.0))
    assert ("expect_column_values_to_be_between", "blur") not in _failed(few)


@pytest.mark.parametrize("column", ["gender", "ethnicity"])
def test_unknown_label_codes_are_critical(mini_ingested, column):
    _, metadata, _ = mini_ingested
    broken = metadata.copy()
    broken[column] = broken[column].astype("Int8")
    broken.loc[0, column] = 9
    assert _failed(broken)[("expect_column_values_to_be_in_set", column)] == CRITICAL
