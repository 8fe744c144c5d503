"""One user's sweep on the mini data, in one repository with a SQLite study: a killed sweep resumes
without losing or repeating a trial. (A team's workers on PostgreSQL and an MLflow server, the
nightly that registers and records a version, and a clone of that record: test_team.py.)"""

import os
import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest

from tests.e2e.conftest import set_params
from tests.e2e.test_data_pipeline import _run

pytestmark = pytest.mark.slow


def test_a_killed_sweep_resumes_without_losing_or_repeating_trials(sweep_repo):
    """Also: the trials leave out the label check's list, as the train stage's rows do."""
    storage = f"sqlite:///{sweep_repo / 'data' / 'resume.db'}"
    splits = pd.read_parquet(sweep_repo / "data" / "splits.parquet")
    train_paths = splits.loc[splits["split"] == "train", "path"]
    pd.DataFrame({"path": train_paths.iloc[:7]}).to_csv(sweep_repo / "data" / "drop-resume.csv", index=False)
    command = [
        sys.executable, "pipelines/tune.py", "--splits", "data/splits.parquet", "--images", "data/images",
        "--out", "data/reports/tune/resume.json", "--reports", "data/reports/tune-resume",
        "--checkpoints", "data/checkpoints/tune-resume", "--storage", storage,
        "--drop", "data/drop-resume.csv",
    ]  # fmt: skip
    set_params(sweep_repo, tune={"n_trials": 2, "heartbeat_seconds": 1})
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
    resumed = _run(command, cwd=sweep_repo)
    decoded = len(train_paths) - 7 + int((splits["split"] == "val").sum())
    assert f"decoded {decoded} chips once for the whole sweep" in resumed.stderr
    study = optuna.load_study(study_name="agerange", storage=storage)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(complete) == 2  # the one finished before the kill, and the killed one's retry
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
