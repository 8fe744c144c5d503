"""The served model: the trained classifier exported for fast CPU inference, wrapped as an MLflow pyfunc.

`export_classifier` writes a TFLite file with two outputs (group probabilities and the
penultimate-layer embedding). `AgeRangeModel` is the pyfunc that `mlflow models serve` runs:
it takes a DataFrame with an `image` column of photo bytes and returns one row per face.
`save_serving_model` writes that pyfunc folder; the package stage logs it to the training run
(tracking.log_serving_model) and the register stage registers it.
"""

import base64
import binascii
import contextlib
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
from agerange.drift import (
    answering_in_fairface_ranges,
    answers_table,
    new_photo_accuracy,
    photo_labels,
    range_accuracy,
)
from agerange.faces import packaged_detector_path
from agerange.files import atomic_path
from agerange.inference import decide_groups, expected_ages, group_probabilities, range_probabilities
from agerange.metrics import FAIRFACE_RANGES
from agerange.model import member_embeddings, skipped_reason
from agerange.predict import (
    CLASSIFIER_FILE,
    HEAD_FILE,
    INFO_FILE,
    MAX_PHOTO_BYTES,
    AgePredictor,
    Classifier,
    PhotoPrediction,
    answer_metrics,
    predict_path_metrics,
    result_rows,
)
from agerange.preprocess import read_image
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
    "eye_spacing",  # eye distance / face box side: lower as the head turns away (less reliable below 0.30)
    "age_group",
    "probability",
    "expected_age",
    "age_estimate",
    "age_low",  # the central 80% of the age distribution
    "age_high",
    "age_range",  # the answer in package.ranges ("" when none are set)
    "error",
]


def export_classifier(
    model, path: Path, calibration: np.ndarray | None = None, float_layers: int = 0
) -> Path:
    """Write the Keras classifier as TFLite, with its `features` layer as a second output.

    With `calibration` (uint8 face chips at the model's input size, a few hundred), the export
    is full-integer up to the members' embeddings: int8 weights and activations, uint8 pixels
    in, the embeddings out; the output layers (Dense + softmax, one per ensemble member) go
    beside it as float weights (`HEAD_FILE`), which `Classifier` applies. Its activation ranges
    are the ones those chips produce, so they should look like predict's own chips. The
    `float_layers` layers that int8 serves worst on those chips (`least_quantizable_layers`)
    stay in float. Without `calibration`, the export computes in float32 like Keras.
    """
    import contextlib

    import keras

    head_file = Path(path).with_name(HEAD_FILE)
    # the converter prints every captured tensor to stdout; keep the stage log readable
    with contextlib.redirect_stdout(io.StringIO()):
        if calibration is None:
            exported = keras.Model(model.inputs, [model.output, model.get_layer("features").output])
            flat = _converter(exported).convert()
        else:
            if not len(calibration):
                raise ValueError(f"{path}: no calibration chips for the int8 export")
            exported, heads = member_embeddings(model)
            flat, kept_in_float = _int8_flatbuffer(exported, calibration, float_layers)
            # TFLite skips a name it does not know without a word: check each one took effect
            if len(found := layers_in_float(flat)) != len(kept_in_float):
                raise ValueError(f"{path}: {len(found)} of {len(kept_in_float)} layers left in float")
    if calibration is None:
        head_file.unlink(missing_ok=True)
    else:
        with atomic_path(head_file) as temporary, temporary.open("wb") as stream:
            np.savez(
                stream,
                kernels=np.stack([np.asarray(head.kernel, np.float32) for head in heads]),
                biases=np.stack([np.asarray(head.bias, np.float32) for head in heads]),
            )
    with atomic_path(Path(path)) as temporary:
        temporary.write_bytes(flat)
    return Path(path)


