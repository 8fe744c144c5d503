"""Fixtures shared by the end-to-end tests: a throwaway repository with the data stages run."""

import fcntl
import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_data_pipeline import DATA_STAGES, TINY_TRAIN, _dvc, make_repo


def set_params(repo: Path, **sections) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


TINY_SPACE = {
    "backbone": ["mobilenet_v2"],
    "unfreeze_layers": {"mobilenet_v2": [5, 20]},
    "head_learning_rate": [0.001, 0.005],
    "finetune_learning_rate": [0.0001, 0.001],
    "dropout": [0.0, 0.3],
    "rebalance_strategy": ["undersample", "none"],
}


@pytest.fixture(scope="session")
def staged_repo(tmp_path_factory, mini_archive) -> Path:
    """A copy of the project after `dvc repro` of the data stages on the mini set (its output in
    `repro.log` beside it), run once per test run: the test processes share it (under a lock),
    and each module works on a copy of its own (`copy_of`)."""
    # pytest-xdist gives each process a temporary folder of its own inside the run's folder
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    repo = shared / "staged" / "agerange"
    with open(shared / "staged.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other processes wait here while one builds it
        if not (repo.parent / "repro.log").is_file():
            shutil.rmtree(repo.parent, ignore_errors=True)
            built = make_repo(tmp_path_factory, mini_archive)
            output = _dvc("repro", *DATA_STAGES, cwd=built).stdout
            shutil.copytree(built, repo, symlinks=True)
            (repo.parent / "repro.log").write_text(output)  # last: it marks the copy complete
    return repo


def copy_of(repo: Path, tmp_path_factory) -> Path:
    """A copy of `repo` in a new folder (as .../agerange: .dvc/config's remote is beside it)."""
    copy = tmp_path_factory.mktemp("repo") / "agerange"
    shutil.copytree(repo, copy, symlinks=True)
    return copy


@pytest.fixture(scope="module")
def sweep_repo(tmp_path_factory, staged_repo):
    repo = copy_of(staged_repo, tmp_path_factory)
    weights = str(Path(__file__).resolve().parents[2].parent / "shared" / "weights")
    set_params(
        repo,
        train={**TINY_TRAIN, "weights_dir": weights},
        tune={"space": TINY_SPACE, "pruner": "none"},
        # a student (off by default: its 50 minutes on the full data) at a smaller input than
        # TINY_TRAIN's, as the default's
        distil={"enabled": True, "image_size": 32},
    )
    return repo
