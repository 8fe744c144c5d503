"""Where runs go: a store folder, a tracking URI, or MLflow's environment variables."""

import argparse
import os
import sqlite3
from pathlib import Path

import mlflow
import pytest

from agerange import tracking


@pytest.fixture(autouse=True)
def no_mlflow_environment(monkeypatch):
    """Each test starts without the variables a developer's shell may have set."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


def test_a_folder_is_a_sqlite_store_inside_it_and_uris_pass_through(tmp_path):
    assert tracking.tracking_uri(tmp_path / "runs") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    for uri in ("sqlite:////tmp/x/mlflow.db", "postgresql://agerange@db.local:5432/mlflow",
                "postgresql+psycopg2://agerange@/mlflow?host=/run/pg", "http://127.0.0.1:5000",
                "https://mlflow.example.org"):  # fmt: skip
        assert tracking.tracking_uri(uri) == uri


def test_without_a_store_the_environment_then_mlruns_decide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri(None) == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking.tracking_uri(None) == "http://127.0.0.1:5999"
    assert tracking.tracking_uri("elsewhere").endswith("/elsewhere/mlflow.db")  # --store wins


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("ftp://files.example.org/runs", "unknown MLflow store"),
        ("postgresql://agerange:hunter2@db.local/mlflow", "holds a password"),
        ("https://admin:hunter2@mlflow.example.org", "holds a password"),
    ],
)
def test_bad_stores_are_refused_in_one_line_that_never_shows_the_password(uri, reason):
    with pytest.raises(tracking.StoreError) as raised:
        tracking.tracking_uri(uri)
    message = str(raised.value)
    assert reason in message and "\n" not in message and "hunter2" not in message


def test_the_store_option_parses_to_a_uri_and_rejects_a_password_as_a_usage_error(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://agerange@db.local/mlflow")
    parser = argparse.ArgumentParser()
    tracking.add_store_argument(parser)
    assert parser.parse_args([]).store == "postgresql://agerange@db.local/mlflow"
    assert parser.parse_args(["--store", str(tmp_path)]).store == f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--store", "postgresql://agerange:hunter2@db.local/mlflow"])
    error = capsys.readouterr().err
    assert exited.value.code == 2 and "holds a password" in error and "hunter2" not in error


def test_a_sqlite_uri_store_keeps_its_artifacts_beside_the_database(tmp_path):
    uri = f"sqlite:///{tmp_path}/team/runs.db"
    experiment = tracking.use_store(uri)
    with tracking.start_run(experiment, "artifact"):
        (tmp_path / "note.txt").write_text("kept")
        tracking.log_artifacts([tmp_path / "note.txt"], folder="notes")
    assert list((tmp_path / "team" / "artifacts").rglob("note.txt"))
    assert tracking.use_store(uri) == experiment  # the second opening finds the same experiment
    # MLflow exports the URI for child processes; a stage started from here must choose its own.
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ


def test_the_registry_follows_mlflow_registry_uri_when_set(tmp_path, monkeypatch):
    registry_db = tmp_path / "registry.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{registry_db}")
    tracking.use_store(tmp_path / "runs")
    mlflow.MlflowClient().create_registered_model("agerange-test")
    with sqlite3.connect(registry_db) as database:
        assert database.execute("select name from registered_models").fetchall() == [("agerange-test",)]
    with sqlite3.connect(tmp_path / "runs" / "mlflow.db") as database:
        assert database.execute("select count(*) from registered_models").fetchone() == (0,)


def test_opening_a_missing_store_folder_names_it(tmp_path):
    with pytest.raises(tracking.StoreError, match="no MLflow tracking store here"):
        tracking.open_store(Path(tmp_path / "nothing"))


def test_the_runs_a_killed_sweep_worker_left_open_are_ended_and_no_other(tmp_path):
    experiment = tracking.use_store(tmp_path / "mlruns")
    client = mlflow.MlflowClient()
    sweep = client.create_run(experiment, run_name="sweep-agerange").info.run_id

    def trial_run(number: int, status: str | None = None) -> str:
        tags = {"optuna.study": "agerange", "optuna.trial": str(number), "mlflow.parentRunId": sweep}
        run_id = client.create_run(experiment, tags=tags).info.run_id
        if status:
            client.set_terminated(run_id, status)
        return run_id

    ended_by_itself, killed, live = trial_run(2, "FAILED"), trial_run(3), trial_run(4)
    assert tracking.end_runs_of_failed_trials(experiment, "agerange", {2, 3}) == [killed, sweep]
    assert client.get_run(killed).info.status == "FAILED"
    assert client.get_run(killed).data.tags["optuna.state"] == "failed"
    assert client.get_run(sweep).info.status == "KILLED"
    assert client.get_run(live).info.status == "RUNNING"  # its trial did not fail
    assert "optuna.state" not in client.get_run(ended_by_itself).data.tags
    assert tracking.end_runs_of_failed_trials(experiment, "agerange", {2, 3}) == []  # once only


def test_packaging_a_run_again_never_changes_the_files_an_earlier_version_serves(tmp_path):
    """A registered version points at the logged files themselves: a second package stage for the
    same training run must log beside them, not over them; the same files land in one place."""
    mlflow.set_tracking_uri(tracking.tracking_uri(tmp_path / "runs"))
    mlflow.set_experiment("packaging")
    with mlflow.start_run() as run:
        pass
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, variant in ((first, "float"), (second, "int8")):
        (folder / "artifacts").mkdir(parents=True)
        (folder / "artifacts" / "model_info.json").write_text(f'{{"variant": "{variant}"}}')
    first_uri = tracking.log_serving_model(first, run.info.run_id)
    second_uri = tracking.log_serving_model(second, run.info.run_id)
    assert first_uri != second_uri and first_uri.startswith(f"runs:/{run.info.run_id}/serving_model/")
    assert tracking.log_serving_model(first, run.info.run_id) == first_uri
    kept = mlflow.artifacts.download_artifacts(first_uri, dst_path=str(tmp_path / "back"))
    assert (Path(kept) / "artifacts" / "model_info.json").read_text() == '{"variant": "float"}'
