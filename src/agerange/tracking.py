"""Runs and logging: every MLflow run of the project, its params, metrics, artifacts and models.

The tracking store is a folder (default `mlruns/`): a SQLite database `mlflow.db` for runs and
the registry, and `artifacts/` for files. No server is needed to log; `mlflow ui` reads it.
Entry points point MLflow at a store once (`use_store` with the folder, or `use_tracking_uri`
with the URI a run reference names); library code gets plain callables (hooks) from here.
The registry (versions, aliases) is `agerange.registry`; the serving pyfunc is `agerange.serving`.
"""

import json
import logging
from pathlib import Path
from typing import Any

import mlflow

from agerange.files import write_json
from agerange.provenance import pinned

log = logging.getLogger(__name__)

EXPERIMENT = "agerange"
STORE_FILE = "mlflow.db"


def store_uri(store: Path) -> str:
    """The tracking URI of a store folder (SQLite backend)."""
    return f"sqlite:///{(Path(store).resolve() / STORE_FILE).as_posix()}"


def use_tracking_uri(uri: str) -> None:
    """Point MLflow's runs and registry at an existing store, by its tracking URI."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def use_store(store: Path, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store folder and make sure the experiment exists; returns its id."""
    import fcntl

    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    use_tracking_uri(store_uri(store))
    # Processes that open a new store together (sweep workers) would race to create its
    # tables; a file lock lets the first one build the database while the others wait.
    with open(store / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_experiment(experiment, store)


def open_store(store: Path) -> str:
    """Like `use_store`, for a store that must already exist (reading models, not logging runs)."""
    if not (Path(store) / STORE_FILE).is_file():
        raise FileNotFoundError(f"{store}: no MLflow tracking store here (run `dvc repro` first)")
    return use_store(store)


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
    """Tag the active run (values as text)."""
    mlflow.set_tags({key: str(value) for key, value in tags.items()})


def epoch_hook(prefix: str = ""):
    """A training hook that logs each epoch's metrics at its global epoch as the step."""

    def hook(phase: str, epoch: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({f"{prefix}{key}": value for key, value in metrics.items()}, step=epoch)

    return hook


def log_metrics(metrics: dict[str, float], prefix: str = "", step: int | None = None) -> None:
    """Log the numeric entries of `metrics` to the active run (others, such as names, are skipped)."""
    numeric = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    mlflow.log_metrics(numeric, step=step)


def log_artifacts(paths: list[Path], folder: str | None = None) -> None:
    """Log files and folders to the active run, under `folder`."""
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
            pip_requirements=pinned("tensorflow", "keras", "numpy", "pillow"),
        )
        mlflow.log_artifacts(folder, artifact_path="model")
    return f"runs:/{active_run_id()}/model"


def log_serving_model(folder: Path, run_id: str) -> str:
    """Add the saved serving model to a training run as its `serving_model` artifact; returns its URI."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(folder), artifact_path="serving_model")
    return f"runs:/{run_id}/serving_model"


def active_run_id() -> str:
    """The id of the run being logged to."""
    return mlflow.active_run().info.run_id


def write_run_reference(path: Path, run_id: str, model_uri: str | None = None) -> None:
    """Remember which run a DVC stage logged to (and in which store), so the next stage logs to it."""
    write_json({"run_id": run_id, "model_uri": model_uri, "tracking_uri": mlflow.get_tracking_uri()}, path)


def read_run_reference(path: Path) -> dict[str, str]:
    """The run reference a stage wrote: run_id, model_uri and the store's tracking_uri.

    Reading sets nothing: the caller passes `tracking_uri` to `use_tracking_uri`.
    """
    return json.loads(Path(path).read_text())


def log_drift(
    experiment_id: str,
    model_uri: str,
    model_version: str | None,
    photos: str,
    summary: dict[str, Any],
    files: list[Path],
) -> str:
    """Log a drift report as a run of its own, tagged with the model version it was made with.

    The verdicts are the run's metrics (drifted columns, embedding score, p-values, accuracy on
    labelled photos); the summary and reports are its artifacts. Returns the run id.
    """
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift {Path(photos).name}") as run:
        set_tags({"kind": "drift", "model_uri": model_uri, "model_version": model_version, "photos": photos})
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
    return run.info.run_id
