"""DVC stage `package`: turn the trained Keras model into the model that predict and serving use.

Exports the classifier to TFLite (probabilities + embedding outputs), checks it agrees with the
Keras model, saves the MLflow pyfunc (photo bytes in, one row per face out) and logs it to the
training run as `serving_model`, which the register stage registers.
"""

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from agerange import tracking  # noqa: E402
from agerange.config import fail, load_params, setup_logging  # noqa: E402
from agerange.serving import package  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the train stage's model folder")
    parser.add_argument("--out", type=Path, required=True, help="output: the pyfunc model folder")
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
    print(
        f"package: {args.out} (TFLite classifier agrees with Keras within {gap:.1e}), logged as {model_uri}"
    )


if __name__ == "__main__":
    main()
