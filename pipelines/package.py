"""DVC stage `package`: turn the trained Keras model into the model that predict and serving use.

Exports the classifier to TFLite (probabilities + embedding outputs), checks it agrees with the
Keras model, saves the MLflow pyfunc (photo bytes in, one row per face out) and logs it to the
training run as `serving_model`, which the register stage registers. Then measures that model
the way users meet it: every validation and test chip through the whole predict path (face
detection, alignment, TFLite classifier), reported as DVC metrics and on the training run.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pandas as pd  # noqa: E402

from agerange import tracking  # noqa: E402
from agerange.config import fail, load_params, setup_logging  # noqa: E402
from agerange.files import write_json  # noqa: E402
from agerange.predict import AgePredictor, predict_path_metrics  # noqa: E402
from agerange.serving import package  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train stage's model folder")
    parser.add_argument("--out", type=Path, required=True, help="output: the pyfunc model folder")
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="predict-path metrics (DVC metrics)")
    args = parser.parse_args()
    setup_logging()
    params = load_params("package")
    import keras

    if not (args.model / "model.keras").is_file():
        fail(f"{args.model}: no model.keras (run `dvc repro train` first)")
    model = keras.models.load_model(args.model / "model.keras", compile=False)
    info = json.loads((args.model / "model_info.json").read_text())
    reference = tracking.read_run_reference(args.model / "run.json")
    try:
        gap = package(model, info, args.out, params)
    except ValueError as error:
        fail(str(error))
    model_uri = tracking.log_serving_model(args.out, reference["run_id"])
    tracking.write_run_reference(args.out / "run.json", reference["run_id"], model_uri)

    predictor = AgePredictor.from_directory(args.out)
    splits = pd.read_parquet(args.splits)
    results = {}
    for side in ("val", "test"):
        rows = splits[splits["split"] == side]
        photos = [args.images / path for path in rows["path"]]
        results[side] = predict_path_metrics(predictor, photos, rows["age_group"].to_numpy())
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
