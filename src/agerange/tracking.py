"""Every MLflow call of the project: runs, per-epoch metrics, artifacts, models, the registry.

The tracking store is a folder (default `mlruns/`): a SQLite database `mlflow.db` for runs and
the registry, and `artifacts/` for files. No server is needed to log; `mlflow ui` reads it.
Entry points call `use_store` once; library code gets plain callables (hooks) from here.
"""

import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow

log = logging.getLogger(__name__)

EXPERIMENT = "agerange"
MODEL_NAME = "agerange"
STORE_FILE = "mlflow.db"


def store_uri(store: Path) -> str:
    """The tracking URI of a store folder (SQLite backend)."""
    return f"sqlite:///{(Path(store).resolve() / STORE_FILE).as_posix()}"


def use_store(store: Path, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store folder and make sure the experiment exists; returns its id."""
    import fcntl

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(store_uri(store))
    mlflow.set_registry_uri(store_uri(store))
    # Processes that open a new store together (sweep workers) would race to create its
    # tables; a file lock lets the first one build the database while the others wait.
    with open(store / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_experiment(experiment, store)


def _ensure_experiment(experiment: str, store: Path) -> str:
    """The experiment id, creating the experiment (artifacts inside the store) on first use."""
    # The kind tag makes the UI open on the runs table (model training), not the GenAI overview.
    kind = {"mlflow.experimentKind": "custom_model_development"}
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        if found.tags.get("mlflow.experimentKind") != kind["mlflow.experimentKind"]:
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, *next(iter(kind.items())))
        return found.experiment_id
    artifacts = (store.resolve() / "artifacts").as_uri()
    return mlflow.create_experiment(experiment, artifact_location=artifacts, tags=kind)


def git_commit(root: Path = Path(".")) -> str:
    """The current git commit (with '-dirty' when the tree has changes), or 'unknown'."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_version(lock_file: Path = Path("dvc.lock"), outputs: tuple[str, ...] = ()) -> dict[str, str]:
    """DVC hashes (md5) of data outputs, read from dvc.lock: the exact data a run used."""
    import yaml

    if not Path(lock_file).is_file():
        return {}
    lock = yaml.safe_load(Path(lock_file).read_text()) or {}
    versions = {}
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if not outputs or out["path"] in outputs:
                versions[out["path"]] = out.get("md5", "")
    return versions


def start_run(experiment_id: str, run_name: str, resume_run_id: str | None = None, nested: bool = False):
    """Start (or resume, after an interruption) a run; use as a context manager."""
    if resume_run_id:
        return mlflow.start_run(run_id=resume_run_id)
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name, nested=nested)


def log_params(params: dict[str, Any], prefix: str = "") -> None:
    """Log a (possibly nested) dict of params, flattened with dots."""
    flat = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for child_key, child in value.items():
                walk(child, f"{key}.{child_key}" if key else str(child_key))
        else:
            flat[key] = value

    walk(params, prefix)
    mlflow.log_params({key: str(value)[:6000] for key, value in flat.items()})


