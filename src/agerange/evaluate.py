"""Evaluation: accuracy, within-one, MAE, macro-F1, confusion, calibration, fairness gaps, figures."""

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from agerange.files import write_png
from agerange.inference import age_in_group, decode_probabilities, group_probabilities
from agerange.labels import ETHNICITIES, GENDERS, GROUP_NAMES
from agerange.metrics import (
    accuracy_by_condition,
    bin_span,
    exact_accuracy,
    group_distance,
    mae_years,
    within_one,
)


def classification_metrics(
    groups: np.ndarray, probabilities: np.ndarray, ages: np.ndarray, neighbour_weight: float = 0.0
) -> dict[str, float]:
    """Headline metrics of predicted group probabilities against true groups and ages.

    `neighbour_weight` is the decision rule's (`inference.decide_groups`).

    Returns:
        accuracy (exact group), within_one (at most one group away), mae_years (expected age
        against true age), answer_mae_years (the age predict answers beside the group,
        `inference.age_in_group`), macro_f1, ece (expected calibration error, 10 bins), n.
    """
    groups = np.asarray(groups)
    predicted, expected_age = decode_probabilities(probabilities, neighbour_weight)
    return {
        "accuracy": exact_accuracy(predicted, groups),
        "within_one": within_one(predicted, groups),
        "mae_years": mae_years(expected_age, ages),
        "answer_mae_years": mae_years(age_in_group(probabilities, predicted), ages),
        "macro_f1": macro_f1(groups, predicted),
        "ece": expected_calibration_error(groups, group_probabilities(probabilities)),
        "n": int(len(groups)),
    }


def macro_f1(groups: np.ndarray, predicted: np.ndarray, n_classes: int = len(GROUP_NAMES)) -> float:
    """Unweighted mean of per-class F1 over the classes present in truth or prediction."""
    scores = []
    for label in range(n_classes):
        true_positive = np.sum((predicted == label) & (groups == label))
        false_positive = np.sum((predicted == label) & (groups != label))
        false_negative = np.sum((predicted != label) & (groups == label))
        if true_positive + false_positive + false_negative == 0:
            continue
        scores.append(2 * true_positive / (2 * true_positive + false_positive + false_negative))
    return float(np.mean(scores)) if scores else 0.0


