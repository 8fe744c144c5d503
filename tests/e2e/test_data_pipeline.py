"""End to end: `dvc repro` of the data stages on UTKFace-mini, in a throwaway copy of the repository."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import FAIRFACE, PROJECT_ROOT

pytestmark = pytest.mark.slow
DATA_STAGES = ["ingest", "validate", "split", "label_check", "rebalance"]
NEW_PHOTOS = 50  # labelled FairFace photos the pipeline copies read (all 270: tests/predict)


def _run(
    args: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {
        **(os.environ if env is None else env),
        "DVC_NO_ANALYTICS": "1",
        # Stage commands call `python`: make it this interpreter, which has the package installed.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "dvc", *args], cwd=cwd, check=check)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, staged_repo: Path) -> Path:
    """A copy of the repository in which the data stages ran once (`staged_repo`)."""
    from tests.e2e.conftest import copy_of

    return copy_of(staged_repo, tmp_path_factory)


def make_repo(tmp_path_factory: pytest.TempPathFactory, mini_archive: Path) -> Path:
    """A git + DVC copy of the project whose data.dvc points at the mini archive (a one-line change)."""
    root = tmp_path_factory.mktemp("repo") / "agerange"
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for relative in filter(None, listed):
        source = PROJECT_ROOT / relative
        if source.is_file():
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / relative)
    data_dvc = root / "data.dvc"
    lines = data_dvc.read_text().splitlines()
    source_line = next(i for i, line in enumerate(lines) if line.startswith("- path:"))
    lines[source_line] = f"- path: {mini_archive}"
    data_dvc.write_text("\n".join(lines) + "\n")
    (root / "dvc.lock").unlink(missing_ok=True)
    # params.yaml names the shared FairFace photos relative to the project: this copy lives elsewhere,
    # and reads a labelled sample of them (the package stage measures every model on them)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["drift"]["new_photos"] = str(fairface_sample(root.parent / "fairface"))
    # and the pretrained weights (the label check reads them already in the data stages)
    params["train"]["weights_dir"] = str(PROJECT_ROOT.parent / "shared" / "weights")
    # small inputs for the label check's features and few photos to calibrate int8 exports:
    # the same code, a fraction of the time (the mini set's training split has about 420 photos)
    params["label_check"]["image_size"] = 48
    params["package"]["calibration_photos"] = 40
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], cwd=root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A"], cwd=root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=root)
    return root


def fairface_sample(folder: Path, size: int = NEW_PHOTOS) -> Path:
    """The first `size` shared FairFace photos and their labels, in `folder`."""
    labels = pd.read_csv(FAIRFACE / "labels.csv").sort_values("filename").head(size)
    folder.mkdir(parents=True, exist_ok=True)
    for name in labels["filename"]:
        shutil.copy2(FAIRFACE / name, folder / name)
    labels.to_csv(folder / "labels.csv", index=False)
    return folder


def test_repro_builds_validated_split_and_rebalanced_data(repo: Path, staged_repo: Path):
    output = (staged_repo.parent / "repro.log").read_text()  # the output of the stages' one run
    assert "ingest: 613 files in, 600 images out, 13 quarantined" in output
    assert "critical failures" in output and "0 critical failures" in output

    ingest = json.loads((repo / "data/reports/ingest.json").read_text())
    assert ingest["quarantine_by_reason"] == {"conflicting_duplicate": 8, "unparsable_name": 5}
    quarantine = pd.read_csv(repo / "data/reports/quarantine.csv")
    assert len(quarantine) == 13 and quarantine["detail"].notna().all()
    assert json.loads((repo / "data/reports/validation.json").read_text())["success"] is True
    assert (repo / "data/reports/data_docs/index.html").is_file()

    splits = pd.read_parquet(repo / "data/splits.parquet")
    assert (splits.groupby("sha256")["split"].nunique() == 1).all()
    train = pd.read_parquet(repo / "data/train.parquet")
    assert set(train["path"]) <= set(splits.loc[splits["split"] == "train", "path"])
    # the label check reports on the training split only, and leaves everything in by default
    assert "label_check: " in output and "kept (label_check.drop: false)" in output
    issues = pd.read_csv(repo / "data/reports/label_issues.csv")
    assert set(issues["path"]) <= set(splits.loc[splits["split"] == "train", "path"])
    assert pd.read_csv(repo / "data/label_drop.csv").empty
    assert (repo / "data/reports/label_issues.png").stat().st_size > 0
    for name in ["age_groups.csv", "ethnicities.csv", "rebalance.png"]:
        assert (repo / "data/reports/rebalance" / name).stat().st_size > 0

    metrics = _dvc("metrics", "show", "--json", cwd=repo).stdout
    # the data stages' metrics are validation's pass / fail counts (their other figures are reports)
    assert "critical_failures" in metrics and "images_out" not in metrics
    again = _dvc("repro", *DATA_STAGES, cwd=repo)
    # only the always-run tune stage (it re-reads the Optuna study) runs again: nothing is rebuilt
    assert "Running stage 'tune'" in again.stdout
    assert not [stage for stage in DATA_STAGES if f"Running stage '{stage}'" in again.stdout]


def test_critical_expectation_stops_repro_and_names_it(repo: Path):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["validate"]["min_per_group"] = 1000
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = _dvc("repro", *DATA_STAGES, cwd=repo, check=False)
        assert result.returncode != 0
        assert (
            "data quality check failed: critical: expect_column_values_to_be_between on column 'images'"
            in (result.stderr)
        )
    finally:
        _run(["git", "checkout", "params.yaml"], cwd=repo)


def test_wrong_checksum_fails_and_keeps_the_previous_outputs(repo: Path):
    before = (repo / "data/metadata.parquet").read_bytes()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ingest"]["trusted_sha256"] = {"UTKFace-mini.tar": "0" * 64}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = _dvc("repro", "ingest", cwd=repo, check=False)
        assert result.returncode != 0
        assert "wrong checksum" in result.stderr and "utkface.tar" in result.stderr
        assert (repo / "data/metadata.parquet").read_bytes() == before
    finally:
        _run(["git", "checkout", "params.yaml"], cwd=repo)


TINY_TRAIN = {
    "image_size": 48, "unfreeze_layers": 20, "head_epochs": 2, "finetune_epochs": 2,
    "batch_size": 32, "head_learning_rate": 0.003, "finetune_learning_rate": 0.0003,
    "ensemble_members": 1,
}  # fmt: skip