def set_tags(tags: dict[str, Any]) -> None:
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def epoch_hook(prefix: str = ""):
    """A training hook that logs each epoch's metrics at its global epoch as the step."""

    def hook(phase: str, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({f"{prefix}{key}": value for key, value in metrics.items()}, step=epoch)

    return hook


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    numeric = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    mlflow.log_metrics(numeric, step=step)


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    for path in paths:
        if Path(path).is_dir():
            mlflow.log_artifacts(
                str(path), artifact_path=f"{folder}/{Path(path).name}" if folder else Path(path).name
            )
        else:
            mlflow.log_artifact(str(path), artifact_path=folder)


def log_dataset(table, name: str, source: str, context: str) -> None:
    """Record a data table the run used (name, digest, schema, source) as a run input."""
    dataset = mlflow.data.from_pandas(table, source=source, name=name, targets="age_group")
    mlflow.log_input(dataset, context=context)


def log_keras_model(model, info: dict[str, Any], input_example) -> str:
    """Log the Keras model with its signature, an input example and its settings; returns its URI.

    Saved to a local folder first, then logged as the run's `model` artifact: mlflow.keras's
    log_model (3.17) writes the input example before creating its folder and fails.
    """
    import tempfile

    import numpy as np
    from mlflow.models import infer_signature

    example = np.asarray(input_example, dtype=np.float32)
    signature = infer_signature(example, np.asarray(model(example), dtype=np.float32))
    with tempfile.TemporaryDirectory() as folder:
        mlflow.keras.save_model(
            model,
            folder,
            signature=signature,
            input_example=example,
            metadata={"agerange": info},
            pip_requirements=_pip_requirements(),
        )
        mlflow.log_artifacts(folder, artifact_path="model")
    return f"runs:/{active_run_id()}/model"


def save_serving_model(folder: Path, artifacts: dict[str, Path], info: dict[str, Any]) -> Path:
    """Save the pyfunc that `mlflow models serve` runs (photo bytes in, one row per face out).

    The agerange package travels inside the model (code_paths), so serving needs no checkout.
    The folder is replaced atomically.
    """
    import io

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from PIL import Image

    import agerange
    from agerange.files import atomic_path
    from agerange.serving import OUTPUT_COLUMNS, AgeRangeModel

    kinds = {
        "photo": DataType.long,
        "face": DataType.long,
        "age_group": DataType.string,
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
            pip_requirements=_pinned("ai-edge-litert", "numpy", "pillow", "pandas", "mlflow"),
        )
    return Path(folder)


def log_serving_model(folder: Path, run_id: str) -> str:
    """Add the saved serving model to a training run as its `serving_model` artifact; returns its URI."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(folder), artifact_path="serving_model")
    return f"runs:/{run_id}/serving_model"


def download_model(model_uri: str) -> Path:
    """A local copy of a logged or registered model (`models:/agerange@champion`, `runs:/...`)."""
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(model_uri))


def _pinned(*packages: str) -> list[str]:
    """Requirement lines pinning packages to the versions installed here."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in packages]


def _pip_requirements() -> list[str]:
    return _pinned("tensorflow", "keras", "numpy", "pillow")


def load_model_info(model_uri: str) -> dict[str, Any]:
    """The settings a logged model carries (input size, class names, backbone, preprocessing)."""
    from mlflow.models import Model

    return Model.load(model_uri).metadata["agerange"]


def load_keras_model(model_uri: str):
    return mlflow.keras.load_model(model_uri)


def active_run_id() -> str:
    return mlflow.active_run().info.run_id


def write_run_reference(path: Path, run_id: str, model_uri: str | None = None) -> None:
    """Remember which run a DVC stage logged to, so the next stage logs to the same run."""
    from agerange.files import write_json

    write_json({"run_id": run_id, "model_uri": model_uri, "tracking_uri": mlflow.get_tracking_uri()}, path)


def read_run_reference(path: Path) -> dict[str, str]:
    """The run reference a train stage wrote, with MLflow pointed at that run's store."""
    reference = json.loads(Path(path).read_text())
    store = Path(reference["tracking_uri"].removeprefix("sqlite:///")).parent
    use_store(store)
    return reference


CHAMPION = "champion"
CHALLENGER = "challenger"


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


def register(
    model_uri: str,
    metric: str,
    score: float,
    tags: dict[str, Any],
    greater_is_better: bool = True,
    name: str = MODEL_NAME,
    score_from_tags: Callable[[dict[str, str]], float] | None = None,
) -> dict[str, Any]:
    """Register a logged model; move `champion` to it only if it beats the current champion.

    The comparison uses the `metric` tag stored on each version when it was registered; a
    champion registered before that metric existed is scored by `score_from_tags` (its other
    tags), and one that cannot be scored is kept. A version that does not win gets the
    `challenger` alias. No version is ever deleted or
    overwritten: aliases move, versions stay. A version from the champion's own training run
    with the same score is the same weights packaged anew (say, with a newer serving wrapper):
    it takes over `champion`, since it is not worse.

    Returns:
        version, alias given (champion or challenger), the metric and both scores.
    """
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name, description="Age-group classifier from face chips (agerange)")
    try:
        incumbent_version = client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        incumbent_version = None
    incumbent = _version_score(incumbent_version.tags, metric, score_from_tags) if incumbent_version else None
    version = mlflow.register_model(
        model_uri, name, tags={metric: str(score), **{k: str(v) for k, v in tags.items()}}
    )
    repackaged = (
        incumbent_version is not None
        and "run_id" in tags
        and incumbent_version.tags.get("run_id") == str(tags["run_id"])
        and incumbent == score
    )
    comparable = incumbent_version is None or incumbent is not None
    wins = repackaged or (comparable and beats(score, incumbent, greater_is_better))
    alias = CHAMPION if wins else CHALLENGER
    if alias == CHAMPION and incumbent_version is not None:
        client.set_registered_model_alias(name, "previous_champion", incumbent_version.version)
    client.set_registered_model_alias(name, alias, version.version)
    return {
        "version": int(version.version),
        "alias": alias,
        "repackaged": repackaged,
        "metric": metric,
        "score": score,
        "champion_score_before": incumbent,
        "champion_version_before": int(incumbent_version.version) if incumbent_version else None,
    }


def aliases(name: str = MODEL_NAME) -> dict[str, int]:
    """Alias -> version number of a registered model."""
    model = mlflow.MlflowClient().get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def log_drift(
    model_uri: str, photos: str, summary: dict[str, Any], files: list[Path], name: str = MODEL_NAME
) -> str:
    """Log a drift report as a run of its own, tied to the registered version it was made with.

    The run carries the version number and alias as tags and the verdicts as metrics; the
    model version gets the latest verdict as tags, so the registry page shows it.
    """
    client = mlflow.MlflowClient()
    version = None
    if model_uri.startswith("models:/") and "@" in model_uri:
        version = client.get_model_version_by_alias(name, model_uri.rsplit("@", 1)[1]).version
    experiment_id = use_store(Path(mlflow.get_tracking_uri().removeprefix("sqlite:///")).parent)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift {Path(photos).name}") as run:
        set_tags({"kind": "drift", "model_uri": model_uri, "model_version": version, "photos": photos})
        new = summary["new_photos"]
        metrics = {
            "drifted_columns": len(new["drifted"]),
            "embedding_auc": new["embedding"].get("score", float("nan")),
            **{f"p_value.{column}": verdict["p_value"] for column, verdict in new["columns"].items()},
            **{key: value for key, value in summary.get("accuracy", {}).items()},
            "control_drifted_columns": len(summary["control"]["drifted"]),
        }
        mlflow.log_metrics(metrics)
        log_artifacts(files, folder="drift")
    if version is not None:
        client.set_model_version_tag(name, version, "drift.photos", photos)
        client.set_model_version_tag(name, version, "drift.drifted", ",".join(new["drifted"]) or "none")
        client.set_model_version_tag(name, version, "drift.run_id", run.info.run_id)
    return run.info.run_id