def expected_calibration_error(groups: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins."""
    return float(
        calibration_table(groups, probabilities, bins).eval("abs(confidence - accuracy) * share").sum()
    )


def calibration_table(groups: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Per confidence bin: mean confidence, accuracy and share of predictions (a reliability diagram)."""
    probabilities = np.asarray(probabilities)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(groups)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        if members.any():
            rows.append(
                {
                    "bin": (b + 0.5) / bins,
                    "confidence": float(confidence[members].mean()),
                    "accuracy": float(correct[members].mean()),
                    "share": float(members.mean()),
                }
            )
    return pd.DataFrame(rows, columns=["bin", "confidence", "accuracy", "share"])


def confusion(groups: np.ndarray, predicted: np.ndarray, n_classes: int = len(GROUP_NAMES)) -> np.ndarray:
    """Counts: rows are true groups, columns predicted groups."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(groups), np.asarray(predicted)), 1)
    return matrix


def off_by_n(groups: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """How many predictions are 0, 1, 2, ... groups away from the truth."""
    distance = group_distance(predicted, groups)
    counts = np.bincount(distance, minlength=len(GROUP_NAMES))
    return pd.DataFrame(
        {"groups_off": np.arange(len(counts)), "images": counts, "share": counts / max(1, len(distance))}
    )


def accuracy_by(table: pd.DataFrame, predicted: np.ndarray, column: str) -> pd.DataFrame:
    """Exact and within-one accuracy per value of `column` (ethnicity or gender)."""
    names = {"ethnicity": ETHNICITIES, "gender": GENDERS}[column]
    frame = pd.DataFrame(
        {
            "key": table[column].astype("Int64").to_numpy(),
            "true": table["age_group"].to_numpy(),
            "pred": predicted,
        }
    ).dropna()
    rows = []
    for key, part in frame.groupby("key", sort=True):
        predicted_part, truth = part["pred"].to_numpy(), part["true"].to_numpy()
        rows.append(
            {
                column: names[int(key)],
                "images": len(part),
                "accuracy": exact_accuracy(predicted_part, truth),
                "within_one": within_one(predicted_part, truth),
            }
        )
    return pd.DataFrame(rows, columns=[column, "images", "accuracy", "within_one"])


# Image conditions measured by ingest on every chip (ingest.image_quality): blur is the variance of
# the Laplacian (low = blurry), brightness, contrast and saturation are 0-1 means. The face
# detector measures four more (`detector_conditions`): the face box's side as a share of the
# chip's, the head's roll (the eye line's angle from level, in degrees), the detector's score and
# the eye spacing (`faces.Face.eye_spacing`: about 0.42 facing the camera, lower as the head turns).
IMAGE_CONDITIONS = ("blur", "brightness", "contrast", "saturation")
DETECTOR_CONDITIONS = ("face_size", "head_roll", "detector_score", "eye_spacing")
CONDITIONS = IMAGE_CONDITIONS + DETECTOR_CONDITIONS
# Faces the detector is this unsure of are still measured: predict would skip some of them, and
# where accuracy stands on such faces is part of what the slices show.
LOWEST_DETECTOR_SCORE = 0.1


def detector_conditions(chips: Iterable[Image.Image], detector) -> pd.DataFrame:
    """face_size, head_roll, detector_score and eye_spacing of the largest face in each chip, as
    predict's detector (`faces.FaceDetector`) finds it; a chip without a face gets NaN face_size,
    head_roll and eye_spacing and a detector_score of 0."""
    rows = []
    for chip in chips:
        faces = detector.find_faces(chip)
        if not faces:
            rows.append((np.nan, np.nan, 0.0, np.nan))
            continue
        face = max(faces, key=lambda found: found.width)
        (left_x, left_y), (right_x, right_y) = face.eyes
        roll = abs(math.degrees(math.atan2(right_y - left_y, right_x - left_x)))
        rows.append((face.size / chip.width, roll, face.score, face.eye_spacing))
    return pd.DataFrame(rows, columns=list(DETECTOR_CONDITIONS), dtype=np.float64)


def accuracy_by_group_and_ethnicity(table: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """Exact accuracy (and image count) of every age group x ethnicity cell."""
    frame = table.assign(right=(predicted == table["age_group"].to_numpy()).astype(float))
    cells = frame.groupby(["age_group", "ethnicity"])["right"].agg(["mean", "size"]).reset_index()
    cells["age_group"] = [GROUP_NAMES[g] for g in cells["age_group"]]
    cells["ethnicity"] = [ETHNICITIES[e] if 0 <= e < len(ETHNICITIES) else str(e) for e in cells["ethnicity"]]
    return cells.rename(columns={"mean": "accuracy", "size": "images"})


def evaluate(
    table: pd.DataFrame, probabilities: np.ndarray, neighbour_weight: float = 0.0
) -> tuple[dict, dict[str, pd.DataFrame]]:
    """Every metric and table of the evaluation report for one split.

    Args:
        table: the split's rows (age, age_group, ethnicity, gender).
        probabilities: the model's outputs (group or age probabilities), one row per table row.
        neighbour_weight: the decision rule's (`inference.decide_groups`); the metrics of the
            plain most-likely group are added as argmax_accuracy and argmax_within_one.

    Returns:
        Flat metrics (for DVC and MLflow; per ethnicity and gender: the accuracy gap, the gap
        equal accuracy would show by chance and its p-value) and named tables (for plots and
        artifacts).
    """
    groups = table["age_group"].to_numpy()
    predicted, _ = decode_probabilities(probabilities, neighbour_weight)
    metrics = classification_metrics(groups, probabilities, table["age"].to_numpy(), neighbour_weight)
    most_likely = group_probabilities(probabilities).argmax(axis=1)
    metrics["argmax_accuracy"] = exact_accuracy(most_likely, groups)
    metrics["argmax_within_one"] = within_one(most_likely, groups)
    tables = {
        "confusion": pd.DataFrame(
            {"actual": [GROUP_NAMES[g] for g in groups], "predicted": [GROUP_NAMES[p] for p in predicted]}
        ),
        "off_by_n": off_by_n(groups, predicted),
        "calibration": calibration_table(groups, group_probabilities(probabilities)),
    }
    tables["accuracy_by_condition"] = accuracy_by_condition(table, predicted, groups, CONDITIONS)
    tables["accuracy_by_group_and_ethnicity"] = accuracy_by_group_and_ethnicity(table, predicted)
    for column in ("ethnicity", "gender"):
        per = accuracy_by(table, predicted, column)
        tables[f"accuracy_by_{column}"] = per
        if len(per):
            gap = float(per["accuracy"].max() - per["accuracy"].min())
            metrics[f"{column}_accuracy_gap"] = gap
            metrics[f"{column}_worst_accuracy"] = float(per["accuracy"].min())
            metrics.update(_gap_against_chance(column, gap, per))
    return metrics, tables


def gap_by_chance(images: np.ndarray, accuracy: float, draws: int = 10_000, seed: int = 0) -> np.ndarray:
    """The accuracy gaps (best group's minus worst's) that a model exactly as accurate for every
    group would show on groups of these sizes, from sampling alone: `draws` binomial draws.

    On a test split's few hundred images per ethnicity this is several points: a measured gap
    inside it cannot be told from noise, and a target below it is met or missed by luck.
    """
    sizes = np.asarray(images, dtype=np.int64)
    if not len(sizes) or sizes.min() < 1 or not 0 <= accuracy <= 1:
        raise ValueError(f"gap_by_chance: needs groups of 1 or more images and an accuracy in [0, 1], "
                         f"got {sizes.tolist()} and {accuracy}")  # fmt: skip
    right = np.random.default_rng(seed).binomial(sizes, accuracy, size=(draws, len(sizes)))
    shares = right / sizes
    return shares.max(axis=1) - shares.min(axis=1)


def _gap_against_chance(column: str, gap: float, per: pd.DataFrame) -> dict[str, float]:
    """The gap a model equally accurate for every `column` value would show here (the median of
    `gap_by_chance`), and how often such a model shows a gap at least `gap` (its p-value, counted
    the Monte Carlo way, (draws reaching it + 1) / (all draws + 1): never 0 from finitely many)."""
    if len(per) < 2:
        return {}
    sizes = per["images"].to_numpy(np.int64)
    pooled = float((per["accuracy"] * sizes).sum() / sizes.sum())
    chance = gap_by_chance(sizes, pooled)
    return {
        f"{column}_gap_by_chance": float(np.median(chance)),
        # a draw equal to the measured gap counts as reaching it (float shares of the same counts)
        f"{column}_gap_p_value": float(((chance >= gap - 1e-9).sum() + 1) / (len(chance) + 1)),
    }


def summary_line(results: dict[str, dict], reports: Path) -> str:
    """The evaluate stage's one-paragraph summary of its validation and test metrics."""
    test = results["test"]
    gap = test.get("ethnicity_accuracy_gap")
    gap_text = f"{gap:.3f}" if gap is not None and np.isfinite(gap) else "n/a (no ethnicity labels)"
    if "ethnicity_gap_by_chance" in test:
        gap_text += (
            f" (equal accuracy for every ethnicity would show {test['ethnicity_gap_by_chance']:.3f} by "
            f"chance; p {test['ethnicity_gap_p_value']:.2f})"
        )
    return (
        f"evaluate: test split {test['n']} images: accuracy {test['accuracy']:.3f}, within one group "
        f"{test['within_one']:.3f}, MAE {test['mae_years']:.1f} years (the answered age "
        f"{test['answer_mae_years']:.1f}), "
        f"macro-F1 {test['macro_f1']:.3f}, "
        f"ECE {test['ece']:.3f}, ethnicity gap {gap_text} "
        f"(validation accuracy {results['val']['accuracy']:.3f}); report in {reports}."
    )


def worst_mistakes(
    table: pd.DataFrame, probabilities: np.ndarray, count: int = 16, neighbour_weight: float = 0.0
) -> pd.DataFrame:
    """The most confidently wrong predictions, furthest from the truth first."""
    predicted, expected_age = decode_probabilities(probabilities, neighbour_weight)
    frame = table.assign(
        predicted=predicted,
        expected_age=expected_age,
        confidence=group_probabilities(probabilities)[np.arange(len(predicted)), predicted],  # the answer's
        distance=group_distance(predicted, table["age_group"].to_numpy()),
    )
    wrong = frame[frame["distance"] > 0]
    return wrong.sort_values(["distance", "confidence"], ascending=False).head(count)


def plot_report(
    tables: dict[str, pd.DataFrame], mistakes: pd.DataFrame, images_dir: Path, out_dir: Path
) -> list[Path]:
    """Confusion matrix, calibration and worst-mistakes grid as PNG files; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        write_png(_confusion_figure(plt, tables["confusion"]), out_dir / "confusion_matrix.png"),
        write_png(_calibration_figure(plt, tables["calibration"]), out_dir / "calibration.png"),
        write_png(_mistakes_figure(plt, mistakes, images_dir), out_dir / "worst_mistakes.png"),
        write_png(
            _conditions_figure(plt, tables["accuracy_by_condition"]), out_dir / "accuracy_by_condition.png"
        ),
    ]


def _conditions_figure(plt, by_condition: pd.DataFrame):
    conditions = list(dict.fromkeys(by_condition["condition"]))
    figure, axes = plt.subplots(1, max(len(conditions), 1), figsize=(3.2 * max(len(conditions), 1), 3.2))
    for axis, condition in zip(np.atleast_1d(axes), conditions, strict=False):
        rows = by_condition[by_condition["condition"] == condition]
        axis.bar(range(len(rows)), rows["accuracy"], color="tab:blue")
        axis.set_xticks(
            range(len(rows)),
            [bin_span(low, high) for low, high in zip(rows["low"], rows["high"], strict=True)],
            rotation=45,
            ha="right",
            fontsize=7,
        )
        axis.set_ylim(0, 1)
        axis.set_title(condition)
    np.atleast_1d(axes)[0].set_ylabel("exact accuracy (test split)")
    figure.suptitle("Accuracy by image condition (quartiles of the test split)")
    figure.tight_layout()
    return figure


def _confusion_figure(plt, confusion_table: pd.DataFrame):
    matrix = pd.crosstab(confusion_table["actual"], confusion_table["predicted"]).reindex(
        index=list(GROUP_NAMES), columns=list(GROUP_NAMES), fill_value=0
    )
    figure, axis = plt.subplots(figsize=(8, 7))
    shares = matrix.to_numpy() / np.maximum(matrix.to_numpy().sum(axis=1, keepdims=True), 1)
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix.to_numpy()):
        axis.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if shares[i, j] > 0.5 else "black",
        )
    axis.set_xticks(range(len(GROUP_NAMES)), GROUP_NAMES, rotation=45, ha="right")
    axis.set_yticks(range(len(GROUP_NAMES)), GROUP_NAMES)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title("Confusion matrix (colour: share of the actual group)")
    figure.tight_layout()
    return figure


def _calibration_figure(plt, calibration: pd.DataFrame):
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    axis.plot(calibration["confidence"], calibration["accuracy"], "o-", label="model")
    axis.set_xlabel("confidence")
    axis.set_ylabel("accuracy")
    axis.set_title("Reliability")
    axis.legend()
    return figure


def _mistakes_figure(plt, mistakes: pd.DataFrame, images_dir: Path):
    from PIL import Image

    columns = 4
    rows = max(1, int(np.ceil(len(mistakes) / columns)))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 2.4, rows * 2.8), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (_, row) in zip(axes.flat, mistakes.iterrows(), strict=False):
        axis.imshow(Image.open(images_dir / row["path"]).convert("RGB"))
        axis.set_title(
            f"true {GROUP_NAMES[row['age_group']]} ({row['age']})\npred {GROUP_NAMES[row['predicted']]} "
            f"{row['confidence']:.0%}",
            fontsize=8,
        )
    figure.suptitle("Most confident mistakes")
    figure.tight_layout()
    return figure


def plot_curves(history: pd.DataFrame, path: Path) -> Path:
    """Training curves per epoch: accuracy (train, validation, probe set) and loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for column, label in (
        ("accuracy", "train"),
        ("val_accuracy", "validation"),
        ("probe_accuracy", "probe set"),
    ):
        if column in history:
            left.plot(history["epoch"], history[column], marker=".", label=label)
    for column in ("loss", "val_loss"):
        if column in history:
            right.plot(history["epoch"], history[column], marker=".", label=column)
    phase_change = history.loc[history["phase"] == "finetune", "epoch"]
    for axis in (left, right):
        if len(phase_change):
            axis.axvline(phase_change.min() - 0.5, color="grey", linestyle=":", label="fine-tuning starts")
        axis.set_xlabel("epoch")
        axis.legend()
    left.set_title("Accuracy")
    right.set_title("Loss")
    figure.tight_layout()
    return write_png(figure, path)
