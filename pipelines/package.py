"""DVC stage `package`: turn the trained Keras model into the model that predict and serving use.

Exports the classifier to TFLite in float32 (checked against Keras) and as full-integer int8
(calibrated on training photos' face chips), and the same for the distil stage's student when
one is given. Measures every variant through the whole predict path (face detection, alignment,
TFLite classifier) on the validation photos, with and without the mirror-image average, and
serves the fastest whose accuracy the declared rule allows (`serving.choose_variant`,
`package.max_accuracy_loss`). Saves it as the MLflow
pyfunc (photo bytes in, one row per face out), logs it to the training run as
`serving_model/<hash of its files>` (the register stage registers it), and reports the served
variant on validation, test and the labelled new photos, with every variant's validation
figures beside it.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from agerange import tracking
from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import write_json
from agerange.serving import calibration_sample, load_models, package_fastest, predict_path_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train stage's model folder")
    parser.add_argument("--student", type=Path, help="the distil stage's model folder (optional)")
    parser.add_argument("--out", type=Path, required=True, help="output: the pyfunc model folder")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--new-photos", type=Path, help="labelled new photos (labels.csv): range accuracy")
    parser.add_argument("--metrics", type=Path, required=True, help="predict-path metrics JSON")
    args = parser.parse_args()
    setup_logging()
    try:
        settings = load_section("package")
    except ConfigError as error:
        fail(str(error))
    folders = {"model": (args.model, "train")}
    if args.student is not None:
        folders["student"] = (args.student, "distil")
    try:
        models, notes = load_models(folders)
    except ValueError as error:
        fail(str(error))
    for note in notes:
        print(f"package: {note}.")
    reference = tracking.read_run_reference(args.model / "run.json")
    tracking.use_tracking_uri(reference["tracking_uri"])

    splits = pd.read_parquet(args.splits)
    val = splits[splits["split"] == "val"]
    try:
        choice = package_fastest(
            models,
            args.out,
            settings,
            [args.images / path for path in val["path"]],
            val["age_group"].to_numpy(np.int64),
            calibration_sample(splits, args.images, settings.calibration_photos),
            args.new_photos,
        )
    except ValueError as error:
        fail(str(error))
    model_uri = tracking.log_serving_model(args.out, reference["run_id"])
    tracking.write_run_reference(args.out / "run.json", reference["run_id"], model_uri)

    results = predict_path_report(args.out, splits, args.images, args.new_photos)
    write_json({**results, "variant": choice}, args.metrics)
    with tracking.start_run("", "", resume_run_id=reference["run_id"]):
        for side, metrics in results.items():
            tracking.log_metrics(metrics, prefix=f"predict_path_{side}_")
        for name, metrics in choice["val"].items():
            tracking.log_metrics(metrics, prefix=f"variant_{name.replace(' ', '_')}_val_")
        tracking.set_tags({"served_variant": choice["chosen"]})
    test = results["test"]
    figures = "; ".join(
        f"{name} {m['accuracy']:.3f} / {m['within_one']:.3f}" for name, m in choice["val"].items()
    )
    print(
        f"package: {args.out} serves the {choice['chosen']} variant (validation accuracy / within one: "
        f"{figures}), logged as {model_uri}; through the predict path the test split gets accuracy "
        f"{test['accuracy']:.3f}, within one {test['within_one']:.3f}, a face found in "
        f"{test['faces_found']:.1%} of the chips."
    )


if __name__ == "__main__":
    main()
