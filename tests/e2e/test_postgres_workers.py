"""Scale-out: two workers share one study on a real PostgreSQL server (Debian's package)."""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

from tests.e2e.conftest import set_params

pytestmark = pytest.mark.slow


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is needed for this test: apt-get install postgresql (CI's .ci/run does)"
    return Path(found[-1]).parent


def _as_postgres(*command: str) -> None:
    # PostgreSQL refuses to run as root; CI and these machines run tests as root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a unix socket, and the URL of an empty database."""
    bin_dir = _postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="agerange-pg-", dir="/tmp"))
    data, socket_dir = folder / "data", folder / "socket"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(socket_dir, "postgres")
    _as_postgres(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres")
    _as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(folder / "server.log"),
        "-o", f"-k {socket_dir} -c listen_addresses='' -c max_connections=50", "start",
    )  # fmt: skip
    try:
        _as_postgres(str(bin_dir / "createdb"), "-h", str(socket_dir), "-U", "postgres", "optuna")
        yield f"postgresql+psycopg2://postgres@/optuna?host={socket_dir}"
    finally:
        _as_postgres(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study_and_record_each_trial_once(sweep_repo, postgres_url):
    set_params(sweep_repo, tune={"n_trials": 4, "heartbeat_seconds": 10})
    command = [
        sys.executable, "pipelines/tune.py", "--splits", "data/splits.parquet", "--images", "data/images",
        "--reports", "data/reports/tune-pg", "--storage", postgres_url, "--store", "mlruns-pg",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(
            [*command, "--out", f"data/reports/pg-{n}.json", "--checkpoints", f"data/checkpoints/pg-{n}"],
            cwd=sweep_repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for n in range(2)
    ]
    outputs = [worker.communicate(timeout=900)[0] for worker in workers]
    failures = [out[-3000:] for worker, out in zip(workers, outputs, strict=True) if worker.returncode]
    assert not failures, "\n---\n".join(failures)

    study = optuna.load_study(study_name="agerange", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) >= 4
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    # Both workers ran trials, and each trial has exactly one MLflow run.
    import mlflow

    from agerange import tracking

    mlflow.set_tracking_uri(tracking.store_uri(sweep_repo / "mlruns-pg"))
    runs = mlflow.search_runs(experiment_names=["agerange"])
    trial_runs = runs.dropna(subset=["tags.optuna.trial"])
    assert sorted(trial_runs["tags.optuna.trial"].astype(int)) == sorted(numbers)
    assert runs["tags.mlflow.runName"].str.startswith("sweep-").sum() == 2
