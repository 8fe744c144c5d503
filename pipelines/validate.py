"""DVC stage `validate`: Great Expectations checks on the metadata table; stops on a critical failure."""

import argparse
import logging
from pathlib import Path

import pandas as pd

from agerange.config import fail, load_params, setup_logging
from agerange.files import write_json
from agerange.validate import check_metadata, describe_failure, summarize

log = logging.getLogger("validate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--docs", type=Path, required=True, help="folder for the Data Docs (HTML)")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary (a DVC metrics file)")
    args = parser.parse_args()
    setup_logging()
    params = load_params("validate")
    ingest = load_params("ingest")  # the age bounds are stated once, where ingest applies them
    metadata = pd.read_parquet(args.metadata)
    outcomes = check_metadata(
        metadata, min_age=ingest["min_age"], max_age=ingest["max_age"], docs_dir=args.docs, **params
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
