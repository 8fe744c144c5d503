"""DVC stage `drift`: do new photos still look like the training data, to the champion model?

Describes the new photos, a sample of training chips (the reference) and a held-back sample of
test chips (the control) through the champion's own predict path, then writes two Evidently
reports: new photos vs reference, and control vs reference (which should show no drift: it
checks the tests themselves). Where the new photos carry FairFace labels, accuracy at FairFace's
age-range level is added. Everything is logged to MLflow against the champion version.
Exits with status 2 when `--fail-on-drift` is given and the new photos drifted.
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402

from agerange import tracking  # noqa: E402
from agerange.config import fail, load_params, setup_logging  # noqa: E402
from agerange.drift import describe_photos, drift_report, range_accuracy  # noqa: E402
from agerange.files import write_json  # noqa: E402
from agerange.predict import find_photos, load_predictor  # noqa: E402


def sample_chips(splits: pd.DataFrame, split: str, size: int, seed: int) -> pd.DataFrame:
    rows = splits[splits["split"] == split]
    return rows.sample(min(size, len(rows)), random_state=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--photos", type=Path, required=True, help="the new-photos folder")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--store", type=Path, required=True, help="MLflow tracking store folder")
    parser.add_argument("--reports", type=Path, required=True, help="folder for the HTML reports and tables")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary (DVC metrics)")
    parser.add_argument(
        "--fail-on-drift", action="store_true", help="exit with status 2 if the photos drifted"
    )
    args = parser.parse_args()
    setup_logging()
    params = load_params("drift")
    photos, problems = find_photos([args.photos])
    if problems:
        fail(problems[0])
    try:
        predictor = load_predictor(params["model"], store=args.store)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    splits = pd.read_parquet(args.splits)
    tables = {}
    for name, rows in (
        ("reference", sample_chips(splits, "train", params["reference_size"], params["seed"])),
        ("control", sample_chips(splits, "test", params["control_size"], params["seed"])),
    ):
        tables[name] = describe_photos(predictor, [args.images / p for p in rows["path"]], list(rows["path"]))
    tables["new_photos"] = describe_photos(predictor, photos, [p.name for p in photos])
    args.reports.mkdir(parents=True, exist_ok=True)
    summary = {"model": params["model"], "photos": str(args.photos), "counts": {}}
    for name in ("new_photos", "control"):
        summary[name] = drift_report(
            tables["reference"],
            tables[name],
            html=args.reports / f"{name}_vs_training.html",
            alpha=params["alpha"],
            embedding_auc=params["embedding_auc"],
        )
    for name, table in tables.items():
        summary["counts"][name] = {"photos": len(table), "with_face": int((table["face_count"] > 0).sum())}
        table.drop(columns=[c for c in table.columns if c.startswith("emb_")]).to_csv(
            args.reports / f"{name}_features.csv", index=False
        )
    labels_file = args.photos / "labels.csv"
    if labels_file.is_file():
        summary["accuracy"] = range_accuracy(tables["new_photos"], pd.read_csv(labels_file))
    write_json(summary, args.summary)
    run_id = tracking.log_drift(
        params["model"],
        str(args.photos),
        summary,
        [args.summary, *sorted(args.reports.glob("*.html")), *sorted(args.reports.glob("*.csv"))],
    )
    new, control = summary["new_photos"], summary["control"]
    print(
        f"drift: new photos drifted on {', '.join(new['drifted']) or 'nothing'}; "
        f"held-back UTKFace control drifted on {', '.join(control['drifted']) or 'nothing'}"
        + (
            f"; FairFace range accuracy {summary['accuracy']['range_accuracy']:.3f} "
            f"(within one range {summary['accuracy']['range_within_one']:.3f})"
            if summary.get("accuracy")
            else ""
        )
        + f". Reports in {args.reports}, MLflow run {run_id}."
    )
    if args.fail_on_drift and new["drift"]:
        raise SystemExit(2)


if __name__ == "__main__":
    main()
