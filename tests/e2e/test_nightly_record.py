"""The nightly end to end on the mini data: what it registers has a commit that rebuilds it.

In a file of its own so that it runs beside the sweep tests (each test file gets its own
sweep repository and runs in one test process)."""

import json
import sys

import pytest

from tests.e2e.conftest import set_params
from tests.e2e.test_data_pipeline import _run

pytestmark = pytest.mark.slow


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
