"""DVC stage `headline`: the dozen figures `dvc metrics show` and `dvc metrics diff` print.

Every stage keeps its full report (per-group counts, every drift test's p-value, both splits'
scores); this file picks the figures a reader compares between two commits: how right the model
is on the test split, through the predict path and on the week's new photos, how fair it is,
whether the photos drifted, which version is the champion, and how many images it learnt from.
(The validate stage's pass / fail counts are the other metrics file: they exist before a model.)
"""

import argparse
import json
from pathlib import Path

from agerange.config import fail, setup_logging
from agerange.files import write_json
from agerange.headline import REPORTS, headline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name in REPORTS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=Path, required=True, help=f"{name} JSON")
    parser.add_argument("--out", type=Path, required=True, help="JSON headline figures (DVC metrics)")
    args = parser.parse_args()
    setup_logging()
    try:
        reports = {name: json.loads(getattr(args, name).read_text()) for name in REPORTS}
    except (OSError, json.JSONDecodeError) as error:
        fail(f"cannot read a report ({error})")
    figures = headline(reports)
    write_json(figures, args.out)
    accuracy, champion = figures.get("test_accuracy", float("nan")), figures.get("champion_version")
    print(
        f"headline: {len(figures)} figures in {args.out} (see `dvc metrics show`): "
        f"test accuracy {accuracy:.3f}, champion version {champion}."
    )


if __name__ == "__main__":
    main()