def layers_in_float(model: Path | bytes) -> list[str]:
    """The layers a TFLite file (or its bytes) computes in float32, by the name of their output
    (the first of the names TFLite joins for fused layers), in the file's order: in an int8
    export, the ones `export_classifier` left in float (not counting the dequantize steps
    around them and at the end)."""
    import tensorflow as tf

    if isinstance(model, bytes):
        interpreter = tf.lite.Interpreter(model_content=model)
    else:
        interpreter = tf.lite.Interpreter(model_path=str(model))
    tensors = {tensor["index"]: tensor for tensor in interpreter.get_tensor_details()}
    names = []
    for op in interpreter._get_ops_details():  # the only listing of a file's operators
        output = tensors.get(op["outputs"][0]) if len(op["outputs"]) else None
        if output is not None and output["dtype"] == np.float32 and op["op_name"] not in NOT_LAYERS:
            names.append(output["name"].split(";")[0])
    return names


# TFLite operators with float outputs in any int8 export: the conversions back to float and the
# XNNPACK delegate's own node
NOT_LAYERS = ("DEQUANTIZE", "DELEGATE")


def _converter(exported, calibration: np.ndarray | None = None):
    """A TFLite converter for `exported`: float32, or with `calibration` chips int8 with uint8
    pixels in (a black and a white chip added pin the input range to 0-255, so the pixels need
    no rescaling)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(exported)
    if calibration is not None:
        size = calibration.shape[1]
        extremes = np.stack([np.zeros((size, size, 3), np.uint8), np.full((size, size, 3), 255, np.uint8)])
        chips = np.concatenate([extremes, calibration])
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([chip[None].astype(np.float32)] for chip in chips)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    return converter


def least_quantizable_layers(exported, calibration: np.ndarray, count: int) -> list[str]:
    """The `count` layers of `exported` whose int8 outputs stray furthest from float on the
    `calibration` chips, in quantization steps (root-mean-square error over the output's scale,
    measured by TFLite's QuantizationDebugger): the ones worth computing in float.

    On MobileNetV2 the worst are depthwise convolutions early on (expanded_conv, block_2,
    block_5: their outputs 1.33, 0.74 and 0.62 steps off on average), where most layers are at
    0.3-0.4.
    """
    return _worst_layers(_quantization_debugger(exported, calibration), count)


def _quantization_debugger(exported, calibration: np.ndarray):
    """TFLite's QuantizationDebugger for the int8 export of `exported`, calibrated and run on
    the `calibration` chips."""
    import tensorflow as tf

    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=_converter(exported, calibration),
        debug_dataset=lambda: ([chip[None].astype(np.float32)] for chip in calibration),
    )
    debugger.run()
    return debugger


def _worst_layers(debugger, count: int) -> list[str]:
    """The `count` layers a run debugger measured furthest from float, in quantization steps."""
    statistics = io.StringIO()
    debugger.layer_statistics_dump(statistics)
    statistics.seek(0)
    layers = pd.read_csv(statistics)
    layers["steps"] = np.sqrt(layers["mean_squared_error"]) / layers["scale"]
    return list(layers.nlargest(count, "steps")["tensor_name"])


def _int8_flatbuffer(exported, calibration: np.ndarray, float_layers: int) -> tuple[bytes, list[str]]:
    """The int8 TFLite model of `exported`, calibrated on `calibration`, with its `float_layers`
    least quantizable layers in float, and those layers' TFLite node names."""
    import tensorflow as tf

    if not float_layers:
        return _converter(exported, calibration).convert(), []
    debugger = _quantization_debugger(exported, calibration)
    kept_in_float = _worst_layers(debugger, float_layers)
    # The converter takes no list of layers to leave in float; the QuantizationDebugger does the
    # same as here (quantize its calibrated model with a denylist), but its model reads float
    # pixels. Both are TensorFlow's private API (pinned in pyproject.toml; the tests run this path).
    from tensorflow.lite.python import convert

    flat = convert.mlir_quantize(
        debugger.calibrated_model,  # calibrated once, for the ranking and for this
        input_data_type=tf.uint8,
        output_data_type=tf.float32,
        denylisted_nodes=kept_in_float,
    )
    return flat, kept_in_float


# The packaged classifiers `package_fastest` exports, fastest first: the distilled student (one
# network, perhaps at a smaller input) before the trained model (an ensemble costs one top part
# per member), and int8 before float (about twice the speed on a CPU).
VARIANTS_FASTEST_FIRST = ("student int8", "student float", "model int8", "model float")
REFERENCE_VARIANT = "model float"  # the trained model as Keras computes it: what the others must match
# With `package.flip`, each variant is also weighed without the mirror-image average, which
# classifies about 1.5x the faces/s of the default (the unsure faces mirrored): the rule then
# decides the mirror too, per model. Fastest first, as bench/predict_latency.py measured them in
# one run on a 2-core CPU (chips/s on 2026-12-03; the default, measured on later days at 1.5-1.6x
# mirroring every face, taken as 1.5x: 778, about 530, 516, 394, about 340, about 280, 213, about 150).
# The order assumes the default `flip_margin`; with every face mirrored (null) an int8 variant
# with the mirror is about as fast as a float one without it, and still comes later.
UNMIRRORED = " without mirror"
CANDIDATES_FASTEST_FIRST = (
    "student int8" + UNMIRRORED,
    "student int8",
    "student float" + UNMIRRORED,
    "model int8" + UNMIRRORED,
    "student float",
    "model int8",
    "model float" + UNMIRRORED,
    "model float",
)


def export_variant(
    model, info: dict[str, Any], folder: Path, settings: PackageConfig, calibration: np.ndarray | None = None
) -> float:
    """Write one classifier variant into `folder` (classifier.tflite and model_info.json, which
    carries the predict settings): float32, or int8 when `calibration` chips are given.

    A float export is checked against Keras; returns the largest probability difference (NaN for
    int8, which differs by design and is judged by accuracy instead).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    export_classifier(model, folder / CLASSIFIER_FILE, calibration, float_layers=settings.int8_float_layers)
    info = {**info, "predict": dataclasses.asdict(settings)}  # the model carries its own settings
    info["precision"] = "float" if calibration is None else "int8"
    if calibration is not None and settings.int8_float_layers:
        info["layers_in_float"] = layers_in_float(folder / CLASSIFIER_FILE)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2))
    if calibration is not None:
        return float("nan")
    size = int(info["image_size"])
    chips = np.random.default_rng(0).integers(0, 256, (4, size, size, 3)).astype(np.float32)
    exported = Classifier(folder / CLASSIFIER_FILE)(chips, flip=False)[0]
    gap = float(np.abs(exported - np.asarray(model(chips))).max())
    if gap > 1e-3:
        raise ValueError(f"{CLASSIFIER_FILE}: TFLite export differs from the Keras model by {gap:.4f}")
    return gap


def save_variant(folder: Path, out: Path, settings: PackageConfig) -> Path:
    """Save an exported variant's folder as the served pyfunc at `out` (atomically)."""
    info = json.loads((Path(folder) / INFO_FILE).read_text())
    artifacts = {
        "classifier": Path(folder) / CLASSIFIER_FILE,
        "model_info": Path(folder) / INFO_FILE,
        # an int8 classifier's output layers, applied in float (export_classifier)
        **({"head": Path(folder) / HEAD_FILE} if (Path(folder) / HEAD_FILE).is_file() else {}),
        # the detector's model file travels with the model, so serving needs no other package for it
        "detector": packaged_detector_path(settings.detector),
    }
    return save_serving_model(out, artifacts, info)


def package(model, info: dict[str, Any], out: Path, settings: PackageConfig) -> float:
    """Export `model` in float32, check the export agrees with it, and save the pyfunc folder at
    `out`. Returns the largest probability difference between the TFLite export and Keras."""
    with tempfile.TemporaryDirectory() as scratch:
        gap = export_variant(model, info, Path(scratch), settings)
        save_variant(Path(scratch), out, settings)
    return gap


def load_models(
    folders: dict[str, tuple[Path, str]],
) -> tuple[dict[str, tuple[Any, dict[str, Any]]], list[str]]:
    """The Keras model and info of each kind ("model", "student") from its folder, skipping a
    folder whose stage was told not to train one (`model.skipped_reason`); also returns the
    lines saying so. A folder with neither is refused, naming the stage (the second item) to run."""
    import keras

    models, notes = {}, []
    for kind, (folder, stage) in folders.items():
        if reason := skipped_reason(folder):
            notes.append(f"{folder}: no {kind} ({reason})")
            continue
        if not (folder / "model.keras").is_file():
            raise ValueError(f"{folder}: no model.keras (run `dvc repro {stage}` first)")
        info = json.loads((folder / "model_info.json").read_text())
        models[kind] = (keras.models.load_model(folder / "model.keras", compile=False), info)
    return models, notes


def export_variants(
    models: dict[str, tuple[Any, dict[str, Any]]],
    scratch: Path,
    settings: PackageConfig,
    calibration_photos: list[Path],
) -> tuple[dict[str, Path], dict[str, float]]:
    """Each of `models` ("model", "student": a Keras model and its info) exported in float32 and
    in int8 (calibrated on `calibration_photos`' face chips) into folders under `scratch`.

    Returns the folders by variant name ("model float", "model int8", ...) and each model's
    float export's largest difference from Keras."""
    folders, gaps = {}, {}
    for kind, (model, info) in models.items():
        folders[f"{kind} float"] = scratch / f"{kind}_float"
        gaps[kind] = export_variant(model, info, folders[f"{kind} float"], settings)
        calibration = calibration_chips(folders[f"{kind} float"], calibration_photos)
        folders[f"{kind} int8"] = scratch / f"{kind}_int8"
        export_variant(model, info, folders[f"{kind} int8"], settings, calibration)
    return folders, gaps


def calibration_sample(splits: pd.DataFrame, images: Path, count: int) -> list[Path]:
    """The training photos whose face chips calibrate the int8 exports: `count` of them, the
    same ones for every run on the same split."""
    train = splits[splits["split"] == "train"]
    return [images / path for path in train.sample(n=min(count, len(train)), random_state=0)["path"]]


def calibration_chips(folder: Path, photos: list[Path]) -> np.ndarray:
    """Face chips as predict makes them (detected, aligned, at the model's input size) from
    `photos`, the largest face of each: the int8 export's calibration data."""
    predictor = AgePredictor.from_directory(folder)
    chips = []
    for photo in photos:
        image = read_image(photo)
        _, _, found = predictor.face_chips(image)
        chips.extend(found[:1])
    size = predictor.image_size
    return np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)


