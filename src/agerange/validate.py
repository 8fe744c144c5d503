"""Data quality: a Great Expectations (1.x) suite over the ingest metadata table.

Expectations marked `critical` stop the pipeline when they fail; `warning` ones are reported.
The same suite runs in `dvc repro` (validate stage) and in tests/data.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import great_expectations as gx
import pandas as pd
from great_expectations import expectations as expect

from agerange.ingest import METADATA_COLUMNS
from agerange.labels import AGE_GROUPS, ETHNICITIES, GENDERS

log = logging.getLogger(__name__)

CRITICAL = "critical"
WARNING = "warning"


@dataclass(frozen=True)
class Outcome:
    """One expectation's result, reduced to what a person needs to act on it."""

    expectation: str
    column: str | None
    severity: str
    success: bool
    observed: str


def build_suite(
    min_age: int,
    max_age: int,
    image_size: int,
    min_brightness: float,
    max_brightness: float,
    min_blur: float,
    mostly: float,
) -> gx.ExpectationSuite:
    """The expectations a metadata table must meet before anything is trained on it.

    Args:
        min_age: youngest valid age in years.
        max_age: oldest valid age in years.
        image_size: width and height every chip must have, in pixels.
        min_brightness: darkest acceptable mean grey level (0-1), for `mostly` of the images.
        max_brightness: brightest acceptable mean grey level (0-1), likewise.
        min_blur: lowest acceptable variance of the Laplacian, likewise.
        mostly: share of images that must meet the soft (per-image quality) bounds.
    """
    critical = {"severity": CRITICAL}
    soft = {"severity": WARNING}
    # Built with its expectations at once: adding them later needs a live GX context.
    expectations = [
        expect.ExpectTableColumnsToMatchSet(column_set=METADATA_COLUMNS, exact_match=True, **critical),
        expect.ExpectColumnValuesToBeOfType(column="age", type_="int16", **critical),
        expect.ExpectColumnValuesToBeOfType(column="age_group", type_="int8", **critical),
        expect.ExpectColumnValuesToBeOfType(column="blur", type_="float32", **critical),
        expect.ExpectColumnValuesToNotBeNull(column="path", **critical),
        expect.ExpectColumnValuesToNotBeNull(column="sha256", **critical),
        expect.ExpectColumnValuesToBeUnique(column="path", **critical),
        expect.ExpectColumnValuesToBeUnique(column="sha256", **critical),
        expect.ExpectColumnValueLengthsToEqual(column="sha256", value=64, **critical),
        expect.ExpectColumnValuesToBeBetween(column="age", min_value=min_age, max_value=max_age, **critical),
        expect.ExpectColumnValuesToBeInSet(
            column="age_group", value_set=list(range(len(AGE_GROUPS))), **critical
        ),
        expect.ExpectColumnValuesToBeInSet(column="gender", value_set=list(range(len(GENDERS))), **critical),
        expect.ExpectColumnValuesToBeInSet(
            column="ethnicity", value_set=list(range(len(ETHNICITIES))), **critical
        ),
        expect.ExpectColumnValuesToBeInSet(column="source", value_set=["utkface", "imdb_wiki"], **critical),
        expect.ExpectColumnValuesToBeBetween(
            column="width", min_value=image_size, max_value=image_size, **critical
        ),
        expect.ExpectColumnValuesToBeBetween(
            column="height", min_value=image_size, max_value=image_size, **critical
        ),
        expect.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB", "L"], mostly=mostly, **soft),
        expect.ExpectColumnValuesToBeBetween(
            column="brightness", min_value=min_brightness, max_value=max_brightness, mostly=mostly, **soft
        ),
        expect.ExpectColumnValuesToBeBetween(column="blur", min_value=min_blur, mostly=mostly, **soft),
    ]
    return gx.ExpectationSuite(name="metadata", expectations=expectations)


def build_count_suite(min_per_group: int) -> gx.ExpectationSuite:
    """Expectations on the per-age-group counts: every group present, none too small."""
    expectations = [
        expect.ExpectColumnDistinctValuesToEqualSet(
            column="age_group", value_set=list(range(len(AGE_GROUPS))), severity=CRITICAL
        ),
        expect.ExpectColumnValuesToBeBetween(column="images", min_value=min_per_group, severity=CRITICAL),
    ]
    return gx.ExpectationSuite(name="age_group_counts", expectations=expectations)


def age_group_counts(metadata: pd.DataFrame) -> pd.DataFrame:
    """Images per age group present in the table (an absent group has no row, so the set check fails)."""
    counts = metadata["age_group"].value_counts().sort_index()
    return pd.DataFrame({"age_group": counts.index.astype("int64"), "images": counts.to_numpy()})


def run_suites(
    tables: dict[str, tuple[pd.DataFrame, gx.ExpectationSuite]], docs_dir: Path | None
) -> list[Outcome]:
    """Validate each table against its suite, optionally writing Data Docs (HTML) to `docs_dir`."""
    context = gx.get_context(mode="ephemeral")
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="agerange",
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    source = context.data_sources.add_pandas("tables")
    definitions = []
    for name, (_table, suite) in tables.items():
        batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(suite)
        definitions.append(
            context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        )
    outcomes: list[Outcome] = []
    for definition in definitions:
        # One checkpoint per table: a checkpoint passes the same dataframe to all its definitions.
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs")] if docs_dir is not None else []
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"check_{definition.name}", validation_definitions=[definition], actions=actions
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": tables[definition.name][0]})
        for validation in result.run_results.values():
            outcomes.extend(_outcome(item) for item in validation.results)
    return outcomes


def _outcome(result: Any) -> Outcome:
    config = result.expectation_config
    kwargs = config.kwargs
    observed = result.result or {}
    details = {
        key: observed[key]
        for key in ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
        if observed.get(key) not in (None, [])
    }
    return Outcome(
        expectation=config.type,
        column=kwargs.get("column"),
        severity=str(getattr(config.severity, "value", config.severity) or CRITICAL),
        success=bool(result.success),
        observed=str(details)[:300],
    )


def check_metadata(
    metadata: pd.DataFrame,
    min_age: int,
    max_age: int,
    image_size: int,
    min_per_group: int,
    min_brightness: float,
    max_brightness: float,
    min_blur: float,
    mostly: float,
    docs_dir: Path | None = None,
) -> list[Outcome]:
    """Run every expectation on the metadata table (and its per-group counts)."""
    suite = build_suite(min_age, max_age, image_size, min_brightness, max_brightness, min_blur, mostly)
    tables = {
        "metadata": (metadata, suite),
        "age_group_counts": (age_group_counts(metadata), build_count_suite(min_per_group)),
    }
    return run_suites(tables, docs_dir)


def summarize(outcomes: list[Outcome]) -> dict:
    """Pass/fail counts and every failed expectation, for the metrics file and the log."""
    failed = [outcome for outcome in outcomes if not outcome.success]
    critical = [vars(outcome) for outcome in failed if outcome.severity == CRITICAL]
    return {
        "success": not critical,
        "expectations": len(outcomes),
        "passed": len(outcomes) - len(failed),
        "critical_failures": len(critical),
        "warnings": len(failed) - len(critical),
        "failed": [vars(outcome) for outcome in failed],
    }


def describe_failure(outcome: dict) -> str:
    """One line naming a failed expectation and the offending values."""
    column = f" on column '{outcome['column']}'" if outcome["column"] else ""
    return f"{outcome['severity']}: {outcome['expectation']}{column} failed: {outcome['observed']}"
