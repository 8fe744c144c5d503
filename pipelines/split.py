"""DVC stage `split`: metadata -> the same table with a train / val / test column."""

import argparse
import time
from pathlib import Path

import pandas as pd

from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import write_json, write_parquet
from agerange.split import split_counts, split_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metadata", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="Parquet table with a `split` column")
    parser.add_argument("--summary", type=Path, required=True, help="JSON counts (a report)")
    args = parser.parse_args()
    setup_logging()
    started = time.monotonic()
    try:
        settings = load_section("split")
    except ConfigError as error:
        fail(str(error))
    metadata = pd.read_parquet(args.metadata)
    table = split_table(
        metadata, val_fraction=settings.val_fraction, test_fraction=settings.test_fraction, seed=settings.seed
    )
    write_parquet(table, args.out)
    counts = split_counts(table)
    write_json(counts, args.summary)
    sizes = ", ".join(f"{side} {counts[side]['images']}" for side in counts)
    print(
        f"split: {len(metadata)} images in, {sizes} out (stratified by age group x ethnicity, "
        f"no content hash on two sides), 0 dropped, in {time.monotonic() - started:.1f} s."
    )


if __name__ == "__main__":
    main()