# The figures a variant may lose at most `package.max_accuracy_loss` of: validation through the
# whole predict path and, when the labelled new photos are given, their range accuracy (the
# real photos the registry's metric also ranks by; an int8 model calibrated on UTKFace chips
# can hold up on those and fall on real photos)
RULE_FIGURES = ("accuracy", "within_one", "new_photos_range_accuracy", "new_photos_range_within_one")


def choose_variant(val: dict[str, dict[str, float]], max_loss: float) -> str:
    """The declared rule: the fastest measured candidate (`CANDIDATES_FASTEST_FIRST`) none of
    whose `RULE_FIGURES` (those the reference has) is more than `max_loss` below the trained
    model's float export with the configured mirror average (`REFERENCE_VARIANT`)."""
    reference = val[REFERENCE_VARIANT]
    keys = [key for key in RULE_FIGURES if key in reference]
    for name in CANDIDATES_FASTEST_FIRST:
        figures = val.get(name)
        if figures and all(figures.get(key, -1.0) >= reference[key] - max_loss for key in keys):
            return name
    return REFERENCE_VARIANT


def output_fidelity(reference: np.ndarray, variant: np.ndarray, neighbour_weight: float) -> dict[str, float]:
    """How far a variant's outputs stray from the reference's on the same chips (N, K each), in
    what a user sees: answers that change (age group, FairFace range, both decided as predict
    decides them), how many years the expected age moves, and whether each row is still a
    distribution (sums, bins that are exactly 0: an int8 softmax rounds to steps of 1/256).
    """
    reference, variant = np.asarray(reference, np.float32), np.asarray(variant, np.float32)
    if reference.shape != variant.shape or not len(reference):
        raise ValueError(f"outputs to compare: shapes {reference.shape} and {variant.shape}")
    groups = [decide_groups(group_probabilities(out), neighbour_weight) for out in (reference, variant)]
    ranges = [
        decide_groups(range_probabilities(out, FAIRFACE_RANGES), neighbour_weight)
        for out in (reference, variant)
    ]
    sums = variant.sum(axis=1)
    return {
        "group_changed": float(np.mean(groups[0] != groups[1])),
        "range_changed": float(np.mean(ranges[0] != ranges[1])),
        "expected_age_years": float(np.mean(np.abs(expected_ages(reference) - expected_ages(variant)))),
        "largest_output_difference": float(np.abs(reference - variant).max()),
        "zero_outputs": float(np.mean(variant == 0)),
        "reference_zero_outputs": float(np.mean(reference == 0)),
        "lowest_sum": float(sums.min()),
        "highest_sum": float(sums.max()),
    }


