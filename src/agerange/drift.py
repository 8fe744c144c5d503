"""Drift: how new photos differ from the photos the champion was trained on.

Every photo, training chip or new photo alike, goes through the same predict path
(`AgePredictor`: detect, align, classify) and is described by one row: image statistics
(brightness, contrast, blur, colour, size, aspect), what the detector saw (face count, size of
the largest face relative to the photo, its confidence, its eye spacing: how far the head is
turned), the predicted age group and the
penultimate-layer embedding of the largest face. Evidently compares new rows with training rows.

The tests are calibrated so that a held-back slice of UTKFace itself shows no drift: each
column's test runs at a Bonferroni-corrected level (5% over all columns together), and the
embedding test is a classifier's ROC AUC at telling the two sets apart, which is 0.5 when they
cannot be told apart whatever the embedding's scale.
"""

import copy
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from agerange import metrics
from agerange.inference import range_name
from agerange.ingest import QUALITY_SIZE, image_quality
from agerange.preprocess import ImageError, read_image

log = logging.getLogger(__name__)

FEATURES = [
    "brightness",
    "contrast",
    "blur",
    "red",
    "green",
    "blue",
    "saturation",
    "width",
    "height",
    "aspect",
    "face_count",
    "face_box_fraction",
    "detector_score",
    "eye_spacing",  # lower as heads turn away from the camera (faces.Face.eye_spacing)
]
PREDICTION = "predicted_group"
EMBEDDING = "penultimate"
EMBEDDING_DIMENSIONS = 16  # principal components of the embedding kept for the drift test
MIN_EMBEDDING_FACES = 10  # fewer faces in a set: the embedding test is skipped, and says so


