"""DVC stage `rebalance`: the training split made even across age groups (and ethnicities).

Reads its settings from the tune stage's resolved training configuration: params.yaml's
`rebalance` section, with the strategy the study chose when it tuned one.
"""

import argparse
import time
from pathlib import Path

import pandas as pd

from agerange.config import ConfigError, fail, read_resolved, setup_logging
from agerange.files import write_csv, write_parquet
from agerange.rebalance import distribution, plot_distributions, rebalance, without_suspected_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--splits", type=Path, required=True, help="the split stage's table")
    parser.add_argument("--config", type=Path, required=True, help="the tune stage's resolved configuration")
    parser.add_argument("--out", type=Path, required=True, help="Parquet table of training rows")
    parser.add_argument("--reports", type=Path, required=True, help="folder for CSV plots and the PNG")
    parser.add_argument("--drop", type=Path, required=True, help="the label check's images to leave out")
    args = parser.parse_args()
    setup_logging()
    started = time.monotonic()
    try:
        settings = read_resolved(args.config).rebalance
    except ConfigError as error:
        fail(str(error))
    splits = pd.read_parquet(args.splits)
    train = splits[splits["split"] == "train"]
    kept = without_suspected_errors(train, pd.read_csv(args.drop))
    balanced = rebalance(kept, settings.strategy, settings.max_per_group, settings.seed)
    write_parquet(balanced, args.out)
    tables = {
        "Age group": distribution(train, balanced, "age_group"),
        "Ethnicity": distribution(train, balanced, "ethnicity"),
    }
    write_csv(tables["Age group"], args.reports / "age_groups.csv")
    write_csv(tables["Ethnicity"], args.reports / "ethnicities.csv")
    plot_distributions(tables, args.reports / "rebalance.png")
    print(
        f"rebalance: {len(train)} training images in, {len(train) - len(kept)} left out as suspected "
        f"label errors, {len(balanced)} rows out "
        f"({settings.strategy}, {balanced['path'].nunique()} distinct images), "
        f"validation and test untouched, in {time.monotonic() - started:.1f} s; "
        f"charts in {args.reports}."
    )


if __name__ == "__main__":
    main()