def measure_variants(
    folders: dict[str, Path],
    val_photos: list[Path],
    val_groups: np.ndarray,
    new_photos: Path | None = None,
    unmirrored: bool = False,
) -> dict[str, dict[str, float]]:
    """Packaged variants through the whole predict path: validation accuracy, within-one and faces
    found, and with labelled `new_photos` their range accuracy and within-one; with `unmirrored`
    each variant also without the mirror-image average (named `name + UNMIRRORED`).

    Decoding, detection and alignment do not depend on the classifier: they run once for all
    variants that share a chip size and detector settings, and each variant classifies the same
    prepared photos (as `agerange predict` would prepare them).
    """
    labels = photo_labels(new_photos) if new_photos is not None else None
    new_names = [] if labels is None else labels["filename"].tolist()
    prepared: dict[tuple, tuple[list, list]] = {}
    ways = {"": {}} | ({UNMIRRORED: {"flip": False}} if unmirrored else {})
    figures = {}
    for name, folder in folders.items():
        for suffix, overrides in ways.items():
            predictor = AgePredictor.from_directory(folder, **overrides)
            detector = predictor.detector
            cut = (predictor.image_size, detector.name, detector.min_score, predictor.min_face_pixels)
            if cut not in prepared:
                new = [Path(new_photos) / n for n in new_names]
                prepared[cut] = (
                    predictor.prepare_many(val_photos, keep_images=False),
                    predictor.prepare_many(new, new_names, keep_images=False),
                )
            val_prepared, new_prepared = prepared[cut]
            figures[name + suffix] = found = answer_metrics(
                predictor.predict_prepared(val_prepared), val_groups
            )
            if new_prepared:
                answers = answers_table(
                    answering_in_fairface_ranges(predictor).predict_prepared(new_prepared)
                )
                if ranges := range_accuracy(answers, labels):
                    found |= {
                        f"new_photos_{key}": ranges[key] for key in ("range_accuracy", "range_within_one")
                    }
    return figures


