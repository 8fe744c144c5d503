"""DVC stage `evaluate`: the trained model on the validation and test splits, logged to its MLflow run.

Validation metrics are for choosing models; test metrics are reported, never tuned on.
"""

import argparse
import logging
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402

from agerange import tracking  # noqa: E402
from agerange.config import load_params, setup_logging  # noqa: E402
from agerange.evaluate import evaluate, plot_report, worst_mistakes  # noqa: E402
from agerange.files import write_csv, write_json  # noqa: E402
from agerange.inference import predict_probabilities  # noqa: E402
from agerange.train import load_split  # noqa: E402

log = logging.getLogger("evaluate")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train stage's model folder")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True, help="folder for tables and figures")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics (DVC metrics)")
    args = parser.parse_args()
    setup_logging()
    import keras

    # the served model's decision rule (package params), so these figures are the predict path's
    neighbour_weight = float(load_params("package").get("neighbour_weight", 0.0))
    info = pd.read_json(args.model / "model_info.json", typ="series").to_dict()
    model = keras.models.load_model(args.model / "model.keras", compile=False)
    splits = pd.read_parquet(args.splits)
    results, figures = {}, []
    for side in ("val", "test"):
        rows = splits[splits["split"] == side].reset_index(drop=True)
        data = load_split(rows, args.images, info["image_size"])
        probabilities = predict_probabilities(model, data.chips, flip=info["test_time_flip"])
        metrics, tables = evaluate(rows, probabilities, neighbour_weight)
        results[side] = metrics
        if side == "test":
            for name, table in tables.items():
                write_csv(table, args.reports / f"{name}.csv")
            mistakes = worst_mistakes(rows, probabilities, neighbour_weight=neighbour_weight)
            figures = plot_report(tables, mistakes, args.images, args.reports)
    write_json(results, args.metrics)

    reference = tracking.read_run_reference(args.model / "run.json")
    with tracking.start_run("", "", resume_run_id=reference["run_id"]):
        # eval_val_*, not val_*: the per-epoch val_* series of the training run keep their meaning
        for side, metrics in results.items():
            tracking.log_metrics(metrics, prefix="test_" if side == "test" else "eval_val_")
        tracking.log_artifacts([*sorted(args.reports.glob("*.csv")), *figures], folder="evaluation")
    test = results["test"]
    print(
        f"evaluate: test split {test['n']} images: accuracy {test['accuracy']:.3f}, within one group "
        f"{test['within_one']:.3f}, MAE {test['mae_years']:.1f} years, macro-F1 {test['macro_f1']:.3f}, "
        f"ECE {test['ece']:.3f}, ethnicity gap {test.get('ethnicity_accuracy_gap', 0):.3f} "
        f"(validation accuracy {results['val']['accuracy']:.3f}); report in {args.reports}."
    )


if __name__ == "__main__":
    main()
