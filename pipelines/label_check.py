"""DVC stage `label_check`: suspected wrong ages in the training split, with their pictures.

Writes the report (every suspect, most doubtful first), a contact sheet of the worst, and the
list the rebalance stage leaves out of training (empty unless `label_check.drop`); logs the
report to MLflow as a run of its own. Validation and test are never checked or filtered.
"""

import argparse
import dataclasses
import time
from pathlib import Path

import pandas as pd

from agerange import tracking
from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import write_csv
from agerange.label_noise import (
    contact_sheet,
    out_of_fold_probabilities,
    pooled_features,
    suspected_label_errors,
)
from agerange.preprocess import load_chips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True, help="the split stage's table")
    parser.add_argument("--images", type=Path, required=True, help="the ingest stage's image folder")
    parser.add_argument("--report", type=Path, required=True, help="CSV of every suspect")
    parser.add_argument("--sheet", type=Path, required=True, help="PNG of the most doubtful images")
    parser.add_argument("--drop", type=Path, required=True, help="CSV of the images training leaves out")
    tracking.add_store_argument(parser)
    args = parser.parse_args()
    setup_logging()
    started = time.monotonic()
    try:
        settings, train = load_section("label_check"), load_section("train")
    except ConfigError as error:
        fail(str(error))
    splits = pd.read_parquet(args.splits)
    rows = splits[splits["split"] == "train"].reset_index(drop=True)
    chips = load_chips([args.images / path for path in rows["path"]], settings.image_size)
    features = pooled_features(chips, settings.backbone, Path(train.weights_dir), train.weights_sha256)
    probabilities = out_of_fold_probabilities(
        features, rows["age_group"].to_numpy(), settings.folds, settings.seed
    )
    issues = suspected_label_errors(rows, probabilities, settings.min_group_distance)
    write_csv(issues, args.report)
    contact_sheet(issues, args.images, args.sheet)
    write_csv(issues[["path"]] if settings.drop else issues[["path"]].head(0), args.drop)
    with tracking.start_run(tracking.use_store(args.store), "label_check"):
        tracking.log_params(dataclasses.asdict(settings), prefix="label_check")
        tracking.log_metrics({"suspected_label_errors": len(issues), "training_images": len(rows)})
        tracking.log_artifacts([args.report, args.sheet], folder="label_check")
    fate = "left out of training" if settings.drop else "kept (label_check.drop: false)"
    print(
        f"label_check: {len(rows)} training images checked, {len(issues)} suspected label errors "
        f"({len(issues) / max(len(rows), 1):.1%}; at least {settings.min_group_distance} groups from the "
        f"out-of-fold suggestion), {fate}; "
        f"report {args.report}, pictures {args.sheet}, in {time.monotonic() - started:.0f} s."
    )


if __name__ == "__main__":
    main()