def describe_photo(predictor, image, name: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """One row of drift features for a photo, and the embedding of its largest face (None: no face)."""
    thumbnail = image.resize((QUALITY_SIZE, QUALITY_SIZE), resample=1)  # the ingest stage's scale
    row: dict[str, Any] = {"photo": name, **image_quality(np.asarray(thumbnail, dtype=np.float32) / 255.0)}
    row.update(width=image.width, height=image.height, aspect=image.width / image.height)
    result, embeddings = predictor.predict_image(image, name)
    row["face_count"] = len(result.faces)
    if result.faces:
        largest = result.faces[0]  # faces come largest first
        row["face_box_fraction"] = (largest.box[2] - largest.box[0]) / image.width
        row["detector_score"] = largest.detector_score
        row["eye_spacing"] = largest.eye_spacing
        row[PREDICTION] = largest.age_group
        row["expected_age"] = largest.expected_age
        row["age_range"] = largest.age_range  # None unless the predictor answers in ranges
        return row, embeddings[0]
    row.update(
        face_box_fraction=0.0, detector_score=0.0, eye_spacing=0.0, expected_age=np.nan, age_range=None
    )
    row[PREDICTION] = "no face"
    return row, None


def describe_photos(predictor, paths: list[Path], names: list[str] | None = None) -> pd.DataFrame:
    """Drift features for many photos; unreadable photos are logged and left out."""
    rows, embeddings = [], []
    for path, name in tqdm(
        list(zip(paths, names or [str(p) for p in paths], strict=True)), desc="describe", unit=" photo"
    ):
        try:
            image = read_image(Path(path), name)
        except ImageError as error:
            log.warning("%s", error)
            continue
        row, embedding = describe_photo(predictor, image, name)
        rows.append(row)
        embeddings.append(embedding)
    table = pd.DataFrame(rows)
    width = next((len(e) for e in embeddings if e is not None), 0)
    if not rows or not width:
        return table
    matrix = np.stack([e if e is not None else np.full(width, np.nan) for e in embeddings])
    # one concat, not a column at a time (which fragments the frame and warns per column)
    columns = pd.DataFrame(matrix, columns=[f"emb_{column}" for column in range(width)], index=table.index)
    return pd.concat([table, columns], axis=1)


def embedding_projection(reference: pd.DataFrame, dimensions: int = EMBEDDING_DIMENSIONS):
    """Principal axes of the reference embeddings: (mean, components), fitted on reference only."""
    columns = [c for c in reference.columns if c.startswith("emb_")]
    matrix = reference[columns].dropna().to_numpy(dtype=np.float64)
    mean = matrix.mean(axis=0)
    _, _, axes = np.linalg.svd(matrix - mean, full_matrices=False)
    return columns, mean, axes[:dimensions]


def project(table: pd.DataFrame, projection) -> pd.DataFrame:
    """The table with its raw embedding replaced by its principal components (pc_0, pc_1, ...)."""
    columns, mean, axes = projection
    # a set in which no photo had a face has no embedding columns: its components are all NaN
    components = (table.reindex(columns=columns).to_numpy(dtype=np.float64) - mean) @ axes.T
    projected = table.drop(columns=columns, errors="ignore")
    for index in range(components.shape[1]):
        projected[f"pc_{index}"] = components[:, index]
    return projected


def range_answers(
    described: pd.DataFrame, labels: pd.DataFrame
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The labelled photos' rows of `described`, and their answered and true FairFace range
    indices (NO_ANSWER where no face was found).

    The answer is the FairFace range the predictor chose (column `age_range`, from the model's
    range probabilities: `AgePredictor` with FairFace's ranges), or where it gave none, the range
    of its expected age.

    Args:
        described: `describe_photos` or `answers_table` output (column `photo` is the file name).
        labels: FairFace labels (`filename`, `age_min`; other columns are ignored).
    """
    # only the label columns used: FairFace's own labels.csv also has an `age_range` column, which
    # would rename the answer's to `age_range_x` and silently judge the expected age's range instead
    merged = described.merge(labels[["filename", "age_min"]], left_on="photo", right_on="filename")
    if (unaged := merged["age_min"].isna()).any():  # no truth: NO_ANSWER would count a missing answer right
        log.warning("%d labelled new photos have no age and are not judged", int(unaged.sum()))
        merged = merged[~unaged].reset_index(drop=True)
    predicted = metrics.fairface_ranges(merged["expected_age"].to_numpy(np.float64))
    if "age_range" in merged:
        names = [range_name(*pair) for pair in metrics.FAIRFACE_RANGES]
        chosen = np.array([names.index(name) if name in names else -1 for name in merged["age_range"]])
        predicted = np.where(chosen >= 0, chosen, predicted)
    return merged, predicted, metrics.fairface_ranges(merged["age_min"].to_numpy(np.float64))


def range_accuracy(described: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
    """Accuracy at FairFace's range level: the largest face's answer (`range_answers`) against
    the label; {} when no photo is labelled."""
    merged, predicted, truth = range_answers(described, labels)
    if merged.empty:
        return {}
    found = predicted != metrics.NO_ANSWER
    return {
        "labelled_photos": int(len(merged)),
        "photos_with_face": int(found.sum()),
        "range_accuracy": metrics.exact_accuracy(predicted[found], truth[found]) if found.any() else 0.0,
        "range_within_one": metrics.within_one(predicted[found], truth[found]) if found.any() else 0.0,
        # photos where no face was found count as wrong here
        "range_accuracy_all_photos": metrics.exact_accuracy(predicted, truth),
    }


def new_photo_accuracy(predictor, folder: Path) -> dict[str, float]:
    """FairFace-range accuracy of `predictor` on a folder of new photos with a `labels.csv`
    (`filename`, `age_min`), through the whole predict path; {} when the folder has no labels."""
    if (labels := photo_labels(folder)) is None:
        return {}
    names = labels["filename"].tolist()
    fairface = answering_in_fairface_ranges(predictor)
    results = [result for _, result in fairface.stream([Path(folder) / n for n in names], names=names)]
    return range_accuracy(answers_table(results), labels)


def photo_labels(folder: Path) -> pd.DataFrame | None:
    """A new-photo folder's `labels.csv` (`filename`, `age_min`, ...), or None when it has none."""
    labels_file = Path(folder) / "labels.csv"
    return pd.read_csv(labels_file) if labels_file.is_file() else None


def answers_table(results: list) -> pd.DataFrame:
    """What `range_accuracy` judges of each photo's predictions (`PhotoPrediction`s): `photo`, and
    its largest face's `expected_age`, `age_range` and `eye_spacing` (how far the head is turned;
    NaN and None where no face was found). Unreadable photos are logged and left out, as
    `describe_photos` leaves them out."""
    for result in results:
        if result.error is not None:
            log.warning("%s", result.error)
    results = [result for result in results if result.error is None]
    return pd.DataFrame(
        {
            "photo": [result.photo for result in results],
            "expected_age": [result.faces[0].expected_age if result.faces else np.nan for result in results],
            "age_range": [result.faces[0].age_range if result.faces else None for result in results],
            "eye_spacing": [result.faces[0].eye_spacing if result.faces else np.nan for result in results],
        }
    )


def answering_in_fairface_ranges(predictor):
    """A copy of `predictor` that also answers in FairFace's age ranges (same model and detector)."""
    fairface = copy.copy(predictor)
    fairface.ranges = list(metrics.FAIRFACE_RANGES)
    return fairface


def homogeneity_p_value(reference: pd.Series, current: pd.Series) -> float:
    """Chi-square test that two samples share one categorical distribution (a 2 x k table).

    Evidently's own `chisquare` tests the current counts against the reference's frequencies as
    if those were exact, so a single photo in a category the reference lacks gives p = 0.
    """
    from scipy.stats import chi2_contingency

    table = pd.crosstab(
        np.r_[np.zeros(len(reference)), np.ones(len(current))],
        np.r_[reference.astype(str).to_numpy(), current.astype(str).to_numpy()],
    )
    return 1.0 if table.shape[1] < 2 else float(chi2_contingency(table.to_numpy())[1])


def _register_homogeneity_test() -> str:
    from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
    from evidently.legacy.core import ColumnType

    def test(reference, current, feature_type, threshold):
        p_value = homogeneity_p_value(reference.dropna(), current.dropna())
        return p_value, p_value < threshold

    name = "chi2_homogeneity"
    register_stattest(
        StatTest(name=name, display_name="chi-square homogeneity p_value",
                 allowed_feature_types=[ColumnType.Categorical]),
        default_impl=test,
    )  # fmt: skip
    return name


def drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    html: Path | None = None,
    alpha: float = 0.05,
    embedding_auc: float = 0.6,
) -> dict[str, Any]:
    """Evidently drift report of `current` against `reference`; returns a JSON-ready summary.

    Args:
        reference, current: `describe_photos` tables.
        html: where to write Evidently's HTML report (atomically), if given.
        alpha: family-wise false-alarm rate over all columns (each test runs at alpha / columns).
        embedding_auc: ROC AUC above which the embeddings count as drifted, raised for small sets
            to what chance alone would exceed at the per-column level (`chance_auc`).
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import ModelDriftMethod
    from evidently.presets import DataDriftPreset
    from evidently.tests import lte

    projection = embedding_projection(reference)
    reference, current = project(reference, projection), project(current, projection)
    components = [c for c in reference.columns if c.startswith("pc_")]
    columns = FEATURES + [PREDICTION]
    level = alpha / len(columns)
    features = DataDefinition(numerical_columns=FEATURES, categorical_columns=[PREDICTION])
    preset = DataDriftPreset(
        columns=columns,
        num_method="ks",
        cat_method=_register_homogeneity_test(),
        threshold=level,
        drift_share=0.5,
    )
    keep = ["photo", *columns]
    # Evidently also correlates the columns; one without spread in a set (one face in every
    # chip) is 0 / 0 there, which it reads as no correlation: numpy's warnings about it, a dozen
    # lines in every run, ask nothing of the user
    with np.errstate(divide="ignore", invalid="ignore"):
        snapshot = Report([preset], include_tests=True).run(
            Dataset.from_pandas(current[keep], data_definition=features),
            Dataset.from_pandas(reference[keep], data_definition=features),
        )  # Evidently 0.7 takes the current data first
    summary = summarize(snapshot.dict(), level)
    # The embedding test compares faces only: photos without a face have no embedding, and as
    # one point each they would pull the classifier's AUC towards 0.5 (drift missed).
    with_face = [table.dropna(subset=components)[["photo", *components]] for table in (current, reference)]
    face_snapshot = None
    if min(len(table) for table in with_face) >= MIN_EMBEDDING_FACES:
        embeddings = DataDefinition(embeddings={EMBEDDING: components})
        # Evidently scores the classifier on a held-out half of each set
        needed = max(embedding_auc, chance_auc(len(with_face[0]) // 2, len(with_face[1]) // 2, level))
        drift = EmbeddingsDrift(
            embeddings_name=EMBEDDING,
            drift_method=ModelDriftMethod(threshold=needed, bootstrap=False),
            tests=[lte(needed)],
        )
        face_snapshot = Report([drift], include_tests=True).run(
            *(Dataset.from_pandas(table, data_definition=embeddings) for table in with_face)
        )
        summary = merge_embedding_verdict(summary, summarize(face_snapshot.dict(), level))
        summary["embedding"]["threshold"] = needed
    else:
        counts = f"new photos {len(with_face[0])}, reference {len(with_face[1])}"
        skipped = f"fewer than {MIN_EMBEDDING_FACES} faces in a set ({counts})"
        summary["embedding"] = {"drifted": False, "test": "classifier ROC AUC", "skipped": skipped}
    if html is not None:
        from agerange.files import atomic_path

        with atomic_path(Path(html)) as temporary:
            snapshot.save_html(str(temporary))
        faces_page = Path(html).with_name(Path(html).stem + "_embeddings.html")
        if face_snapshot is not None:
            with atomic_path(faces_page) as temporary:
                face_snapshot.save_html(str(temporary))
        else:
            faces_page.unlink(missing_ok=True)  # an earlier run's page would read as this one's
    return summary


def chance_auc(current: int, reference: int, level: float) -> float:
    """The ROC AUC that held-out scores unrelated to the set exceed with probability `level`.

    With no drift, the classifier's scores on its held-out half carry no information about
    which set a row came from, so its AUC is the Mann-Whitney statistic of random scores: mean
    0.5, standard deviation sqrt((n1 + n2 + 1) / (12 n1 n2)). A fixed cut-off of 0.6 would be
    crossed by chance at 30 photos about 8% of the time, not at the stated level.
    """
    from scipy.stats import norm

    spread = math.sqrt((current + reference + 1) / (12 * max(current, 1) * max(reference, 1)))
    return 0.5 + float(norm.isf(level)) * spread


def merge_embedding_verdict(features: dict[str, Any], faces: dict[str, Any]) -> dict[str, Any]:
    """The feature report's summary with the faces-only report's embedding verdict."""
    drifted = [name for name in features["drifted"] if name != EMBEDDING]
    drifted += [EMBEDDING] if faces["embedding"].get("drifted") else []
    return {**features, "drifted": drifted, "drift": bool(drifted), "embedding": faces["embedding"]}


def summarize(snapshot: dict[str, Any], level: float) -> dict[str, Any]:
    """Per-column verdicts, the embedding verdict and the drifted columns from an Evidently snapshot."""
    status = {
        test["metric_config"]["metric_id"]: str(getattr(test["status"], "value", test["status"]))
        for test in snapshot["tests"]
    }
    columns, embedding = {}, {}
    for metric in snapshot["metrics"]:
        config, kind = metric["config"], metric["config"]["type"]
        drifted = status.get(metric["id"]) == "FAIL"
        if kind.endswith("ValueDrift"):
            columns[config["column"]] = {
                "drifted": drifted,
                "test": config["method"],
                "p_value": float(metric["value"]),
            }
        elif kind.endswith("EmbeddingsDrift"):
            embedding = {"drifted": drifted, "test": "classifier ROC AUC", "score": float(metric["value"])}
    drifted = [name for name, verdict in columns.items() if verdict["drifted"]]
    if embedding.get("drifted"):
        drifted.append(EMBEDDING)
    return {
        "drifted": drifted,
        "drift": bool(drifted),
        "level_per_column": level,
        "columns": columns,
        "embedding": embedding,
    }


def sample_chips(splits: pd.DataFrame, split: str, size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of at most `size` rows of one split."""
    rows = splits[splits["split"] == split]
    return rows.sample(min(size, len(rows)), random_state=seed)


def describe_sets(
    predictor, photos: list[Path], splits: pd.DataFrame, images: Path, settings, folder: Path
) -> dict[str, pd.DataFrame]:
    """The reference (training chips), the control (held-back test chips) and the new photos, described.

    Args:
        folder: the new photos' folder; a photo is named by its path under it.
        settings: the drift section (`DriftConfig`: reference_size, control_size, seed).
    """
    tables = {}
    for name, rows in (
        ("reference", sample_chips(splits, "train", settings.reference_size, settings.seed)),
        ("control", sample_chips(splits, "test", settings.control_size, settings.seed)),
    ):
        tables[name] = describe_photos(predictor, [images / p for p in rows["path"]], list(rows["path"]))
    # new photos also answered in FairFace's ranges, for range accuracy when they carry labels
    # named by their path under the photos folder, as labels.csv names them (`filename`)
    names = [p.relative_to(folder).as_posix() if p.is_relative_to(folder) else p.name for p in photos]
    tables["new_photos"] = describe_photos(answering_in_fairface_ranges(predictor), photos, names)
    return tables


def drift_summary(tables: dict[str, pd.DataFrame], photos: Path, reports: Path, settings) -> dict[str, Any]:
    """Both reports (new photos and control, each against the reference) with their verdicts.

    Writes `<set>_vs_training.html` and `<set>_features.csv` into `reports`; when the photos
    folder has a labels.csv, adds FairFace range accuracy, and that accuracy by condition
    (`new_photos_accuracy_by_condition.csv`, and the bins where it falls most).
    """
    reports.mkdir(parents=True, exist_ok=True)
    summary = {"model": settings.model, "photos": str(photos), "counts": {}}
    for name in ("new_photos", "control"):
        summary[name] = drift_report(
            tables["reference"],
            tables[name],
            html=reports / f"{name}_vs_training.html",
            alpha=settings.alpha,
            embedding_auc=settings.embedding_auc,
        )
    for name, table in tables.items():
        summary["counts"][name] = {"photos": len(table), "with_face": int((table["face_count"] > 0).sum())}
        table.drop(columns=[c for c in table.columns if c.startswith("emb_")]).to_csv(
            reports / f"{name}_features.csv", index=False
        )
    by_condition_file = reports / "new_photos_accuracy_by_condition.csv"
    by_condition_file.unlink(missing_ok=True)  # a run without labels must not leave an older run's table
    if (labels := photo_labels(photos)) is not None:
        summary["accuracy"] = range_accuracy(tables["new_photos"], labels)
        by_condition = range_accuracy_by_condition(tables["new_photos"], labels)
        if len(by_condition):
            by_condition.to_csv(by_condition_file, index=False)
            summary["weakest_conditions"] = metrics.weakest_conditions(by_condition)
    return summary


def range_accuracy_by_condition(described: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The labelled new photos' range accuracy per quarter of each photo and face condition
    (`metrics.accuracy_by_condition` over the drift features): which real-photo conditions fail.
    Only photos with a face, as `range_accuracy`'s figure (those without are its `photos_with_face`
    shortfall); an empty table when none is labelled."""
    merged, predicted, truth = range_answers(described, labels)
    found = predicted != metrics.NO_ANSWER
    conditions = [column for column in FEATURES if column not in ("width", "height", "aspect", "face_count")]
    table = merged.loc[found, conditions].astype(np.float64).reset_index(drop=True)
    return metrics.accuracy_by_condition(table, predicted[found], truth[found], conditions)


def summary_line(summary: dict[str, Any]) -> str:
    """What drifted, for new photos and the control, and the FairFace range accuracy if measured."""
    new, control = summary["new_photos"], summary["control"]
    line = (
        f"new photos drifted on {', '.join(new['drifted']) or 'nothing'}; "
        f"held-back UTKFace control drifted on {', '.join(control['drifted']) or 'nothing'}"
    )
    if summary.get("accuracy"):
        accuracy = summary["accuracy"]
        line += (
            f"; FairFace range accuracy {accuracy['range_accuracy']:.3f} "
            f"(within one range {accuracy['range_within_one']:.3f})"
        )
        if summary.get("weakest_conditions"):
            line += "; it falls most for " + "; ".join(summary["weakest_conditions"])
    return line
