"""Fixtures shared by the end-to-end tests: a throwaway repository with the data stages run."""

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


@pytest.fixture(scope="module")
def sweep_repo(tmp_path_factory, mini_archive):
    repo = make_repo(tmp_path_factory, mini_archive)
    weights = str(Path(__file__).resolve().parents[2].parent / "shared" / "weights")
    set_params(
        repo,
        train={**TINY_TRAIN, "weights_dir": weights},
        tune={"space": TINY_SPACE, "pruner": "none"},
        distil={"image_size": 32},  # a student at a smaller input than TINY_TRAIN's, as the default's
    )
    _dvc("repro", *DATA_STAGES, cwd=repo)
    return repo
