"""Runs and logging: every MLflow run of the project, its params, metrics, artifacts and models.

A store is where runs and registered models live. By default it is a folder, `mlruns/`: a SQLite
database `mlflow.db` for runs and the registry, and `artifacts/` for files; no server is needed to
log, and `mlflow ui` reads it. A team points `--store` (or `MLFLOW_TRACKING_URI`, as MLflow users
expect) at a shared store instead: `postgresql://...` or an `http(s)://` MLflow server, which then
also serves the artifacts. Passwords never go in a store URI (they would end up in run references
and logs): PostgreSQL reads PGPASSWORD or ~/.pgpass, an MLflow server MLFLOW_TRACKING_PASSWORD.
Entry points point MLflow at a store once (`use_store`, or `use_tracking_uri` with the URI a run
reference names); library code gets plain callables (hooks) from here.
The registry (versions, aliases) is `agerange.registry`; the serving pyfunc is `agerange.serving`.
"""

import argparse
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow

from agerange.files import sha256_file, write_json
from agerange.provenance import pinned

log = logging.getLogger(__name__)

EXPERIMENT = "agerange"
STORE_FILE = "mlflow.db"
DEFAULT_STORE = "mlruns"
# Schemes MLflow's tracking and registry stores accept (a `+driver` suffix is allowed: postgresql+psycopg2).
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https")
STORE_HELP = (
    "MLflow store: a folder (SQLite inside) or a sqlite:///, postgresql://, http(s):// URI "
    f"(default: $MLFLOW_TRACKING_URI when set, else {DEFAULT_STORE}/)"
)


class StoreError(ValueError):
    """A store that cannot be used: unknown scheme, a password inside the URI, a folder with no store."""


def store_uri(store: Path) -> str:
    """The tracking URI of a store folder (SQLite backend)."""
    return f"sqlite:///{(Path(store).resolve() / STORE_FILE).as_posix()}"


def default_store() -> str:
    """The store when none is named: $MLFLOW_TRACKING_URI when set, else `mlruns/`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE


def tracking_uri(store: str | Path | None = None) -> str:
    """The tracking URI of `--store`: a folder or a URI; None means `default_store()`."""
    chosen = str(store) if store is not None else default_store()
    if "://" not in chosen:
        return store_uri(Path(chosen))
    scheme = chosen.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in STORE_SCHEMES:
        raise StoreError(f"{chosen}: unknown MLflow store (a folder, or a {', '.join(STORE_SCHEMES)} URI)")
    refuse_password(chosen, "store")
    return chosen


def refuse_password(uri: str, what: str) -> None:
    """Raise when `uri` carries a password: it would be written to run references, logs and tags."""
    parts = urlsplit(uri)
    if parts.password is not None:
        shown = uri.replace(f":{parts.password}@", ":***@")
        raise StoreError(
            f"{shown}: the {what} URI holds a password; give it in PGPASSWORD or ~/.pgpass "
            "(MLFLOW_TRACKING_PASSWORD for an MLflow server), not in the URI"
        )


def registry_uri(tracking: str) -> str:
    """The model registry's URI: $MLFLOW_REGISTRY_URI when set, else the tracking store's."""
    chosen = os.environ.get("MLFLOW_REGISTRY_URI") or tracking
    refuse_password(chosen, "registry")
    return chosen


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """`--store` of an entry point: parsed into a tracking URI, a bad one is a one-line usage error."""

    def parse(value: str) -> str:
        try:
            return tracking_uri(value)
        except StoreError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    # A string default goes through `parse` too, so $MLFLOW_TRACKING_URI is checked the same way.
    parser.add_argument("--store", type=parse, default=default_store(), help=STORE_HELP)


def use_tracking_uri(uri: str) -> None:
    """Point MLflow's runs and registry at an existing store, by its tracking URI."""
    exported = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry_uri(uri))
    # MLflow also writes both URIs into the environment, for child processes to inherit. Undo that:
    # the variables keep meaning what the user set, and a stage started from here (a test, the
    # nightly) chooses its own store.
    for name, value in exported.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store (its artifacts go beside it); None for a server or database."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def use_store(store: str | Path | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    import fcntl

    uri = tracking_uri(store)
    use_tracking_uri(uri)
    database = sqlite_file(uri)
    if database is None:  # a database server or an MLflow server: it keeps its own consistency
        return _ensure_experiment(experiment, None)
    folder = database.parent
    folder.mkdir(parents=True, exist_ok=True)
    # Processes that open a new store together (sweep workers) would race to create its
    # tables; a file lock lets the first one build the database while the others wait.
    with open(folder / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_experiment(experiment, folder / "artifacts")


def open_store(store: str | Path | None = None) -> str:
    """Like `use_store`, for a store that must already exist (reading models, not logging runs)."""
    uri = tracking_uri(store)
    database = sqlite_file(uri)
    if database is not None and not database.is_file():
        raise StoreError(f"{database.parent}: no MLflow tracking store here (run `dvc repro` first)")
    return use_store(uri)


def _ensure_experiment(experiment: str, artifacts: Path | None) -> str:
    """The experiment id, creating the experiment on first use.

    Artifacts go inside a folder store; a server stores them itself (proxied, `mlflow-artifacts:`),
    and a database store uses MLflow's default location.
    """
    from mlflow.exceptions import MlflowException

    # The kind tag makes the UI open on the runs table (model training), not the GenAI overview.
    kind = {"mlflow.experimentKind": "custom_model_development"}
    found = mlflow.get_experiment_by_name(experiment)
    if found is None:
        location = artifacts.resolve().as_uri() if artifacts is not None else None
        try:
            return mlflow.create_experiment(experiment, artifact_location=location, tags=kind)
        except MlflowException:  # another worker created it first
            found = mlflow.get_experiment_by_name(experiment)
            if found is None:
                raise
    if found.tags.get("mlflow.experimentKind") != kind["mlflow.experimentKind"]:
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, *next(iter(kind.items())))
    return found.experiment_id


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
    """Add the saved serving model to a training run as `serving_model/<content hash>`; returns its URI.

    A registered version points at these files rather than a copy of them, so each packaging of
    the run gets its own folder: a later package stage never changes what an earlier version (the
    champion) serves, and packaging the same files again lands in the same folder.
    """
    artifact_path = f"serving_model/{folder_digest(Path(folder))[:12]}"
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def folder_digest(folder: Path) -> str:
    """Hex sha256 over a folder's files: their relative paths and contents, in path order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def active_run_id() -> str:
    """The id of the run being logged to."""
    return mlflow.active_run().info.run_id


def end_runs_of_failed_trials(experiment_id: str, study_name: str, failed: set[int]) -> list[str]:
    """End the MLflow runs a dead sweep worker left open: a run of a trial the study failed that is
    still RUNNING becomes FAILED (tag optuna.state failed), and its sweep run KILLED.

    A trial that failed in a live worker ended its own run; only a killed worker's stay open.
    Returns the ids of the runs ended.
    """
    if not failed:
        return []
    client = mlflow.MlflowClient()
    open_runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`optuna.study` = '{study_name}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    ended = []
    for run in open_runs:
        if int(run.data.tags.get("optuna.trial", -1)) not in failed:
            continue
        client.set_tag(run.info.run_id, "optuna.state", "failed")
        client.set_terminated(run.info.run_id, "FAILED")
        ended.append(run.info.run_id)
        sweep = run.data.tags.get("mlflow.parentRunId")
        if sweep and client.get_run(sweep).info.status == "RUNNING":
            client.set_terminated(sweep, "KILLED")
            ended.append(sweep)
    return ended


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
