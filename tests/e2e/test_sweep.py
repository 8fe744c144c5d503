"""One user's sweeps on the mini data, in one repository: a killed sweep resumes without losing or
repeating a trial; the nightly registers a version whose record (a commit and the DVC remote)
rebuilds it; a clone of that record pulls everything and rebuilds nothing. (A team's workers on
PostgreSQL and an MLflow server: test_team.py.)"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import optuna
import pytest

from tests.conftest import FAIRFACE
from tests.e2e.conftest import set_params
from tests.e2e.test_data_pipeline import _run

pytestmark = pytest.mark.slow


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
    set_params(sweep_repo, tune={"n_trials": 0, "heartbeat_seconds": 10})  # params.yaml's, for the nightly


def test_the_nightly_records_what_it_registers_and_leaves_the_working_copy_as_found(sweep_repo):
    """The registered version names a clean commit holding the dvc.lock and params that built it,
    its outputs are on the DVC remote, and the working copy is as the nightly found it."""
    import mlflow
    import yaml

    from agerange import tracking

    # an uncommitted change a user might leave, which the record must hold
    set_params(sweep_repo, train={"seed": 43}, drift={"reference_size": 200, "control_size": 60})
    status_before = _run(["git", "status", "--porcelain"], cwd=sweep_repo).stdout
    lock_before = (sweep_repo / "dvc.lock").read_bytes()
    nightly = [sys.executable, "pipelines/nightly.py", "--trials", "1", "--timeout-minutes", "5"]
    result = _run(nightly, cwd=sweep_repo)
    assert "recorded as" in result.stdout and "nightly: done" in result.stdout
    log = next((sweep_repo / "data/logs").glob("nightly-*.log")).read_text()
    assert "Running stage 'train'" in log and "Running stage 'drift'" in log and "dvc push" in log

    store = tracking.store_uri(sweep_repo / "mlruns")
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    newest = max(client.search_model_versions("name='agerange'"), key=lambda v: int(v.version))
    commit, branch = newest.tags["git_commit"], newest.tags["record_branch"]
    assert _run(["git", "rev-parse", branch], cwd=sweep_repo).stdout.strip() == commit
    assert newest.tags["trained_from_commit"].endswith("-dirty")  # what the record replaces
    # the commit holds the params it was trained with and the lock whose register stage made it
    params = yaml.safe_load(_run(["git", "show", f"{commit}:params.yaml"], cwd=sweep_repo).stdout)
    assert params["train"]["seed"] == 43
    lock = yaml.safe_load(_run(["git", "show", f"{commit}:dvc.lock"], cwd=sweep_repo).stdout)
    model = next(out for out in lock["stages"]["train"]["outs"] if out["path"] == "data/model")
    for cache in (sweep_repo / ".dvc/cache", sweep_repo.parent / "agerange-dvc-storage"):  # local, pushed
        files = json.loads((cache / "files/md5" / model["md5"][:2] / model["md5"][2:]).read_text())
        run_json = next(entry["md5"] for entry in files if entry["relpath"] == "run.json")
        reference = json.loads((cache / "files/md5" / run_json[:2] / run_json[2:]).read_text())
        assert reference["run_id"] == newest.run_id  # the lock's model is the registered version's

    # as found: the same git status, dvc.lock byte for byte, and the outputs it names
    assert _run(["git", "status", "--porcelain"], cwd=sweep_repo).stdout == status_before
    assert (sweep_repo / "dvc.lock").read_bytes() == lock_before


def test_a_clone_of_the_record_pulls_from_the_dvc_remote_and_rebuilds_nothing(sweep_repo):
    """Issue 16, item 4: another working copy (`git clone` of the nightly's record branch, as a
    colleague's `git pull` would get it), `dvc pull` from the default remote, `dvc repro`: only the
    tune stage runs (it always does: it reads the study, pulled with it) and rebuilds nothing
    after it; `agerange predict` answers with the pulled model."""
    import yaml

    branch = _run(["git", "branch", "--list", "nightly/*", "--format=%(refname:short)"], cwd=sweep_repo)
    # beside the original, so .dvc/config's relative remote (../../agerange-dvc-storage) is the same folder
    clone = sweep_repo.parent / "agerange-clone"
    _run(
        ["git", "clone", "-q", "--branch", branch.stdout.split()[-1], str(sweep_repo), str(clone)],
        cwd=clone.parent,
    )
    assert not (clone / "data").exists()
    _run([sys.executable, "-m", "dvc", "pull"], cwd=clone)
    result = _run([sys.executable, "-m", "dvc", "repro", "drift"], cwd=clone)
    assert re.findall(r"Running stage '([^']+)'", result.stdout) == ["tune"], result.stdout
    recorded = yaml.safe_load(_run(["git", "show", "HEAD:dvc.lock"], cwd=clone).stdout)
    assert yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["train"] == recorded["stages"]["train"]
    assert _run(["git", "status", "--porcelain"], cwd=clone).stdout == ""  # tune wrote what was recorded

    photo = next(iter(sorted(FAIRFACE.glob("*.jpg"))))
    answer = _run(
        [sys.executable, "-m", "agerange.cli", "predict", str(photo), "--model", "data/serving"], cwd=clone
    )
    assert photo.name in answer.stdout and "error" not in answer.stdout.lower()