def package_fastest(
    models: dict[str, tuple[Any, dict[str, Any]]],
    out: Path,
    settings: PackageConfig,
    val_photos: list[Path],
    val_groups: np.ndarray,
    calibration_photos: list[Path],
    new_photos: Path | None = None,
) -> dict[str, Any]:
    """Export every variant of `models` ("model": the train stage's, and "student": the distil
    stage's, each a Keras model and its info), measure each through the whole predict path on
    the validation photos (and the labelled `new_photos`), and save the one `choose_variant`
    picks at `out`.

    Returns the choice: `chosen`, `val` (every candidate's figures: each variant, and with
    `settings.flip` each also without the mirror-image average) and `float_gap` (float exports
    against Keras). The served model's info records the same, and a chosen candidate without
    the mirror average is saved with `flip` off.
    """
    with tempfile.TemporaryDirectory() as scratch:
        folders, gaps = export_variants(models, Path(scratch), settings, calibration_photos)
        val = measure_variants(folders, val_photos, val_groups, new_photos, unmirrored=settings.flip)
        for name, figures in val.items():
            log.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
        chosen = choose_variant(val, settings.max_accuracy_loss)
        measured = [name for name in CANDIDATES_FASTEST_FIRST if name in val]
        choice = {"chosen": chosen, "rule": _rule_text(measured, settings.max_accuracy_loss), "val": val}
        choice["float_gap"] = gaps
        variant = chosen.removesuffix(UNMIRRORED)
        info_file = folders[variant] / INFO_FILE
        info = {**json.loads(info_file.read_text()), "variant": choice}
        if chosen != variant:
            info["predict"]["flip"] = False
        info_file.write_text(json.dumps(info, indent=2))
        save_variant(folders[variant], out, settings)
    return choice


