"""The served model: the trained classifier exported for fast CPU inference, wrapped as an MLflow pyfunc.

`export_classifier` writes a TFLite file with two outputs (group probabilities and the
penultimate-layer embedding). `AgeRangeModel` is the pyfunc that `mlflow models serve` runs:
it takes a DataFrame with an `image` column of photo bytes and returns one row per face.
`save_serving_model` writes that pyfunc folder; the package stage logs it to the training run
(tracking.log_serving_model) and the register stage registers it.
"""

import base64
import dataclasses
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image

import agerange
from agerange.config import PackageConfig
from agerange.drift import new_photo_accuracy
from agerange.faces import packaged_detector_path
from agerange.files import atomic_path
from agerange.predict import (
    CLASSIFIER_FILE,
    INFO_FILE,
    AgePredictor,
    Classifier,
    predict_path_metrics,
    result_rows,
)
from agerange.provenance import pinned

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = [
    "photo",
    "face",
    "x0",
    "y0",
    "x1",
    "y1",
    "detector_score",
    "age_group",
    "probability",
    "expected_age",
    "age_estimate",
    "age_low",  # the central 80% of the age distribution
    "age_high",
    "age_range",  # the answer in package.ranges ("" when none are set)
    "error",
]


def export_classifier(model, path: Path) -> Path:
    """Write the Keras classifier as TFLite, with its `features` layer as a second output."""
    import contextlib

    import keras
    import tensorflow as tf

    two_outputs = keras.Model(model.inputs, [model.output, model.get_layer("features").output])
    converter = tf.lite.TFLiteConverter.from_keras_model(two_outputs)
    # the converter prints every captured tensor to stdout; keep the stage log readable
    with contextlib.redirect_stdout(io.StringIO()):
        flat = converter.convert()
    with atomic_path(Path(path)) as temporary:
        temporary.write_bytes(flat)
    return Path(path)


def package(model, info: dict[str, Any], out: Path, settings: PackageConfig) -> float:
    """Export `model`, check the export agrees with it, and save the pyfunc folder at `out`.

    Returns the largest probability difference between the TFLite export and Keras.
    """
    info = {**info, "predict": dataclasses.asdict(settings)}  # the model carries its own settings
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        export_classifier(model, scratch / CLASSIFIER_FILE)
        (scratch / INFO_FILE).write_text(json.dumps(info, indent=2))
        size = int(info["image_size"])
        chips = np.random.default_rng(0).integers(0, 256, (4, size, size, 3)).astype(np.float32)
        exported = Classifier(scratch / CLASSIFIER_FILE)(chips, flip=False)[0]
        gap = float(np.abs(exported - np.asarray(model(chips))).max())
        if gap > 1e-3:
            raise ValueError(f"{CLASSIFIER_FILE}: TFLite export differs from the Keras model by {gap:.4f}")
        # the detector's model file travels with the model, so serving needs no other package for it
        detector = packaged_detector_path(settings.detector)
        artifacts = {
            "classifier": scratch / CLASSIFIER_FILE,
            "model_info": scratch / INFO_FILE,
            "detector": detector,
        }
        save_serving_model(out, artifacts, info)
    return gap


def save_serving_model(folder: Path, artifacts: dict[str, Path], info: dict[str, Any]) -> Path:
    """Save the pyfunc that `mlflow models serve` runs (photo bytes in, one row per face out).

    The agerange package travels inside the model (code_paths), so serving needs no checkout.
    The folder is replaced atomically.
    """
    kinds = {
        "photo": DataType.long,
        "face": DataType.long,
        "age_group": DataType.string,
        "age_range": DataType.string,
        "error": DataType.string,
    }
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema([ColSpec(kinds.get(name, DataType.double), name) for name in OUTPUT_COLUMNS]),
    )
    blank = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(blank, format="PNG")
    with atomic_path(Path(folder)) as temporary:
        mlflow.pyfunc.save_model(
            path=str(temporary),
            python_model=AgeRangeModel(),
            artifacts={name: str(path) for name, path in artifacts.items()},
            code_paths=[str(Path(agerange.__file__).parent)],
            signature=signature,
            input_example=pd.DataFrame({"image": [blank.getvalue()]}),
            metadata={"agerange": info},
            # LiteRT runs both models: no TensorFlow in the serving environment
            pip_requirements=pinned("ai-edge-litert", "numpy", "pillow", "pandas", "mlflow"),
        )
    return Path(folder)


def predict_path_report(
    folder: Path, splits: pd.DataFrame, images: Path, new_photos: Path | None = None
) -> dict[str, dict[str, float]]:
    """The packaged model measured the way users meet it: every validation and test chip through
    the whole predict path (face detection, alignment, TFLite classifier), per split, and with
    `new_photos` (a labelled folder such as the shared FairFace photos: real photos, not chips)
    its accuracy at their age ranges, an out-of-domain validation set for choosing models."""
    predictor = AgePredictor.from_directory(folder)
    results = {}
    for side in ("val", "test"):
        rows = splits[splits["split"] == side]
        photos = [images / path for path in rows["path"]]
        results[side] = predict_path_metrics(predictor, photos, rows["age_group"].to_numpy())
    if new_photos is not None and (found := new_photo_accuracy(predictor, new_photos)):
        results["new_photos"] = found
    return results


def predictions_table(results: list[Any]) -> pd.DataFrame:
    """One row per face (photo index, box, group, probability, expected age); a photo without a
    usable face gives one row with face -1 and `error` saying why, so no photo goes missing."""
    rows = result_rows(results, photo_ids=range(len(results)))
    table = pd.DataFrame(rows, columns=[*OUTPUT_COLUMNS, "note"])
    no_face = table["face"].isna()
    table["error"] = table["note"].where(no_face, "")
    table["face"] = table["face"].fillna(-1).astype(int)
    return table[OUTPUT_COLUMNS]


class AgeRangeModel(PythonModel):
    """MLflow pyfunc: photo bytes in (column `image`), one row per face out.

    `predict` has no type hints on purpose: with them MLflow would skip decoding base64 image
    columns in the scoring server's `dataframe_split` requests.
    """

    def load_context(self, context) -> None:
        self.predictor = AgePredictor.from_directory(Path(context.artifacts["model_info"]).parent)

    def predict(self, context, model_input, params=None):
        results = []
        for index, data in enumerate(model_input["image"]):
            if isinstance(data, str):  # `inputs`-style requests are not base64-decoded by the server
                data = base64.b64decode(data)
            results.append(self.predictor.predict_file(bytes(data), name=f"image {index}"))
        return predictions_table(results)
