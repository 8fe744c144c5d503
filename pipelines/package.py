"""DVC stage `package`: turn the trained Keras model into the model that predict and serving use.

Exports the classifier to TFLite (probabilities + embedding outputs), checks it agrees with the
Keras model, saves the MLflow pyfunc (photo bytes in, one row per face out) and logs it to the
training run as `serving_model`, which the register stage registers. Then measures that model
the way users meet it: every validation and test chip through the whole predict path (face
detection, alignment, TFLite classifier), reported in JSON and on the training run.
"""

import argparse
import json
from pathlib import Path

import pandas as pd

from agerange import tracking
from agerange.config import ConfigError, fail, load_section, setup_logging
from agerange.files import write_json
from agerange.serving import package, predict_path_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train stage's model folder")
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
    import keras  # after setup_logging, which quiets TensorFlow's start-up notices

    if not (args.model / "model.keras").is_file():
        fail(f"{args.model}: no model.keras (run `dvc repro train` first)")
    model = keras.models.load_model(args.model / "model.keras", compile=False)
    info = json.loads((args.model / "model_info.json").read_text())
    reference = tracking.read_run_reference(args.model / "run.json")
    tracking.use_tracking_uri(reference["tracking_uri"])
    try:
        gap = package(model, info, args.out, settings)
    except ValueError as error:
        fail(str(error))
    model_uri = tracking.log_serving_model(args.out, reference["run_id"])
    tracking.write_run_reference(args.out / "run.json", reference["run_id"], model_uri)

    results = predict_path_report(args.out, pd.read_parquet(args.splits), args.images, args.new_photos)
    write_json(results, args.metrics)
    with tracking.start_run("", "", resume_run_id=reference["run_id"]):
        for side, metrics in results.items():
            tracking.log_metrics(metrics, prefix=f"predict_path_{side}_")
    test = results["test"]
    print(
        f"package: {args.out} (TFLite classifier agrees with Keras within {gap:.1e}), logged as {model_uri}; "
        f"through the predict path the test split gets accuracy {test['accuracy']:.3f}, within one "
        f"{test['within_one']:.3f}, a face found in {test['faces_found']:.1%} of the chips."
    )


if __name__ == "__main__":
    main()