def _rule_text(variants: list[str], max_loss: float) -> str:
    return (
        f"fastest of {', '.join(variants)} losing at most {max_loss * 100:.1f} points "
        f"against {REFERENCE_VARIANT} (with the configured mirror) in validation accuracy and "
        "within-one accuracy and in the labelled new photos' range accuracy and within-one (whole "
        "predict path)"
    )


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
        # optional only so that MLflow's schema check lets a request without it through to
        # `AgeRangeModel.predict`, which refuses it in one line (MLflow's own refusal prints the
        # whole request)
        inputs=Schema([ColSpec(DataType.binary, "image", required=False)]),
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
    usable face gives one row with face -1 and `error` saying why, so no photo goes missing.
    Its missing figures are None (JSON null), not NaN, which strict JSON parsers refuse."""
    rows = result_rows(results, photo_ids=range(len(results)))
    table = pd.DataFrame(rows, columns=[*OUTPUT_COLUMNS, "note"])
    no_face = table["face"].isna()
    table["error"] = table["note"].where(no_face, "")
    table["face"] = table["face"].fillna(-1).astype(int)
    table = table[OUTPUT_COLUMNS]
    return table.astype(object).where(table.notna(), None) if no_face.any() else table


def photo_bytes(data: Any, name: str) -> tuple[bytes | None, str | None]:
    """A request's image cell as photo bytes, or None and why not (one line naming the image).

    `dataframe_split` and `dataframe_records` requests arrive base64-decoded by the scoring
    server; `inputs` and `instances` ones arrive as base64 text, as str or as bytes (NumPy's
    bytes_). Bytes that are valid base64 are that text: JPEG, PNG and WebP files never are.
    """
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return None, f"{name}: not valid base64"
    elif isinstance(data, bytes) and data:
        with contextlib.suppress(binascii.Error, ValueError):  # not base64: the photo's own bytes
            data = base64.b64decode(data, validate=True)
    if not isinstance(data, bytes | bytearray | memoryview):
        return None, f"{name}: expected photo bytes, got {type(data).__name__}"
    if len(data) > MAX_PHOTO_BYTES:
        size, limit = len(data) / 1024**2, MAX_PHOTO_BYTES // 1024**2
        return None, f"{name}: photo of {size:.1f} MB is over the {limit} MB limit"
    return bytes(data), None


class AgeRangeModel(PythonModel):
    """MLflow pyfunc: photo bytes in (column `image`), one row per face out.

    The faces of all photos in a request are classified in one batch. A request in which no
    photo can be read is refused (HTTP 400, the first reason); otherwise unreadable photos get
    a row with `error` and the others are answered.

    `predict` has no type hints on purpose: with them MLflow would skip decoding base64 image
    columns in the scoring server's `dataframe_split` requests.
    """

    def load_context(self, context) -> None:
        self.predictor = AgePredictor.from_directory(Path(context.artifacts["model_info"]).parent)

    def predict(self, context, model_input, params=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        if "image" not in model_input:
            columns = ", ".join(map(str, model_input.columns)) or "none that the model takes"
            raise MlflowException(
                f"request: no 'image' column of photo bytes (columns: {columns})", INVALID_PARAMETER_VALUE
            )
        names = [f"image {index}" for index in range(len(model_input))]
        cells = [photo_bytes(data, name) for data, name in zip(model_input["image"], names, strict=True)]
        readable = [index for index, (data, _) in enumerate(cells) if data is not None]
        answers = dict(
            zip(
                readable,
                self.predictor.predict_many([cells[i][0] for i in readable], [names[i] for i in readable]),
                strict=True,
            )
        )
        results = [answers.get(i) or PhotoPrediction(names[i], error=cells[i][1]) for i in range(len(cells))]
        if results and all(result.error for result in results):
            raise MlflowException(results[0].error, INVALID_PARAMETER_VALUE)
        return predictions_table(results)
