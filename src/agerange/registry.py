"""The MLflow Model Registry: versions, aliases, the champion rule, and fetching a model by URI.

Works on the store the entry point chose (`tracking.use_store` or `tracking.use_tracking_uri`).
`champion` moves only to a better model, by the score each version carries as a tag; nothing is
ever deleted or overwritten: aliases move, versions stay.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
from mlflow.models import Model

from agerange import tracking
from agerange.config import RegisterConfig
from agerange.provenance import data_version, git_commit

MODEL_NAME = "agerange"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"

# How each side's figures are measured, by version (1 for a side not listed): bump a side's
# number when its figures change meaning, so that a champion scored the old way is not compared
# with a new score as if alike. Every version records them all in its MEASURE_TAG.
# new_photos 2: the range the predictor chose is judged (before commit 1d6a8db FairFace's
# labels.csv hid it and the range of the expected age was judged instead).
SIDE_MEASURES = {"new_photos": 2}
MEASURE_TAG = "score_measure"
RECORDED_MEASURES = ",".join(f"{side}:{number}" for side, number in sorted(SIDE_MEASURES.items()))


def metric_score(figures: dict, metric: str, split: str) -> float:
    """The value of `metric` among `figures` (named `<side>_<key>`, as a version's tags are);
    `a+b` is the mean of a and b.

    A part is a key of `split`'s evaluation (`accuracy` reads `val_accuracy`) or names its side
    (`new_photos.range_accuracy`: the labelled new photos' figure, the same for every split).
    """
    keys = [part.replace(".", "_", 1) if "." in part else f"{split}_{part}" for part in metric.split("+")]
    return sum(float(figures[key]) for key in keys) / len(keys)


def metric_sides(metric: str) -> set[str]:
    """The sides a register metric reads besides its split (`new_photos` in
    `accuracy+new_photos.range_accuracy`)."""
    return {part.split(".", 1)[0] for part in metric.split("+") if "." in part}


def _measures_of(sides: set[str], recorded: str | None) -> str:
    """How `sides` were measured, from a version's MEASURE_TAG (None: a version registered before
    the tag existed, every side measured the first way): 'new_photos:2'."""
    # an item without a version (a hand-edited tag) reads as an unknown measure, never as alike
    items = [item.partition(":") for item in recorded.split(",") if item] if recorded else []
    versions = {side: version or "unknown" for side, _, version in items}
    return ",".join(f"{side}:{versions.get(side, '1')}" for side in sorted(sides & SIDE_MEASURES.keys()))


def beats(candidate: float, incumbent: float | None, greater_is_better: bool = True) -> bool:
    """Whether a candidate score strictly beats the incumbent's (no incumbent: it does)."""
    if incumbent is None:
        return True
    return candidate > incumbent if greater_is_better else candidate < incumbent


def _version_score(
    tags: dict[str, str], metric: str, score_from_tags: Callable[[dict[str, str]], float] | None
) -> float | None:
    """A registered version's score: its `metric` tag, else derived from its tags, else None."""
    if metric in tags:
        return float(tags[metric])
    try:
        return float(score_from_tags(tags)) if score_from_tags else None
    except (KeyError, ValueError):
        return None


def _champion(client: mlflow.MlflowClient, name: str):
    """The registered model's champion version (creating the registered model on first use), or None."""
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Age-group classifier from face chips (agerange)")
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException as error:
        # only "no such alias" means no champion: any other failure (a store that is down or
        # locked) must not let the next model take `champion` unexamined
        if error.error_code not in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"):
            raise
        return None


def register(
    model_uri: str,
    metric: str,
    score: float,
    tags: dict[str, Any],
    greater_is_better: bool = True,
    name: str = MODEL_NAME,
    score_from_tags: Callable[[dict[str, str]], float] | None = None,
    sides: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Register a logged model; move `champion` to it only if it beats the current champion.

    The comparison uses the `metric` tag stored on each version when it was registered; a
    champion registered before that metric existed is scored by `score_from_tags` (its other
    tags), and one that cannot be scored is kept. So is one whose figures of the other `sides`
    the metric reads were measured another way (SIDE_MEASURES, recorded in each version's
    `score_measure` tag).
    A version that does not win gets the `challenger` alias. A version from the champion's own
    training run with the same score, or with a score measured another way, is the same
    weights packaged anew (say, with a newer serving wrapper or measurement): it takes over
    `champion`, since nothing shows it is worse.

    Returns:
        version, alias given (champion or challenger), the metric and both scores.
    """
    client = mlflow.MlflowClient()
    incumbent_version = _champion(client, name)
    incumbent = _version_score(incumbent_version.tags, metric, score_from_tags) if incumbent_version else None
    measure = _measures_of(set(sides), RECORDED_MEASURES)
    incumbent_measure = (
        _measures_of(set(sides), incumbent_version.tags.get(MEASURE_TAG)) if incumbent_version else measure
    )
    measured_alike = incumbent_measure == measure
    version = mlflow.register_model(
        model_uri,
        name,
        tags={metric: str(score), MEASURE_TAG: RECORDED_MEASURES, **{k: str(v) for k, v in tags.items()}},
    )
    repackaged = (
        incumbent_version is not None
        and "run_id" in tags
        and incumbent_version.tags.get("run_id") == str(tags["run_id"])
        and (incumbent == score or not measured_alike)
    )
    comparable = incumbent_version is None or (incumbent is not None and measured_alike)
    wins = repackaged or (comparable and beats(score, incumbent, greater_is_better))
    alias = CHAMPION if wins else CHALLENGER
    # the same run repackaged keeps `previous_champion` on the last other model, the one to roll back to
    if alias == CHAMPION and incumbent_version is not None and not repackaged:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, incumbent_version.version)
    client.set_registered_model_alias(name, alias, version.version)
    return {
        "version": int(version.version),
        "alias": alias,
        "repackaged": repackaged,
        "metric": metric,
        "score": score,
        "champion_score_before": incumbent,
        "champion_version_before": int(incumbent_version.version) if incumbent_version else None,
        "measure": measure,
        "champion_measure_before": incumbent_measure,
    }


def register_evaluated(
    model_uri: str, run_id: str, evaluation: dict[str, dict[str, Any]], settings: RegisterConfig
) -> dict[str, Any]:
    """Register a model with its evaluation, scored on `settings.metric` of `settings.split`.

    Every evaluation figure, the git commit and the data's DVC hashes become version tags.
    Raises KeyError when the split or a metric is not in the evaluation.
    """
    split, metric = settings.split, settings.metric
    figures = {f"{side}_{key}": value for side, values in evaluation.items() for key, value in values.items()}
    score = metric_score(figures, metric, split)
    tags = {"run_id": run_id, "git_commit": git_commit(), **figures}
    tags.update({f"data.{path}": md5 for path, md5 in data_version().items()})
    return register(
        model_uri,
        f"{split}_{metric}".replace("+", "_and_"),  # registry tag names allow no '+'
        score,
        tags,
        settings.greater_is_better,
        settings.name,
        score_from_tags=lambda version_tags: metric_score(version_tags, metric, split),
        sides=metric_sides(metric),
    )


def set_description(version: int, text: str, name: str = MODEL_NAME) -> None:
    """Set a registered version's description (markdown, shown by the MLflow UI): its model card."""
    mlflow.MlflowClient().update_model_version(name, str(version), description=text)


def describe_outcome(outcome: dict[str, Any], settings: RegisterConfig) -> str:
    """One sentence: the new version, its score, the alias it got and why."""
    split, metric = settings.split, settings.metric
    before, before_version = outcome["champion_score_before"], outcome["champion_version_before"]
    before_measure, measure = outcome.get("champion_measure_before", ""), outcome.get("measure", "")
    if before_version is not None and before_measure != measure:
        scored = f", {before:.4f}" if before is not None else ""
        then = (
            "its own training run measured anew, so it takes over."
            if outcome["repackaged"]
            else "not comparable, so it is kept (compare the two and move the alias by hand)."
        )
        verdict = (
            f"the champion (version {before_version}{scored}) was measured as {before_measure}, "
            f"this one as {measure}: {then}"
        )
    elif before is not None:
        verdict = f"the champion had {before:.4f} (version {before_version})."
    elif before_version is None:
        verdict = "there was no champion before."
    else:
        verdict = f"the champion (version {before_version}) has no {split} {metric} to compare with: kept."
    return (
        f"{settings.name} version {outcome['version']} ({split} {metric} {outcome['score']:.4f}) is now "
        f"'{outcome['alias']}'; {verdict}"
    )


def version_tags(version: int, name: str = MODEL_NAME) -> dict[str, str]:
    """A registered version's tags."""
    return dict(mlflow.MlflowClient().get_model_version(name, str(version)).tags)


def tag_version(version: int, tags: dict[str, str], name: str = MODEL_NAME) -> None:
    """Set tags on a registered version (a later value replaces an earlier one)."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def aliases(name: str = MODEL_NAME) -> dict[str, int]:
    """Alias -> version number of a registered model."""
    model = mlflow.MlflowClient().get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def alias_version(model_uri: str, name: str = MODEL_NAME) -> str | None:
    """The version a `models:/...@alias` URI points at now; None for any other kind of URI or path."""
    if not (model_uri.startswith("models:/") and "@" in model_uri):
        return None
    return mlflow.MlflowClient().get_model_version_by_alias(name, model_uri.rsplit("@", 1)[1]).version


def record_drift(
    store: str | Path | None,
    model_uri: str,
    photos: str,
    summary: dict[str, Any],
    files: list[Path],
    name: str = MODEL_NAME,
) -> str:
    """Log a drift report as a run of its own, tied to the registered version it was made with.

    The run carries the version number and alias as tags and the verdicts as metrics; the
    model version gets the latest verdict as tags, so the registry page shows it. Returns the run id.
    """
    experiment_id = tracking.use_store(store)
    version = alias_version(model_uri, name)
    run_id = tracking.log_drift(experiment_id, model_uri, version, photos, summary, files)
    if version is not None:
        drifted = ",".join(summary["new_photos"]["drifted"]) or "none"
        client = mlflow.MlflowClient()
        client.set_model_version_tag(name, version, "drift.photos", photos)
        client.set_model_version_tag(name, version, "drift.drifted", drifted)
        client.set_model_version_tag(name, version, "drift.run_id", run_id)
    return run_id


def download_model(model_uri: str) -> Path:
    """A local copy of a logged or registered model (`models:/agerange@champion`, `runs:/...`)."""
    return Path(mlflow.artifacts.download_artifacts(model_uri))


def load_model_info(model_uri: str) -> dict[str, Any]:
    """The settings a logged model carries (input size, class names, backbone, preprocessing)."""
    return Model.load(model_uri).metadata["agerange"]


def load_keras_model(model_uri: str):
    """The Keras model logged at `model_uri` (a run or registry URI)."""
    return mlflow.keras.load_model(model_uri)
