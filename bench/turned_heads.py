"""Turned heads: a packaged model's accuracy on labelled new photos with the face anchor that
slides to the box centre as the head turns (`faces.face_anchor`, the default) against the eye
centre for every face (the cut before 2026-12-06), side by side in one run, on the same photos.

The table: FairFace-range exact and within-one accuracy through the whole predict path, for all
photos, the turned ones (largest face's eye spacing below --turned) and the others; with
--splits and --images also the validation split through the predict path (age groups). With
--against another packaged model, photo by photo against it (default anchor): how many answers
--model fixes and breaks, exact and within one, for the same parts (the photos' turned/other
split is --model's), with a two-sided sign test on the changed photos.

    python bench/turned_heads.py [--model data/serving] [--photos data/new_photos]
        [--splits data/splits.parquet --images data/images] [--turned 0.364] [--against OTHER_MODEL]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

import agerange.faces
from agerange.drift import answering_in_fairface_ranges, answers_table, photo_labels, range_answers
from agerange.predict import AgePredictor, predict_path_metrics

# the eye centre anchors every face when no eye spacing reaches the frontal bound
ANCHORS = {"sliding (default)": None, "eye centre (before)": (0.0, -1.0)}


def photo_table(predictor: AgePredictor, folder: Path) -> pd.DataFrame:
    """Each labelled photo's largest face: its answered FairFace range and its eye spacing."""
    labels = photo_labels(folder)
    if labels is None:
        raise SystemExit(f"{folder}: no labels.csv, nothing to measure")
    names = labels["filename"].tolist()
    results = [
        r for _, r in answering_in_fairface_ranges(predictor).stream([folder / n for n in names], names=names)
    ]
    merged, predicted, truth = range_answers(answers_table(results), labels)
    return merged.assign(distance=np.abs(predicted - truth))


def share(distances: pd.Series, within: int) -> str:
    return f"{(distances <= within).mean():.1%}" if len(distances) else "-"


def changes(table: pd.DataFrame, other: pd.DataFrame, turned: float) -> pd.DataFrame:
    """Photo by photo, `table`'s answers against `other`'s (same photos): fixed and broken."""
    from scipy.stats import binomtest

    both = table.merge(other[["photo", "distance"]], on="photo", suffixes=("", "_other"))
    is_turned = both["eye_spacing"] < turned
    rows = []
    for part, rows_in in (("all", both), ("turned", both[is_turned]), ("others", both[~is_turned])):
        for judged, within in (("exact", 0), ("within one", 1)):
            right, right_before = rows_in["distance"] <= within, rows_in["distance_other"] <= within
            fixed, broke = int((right & ~right_before).sum()), int((~right & right_before).sum())
            p_value = binomtest(fixed, fixed + broke).pvalue if fixed + broke else 1.0
            rows.append({"photos": f"{part} ({len(rows_in)})", "judged": judged, "fixed": fixed,
                         "broke": broke, "sign test p": round(p_value, 3)})  # fmt: skip
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("data/serving"))
    parser.add_argument("--photos", type=Path, default=Path("data/new_photos"))
    parser.add_argument("--splits", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument(
        "--turned", type=float, default=0.364, help="eye spacing below which a head counts as turned"
    )
    parser.add_argument("--against", type=Path, help="another packaged model to compare photo by photo")
    args = parser.parse_args()
    defaults = (agerange.faces.FRONTAL_EYE_SPACING, agerange.faces.PROFILE_EYE_SPACING)
    rows = []
    for name, bounds in ANCHORS.items():
        agerange.faces.FRONTAL_EYE_SPACING, agerange.faces.PROFILE_EYE_SPACING = bounds or defaults
        predictor = AgePredictor.from_directory(args.model)
        table = photo_table(predictor, args.photos)
        if bounds is None:
            default_table = table  # the photo-by-photo comparison reads this one
        turned = table["eye_spacing"] < args.turned
        row = {"anchor": name}
        for part, rows_in in (("all", table), ("turned", table[turned]), ("others", table[~turned])):
            row[f"{part} ({len(rows_in)}) exact / within one"] = (
                f"{share(rows_in['distance'], 0)} / {share(rows_in['distance'], 1)}"
            )
        if args.splits and args.images:
            val = pd.read_parquet(args.splits).query("split == 'val'")
            found = predict_path_metrics(
                predictor, [args.images / p for p in val["path"]], val["age_group"].to_numpy()
            )
            row["validation (predict path)"] = f"{found['accuracy']:.2%} / {found['within_one']:.2%}"
        rows.append(row)
    agerange.faces.FRONTAL_EYE_SPACING, agerange.faces.PROFILE_EYE_SPACING = defaults
    print(f"{args.model}: labelled photos of {args.photos}, FairFace ranges, turned below {args.turned}")
    print(pd.DataFrame(rows).to_string(index=False))
    if args.against:
        other_table = photo_table(AgePredictor.from_directory(args.against), args.photos)
        print(f"\n{args.model} against {args.against}, photo by photo (default anchor):")
        print(changes(default_table, other_table, args.turned).to_string(index=False))


if __name__ == "__main__":
    main()
