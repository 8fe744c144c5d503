"""DVC stage `drift`: do new photos still look like the training data, to the champion model?

Describes the new photos, a sample of training chips (the reference) and a held-back sample of
test chips (the control) through the champion's own predict path, then writes two Evidently
reports: new photos vs reference, and control vs reference (which should show no drift: it
checks the tests themselves). Where the new photos carry FairFace labels, accuracy at FairFace's
age-range level is added. Everything is logged to MLflow against the champion version.
Exits with status 2 when `--fail-on-drift` is given and the new photos drifted.
"""

import argparse
from pathlib import Path

import pandas as pd

from agerange import registry, tracking
from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.drift import describe_sets, drift_summary, summary_line
from agerange.files import write_json
from agerange.predict import find_photos, load_predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=Path, required=True, help="the new-photos folder")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    tracking.add_store_argument(parser)
    parser.add_argument("--reports", type=Path, required=True, help="folder for the HTML reports and tables")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary")
    parser.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 2 if the photos drifted"
    )
    args = parser.parse_args()
    setup_logging()
    try:
        settings = load_section("drift")
    except ConfigError as error:
        fail(str(error))
    photos, problems = find_photos([args.photos])
    if problems:
        fail(problems[0])
    try:
        predictor = load_predictor(settings.model, store=args.store)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    tables = describe_sets(
        predictor, photos, pd.read_parquet(args.splits), args.images, settings, args.photos
    )
    summary = drift_summary(tables, args.photos, args.reports, settings)
    write_json(summary, args.summary)
    files = [args.summary, *sorted(args.reports.glob("*.html")), *sorted(args.reports.glob("*.csv"))]
    run_id = registry.record_drift(args.store, settings.model, str(args.photos), summary, files)
    print(f"drift: {summary_line(summary)}. Reports in {args.reports}, MLflow run {run_id}.")
    if args.fail_on_drift and summary["new_photos"]["drift"]:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
