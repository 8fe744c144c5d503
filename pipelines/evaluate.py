"""DVC stage `evaluate`: the trained model on the validation and test splits, logged to its MLflow run.

Validation metrics are for choosing models; test metrics are reported, never tuned on.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from agerange import tracking
from agerange.config import PackageConfig, load_section, setup_logging
from agerange.evaluate import (
    LOWEST_DETECTOR_SCORE,
    detector_conditions,
    evaluate,
    plot_report,
    summary_line,
    worst_mistakes,
)
from agerange.faces import FaceDetector
from agerange.files import write_csv, write_json
from agerange.inference import predict_probabilities
from agerange.metrics import weakest_conditions
from agerange.training.data import load_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train stage's model folder")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True, help="folder for tables and figures")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics")
    args = parser.parse_args()
    setup_logging()
    # params.yaml's mirror setting and decision rule (the package stage may serve the model
    # without the mirror; predict_path.json has the served variant's own figures)
    package = load_section("package")
    splits = pd.read_parquet(args.splits)
    val, test = _predict(args.model, splits, args.images, package)
    detector = FaceDetector(package.detector, min_score=LOWEST_DETECTOR_SCORE)
    val, test = (_measure_faces(*predicted, args.images, detector) for predicted in (val, test))
    val_metrics, val_tables = evaluate(*val, package.neighbour_weight)
    test_metrics, tables = evaluate(*test, package.neighbour_weight)
    results = {"val": val_metrics, "test": test_metrics}
    for name, table in tables.items():
        write_csv(table, args.reports / f"{name}.csv")
    write_csv(val_tables["accuracy_by_condition"], args.reports / "accuracy_by_condition_val.csv")
    mistakes = worst_mistakes(*test, neighbour_weight=package.neighbour_weight)
    figures = plot_report(tables, mistakes, args.images, args.reports)
    write_json(results, args.metrics)
    _log_to_training_run(args.model / "run.json", results, [*sorted(args.reports.glob("*.csv")), *figures])
    print(summary_line(results, args.reports))
    print(
        "evaluate: accuracy falls most for " + "; ".join(weakest_conditions(tables["accuracy_by_condition"]))
    )


Predicted = tuple[pd.DataFrame, np.ndarray]  # a split's rows and their group probabilities


def _predict(
    model_dir: Path, splits: pd.DataFrame, images: Path, package: PackageConfig
) -> tuple[Predicted, Predicted]:
    """Rows and group probabilities of the validation and the test split."""
    import keras

    info = json.loads((model_dir / "model_info.json").read_text())
    model = keras.models.load_model(model_dir / "model.keras", compile=False)
    predicted = []
    for side in ("val", "test"):
        rows = splits[splits["split"] == side].reset_index(drop=True)
        chips = load_split(rows, images, info["image_size"]).chips
        outputs = predict_probabilities(
            model,
            chips,
            flip=package.flip,
            flip_margin=package.flip_margin,
            neighbour_weight=package.neighbour_weight,
        )
        predicted.append((rows, outputs))
    return predicted[0], predicted[1]


def _measure_faces(rows: pd.DataFrame, probabilities: np.ndarray, images: Path, detector) -> Predicted:
    """The split's rows with the detector's face size, head roll and score beside ingest's
    conditions, measured on the 200 px chips as they are stored."""
    chips = (Image.open(images / path).convert("RGB") for path in rows["path"])
    return pd.concat([rows, detector_conditions(chips, detector)], axis=1), probabilities


def _log_to_training_run(reference: Path, results: dict[str, dict], artifacts: list[Path]) -> None:
    run = tracking.read_run_reference(reference)
    tracking.use_tracking_uri(run["tracking_uri"])
    with tracking.start_run("", "", resume_run_id=run["run_id"]):
        # eval_val_*, not val_*: the per-epoch val_* series of the training run keep their meaning
        for side, metrics in results.items():
            tracking.log_metrics(metrics, prefix="test_" if side == "test" else "eval_val_")
        tracking.log_artifacts(artifacts, folder="evaluation")


if __name__ == "__main__":
    main()
