"""DVC stage `validate`: Great Expectations checks on the metadata table; stops on a critical failure."""

import argparse
import dataclasses
import logging
from pathlib import Path

import pandas as pd

from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import write_json
from agerange.validate import check_metadata, describe_failure, summarize

log = logging.getLogger("validate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--docs", type=Path, required=True, help="folder for the Data Docs (HTML)")
    parser.add_argument("--summary", type=Path, required=True, help="JSON pass / fail counts (DVC metrics)")
    args = parser.parse_args()
    setup_logging()
    try:
        settings = load_section("validate")
        ingest = load_section("ingest")  # the age bounds are stated once, where ingest applies them
    except ConfigError as error:
        fail(str(error))
    metadata = pd.read_parquet(args.metadata)
    outcomes = check_metadata(
        metadata,
        min_age=ingest.min_age,
        max_age=ingest.max_age,
        docs_dir=args.docs,
        **dataclasses.asdict(settings),
    )
    summary = summarize(outcomes)
    write_json(summary, args.summary)
    for outcome in summary["failed"]:
        log.warning(describe_failure(outcome))
    print(
        f"validate: {summary['expectations']} expectations on {len(metadata)} images, "
        f"{summary['passed']} passed, {summary['critical_failures']} critical failures, "
        f"{summary['warnings']} warnings; Data Docs in {args.docs / 'index.html'}."
    )
    if not summary["success"]:
        first = next(o for o in summary["failed"] if o["severity"] == "critical")
        fail(f"{args.metadata}: data quality check failed: {describe_failure(first)}")


if __name__ == "__main__":
    main()
