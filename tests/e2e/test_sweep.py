"""Optuna sweeps end to end: a 3-trial sweep into the registry, and resuming after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tests.conftest import FAIRFACE
from tests.e2e.conftest import TINY_SPACE, set_params
from tests.e2e.test_data_pipeline import _dvc, _run

pytestmark = pytest.mark.slow


def test_three_trial_sweep_trains_the_best_and_registers_it(sweep_repo):
    set_params(sweep_repo, tune={"n_trials": 3})
    result = _dvc("repro", "register", cwd=sweep_repo)
    assert "tune: study 'agerange' has 3 finished trials" in result.stdout
    best = json.loads((sweep_repo / "data/reports/tune/best.json").read_text())
    assert best["trials"] == 3 and set(best["params"]) == set(TINY_SPACE)
    # the resolved configuration that rebalance and train read is params.yaml's with the best applied
    resolved = json.loads((sweep_repo / "data/training.json").read_text())
    assert resolved["tuned"] == best["params"]
    assert resolved["train"]["dropout"] == best["params"]["dropout"]
    assert resolved["rebalance"]["strategy"] == best["params"]["rebalance_strategy"]
    assert "using the tuned params" in result.stderr
    # ended trials (complete or pruned) leave no checkpoints or weight-soup snapshots behind
    assert not list((sweep_repo / "data/checkpoints/tune").glob("trial_*"))
    registration = json.loads((sweep_repo / "data/reports/registration.json").read_text())
    assert registration["alias"] == "champion" and registration["version"] == 1
    card = (sweep_repo / "data/reports/model_card.md").read_text()
    assert "## Intended use" in card and "## Known failure conditions" in card and "new photos" in card
    # the packaged model, measured through the whole predict path on every val and test chip
    predict_path = json.loads((sweep_repo / "data/reports/predict_path.json").read_text())
    splits = json.loads((sweep_repo / "data/reports/split.json").read_text())
    assert predict_path["test"]["n"] == splits["test"]["images"]
    assert predict_path["test"]["faces_found"] > 0.95 and 0 <= predict_path["test"]["accuracy"] <= 1
    # and on the labelled real photos (the shared FairFace set), at their age ranges
    new_photos = predict_path["new_photos"]
    assert new_photos["labelled_photos"] == 270 and new_photos["photos_with_face"] > 250
    assert 0 < new_photos["range_accuracy"] <= new_photos["range_within_one"] <= 1

    import mlflow

    from agerange import tracking

    mlflow.set_tracking_uri(tracking.store_uri(sweep_repo / "mlruns"))
    runs = mlflow.search_runs(experiment_names=["agerange"])
    sweep = runs[runs["tags.mlflow.runName"] == "sweep-agerange"]
    trials = runs[runs["tags.mlflow.parentRunId"] == sweep["run_id"].iloc[0]]
    assert len(sweep) == 1 and len(trials) == 3
    assert set(trials["tags.optuna.state"]) <= {"complete", "pruned"}
    assert "params.best.unfreeze_layers" in sweep.columns
    assert (sweep_repo / "data/reports/tune/optimization_history.html").is_file()
    # the registered version carries its model card as its description (shown by the MLflow UI)
    store = tracking.store_uri(sweep_repo / "mlruns")
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    assert client.get_model_version("agerange", "1").description == card

    # the registered champion is the served model: predict through the registry alias
    photo = str(FAIRFACE / "fairface_0002.jpg")
    predicted = _run(
        [sys.executable, "-m", "agerange.cli", "predict", photo, "--format", "json"], cwd=sweep_repo
    )
    assert len(json.loads(predicted.stdout)[0]["faces"]) == 1

    # drift of FairFace photos against the training chips, logged against the champion version
    set_params(sweep_repo, drift={"new_photos": str(FAIRFACE), "reference_size": 200, "control_size": 60})
    drift = _dvc("repro", "drift", cwd=sweep_repo)
    # the new photos were imported for the package stage already (it measures every model on them)
    assert (
        "new_photos: 270 photos" in result.stdout and "held-back UTKFace control drifted on" in drift.stdout
    )
    summary = json.loads((sweep_repo / "data/reports/drift.json").read_text())
    assert "face_box_fraction" in summary["new_photos"]["drifted"]
    assert summary["accuracy"]["labelled_photos"] == 270
    assert (sweep_repo / "data/reports/drift/new_photos_vs_training.html").is_file()
    version = client.get_model_version_by_alias("agerange", "champion")
    assert "face_box_fraction" in version.tags["drift.drifted"]


def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(sweep_repo):
    storage = f"sqlite:///{sweep_repo / 'data' / 'resume.db'}"
    command = [
        sys.executable, "pipelines/tune.py", "--splits", "data/splits.parquet", "--images", "data/images",
        "--out", "data/reports/tune/resume.json", "--reports", "data/reports/tune-resume",
        "--checkpoints", "data/checkpoints/tune-resume", "--storage", storage,
    ]  # fmt: skip
    set_params(sweep_repo, tune={"n_trials": 4, "heartbeat_seconds": 1})
    environment = {**os.environ, "PYTHONPATH": str(sweep_repo / "src")}
    worker = subprocess.Popen(command, cwd=sweep_repo, env=environment, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    study = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait until one trial finished and the next is running
        time.sleep(1)
        try:
            study = optuna.load_study(study_name="agerange", storage=storage)
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        # Mid-trial: running for a few heartbeats (Optuna cannot tell a trial killed before its
        # first heartbeat from a live one, so that first second is not what this test is about).
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                   and time.time() - t.datetime_start.timestamp() > 3]  # fmt: skip
        if complete and running:
            break
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    finished_before = {
        t.number: t.params for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    }
    assert finished_before, "no trial finished before the kill"

    time.sleep(4)  # past the heartbeat grace period: the killed trial is stale
    _run(command, cwd=sweep_repo)
    study = optuna.load_study(study_name="agerange", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(complete) == 4
    for number, params in finished_before.items():  # nothing finished was lost or rerun
        assert study.trials[number].params == params
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert len(failed) == 1  # the trial killed mid-way...
    retried = [
        t
        for t in study.trials
        if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) is not None
    ]
    assert [optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) for t in retried] == [
        failed[0].number
    ]
