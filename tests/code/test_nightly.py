"""The nightly sweep's guard rails: the lock, the log file and the exit status."""

import fcntl
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT


def _workspace(tmp_path: Path) -> Path:
    """params.yaml and the stage scripts, but no data: every step that needs data fails."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(PROJECT_ROOT / "pipelines", tmp_path / "pipelines")
    return tmp_path


def _nightly(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "pipelines/nightly.py", "--trials", "1", "--timeout-minutes", "1", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_refuses_to_start_while_another_sweep_holds_the_lock(tmp_path):
    workspace = _workspace(tmp_path)
    lock_path = workspace / "data" / "nightly.lock"
    lock_path.parent.mkdir()
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _nightly(workspace)
    assert result.returncode == 75
    assert "another sweep holds" in result.stderr
    assert not (workspace / "data" / "logs").exists()  # it did not start


def test_a_failing_step_exits_non_zero_and_leaves_a_log(tmp_path):
    workspace = _workspace(tmp_path)
    result = _nightly(workspace)
    assert result.returncode != 0
    assert "step failed" in result.stderr
    logs = list((workspace / "data" / "logs").glob("nightly-*.log"))
    assert len(logs) == 1 and "pipelines/tune.py" in logs[0].read_text()


def test_params_yaml_configuration_is_the_baseline_trial_when_inside_the_space():
    import dataclasses

    from agerange.config import load_section
    from agerange.tune import baseline_params

    params = PROJECT_ROOT / "params.yaml"
    space, train = load_section("tune", params).space, load_section("train", params)
    strategy = load_section("rebalance", params).strategy
    point = baseline_params(space, train, strategy)
    assert point == {
        "backbone": train.backbone,
        "unfreeze_layers": train.unfreeze_layers,
        "head_learning_rate": train.head_learning_rate,
        "finetune_learning_rate": train.finetune_learning_rate,
        "dropout": train.dropout,
        "rebalance_strategy": strategy,
    }
    outside = dataclasses.replace(train, dropout=0.99)
    assert baseline_params(space, outside, strategy) is None


def test_steps_run_with_this_interpreter_first_on_path(tmp_path):
    """dvc.yaml's stages call `python`; under cron no virtualenv is on PATH, so the nightly puts
    its own interpreter's folder first (a first real nightly failed with 'No module named optuna')."""
    import os

    workspace = _workspace(tmp_path)
    stub = "import shutil\nprint('python is', shutil.which('python'))\n"
    (workspace / "pipelines" / "tune.py").write_text(stub)
    command = [sys.executable, "pipelines/nightly.py", "--trials", "1", "--timeout-minutes", "1"]
    environment = {**os.environ, "PATH": "/usr/bin:/bin"}
    subprocess.run(command, cwd=workspace, capture_output=True, text=True, timeout=300, env=environment)
    log = next((workspace / "data" / "logs").glob("nightly-*.log")).read_text()
    assert f"python is {Path(sys.executable).parent / 'python'}" in log


def test_a_version_registered_before_a_later_step_failed_is_still_recorded_and_the_copy_put_back(
    tmp_path, monkeypatch
):
    """The register stage ran, then drift failed: the registry holds the new version, so its
    record (branch, DVC push) must not be skipped; and the working copy is put back even when
    recording raises."""
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "pipelines"))
    import nightly

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "reports").mkdir(parents=True)
    (tmp_path / "data" / "reports" / "registration.json").write_text('{"version": 12}')
    calls = []
    monkeypatch.setattr(
        nightly, "record_version", lambda version, *rest: calls.append(("record", version)) or 0
    )
    monkeypatch.setattr(nightly, "put_back", lambda *rest: calls.append(("put back",)) or 0)
    assert nightly.finish(1, 11, {}, tmp_path / "log", sys.executable) == 1  # drift's failure stays
    assert calls == [("record", 12), ("put back",)]

    def unreachable(*rest):
        raise ConnectionError("MLflow unreachable")

    calls.clear()
    monkeypatch.setattr(nightly, "record_version", unreachable)
    with pytest.raises(ConnectionError):
        nightly.finish(0, 11, {}, tmp_path / "log", sys.executable)
    assert calls == [("put back",)]
    assert nightly.finish(0, 12, {}, tmp_path / "log", sys.executable) == 0 and calls[-1] == ("put back",)
